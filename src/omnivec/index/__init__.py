"""Index folders of documents, code, images and PDFs into a vector store, and search them.

>>> ix = omnivec.Index("./docs.omnivec")          # doctest: +SKIP
>>> ix.add_path("./docs")                          # doctest: +SKIP
>>> ix.search("how are refunds handled?", k=5)     # doctest: +SKIP

See ``docs/INDEX.md``. Store backends (LanceDB, Qdrant) are imported only when a store opens.
"""
from __future__ import annotations

from .index import Index, IndexMismatchError, IndexSummary
from .types import Hit

__all__ = ["Index", "IndexSummary", "IndexMismatchError", "Hit"]
