"""Pieces shared by ``omnivec train`` and ``omnivec train-projector``: prompts per task, false
negatives, length-sorted chunks, MRR@10 and the training record's file name."""
from __future__ import annotations

import hashlib
from typing import Any, Hashable, Sequence

import torch

from ..adapters import ADAPTERS_META_FILE as META_FILE
from ..models.base import Prepared
from ..tasks import TaskSpec

__all__ = ["META_FILE", "false_negatives", "length_chunks", "mrr10", "row_key", "task_specs"]


def task_specs(task: str) -> tuple[TaskSpec, TaskSpec]:
    """(query, document) prompts of a task: text-matching is symmetric (query prompt on both)."""
    if task == "text-matching":
        return TaskSpec(task, "query"), TaskSpec(task, "query")
    return TaskSpec(task, "query"), TaskSpec(task, "passage")


def row_key(row: Prepared | Sequence[int]) -> Hashable:
    """What makes two training inputs the same: their token ids, and an image's pixels."""
    if not isinstance(row, Prepared):
        return tuple(row)
    if row.pixels is None:
        return tuple(row.input_ids)
    digest = hashlib.sha1(row.pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return tuple(row.input_ids), digest


def false_negatives(batch: list[dict[str, Any]]) -> torch.Tensor | None:
    """(B, candidates) mask of in-batch "negatives" that are really positives of the row.

    A candidate is hidden from row i when it is another row's positive and either carries the
    same ``group`` (e.g. translations of one English string) or has the same content as row i's
    query or positive (a pair seen in both directions). Hard negatives are never hidden.
    """
    n = len(batch)
    n_cand = n + sum(len(r["negs"]) for r in batch)
    hide = torch.zeros((n, n_cand), dtype=torch.bool)
    pos = [row_key(r["pos"]) for r in batch]
    for i, r in enumerate(batch):
        same = {row_key(r["q"]), pos[i]}
        for j in range(n):
            if j != i and (pos[j] in same or (r["group"] is not None and r["group"] == batch[j]["group"])):
                hide[i, j] = True
    return hide if bool(hide.any()) else None


def length_chunks(costs: Sequence[int], max_rows: int, budget: int) -> list[list[int]]:
    """Indices sorted by cost, cut so a chunk has <= max_rows rows and rows x longest <= budget."""
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    chunks: list[list[int]] = [[]]
    for i in order:
        cur = chunks[-1]
        if cur and (len(cur) + 1 > max_rows or (len(cur) + 1) * costs[i] > budget):
            chunks.append([])
        chunks[-1].append(i)
    return chunks


def mrr10(scores: torch.Tensor) -> float:
    """Mean reciprocal rank (cut at 10) of the diagonal entry in each row."""
    diag = scores.diagonal()[:, None]
    rank = (scores > diag).sum(1) + 1
    rr = torch.where(rank <= 10, 1.0 / rank.float(), torch.zeros_like(rank, dtype=torch.float))
    return float(rr.mean())
