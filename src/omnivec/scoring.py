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


def _pad(arrays: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(a.shape[0] for a in arrays)
    dim = arrays[0].shape[1]
    out = torch.zeros(len(arrays), n, dim, dtype=torch.float32)
    mask = torch.zeros(len(arrays), n, dtype=torch.bool)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    return out, mask


def maxsim_scores(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], *,
                  normalize_by_query_length: bool = False, chunk: int = 256) -> np.ndarray:
    """Late-interaction scores, (nq, nd). Evaluation uses the plain sum (the default)."""
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
    q, qmask = _pad(qs)                                    # (nq, tq, d)
    out = torch.empty(len(qs), len(ds), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(ds), chunk):
            d, dmask = _pad(ds[start:start + chunk])       # (c, td, d)
            sim = torch.einsum("qtd,csd->qcts", q, d)      # (nq, c, tq, td)
            sim = sim.masked_fill(~dmask[None, :, None, :], float("-inf"))
            best = sim.max(dim=-1).values                  # (nq, c, tq)
            best = best.masked_fill(~qmask[:, None, :], 0.0)
            out[:, start:start + chunk] = best.sum(-1)
    if normalize_by_query_length:
        out = out / qmask.sum(-1, keepdim=True).clamp(min=1)
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
