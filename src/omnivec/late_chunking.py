"""Late chunking (Jina's ``late_chunking``): inputs embedded in each other's context.

The texts are concatenated into one sequence (the family's special tokens around it, the task
prompt once in front, tokenised with the first text), run through the backbone in one pass, and each input is mean-pooled over its
own span of the token states. The spans partition the window: the first input's span also
covers the leading special tokens and the prompt, the last input's the trailing specials, which
is the family's pooling rule for a text (every token); so late chunking of a single input is its
normal embedding. When the concatenation is longer than the model's window, inputs are packed
greedily into consecutive windows (an input never straddles two); one input longer than a
window is truncated when ``truncate`` is on, else refused. Every family whose capabilities
declare ``late_chunking`` gets it through its processor and ``token_states``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import heads
from .batching import plan_batches
from .execution import token_states
from .inputs import InputError
from .models.base import EmbeddingModel, Processor
from .models.text_bounds import TextIds
from .tasks import TaskSpec


@dataclass
class Window:
    """One backbone row: the concatenated inputs and each input's (start, end) span in it."""

    ids: list[int]
    spans: list[tuple[int, int]]


@dataclass
class LateChunkPlan:
    """Windows to run, and per input its window, its span and the tokens it accounts for."""

    task: TaskSpec
    windows: list[Window]

    @property
    def tokens(self) -> list[int]:
        """Tokens processed per input (span lengths; they add up to every token run)."""
        return [e - s for w in self.windows for s, e in w.spans]


def plan(processor: Processor, texts: Sequence[str], task: TaskSpec, *, truncate: bool = True,
         max_tokens: int | None = None) -> LateChunkPlan:
    """Tokenise and lay out the windows (CPU; raises :class:`InputError` naming the input).

    The first input of a window is tokenised together with the prompt (as a lone input is), the
    others on their own; a window holds ``max_tokens`` (the model's limit) tokens in all.
    """
    processor.tasks.adapter_for(task)
    head, tail = processor.special_ids()
    limit = min(max_tokens or processor.max_tokens, processor.max_tokens)
    room = limit - len(head) - len(tail)

    def fitted(i: int, got: TextIds) -> list[int]:
        if not got.over:
            return got.ids
        if not truncate:
            raise InputError(i, f"input has {got.count()} tokens but a late-chunking window holds "
                                f"{room} (truncate=false)")
        return got.ids[:room]

    if room <= len(processor.prompted_ids("", task)):
        raise InputError(None, "late_chunking: the prompt leaves no room for text")
    groups: list[list[list[int]]] = []
    used = room
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(i, "late_chunking works on text inputs only")
        # Each input is tokenised only as far as the room it could take (a bounded prefix).
        fits = False
        if groups:
            got = processor.bounded_ids(text, room - used)
            ids, fits = got.ids, not got.over
        if not fits:
            ids = fitted(i, processor.bounded_ids(text, room, task))    # opens a window: prompt + text
            groups.append([])
            used = 0
        groups[-1].append(ids)
        used += len(ids)
    windows = []
    for group in groups:
        ids = head + [t for part in group for t in part] + tail
        spans, start = [], len(head)
        for part in group:
            spans.append((start, start + len(part)))
            start += len(part)
        spans[0] = (0, spans[0][1])
        spans[-1] = (spans[-1][0], len(ids))
        windows.append(Window(ids, spans))
    return LateChunkPlan(task, windows)


def embed(model: EmbeddingModel, layout: LateChunkPlan, *, batch_tokens: int | None = None) -> np.ndarray:
    """(n_inputs, dim) raw (un-normalised) float32 vectors, windows batched by token budget."""
    if not layout.windows:
        return np.zeros((0, model.dim), np.float32)
    rows = [model.processor.text_row(w.ids, layout.task) for w in layout.windows]
    batches = plan_batches([r.cost for r in rows], max_tokens=batch_tokens or model.batch_tokens,
                           max_rows=model.max_batch_rows, padded=model.padded)
    out: list[np.ndarray | None] = [None] * len(rows)
    for batch in batches:
        ts = token_states(model, [rows[i] for i in batch])
        offsets = ts.offsets
        starts = [offsets[k] + s for k, i in enumerate(batch) for s, _ in layout.windows[i].spans]
        ends = [offsets[k] + e for k, i in enumerate(batch) for _, e in layout.windows[i].spans]
        pooled = heads.mean_spans(ts.states, starts, ends).cpu().numpy()
        at = 0
        for i in batch:
            n = len(layout.windows[i].spans)
            out[i] = pooled[at:at + n]
            at += n
    return np.concatenate(out).astype(np.float32)
