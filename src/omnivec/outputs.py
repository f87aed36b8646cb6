"""Output encodings of vectors: precision and base64 (the Matryoshka cut is in :mod:`omnivec.heads`).

Precisions follow the conventions clients already use:
- ``float32`` / ``float16``: plain floats.
- ``int8`` / ``uint8``: a fixed symmetric scale per dimension count, so every vector of every
  call shares it and dot-product rankings survive. For unit vectors a component rarely exceeds
  5/sqrt(d) (five standard deviations of a random unit vector); that value maps to 127.
  ``uint8`` is ``int8 + 128``.
- ``binary`` / ``ubinary``: one sign bit per dimension (x > 0), packed 8 per byte, big-endian
  bit order (numpy ``packbits``), as int8 (offset -128) or uint8 - the same layout as Jina's
  and sentence-transformers' packed binary embeddings. Length is ceil(d / 8).
"""
from __future__ import annotations

import base64
from typing import Sequence

import numpy as np

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def check_dimensions(dimensions: int | None, full_dim: int, allowed: Sequence[int] = ()) -> None:
    """``ValueError`` naming the bad value and what is allowed."""
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, (int, np.integer)):
        raise ValueError(f"dimensions must be an integer, got {dimensions!r}")
    if not 1 <= dimensions <= full_dim:
        raise ValueError(f"dimensions={dimensions} is out of range; allowed: 1..{full_dim}"
                         + (f" (trained Matryoshka sizes: {list(allowed)})" if allowed else ""))


def int8_scale(dim: int) -> float:
    """Multiplier mapping a unit vector's component 5/sqrt(dim) to 127."""
    return 127.0 / (5.0 / np.sqrt(dim))


def quantize(vectors: np.ndarray, precision: str) -> np.ndarray:
    """Convert float32 vectors (rows) to ``precision``; see the module docstring for the maps."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {list(PRECISIONS)}")
    x = np.asarray(vectors, dtype=np.float32)
    if precision == "float32":
        return x
    if precision == "float16":
        return x.astype(np.float16)
    if precision in ("int8", "uint8"):
        q = np.clip(np.rint(x * int8_scale(x.shape[-1])), -128, 127).astype(np.int16)
        return (q + 128).astype(np.uint8) if precision == "uint8" else q.astype(np.int8)
    bits = np.packbits(x > 0, axis=-1)
    return (bits.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else bits


def to_base64(vector: np.ndarray) -> str:
    """Little-endian bytes of one vector, base64-encoded (OpenAI's ``encoding_format=base64``)."""
    arr = np.asarray(vector)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def from_base64(data: str, dtype: str | np.dtype = "float32") -> np.ndarray:
    """Inverse of :func:`to_base64`."""
    return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
