"""Shared records of the index package: what ingestion yields, what stores keep, what search returns.

Why a module of its own: ingestion (``ingest``/``chunking``), storage (``stores``) and the
:class:`~omnivec.index.index.Index` that joins them are written against these types only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ItemKind = Literal["text", "code", "image", "pdf-page"]


@dataclass
class Item:
    """One embeddable unit cut from a file: a text chunk, a code chunk, an image, a PDF page.

    ``content`` is what the model embeds: a ``str`` for text/code, a PIL image for images and
    PDF pages. ``text`` is what lexical search (BM25) and snippets read: the chunk itself, or a
    PDF page's text layer ("" when there is none).
    """

    path: str                      # file path relative to the indexed root, '/'-separated
    kind: ItemKind
    content: Any
    text: str = ""
    page: int | None = None        # 1-based PDF page
    line_start: int | None = None  # 1-based, inclusive (text and code)
    line_end: int | None = None
    ordinal: int = 0               # position of the item within its file (0, 1, ...)


@dataclass
class Record:
    """What a store keeps for one item: vectors plus the payload search hits report."""

    id: str                               # stable: "<sha256(path)[:16]>-<ordinal>"
    path: str
    file_hash: str                        # sha256 of the file bytes the item came from
    kind: str
    dense: np.ndarray                     # (dim,) float32, L2-normalised
    multivector: np.ndarray | None = None # (tokens, mdim) float32, rows L2-normalised
    text: str = ""
    page: int | None = None
    line_start: int | None = None
    line_end: int | None = None
    ordinal: int = 0


@dataclass
class Hit:
    """One search result."""

    path: str
    score: float
    kind: str
    snippet: str
    page: int | None = None
    line_start: int | None = None
    line_end: int | None = None
    id: str = ""
    scores: dict[str, float] = field(default_factory=dict)   # per stage: dense, maxsim, bm25, rrf

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "score": self.score, "kind": self.kind, "snippet": self.snippet,
                "page": self.page, "line_start": self.line_start, "line_end": self.line_end,
                "id": self.id, "scores": self.scores}
