"""The shared heads: pooling, the multi-vector projector, Matryoshka cut and normalisation.

Every consumer (inference, late chunking, adapter training, projector distillation) pools and
projects through these functions, so a family only declares *which* tokens a row pools over
(:attr:`Prepared.pool_span`) and never writes its own pooling.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters import task_routing
from .models.base import TokenStates


def mean_spans(states: torch.Tensor, starts: Sequence[int], ends: Sequence[int]) -> torch.Tensor:
    """(S, hidden) float32 means of ``states[starts[k]:ends[k]]`` (absolute packed indices).

    Spans must not overlap. An empty span (``end <= start``) takes the state at ``start``: an
    empty input inside a late-chunked window still gets its position's vector. Keeps gradients.
    """
    n = states.shape[0]
    fixed = [(s, e if e > s else min(s + 1, n)) for s, e in zip(starts, ends)]
    segment = torch.full((n,), -1, dtype=torch.long)
    for k, (s, e) in enumerate(fixed):
        segment[s:e] = k
    keep = torch.nonzero(segment >= 0).flatten()
    seg = segment[keep].to(states.device)
    keep = keep.to(states.device)
    summed = torch.zeros(len(fixed), states.shape[1], device=states.device, dtype=torch.float32)
    summed = summed.index_add(0, seg, states.index_select(0, keep).to(torch.float32))
    counts = torch.tensor([max(e - s, 1) for s, e in fixed], dtype=torch.float32, device=states.device)
    return summed / counts.unsqueeze(1)


def pool(ts: TokenStates, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Dense (B, hidden) float32: each row's mean over its own span (row-relative indices)."""
    offsets = ts.offsets
    return mean_spans(ts.states, [offsets[i] + s for i, (s, _) in enumerate(spans)],
                      [offsets[i] + e for i, (_, e) in enumerate(spans)])


def pool_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dense (B, hidden) of rows already split apart, each pooled over all its tokens (texts)."""
    lengths = [int(r.shape[0]) for r in rows]
    return pool(TokenStates(torch.cat(list(rows)), lengths, [-1] * len(rows)), [(0, n) for n in lengths])


def project(ts: TokenStates, projector: nn.Module) -> list[torch.Tensor]:
    """Per-token multi-vectors, L2-normalised, one float32 tensor per row (task LoRA per token)."""
    token_tasks = torch.repeat_interleave(torch.tensor(ts.row_tasks, dtype=torch.long),
                                          torch.tensor(ts.lengths, dtype=torch.long))
    weight = next(projector.parameters())
    with task_routing(projector, token_tasks):
        out = projector(ts.states.to(weight.dtype))
    return list(torch.split(F.normalize(out.to(torch.float32), dim=-1), ts.lengths))


def padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths as a zero-padded (B, L, d) tensor and its (B, L) mask (training losses)."""
    longest = max(r.shape[0] for r in rows)
    out = torch.stack([F.pad(r, (0, 0, 0, longest - r.shape[0])) for r in rows])
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        mask[i, :r.shape[0]] = 1
    return out, mask.to(out.device)


def matryoshka(vectors: np.ndarray, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
    """Keep the first ``dimensions`` components, then L2-normalise each row (float32 numpy)."""
    out = vectors[:, :dimensions] if dimensions else vectors
    out = np.ascontiguousarray(out, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out
