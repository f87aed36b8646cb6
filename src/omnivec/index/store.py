"""The small protocol every vector store implements (LanceDB embedded, Qdrant by URL or local).

Crash safety rests on one rule: a file counts as indexed only once :meth:`Store.commit_file`
has returned. It first deletes whatever the store holds for that path, then writes the file's
records, then writes the file's marker (path, hash) last. A process killed part-way leaves
records without a marker; :meth:`Store.indexed_files` does not list them, so the next run
re-embeds that file and ``commit_file`` replaces the partial records.
"""
from __future__ import annotations

from typing import Iterator, Literal, Protocol, Sequence

import numpy as np

from .types import Record

MultivectorStorage = Literal["float32", "float16", "binary"]


class Store(Protocol):
    """A dense + multi-vector store of :class:`Record` rows, keyed by file path."""

    dim: int                     # dense size
    multivector_dim: int | None  # None: the index holds no multi-vectors
    native_maxsim: bool          # True: search_maxsim runs the two-stage MaxSim inside the store

    def commit_file(self, path: str, file_hash: str, records: Sequence[Record]) -> None:
        """Replace everything stored for ``path`` by ``records`` and mark it indexed (atomic per file)."""

    def commit_files(self, files: Sequence[tuple[str, str, Sequence[Record]]]) -> None:
        """:meth:`commit_file` for several ``(path, hash, records)`` in one store call."""

    def optimize(self) -> None:
        """Compact after a sync (a no-op where the store does it itself)."""

    def search_maxsim(self, query_tokens: np.ndarray, k: int, prefetch: int,
                      dense_query: np.ndarray) -> list[tuple[Record, float]]:
        """Dense top-``prefetch`` reranked by MaxSim, best ``k`` (only when ``native_maxsim``)."""

    def delete_file(self, path: str) -> None:
        """Drop the records and the marker of ``path`` (no error when absent)."""

    def indexed_files(self) -> dict[str, str]:
        """Committed files: path -> file hash."""

    def stored_paths(self) -> set[str]:
        """Every path with at least one record, committed or not (to clean orphans)."""

    def search_dense(self, query: np.ndarray, k: int) -> list[tuple[Record, float]]:
        """Top-``k`` records by dot product with the normalised ``query`` (best first).

        Returned records carry payload and ``dense``; ``multivector`` may be None (fetch it with
        :meth:`multivectors`)."""

    def multivectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored multi-vectors of ``ids`` as float32 (tokens, mdim) arrays (binary storage: +-1/sqrt(mdim))."""

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        """(id, text) of every committed record, for building the lexical (BM25) index."""

    def get(self, ids: Sequence[str]) -> dict[str, Record]:
        """Records by id (payload + dense)."""

    def count(self) -> int:
        """Number of records (items) stored."""

    def size_bytes(self) -> int:
        """Bytes on disk (0 when unknown, e.g. a remote server)."""

    def close(self) -> None:
        """Release files/connections."""
