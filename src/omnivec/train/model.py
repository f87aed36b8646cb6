"""The trainable view of any family: frozen backbone + one task's LoRA (+ a projector).

Why no second pipeline: rows are the processor's own :class:`Prepared` items (same prompts,
truncation, image template, pooling span), states come from the family's ``token_states(...,
grad=True)`` and are pooled and projected by :mod:`omnivec.heads`, so a trained adapter sees
exactly what it sees when serving. Only the trained task's LoRA weights (and a projector when
asked) get gradients; the backbone stays bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import heads
from ..adapters import get_router, load_adapters, lora_layers, read_adapter_config, wrap_lora
from ..inputs import Image, InputLimits
from ..models.base import EmbeddingModel, Prepared, PrepareOptions
from ..tasks import TaskSpec


@dataclass
class Reps:
    """One batch's embeddings: dense (B, D) normalised; tokens (B, L, m) normalised; mask (B, L)."""

    dense: torch.Tensor
    tokens: torch.Tensor | None
    mask: torch.Tensor | None


class TrainableModel:
    """Wraps a loaded model whose capabilities declare ``trainable`` (torch, on the CPU or GPU).

    Families with ``lora_targets`` (encoders) get the task's LoRA layers wrapped here (existing
    tasks of ``adapter_dir`` are loaded first); families whose adapters come with the checkpoint
    (jina-v4) train the task's existing LoRA in place, the projector's per-task LoRA included.
    """

    def __init__(self, model: EmbeddingModel, task: str, *, rank: int, alpha: float,
                 adapter_dir: Path | None, projector: nn.Module | None) -> None:
        if not model.capabilities.trainable:
            raise ValueError(f"the {model.family} family cannot be trained")
        self.model = model
        self.module: nn.Module = model.trainable_module()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if model.lora_targets:
            existing: tuple[str, ...] = ()
            if adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
                cfg = read_adapter_config(adapter_dir)
                existing = tuple(cfg.get("task_names") or ())
                if (int(cfg.get("r", rank)), float(cfg.get("lora_alpha", alpha))) != (rank, float(alpha)):
                    raise ValueError(f"{adapter_dir} holds adapters with r={cfg.get('r')}, alpha={cfg.get('lora_alpha')}; "
                                     f"train with the same --rank/--alpha or use another --out")
            self.task_names = existing + ((task,) if task not in existing else ())
            if get_router(self.module) is None:
                wrap_lora(self.module, list(model.lora_targets), self.task_names, rank, alpha)
            if existing:
                load_adapters(self.module, adapter_dir, task_names=self.task_names, require_all_tasks=False)
        else:
            router = get_router(self.module)
            self.task_names = tuple(router.task_names) if router is not None else ()
            if task not in self.task_names:
                raise ValueError(f"{model.name} has no {task!r} adapter to train (its adapters: "
                                 f"{list(self.task_names)}); its checkpoint's adapters/ folder defines the tasks")
        # Rows of every task route through the adapters being trained from now on.
        model.processor.tasks = replace(model.processor.tasks, adapters=self.task_names)
        self.task = task
        self.projector: nn.Module = projector if projector is not None else model.projector
        self.module.eval()     # no dropout: deterministic, and cached-gradient passes must agree

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trained task's LoRA weights (other tasks' adapters stay frozen)."""
        params = []
        for layer in lora_layers(self.module).values():
            for t in layer.task_names:
                train = t == self.task
                for p in (layer.lora_A[t].weight, layer.lora_B[t].weight):
                    p.requires_grad_(train)
                    if train:
                        params.append(p)
        return params

    def prepare(self, items: Sequence[Any], spec: TaskSpec, max_tokens: int) -> list[Prepared]:
        """Rows exactly as inference builds them (prompt, truncation, image template, span)."""
        opts = PrepareOptions(max_tokens=max_tokens, truncate=True)
        limits = InputLimits()
        return [self.model.prepare(x.load(limits) if isinstance(x, Image) else x, spec, opts) for x in items]

    def represent(self, rows: Sequence[Prepared], *, with_tokens: bool) -> Reps:
        """Forward one batch with autograd (each row through its own task's adapter)."""
        ts = self.model.token_states(rows, grad=True)
        dense = F.normalize(heads.pool(ts, [p.pool_span for p in rows]), dim=-1)
        if not with_tokens:
            return Reps(dense, None, None)
        tokens, mask = heads.padded(heads.project(ts, self.projector))
        return Reps(dense, tokens, mask)


def pca_projector(token_states: torch.Tensor, out_dim: int) -> nn.Linear:
    """A ``hidden -> out_dim`` projector initialised to the top principal directions of token states.

    Why: a random projection throws away most of what MaxSim needs; starting from PCA of real
    token states (training data only) the multi-vector scores begin close to the raw ones.
    """
    x = token_states.float()
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    proj = nn.Linear(x.shape[1], out_dim)
    with torch.no_grad():
        proj.weight.copy_(v[:out_dim])
        proj.bias.copy_(-(v[:out_dim] @ mean))
    return proj
