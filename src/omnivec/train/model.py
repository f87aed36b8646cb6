"""The trainable view of an encoder: frozen backbone + multi-task LoRA + multi-vector projector.

Why separate from inference: training needs gradients through the backbone, padded batches
of fixed token limits, and a projector that may change size (e.g. 384 -> 128); inference keeps
its fast paths. Token ids come from the model's own ``prepare`` (same prompts, same
truncation), so a trained adapter sees exactly what it will see when serving.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import get_router, load_adapters, lora_layers, read_adapter_config, task_routing, wrap_lora
from ..models.base import PrepareOptions
from ..models.encoder import pad_ids
from ..tasks import TaskSpec

# BERT-style module names: attention q/k/v, attention output, FFN in and out (all Linear layers
# of a transformer block), as the jina-v4 adapters cover every projection.
ENCODER_LORA_TARGETS = ("query", "key", "value", "dense")


@dataclass
class Reps:
    """One batch's embeddings: dense (B, D) normalised; tokens (B, L, m) normalised; mask (B, L)."""

    dense: torch.Tensor
    tokens: torch.Tensor | None
    mask: torch.Tensor | None


class TrainableEncoder:
    """Wraps an :class:`~omnivec.models.encoder.EncoderModel` loaded with the torch backend."""

    def __init__(self, model: Any, task: str, *, rank: int, alpha: float, adapter_dir: Path | None,
                 projector: nn.Linear | None) -> None:
        if getattr(model, "backend", "torch") != "torch":
            raise ValueError("training needs the torch backend of the encoder")
        self.model = model
        self.backbone: nn.Module = model.backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        existing: tuple[str, ...] = ()
        if adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
            cfg = read_adapter_config(adapter_dir)
            existing = tuple(cfg.get("task_names") or ())
            if (int(cfg.get("r", rank)), float(cfg.get("lora_alpha", alpha))) != (rank, float(alpha)):
                raise ValueError(f"{adapter_dir} holds adapters with r={cfg.get('r')}, alpha={cfg.get('lora_alpha')}; "
                                 f"train with the same --rank/--alpha or use another --out")
        self.task_names = existing + ((task,) if task not in existing else ())
        if get_router(self.backbone) is None:
            wrap_lora(self.backbone, list(ENCODER_LORA_TARGETS), self.task_names, rank, alpha)
        if existing:
            load_adapters(self.backbone, adapter_dir, task_names=self.task_names, require_all_tasks=False)
        self.task = task
        self.task_index = self.task_names.index(task)
        self.projector = projector if projector is not None else model.multivector_projector
        self.backbone.eval()     # no dropout: deterministic, and cached-gradient passes must agree

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trained task's LoRA weights (other tasks' adapters stay frozen)."""
        params = []
        for layer in lora_layers(self.backbone).values():
            for p in (layer.lora_A[self.task].weight, layer.lora_B[self.task].weight):
                p.requires_grad_(True)
                params.append(p)
        for layer in lora_layers(self.backbone).values():
            for t in layer.task_names:
                if t != self.task:
                    layer.lora_A[t].weight.requires_grad_(False)
                    layer.lora_B[t].weight.requires_grad_(False)
        return params

    def tokenize(self, items: Sequence[Any], spec: TaskSpec, max_tokens: int) -> list[list[int]]:
        """Token ids exactly as inference builds them (prompt, truncation, special tokens)."""
        opts = PrepareOptions(max_tokens=max_tokens, truncate=True)
        return [list(self.model.prepare(x, spec, opts).data["input_ids"]) for x in items]

    def represent(self, ids: Sequence[Sequence[int]], *, with_tokens: bool) -> Reps:
        """Forward one padded batch with the trained task's adapter routed to every row."""
        batch = padded_batch(ids, self.model.pad_id)
        mask = batch["attention_mask"]
        with task_routing(self.backbone, [self.task_index] * len(ids)):
            hidden = self.backbone(**batch).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        dense = F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)
        tokens = None
        if with_tokens:
            tokens = F.normalize(self.projector(hidden), dim=-1) * m
        return Reps(dense, tokens, mask if with_tokens else None)


def padded_batch(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` tensors for a list of id lists."""
    input_ids, mask = pad_ids(ids, pad_id)
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}


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
