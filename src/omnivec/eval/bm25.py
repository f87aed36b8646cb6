"""The lexical baseline: BM25 (``bm25s``) with a tokenizer that also works without spaces.

Why a custom tokenizer: bm25s' default splits on word boundaries, so a Chinese or Japanese
sentence would become one token; here CJK characters are single tokens and every other script
splits into lower-cased words (no stemming, no stop words: same treatment for all languages).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased words; CJK ideographs and kana one per token."""
    return _TOKEN.findall(text.lower())


def bm25_rank(queries: Sequence[str], docs: Sequence[str], depth: int = 100) -> np.ndarray:
    """(n_queries, depth) ranked document indices under BM25 (Lucene variant, k1=1.5, b=0.75).

    Ties (e.g. a query sharing no word with any document) keep corpus order, like the dense path.
    """
    try:
        import bm25s
    except ImportError:
        raise ImportError("the BM25 baseline needs bm25s: pip install 'omnivec[eval]'") from None
    retriever = bm25s.BM25()
    doc_tokens = [tokenize(d) or ["\u2205"] for d in docs]       # an empty doc still gets a row
    retriever.index(doc_tokens, show_progress=False)
    depth = min(depth, len(docs))
    rows = []
    for q in queries:
        tokens = tokenize(q)                                     # punctuation-only: no match at all
        rows.append(retriever.get_scores(tokens) if tokens else np.zeros(len(docs), np.float32))
    scores = np.stack(rows) if rows else np.zeros((0, len(docs)), np.float32)
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]
