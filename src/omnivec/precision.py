"""Compute precision of a model: ``fp32`` | ``int8`` | ``bf16``, chosen once at load, and why.

Not to be confused with ``Embedder.encode(precision=...)``, which is the *output* encoding of
the vectors (float32, int8, binary ...): this module decides the arithmetic the backbone runs.

- ``fp32``: the default on the CPU (ONNX Runtime, fused kernels).
- ``int8``: ONNX Runtime dynamic int8 graphs (families that declare ``cpu_int8``), each task's
  merged graph quantised on its own and checked against its fp32 graph before first use.
- ``bf16``: torch bfloat16; on the CPU only where the hardware multiplies bf16 natively
  (AVX512_BF16 or AMX-BF16), since elsewhere torch emulates it at a hundredth of fp32's speed.

fp32 stays the default: a quantised path would become it only where it meets every bar of
issue 23 (>= 2.5x fp32 speed, min cosine >= 0.99, suite nDCG within 0.5), and no measured
machine met them (benchmarks/RESULTS.md, "CPU precision paths"). ``omnivec info`` prints the
reason this module gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cpu_features import CpuFeatures

PRECISIONS = ("fp32", "int8", "bf16")
_ALIASES = {"fp32": "fp32", "float32": "fp32", "int8": "int8", "bf16": "bf16", "bfloat16": "bf16"}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# The dtype each precision runs the model's float tensors in (int8 graphs take float32 in and out)
_DTYPES = {"fp32": torch.float32, "int8": torch.float32, "bf16": torch.bfloat16}
RESULTS_REF = "benchmarks/RESULTS.md, 'CPU precision paths'"


class PrecisionError(ValueError):
    """A precision the model, device or CPU cannot run (the message names ``precision``)."""


@dataclass(frozen=True)
class PrecisionPlan:
    """What the family loader is asked for (``dtype``, ``quantize``) and why, for ``info()``."""

    name: str                    # fp32 | int8 | bf16 | fp16 | default (the family's GPU dtype)
    dtype: torch.dtype | None
    quantize: bool
    reason: str


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bf16`` (``fp32``, ``fp16``; other dtypes by their torch name)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def normalise(precision: str) -> str:
    """``fp32``/``float32``, ``int8``, ``bf16``/``bfloat16`` -> the canonical name."""
    name = _ALIASES.get(str(precision).lower())
    if name is None:
        raise PrecisionError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return name


def _cpu_hint(features: CpuFeatures, family_int8: bool) -> str:
    """What the other paths would do on this CPU (so a user sees whether switching pays)."""
    hints = []
    if family_int8:
        if features.int8_dot:
            hints.append("int8 has native dot products here (VNNI)")
        else:
            hints.append("int8 dot products run at about fp32's rate here (no VNNI: measured 1.00-1.08x "
                         "end to end on an AVX2 EPYC)")
    hints.append("bf16 is native here" if features.bf16 else "bf16 is not native here")
    return "; ".join(hints)


def plan(precision: str | None, *, quantize: bool, dtype: torch.dtype | None, device: torch.device,
         family: str, family_int8: bool, features: CpuFeatures) -> PrecisionPlan:
    """Check a precision request against the model family, the device and the CPU.

    ``quantize=True`` is the older spelling of ``precision="int8"``. Raises
    :class:`PrecisionError` for a contradiction or a path this machine cannot run well.
    """
    on_cpu = device.type == "cpu"
    cpu = f"CPU: {features.summary()}"
    name = normalise(precision) if precision is not None else None
    if quantize:
        if name not in (None, "int8"):
            raise PrecisionError(f"quantize=True (--quantize) means precision='int8', but precision={precision!r} "
                                 "was given")
        name = "int8"
    if dtype is not None and name is not None and dtype != _DTYPES[name]:
        asked = "quantize=True (precision='int8')" if quantize and precision is None else f"precision={precision!r}"
        raise PrecisionError(f"dtype={dtype} contradicts {asked}; give one of them")
    if name is None:
        if dtype is not None:
            return PrecisionPlan(dtype_name(dtype), dtype, False, f"{dtype_name(dtype)}: the dtype asked for")
        if not on_cpu:
            return PrecisionPlan("default", None, False, f"the {family} family's default dtype on {device}")
        return PrecisionPlan("fp32", None, False,
                             f"fp32, the default: a quantised path is made the default only where it meets "
                             f"the speed and quality bars, and none has ({RESULTS_REF}). {cpu}; "
                             f"{_cpu_hint(features, family_int8)}")
    if name == "int8":
        if not on_cpu:
            raise PrecisionError(f"precision='int8' is a CPU path (ONNX Runtime int8); on {device} use "
                                 "precision='bf16' or a dtype")
        if not family_int8:
            raise PrecisionError(f"precision='int8': the {family} family has no int8 path (fp32 on the CPU)")
        speed = ("VNNI int8 dot products" if features.int8_dot else
                 "no VNNI here: int8 runs at about fp32's speed, with a little less accuracy")
        return PrecisionPlan("int8", None, True,
                             f"int8, as asked: dynamic int8 (per-channel 7-bit weights, FFN down-projections "
                             f"fp32); on ONNX Runtime each graph is checked against its fp32 graph when built "
                             f"(int8_check), backend='torch' runs torch's dynamic int8 unchecked. {cpu} ({speed})")
    if name == "bf16":
        if on_cpu and not features.bf16:
            raise PrecisionError(f"precision='bf16' needs a CPU with native bf16 (AVX512_BF16 or AMX-BF16); this "
                                 f"one has {features.summary()}, where torch emulates bf16 matmuls at about 1% "
                                 "of fp32's speed. Use precision='fp32' (or 'int8')")
        where = f"{cpu}" if on_cpu else f"on {device}"
        return PrecisionPlan("bf16", torch.bfloat16, False, f"bf16, as asked: torch bfloat16 ({where})")
    return PrecisionPlan("fp32", torch.float32, False, f"fp32, as asked. {cpu}" if on_cpu else "fp32, as asked")
