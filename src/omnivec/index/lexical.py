"""Lexical side of hybrid search: BM25 (bm25s) over the stored item texts, and rank fusion.

Why in memory and lazily: stores keep vectors, not an inverted index, and bm25s indexes tens of
thousands of chunks in well under a second; the index is built on the first hybrid query and
rebuilt only when the store's content changed. Tokenisation is the evaluation's
(:func:`omnivec.eval.bm25.tokenize`: lower-cased words, CJK characters one per token), so the
BM25 baseline in ``omnivec eval`` and hybrid search treat text the same way.
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence

import numpy as np

from ..eval.bm25 import tokenize

RRF_K = 60
_EMPTY = "\u2205"   # a row for an item without text, so every id keeps its position


class BM25Index:
    """BM25 over ``(id, text)`` pairs; :meth:`search` returns ``(id, score)`` best first."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        try:
            import bm25s
        except ImportError:
            raise ImportError("hybrid search needs bm25s: pip install 'omnivec[index]'") from None
        self.ids: list[str] = []
        corpus: list[list[str]] = []
        for item_id, text in pairs:
            self.ids.append(item_id)
            corpus.append(tokenize(text or "") or [_EMPTY])
        self._retriever = bm25s.BM25()
        if corpus:
            self._retriever.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Top-``k`` ids with a positive BM25 score (items sharing no query word are left out)."""
        tokens = tokenize(query)
        if not tokens or not self.ids:
            return []
        scores = np.asarray(self._retriever.get_scores(tokens), dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.ids[i], float(scores[i])) for i in order if scores[i] > 0]


class CachedBM25:
    """One :class:`BM25Index` per store state: rebuilt when ``signature`` changes."""

    def __init__(self) -> None:
        self._signature: Hashable | None = None
        self._index: BM25Index | None = None

    def get(self, signature: Hashable, pairs: Callable[[], Iterable[tuple[str, str]]]) -> BM25Index:
        if self._index is None or signature != self._signature:
            self._index = BM25Index(pairs())
            self._signature = signature
        return self._index

    def clear(self) -> None:
        self._index, self._signature = None, None


def rrf(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``sum(1 / (k + rank))`` over rankings (rank from 1), best first.

    Ties keep the order in which ids first appear (the first ranking wins), so fusion is
    deterministic.
    """
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(ranking, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
