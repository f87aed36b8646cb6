"""Shared by the training tests of both families."""
from __future__ import annotations

from typing import Callable

import pytest
import torch


def assert_micro_batches_match_full_batch(make_trainer: Callable[[int | None], object],
                                          rows: Callable[[object], list]) -> None:
    """GradCache (``micro_batch=3``) gives the full batch's loss and gradients after one step."""
    results = []
    for micro in (None, 3):
        t = make_trainer(micro)
        t.setup()
        batch = rows(t)
        t.step(batch)                   # one step first: LoRA B leaves zero, so A gets gradients too
        parts = t.step(batch)
        grads = [p.grad.clone() for g in t.optimizer.param_groups for p in g["params"] if p.grad is not None]
        results.append((parts["loss"], grads))
    (loss_a, a), (loss_b, b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert len(a) == len(b) and any(float(g.abs().max()) > 0 for g in a)
    for ga, gb in zip(a, b):
        assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-6)
