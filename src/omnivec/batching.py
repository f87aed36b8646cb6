"""Batch planning by token budget: longest first, so rows of similar length share a batch.

Sorting by length means padding waste is small for padded backbones, and the first batch is the
largest, so an out-of-memory shows up at once instead of at the end of a long job.
"""
from __future__ import annotations

from typing import Sequence


def plan_batches(costs: Sequence[int], *, max_tokens: int, max_rows: int,
                 padded: bool = True) -> list[list[int]]:
    """Group input indices into batches.

    ``costs`` are per-input token counts. With ``padded`` a batch costs ``len * longest``
    (what a padded forward pass really computes); otherwise the sum (packed sequences).
    A single input over the budget still gets a batch of its own.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError("max_tokens and max_rows must be >= 1")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    total = 0
    for i in order:
        c = max(int(costs[i]), 1)
        new_longest = max(longest, c)
        new_cost = new_longest * (len(current) + 1) if padded else total + c
        if current and (new_cost > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current, longest, total = [], 0, 0
            new_longest = c
        current.append(i)
        longest = new_longest
        total += c
    if current:
        batches.append(current)
    return batches
