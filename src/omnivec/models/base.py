"""The contract between the Embedder pipeline and a model family.

A family does two things: ``prepare`` one input on the CPU (tokenise, prompt, resize) into a
:class:`Prepared` whose ``cost`` (tokens, image tokens included) drives batch planning, and
``forward`` a batch of them into dense pooled vectors and/or per-token multi-vectors. Everything
else (parsing, batching, truncation, normalisation, precision) is shared and lives elsewhere.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..tasks import TaskSpec

@dataclass
class Prepared:
    """One input after CPU preprocessing, ready to be batched."""

    kind: Literal["text", "image"]
    task: TaskSpec
    cost: int                      # tokens the backbone will process (image tokens included)
    data: dict[str, Any] = field(default_factory=dict)   # family specific (ids, pixels, grid ...)
    truncated: bool = False


@dataclass
class ForwardOutput:
    """Per-row results of one batch, in batch order, float32 on the CPU."""

    dense: torch.Tensor | None            # (B, dim), pooled, NOT normalised
    multivector: list[torch.Tensor] | None  # B tensors (n_tokens_i, mv_dim), per-token L2-normalised
    # GPU families copy results to the host asynchronously (the next batch is queued meanwhile);
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


class EmbeddingModel(ABC):
    """Base class of every model family."""

    name: str = "model"
    family: str = "base"
    dim: int
    multivector_dim: int
    matryoshka_dims: tuple[int, ...] = ()
    adapters: tuple[str, ...] = ()            # task adapters available (LoRA), may be empty
    max_tokens: int = 512
    supports_images: bool = False              # natively (VLM); encoders OCR images to text
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    batch_tokens: int = 8192                   # default token budget of one forward pass
    max_batch_rows: int = 64
    padded: bool = True                        # True: a batch costs rows x longest row
    batch_overhead_tokens: int = 0             # fixed cost of one forward, in tokens (0: greedy plan)
    prepare_threads: int = 1                   # CPU threads for prepare() (must be thread-safe if > 1)

    @abstractmethod
    def prepare(self, item: Any, task: TaskSpec, options: PrepareOptions) -> Prepared:
        """CPU preprocessing of one input (``str`` or RGB ``PIL.Image``)."""

    @abstractmethod
    def forward(self, batch: list[Prepared], *, dense: bool = True,
                multivector: bool = False) -> ForwardOutput:
        """Run the backbone (with per-row task adapters) and the heads on one batch."""

    def info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "family": self.family,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "dim": self.dim,
            "multivector_dim": self.multivector_dim,
            "matryoshka_dims": list(self.matryoshka_dims),
            "adapters": list(self.adapters),
            "max_tokens": self.max_tokens,
            "images": "native" if self.supports_images else "OCR to text",
        }


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
