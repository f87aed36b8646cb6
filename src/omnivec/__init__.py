"""omnivec: a self-hostable universal embedding engine (jina-embeddings-v4 and friends).

>>> import omnivec
>>> m = omnivec.load()                       # embedded default: multilingual-e5-small on the CPU
>>> v = m.encode(["How do I reset my password?"], task="retrieval.query")
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .embedder import EmbedResult, Embedder
from .inputs import PDF, Image, InputError, InputLimits
from .models.registry import DEFAULT_MODEL
from .tasks import TaskSpec

__version__ = "0.1.0"
__all__ = ["load", "Index", "Embedder", "EmbedResult", "Image", "PDF", "InputError", "InputLimits",
           "TaskSpec", "DEFAULT_MODEL", "__version__"]


def load(model: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, batch_tokens: int | None = None,
         limits: InputLimits | None = None, precision: str | None = None, **model_kwargs: Any) -> Embedder:
    """Load a model and return an :class:`Embedder`.

    ``model``: ``None`` for the embedded default (multilingual-e5-small, no hub needed), a
    built-in name (``all-MiniLM-L6-v2``), a local directory (e.g. a jina-embeddings-v4
    checkpoint), or a hub id such as ``jinaai/jina-embeddings-v4`` when online.
    ``device``: ``None`` picks the GPU when present. ``precision``: ``"fp32"`` (the CPU
    default), ``"int8"`` (ONNX Runtime int8 graphs, encoders on the CPU; ``quantize=True`` is
    the same) or ``"bf16"`` (GPUs, and CPUs with native bf16); checked against the model and the
    CPU, and ``info()["precision_reason"]`` says why it runs (:mod:`omnivec.precision`).
    ``model_kwargs`` go to the model family. ``adapters=`` (encoders): the
    task adapters, by default those shipped for the built-in model (``code`` and
    ``text-matching``, trained with ``omnivec train``); a folder; or ``None`` for the bare
    backbone.
    """
    from .models.registry import load_model
    return Embedder(load_model(model, device=device, dtype=dtype, precision=precision, **model_kwargs),
                    batch_tokens=batch_tokens, limits=limits)


def __getattr__(name: str) -> Any:
    """``omnivec.Index`` on first use: ``import omnivec`` stays free of the store backends."""
    if name == "Index":
        from .index import Index
        return Index
    raise AttributeError(f"module 'omnivec' has no attribute {name!r}")
