"""Late chunking (Jina's ``late_chunking``): inputs embedded in each other's context.

The texts are concatenated into one sequence (the task prompt once at the front), run through
the backbone in one forward pass, and each input is mean-pooled over its own token span only.
When the concatenation is longer than the model's window, inputs are packed greedily into
consecutive windows (an input never straddles two); one input longer than a window is
truncated when ``truncate`` is on, else refused.

This needs token states before any head, which the family contract does not expose yet; it is
implemented for the ``encoder`` family (the embedded default) and refused for others.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inputs import InputError
from ..tasks import TaskSpec


def supported(model: Any) -> bool:
    return getattr(model, "family", None) == "encoder" and hasattr(model, "token_states")


def plan(model: Any, texts: list[str], task: TaskSpec, truncate: bool) -> tuple[list[list[int]], int]:
    """Tokenise on the caller's thread: per-window lists of per-input id lists, total tokens."""
    tok = model.tokenizer
    prompt_ids = tok.encode(model.prompts.get(task.prompt, ""), add_special_tokens=False).ids
    room = model.max_tokens - model._n_special - len(prompt_ids)
    if room < 1:
        raise InputError(None, "late_chunking: the prompt leaves no room for text")
    pieces: list[list[int]] = []
    for i, text in enumerate(texts):
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) > room:
            if not truncate:
                raise InputError(i, f"input has {len(ids)} tokens but a late-chunking window holds "
                                    f"{room} (truncate=false)")
            ids = ids[:room]
        pieces.append(ids)
    windows: list[list[list[int]]] = [[]]
    used = 0
    for ids in pieces:
        if windows[-1] and used + len(ids) > room:
            windows.append([])
            used = 0
        windows[-1].append(ids)
        used += len(ids)
    total = sum(len(prompt_ids) + model._n_special + sum(map(len, w)) for w in windows)
    return [[prompt_ids] + w for w in windows], total


def embed(model: Any, windows: list[list[list[int]]], task: TaskSpec | None = None) -> np.ndarray:
    """Forward thread: one pass per window (through ``task``'s adapter); rows = mean of each input's own token states."""
    head, tail = _specials(model)
    rows: list[np.ndarray] = []
    for window in windows:
        prompt_ids, parts = window[0], window[1:]
        flat = [t for ids in window for t in ids]
        hidden = _token_states(model, np.asarray([head + flat + tail], dtype=np.int64), task)
        start = len(head) + len(prompt_ids)
        for part in parts:
            end = start + len(part)
            # An empty input has no span of its own: it gets its position's state.
            span = hidden[start:end] if end > start else hidden[start:start + 1]
            rows.append(span.mean(dim=0).numpy())
            start = end
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, model.dim), np.float32)


def _specials(model: Any) -> tuple[list[int], list[int]]:
    """The tokenizer's special tokens around a text ([CLS] .. [SEP] or <s> .. </s>)."""
    ids = model.tokenizer.post_process(model.tokenizer.encode("", add_special_tokens=False)).ids
    return list(ids[:1]), list(ids[1:])


def _token_states(model: Any, ids: np.ndarray, task: TaskSpec | None) -> torch.Tensor:
    """(1, L) ids -> (L, hidden) float32 CPU states, through the encoder's public seam."""
    mask = np.ones_like(ids)
    with torch.inference_mode():
        hidden, _ = model.token_states(ids, mask, [task.adapter if task else None])
        return hidden[0].float().cpu()
