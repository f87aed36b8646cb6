"""Drop-in replacements for elementwise-heavy transformers modules on the GPU.

Qwen2.5-VL's RMSNorm runs ~6 elementwise kernels (upcast, square, mean, rsqrt, multiply,
downcast, weight multiply). ``F.rms_norm`` computes the same normalisation (in float32,
rounded once to the input dtype) in one kernel; the weight multiply stays in the input dtype as
in the original, so results match it up to the reduction order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedRMSNorm(nn.Module):
    """``weight * rms_norm(x)`` with the original module's parameter (same state-dict key)."""

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), None, self.eps) * self.weight


def fuse_rms_norms(module: nn.Module) -> int:
    """Replace every ``*RMSNorm`` submodule (weight + variance_epsilon) in place; returns the count."""
    targets = [(name, m) for name, m in module.named_modules()
               if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")
               and isinstance(getattr(m, "weight", None), nn.Parameter)]
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, FusedRMSNorm(m.weight, m.variance_epsilon))
    return len(targets)
