"""Similarity scores: dot product for dense vectors, MaxSim for multi-vectors.

MaxSim (late interaction) = for each query token, the best dot product with any document
token, summed over query tokens. Computed on padded blocks of documents so no Python loop runs
over tokens; memory is bounded by ``chunk`` documents at a time.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def dense_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """(nq, d) x (nd, d) -> (nq, nd) dot products (cosine for normalised vectors)."""
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(docs, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if d.ndim == 1:
        d = d[None]
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"dimension mismatch: queries have {q.shape[1]}, documents {d.shape[1]}")
    return q @ d.T


def _concat(arrays: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows in one matrix, plus the owner index of each row (no padding at all)."""
    lengths = torch.tensor([a.shape[0] for a in arrays])
    return torch.cat(list(arrays)), torch.repeat_interleave(torch.arange(len(arrays)), lengths)


def maxsim_scores(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], *,
                  normalize_by_query_length: bool = False,
                  max_elements: int = 1 << 24) -> np.ndarray:
    """Late-interaction scores, (nq, nd). Evaluation uses the plain sum (the default).

    All tokens are concatenated (no padding FLOPs): query-token x document-token products in
    blocks of at most ``max_elements`` floats (64 MB), a running per-document max via
    ``scatter_reduce``, then a per-query sum. Memory stays flat for any corpus size.
    """
    if len(queries) == 0 or len(docs) == 0:
        return np.zeros((len(queries), len(docs)), dtype=np.float32)
    qs = [torch.as_tensor(np.asarray(q, dtype=np.float32)) for q in queries]
    ds = [torch.as_tensor(np.asarray(d, dtype=np.float32)) for d in docs]
    for name, group in (("query", qs), ("document", ds)):
        for i, a in enumerate(group):
            if a.ndim != 2:
                raise ValueError(f"{name} {i}: multi-vectors must be 2-D (tokens, dim), got shape {tuple(a.shape)}")
    if qs[0].shape[1] != ds[0].shape[1]:
        raise ValueError(f"dimension mismatch: queries have {qs[0].shape[1]}, documents {ds[0].shape[1]}")
    q_all, q_owner = _concat(qs)
    d_all, d_owner = _concat(ds)
    n_docs = len(ds)
    out = torch.zeros(len(qs), n_docs, dtype=torch.float32)
    d_block = max(1, min(d_all.shape[0], max_elements // 2))
    q_block = max(1, max_elements // max(d_block, n_docs))
    with torch.inference_mode():
        for qs_start in range(0, q_all.shape[0], q_block):
            q = q_all[qs_start:qs_start + q_block]
            best = torch.full((q.shape[0], n_docs), float("-inf"))
            for d_start in range(0, d_all.shape[0], d_block):
                sim = q @ d_all[d_start:d_start + d_block].T
                owner = d_owner[d_start:d_start + d_block].expand(q.shape[0], -1)
                best.scatter_reduce_(1, owner, sim, reduce="amax", include_self=True)
            best = torch.nan_to_num(best, neginf=0.0)      # an empty document scores 0
            out.index_add_(0, q_owner[qs_start:qs_start + q_block], best)
    if normalize_by_query_length:
        out /= torch.tensor([max(1, q.shape[0]) for q in qs], dtype=torch.float32)[:, None]
    return out.numpy()


def score(a: np.ndarray | Sequence[np.ndarray], b: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Dense dot products for 2-D arrays; MaxSim for lists of per-token arrays."""
    a_multi = isinstance(a, (list, tuple))
    b_multi = isinstance(b, (list, tuple))
    if a_multi != b_multi:
        raise ValueError("cannot score dense vectors against multi-vectors: encode both sides the same way")
    if a_multi:
        return maxsim_scores(a, b)
    return dense_scores(a, b)
