"""What this CPU's vector units can do, read at run time.

Why: whether a quantised path pays depends on the machine, not on the model. With VNNI
(``avx512_vnni``, ``avx_vnni``, AMX-INT8) an int8 dot product retires about four times the
multiply-adds of an fp32 FMA; without it (plain AVX2) MLAS multiplies u8 x s8 with
``vpmaddubsw`` + ``vpmaddwd``, which measured only 1.1x fp32 sgemm on an AVX2-only EPYC
(benchmarks/RESULTS.md, "CPU precision paths"). bf16 matmuls are native only with
AVX512_BF16 or AMX-BF16; elsewhere torch emulates them (measured 0.01x fp32 there).
Machines vary, so this is detected per process, never assumed.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU flags that decide omnivec's precision paths (``/proc/cpuinfo`` on Linux)."""

    flags: frozenset[str]
    known: bool = True          # False: the flags could not be read (not Linux)

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def int8_dot(self) -> bool:
        """Native int8 dot products (VNNI or AMX): where int8 matmuls outrun fp32."""
        return any(f in self.flags for f in INT8_DOT_FLAGS)

    @property
    def bf16(self) -> bool:
        """Native bf16 matmuls (AVX512_BF16 or AMX-BF16): where a bf16 path is worth running."""
        return any(f in self.flags for f in BF16_FLAGS)

    def summary(self) -> str:
        """One line for ``omnivec info`` and benchmark rows, e.g. ``AVX2, no VNNI, no BF16``."""
        if not self.known:
            return f"{platform.machine()} (CPU flags not readable on {platform.system()})"
        if not self.avx2 and not self.avx512:
            return "no AVX2 (omnivec's int8/bf16 checks know x86 flags only)"
        width = "AVX-512" if self.avx512 else "AVX2" if self.avx2 else "no AVX2"
        vnni = ", ".join(f for f in INT8_DOT_FLAGS if f in self.flags) or "no VNNI"
        bf16 = ", ".join(f for f in BF16_FLAGS if f in self.flags) or "no BF16"
        return f"{width}, {vnni}, {bf16}"

    def as_dict(self) -> dict[str, object]:
        return {"summary": self.summary(), "avx2": self.avx2, "avx512": self.avx512,
                "int8_dot": self.int8_dot, "bf16": self.bf16}


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The flags of the first processor in a ``/proc/cpuinfo`` text (every core has the same)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):      # x86, arm64
            return CpuFeatures(frozenset(value.split()))
    return CpuFeatures(frozenset(), known=False)


@functools.lru_cache(maxsize=1)
def detect() -> CpuFeatures:
    """This machine's features (read once per process)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuFeatures(frozenset(), known=False)
