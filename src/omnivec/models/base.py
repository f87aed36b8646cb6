"""The contract of a model family: a processor, a backbone, and the shared heads.

A family is three public parts and nothing else is family specific:

1. :class:`Processor` (CPU): turns one input + task into a typed :class:`Prepared` (token ids,
   pixels + grid, the span dense pooling covers, the token count), and offers
   ``count_tokens`` / ``decode`` / ``token_strings``, the special tokens around a text and the
   prompt of each task (what late chunking needs), and the family's task table.
2. :meth:`EmbeddingModel.token_states` (backbone): the only family-specific computation. It
   runs a batch through the backbone, each row with its own task adapter, and returns packed
   token states (all rows concatenated, no padding) with their row lengths.
3. :mod:`omnivec.heads` (shared): pooling over each row's declared span, the multi-vector
   projector, Matryoshka cut and normalisation.

:func:`omnivec.execution.run_batch` is the one function that calls ``token_states`` and the
heads for inference; training calls ``token_states(..., grad=True)`` and the same heads.
Capabilities are declared as data (:class:`Capabilities`), never guessed from attributes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..precision import PrecisionPlan, dtype_name
from ..tasks import ADAPTERS, API_TASKS, TaskSpec
from .text_bounds import TextIds, bounded_ids


@dataclass(frozen=True)
class Capabilities:
    """What a family can do, declared (consumers branch on these, never on names or attributes)."""

    native_images: bool = False    # images run through the backbone (else: OCR to text)
    late_chunking: bool = False    # token states of concatenated texts can be pooled per span
    token_ids: bool = False        # inputs given as token ids of the model's vocabulary are accepted
    trainable: bool = False        # task adapters can be trained on this backbone (torch, gradients)


@dataclass
class Prepared:
    """One input after CPU preprocessing, ready to be batched (typed fields, no family dict).

    ``pool_start:pool_end`` is the token span dense pooling averages over (the family's rule:
    every token of a text; ``<|vision_start|>`` .. ``<|vision_end|>`` of a jina-v4 image).
    """

    kind: Literal["text", "image"]
    task: TaskSpec
    input_ids: list[int]
    pool_start: int = 0
    pool_end: int | None = None            # None: to the end of the row
    truncated: bool = False
    pixels: torch.Tensor | None = None     # image rows: patchified pixel values
    grid: torch.Tensor | None = None       # image rows: (1, 3) temporal/height/width patch grid
    positions: torch.Tensor | None = None  # precomputed (3, n) M-RoPE positions (packed jina-v4)
    ocr_text: str | None = None            # image rows of text-only families: the text read

    @property
    def cost(self) -> int:
        """Tokens the backbone processes for this row (image tokens included)."""
        return len(self.input_ids)

    @property
    def pool_span(self) -> tuple[int, int]:
        return self.pool_start, len(self.input_ids) if self.pool_end is None else self.pool_end

    @property
    def held_bytes(self) -> int:
        """About the memory this row holds while it waits for a forward (the server budgets it):
        the token list (~36 bytes a Python int and its slot) and any pixel/position tensors."""
        tensors = sum(t.numel() * t.element_size() for t in (self.pixels, self.grid, self.positions)
                      if t is not None)
        return 36 * len(self.input_ids) + tensors + len(self.ocr_text or "")


@dataclass
class TokenStates:
    """Last-layer states of a batch, packed: row ``i`` is ``states[offsets[i]:offsets[i+1]]``."""

    states: torch.Tensor                   # (sum of lengths, hidden), on the model's device
    lengths: list[int]
    row_tasks: list[int]                   # adapter index of each row in the model's router (-1: none)

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return out


@dataclass
class ForwardOutput:
    """Per-row results of one batch, in batch order, float32 on the host."""

    dense: torch.Tensor | None            # (B, dim), pooled, NOT normalised
    multivector: list[torch.Tensor] | None  # B tensors (n_tokens_i, mv_dim), per-token L2-normalised
    # GPU results are copied to the host asynchronously (the next batch is queued meanwhile);
    # ``wait()`` blocks until the copies have landed. Call it before reading the tensors.
    ready: Any = None

    def wait(self) -> "ForwardOutput":
        if self.ready is not None:
            self.ready.synchronize()
            self.ready = None
        return self


@dataclass
class PrepareOptions:
    """Limits applied while preparing one input."""

    max_tokens: int | None = None          # None: the model's own maximum
    truncate: bool = True                  # False: an over-long input is an error
    max_pixels: int | None = None          # image resize budget (None: the model's default)


class CheckpointMismatch(ValueError):
    """A checkpoint whose weights do not fit the model built for it: some would stay random
    (missing) or be ignored (unused). Every family refuses such a load instead of returning
    vectors from a partly random model."""

    @classmethod
    def listing(cls, what: str, *, missing: Sequence[str] = (), unused: Sequence[str] = (),
                wrong: Sequence[str] = ()) -> "CheckpointMismatch":
        """The error naming (the first few of) each kind of offending key."""
        parts = [f"{label} {len(keys)} ({', '.join(sorted(keys)[:6])}{', ...' if len(keys) > 6 else ''})"
                 for label, keys in (("missing", missing), ("unused", unused), ("wrong shape", wrong)) if keys]
        return cls(f"{what}: " + "; ".join(parts) + ". Refusing to run with random or ignored weights.")


class UnknownTaskAdapter(ValueError):
    """A task whose adapter this model does not have (the message names both sides)."""


@dataclass(frozen=True)
class TaskTable:
    """Which LoRA adapter each task runs through, and which tasks run the bare backbone.

    One rule for every family: a model with no task adapters runs every task on its bare
    backbone; a model with adapters runs each task through its own, runs the tasks listed in
    ``bare`` (declared by the adapter folder, e.g. e5's own retrieval training) on the bare
    backbone, and refuses any other task with :class:`UnknownTaskAdapter`.
    """

    adapters: tuple[str, ...] = ()
    bare: tuple[str, ...] = ()

    def adapter_for(self, task: TaskSpec) -> str | None:
        """The adapter ``task`` runs through (None: the bare backbone), or a clear error.

        An adapter named like the API task (jina-v3's ``retrieval.query``) wins over one
        named like its adapter (jina-v4's ``retrieval``, shared by query and passage)."""
        if task.api_name in self.adapters:
            return task.api_name
        if task.adapter in self.adapters:
            return task.adapter
        if not self.adapters or task.adapter in self.bare:
            return None
        raise UnknownTaskAdapter(
            f"task {task.api_name!r} needs the {task.adapter!r} adapter, which this model does not have; "
            f"adapters available: {list(self.adapters)}"
            + (f", bare-backbone tasks: {list(self.bare)}" if self.bare else ""))

    def api_tasks(self) -> dict[str, str]:
        """Per API task name this model serves: the adapter it runs (or ``"bare backbone"``);
        tasks it refuses are left out. What ``/v1/models`` and ``omnivec info`` show."""
        out = {}
        for name, (adapter, prompt) in API_TASKS.items():
            try:
                chosen = self.adapter_for(TaskSpec(adapter, prompt))
            except UnknownTaskAdapter:
                continue
            out[name] = chosen or "bare backbone"
        return out

    def describe(self) -> dict[str, str]:
        """Per task adapter name: ``"adapter"``, ``"bare backbone"`` or ``"unavailable"``
        (jina-v4's adapter names, and this model's own)."""
        # a v4 name that this model splits into per-prompt adapters (v3's retrieval.query /
        # retrieval.passage) is not listed twice
        names = [a for a in ADAPTERS if not any(x.startswith(a + ".") for x in self.adapters)]
        names = list(dict.fromkeys(names + list(self.adapters)))
        out = {}
        for name in names:
            if name in self.adapters:
                out[name] = "adapter"
            elif not self.adapters or name in self.bare:
                out[name] = "bare backbone"
            else:
                out[name] = "unavailable"
        return out


class Processor(ABC):
    """CPU side of a family: inputs -> :class:`Prepared`, and the tokenizer's public facts."""

    max_tokens: int = 512
    tasks: TaskTable = TaskTable()

    @abstractmethod
    def prepare(self, item: Any, task: TaskSpec, options: PrepareOptions) -> Prepared:
        """Prompt + tokenise a text, or resize + patchify an image (or OCR it)."""

    @abstractmethod
    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` alone: no prompt, no special tokens."""

    @abstractmethod
    def prompted_ids(self, text: str, task: TaskSpec) -> list[int]:
        """Token ids of ``task``'s prompt followed by ``text``, tokenised together (no specials)."""

    @abstractmethod
    def special_ids(self) -> tuple[list[int], list[int]]:
        """The special tokens the family puts before and after every text (e.g. [CLS], [SEP])."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens skipped)."""

    @abstractmethod
    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary entry of each id (what ``return_tokenized_input`` shows)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Ids ``0 .. vocab_size - 1`` are valid token-id input."""

    def count_tokens(self, text: str, task: TaskSpec) -> int:
        """Tokens a text costs with its prompt and special tokens (before any truncation)."""
        head, tail = self.special_ids()
        return len(head) + len(self.prompted_ids(text, task)) + len(tail)

    def bounded_ids(self, text: str, limit: int, task: TaskSpec | None = None) -> TextIds:
        """Ids of ``text`` (after ``task``'s prompt when given, no specials) under ``limit``.

        Only a prefix bounded by the limit is tokenised (:mod:`.text_bounds`): a text longer
        than that is cut to its first ``limit`` ids, the same ids tokenising it whole gives.
        """
        encode = self.text_ids if task is None else (lambda s: self.prompted_ids(s, task))
        return bounded_ids(encode, text, limit)

    def text_row(self, ids: list[int], task: TaskSpec, *, truncated: bool = False) -> Prepared:
        """A text row from ready ids (prompt and specials included); pooled over every token."""
        return Prepared(kind="text", task=task, input_ids=ids, truncated=truncated)


class FastTokenizerProcessor(Processor):
    """A processor around a ``tokenizers.Tokenizer`` (``self.tokenizer``, truncation/padding off)."""

    tokenizer: Any

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) or "" for i in ids]

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())


class EmbeddingModel(ABC):
    """Base class of every model family: processor + backbone ``token_states`` + projector."""

    name: str = "model"
    family: str = "base"
    capabilities: Capabilities = Capabilities()
    processor: Processor
    dim: int
    multivector_dim: int
    matryoshka_dims: tuple[int, ...] = ()
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    batch_tokens: int = 8192                   # default token budget of one forward pass
    max_batch_rows: int = 64
    padded: bool = True                        # True: a batch costs rows x longest row
    batch_overhead_tokens: int = 0             # fixed cost of one forward, in tokens (0: greedy plan)
    prepare_threads: int = 1                   # CPU threads for prepare() (must be thread-safe if > 1)
    # Linear layers (name suffixes) a new task adapter wraps; empty: tasks come with the checkpoint
    lora_targets: tuple[str, ...] = ()
    # The checked precision request it was loaded with and why (set by registry.load_model)
    precision_plan: PrecisionPlan | None = None
    quantized: bool = False                    # True: int8 weights (the CPU int8 path)

    @abstractmethod
    def token_states(self, batch: Sequence[Prepared], *, grad: bool = False) -> TokenStates:
        """Packed last-layer states of ``batch``, each row through its task's adapter.

        ``grad=True`` keeps the autograd graph (training); families that cannot train raise.
        """

    @property
    @abstractmethod
    def projector(self) -> nn.Module:
        """The multi-vector head: hidden -> ``multivector_dim`` (task LoRA routed per token if any)."""

    def trainable_module(self) -> nn.Module:
        """The torch module tree whose LoRA layers training attaches, trains and saves."""
        raise NotImplementedError(f"the {self.family} family cannot be trained")

    @property
    def max_tokens(self) -> int:
        return self.processor.max_tokens

    @property
    def adapters(self) -> tuple[str, ...]:
        """Task adapters available (LoRA), may be empty."""
        return self.processor.tasks.adapters

    def prepare(self, item: Any, task: TaskSpec, options: PrepareOptions) -> Prepared:
        """Shorthand for ``self.processor.prepare``."""
        return self.processor.prepare(item, task, options)

    def load_all_tasks(self) -> None:
        """Build or open now whatever any task needs later (cached graphs), so that no request
        pays for it: the server calls this before ``/ready``, ``omnivec prepare`` ahead of time.
        Families that need nothing per task keep this default."""

    @property
    def precision(self) -> str:
        """The arithmetic the backbone runs: fp32 | int8 | bf16 | fp16."""
        return "int8" if self.quantized else dtype_name(self.dtype)

    def info(self) -> dict[str, Any]:
        plan = self.precision_plan
        return {
            "model": self.name,
            "family": self.family,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "precision": self.precision,
            "precision_reason": plan.reason if plan is not None else "as loaded (not through omnivec.load)",
            "dim": self.dim,
            "multivector_dim": self.multivector_dim,
            "matryoshka_dims": list(self.matryoshka_dims),
            "adapters": list(self.adapters),
            "task_adapters": self.processor.tasks.describe(),
            "tasks": self.processor.tasks.api_tasks(),
            "max_tokens": self.max_tokens,
            "images": "native" if self.capabilities.native_images else "OCR to text",
            "late_chunking": self.capabilities.late_chunking,
            "trainable": self.capabilities.trainable,
        }


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
