"""The one execution function: a planned batch -> backbone token states -> heads.

Every inference consumer runs batches through :func:`run_batch`: ``Embedder.embed`` (library,
index, eval), the server engine, late chunking. It is the only caller of a family's
``token_states`` outside training, so pooling, projection and host copies happen one way.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import heads
from .models.base import EmbeddingModel, ForwardOutput, Prepared, TokenStates


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Device -> host copy that does not block on CUDA (see ForwardOutput.wait)."""
    return t.to("cpu", non_blocking=True) if t.is_cuda else t


def run_batch(model: EmbeddingModel, batch: Sequence[Prepared], *, dense: bool = True,
              multivector: bool = False) -> ForwardOutput:
    """Dense pooled rows (not normalised) and/or normalised multi-vectors of one batch."""
    if not batch:
        return ForwardOutput(torch.zeros(0, model.dim) if dense else None, [] if multivector else None)
    with torch.inference_mode():
        ts = model.token_states(batch)
        dense_out = _to_host(heads.pool(ts, [p.pool_span for p in batch])) if dense else None
        multi_out = None
        if multivector:
            multi = heads.project(ts, model.projector)
            multi_out = list(torch.split(_to_host(torch.cat(multi)), ts.lengths)) if ts.states.is_cuda else multi
    ready = None
    if ts.states.is_cuda:   # no sync here: the host copies finish while the next batch runs
        ready = torch.cuda.Event()
        ready.record()
    return ForwardOutput(dense=dense_out, multivector=multi_out, ready=ready)


def token_states(model: EmbeddingModel, batch: Sequence[Prepared]) -> TokenStates:
    """Inference-mode token states of one batch (late chunking pools them over its own spans)."""
    with torch.inference_mode():
        return model.token_states(batch)
