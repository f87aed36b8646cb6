"""Helpers both stores share: record validation, sign-bit packing, config checks.

Kept apart from ``stores/__init__`` so the store modules can import it without a cycle.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, get_args

import numpy as np

from ..store import MultivectorStorage
from ..types import Record

STORAGES: tuple[str, ...] = get_args(MultivectorStorage)
FORMAT_VERSION = 1


def check_storage(storage: str) -> None:
    """Reject an unknown multi-vector storage name early (before anything is written)."""
    if storage not in STORAGES:
        raise ValueError(f"unknown multivector storage {storage!r}: choose one of {', '.join(STORAGES)}")


def pack_signs(mv: np.ndarray) -> bytes:
    """(tokens, mdim) floats -> one bit per component (1 = positive), rows padded to whole bytes."""
    return np.packbits(np.asarray(mv) > 0, axis=1).tobytes()


def unpack_signs(buf: bytes, tokens: int, mdim: int) -> np.ndarray:
    """Inverse of :func:`pack_signs` as +-1/sqrt(mdim) float32 rows: unit length, so a dot with a
    normalised query token stays in [-1, 1] like the cosine it approximates."""
    if tokens == 0:
        return np.zeros((0, mdim), dtype=np.float32)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8).reshape(tokens, -1), axis=1, count=mdim)
    return (bits.astype(np.float32) * 2.0 - 1.0) / np.float32(math.sqrt(mdim))


def validate_records(path: str, records: Sequence[Record], dim: int, mdim: int | None) -> None:
    """Fail before writing: a half-validated batch would leave partial records behind."""
    seen: set[str] = set()
    for r in records:
        if r.path != path:
            raise ValueError(f"record {r.id!r} has path {r.path!r}, expected {path!r}")
        if r.id in seen:
            raise ValueError(f"duplicate record id {r.id!r} for {path!r}")
        seen.add(r.id)
        if np.shape(r.dense) != (dim,):
            raise ValueError(f"record {r.id!r}: dense vector has shape {np.shape(r.dense)}, store dim is {dim}")
        if r.multivector is not None:
            if mdim is None:
                raise ValueError(f"record {r.id!r} has a multi-vector but the store was built without "
                                 "multi-vectors (multivector_dim=None)")
            shape = np.shape(r.multivector)
            if len(shape) != 2 or shape[1] != mdim:
                raise ValueError(f"record {r.id!r}: multi-vector has shape {shape}, expected (tokens, {mdim})")


def validate_commit(files: Sequence[tuple[str, str, Sequence[Record]]], dim: int,
                    mdim: int | None) -> list[str]:
    """Every store's ``commit_files`` check: all records valid, no path twice; the paths, in order."""
    for path, _hash, records in files:
        validate_records(path, records, dim, mdim)
    paths = [p for p, _h, _r in files]
    if len(set(paths)) != len(paths):
        raise ValueError("commit_files got the same path twice")
    return paths


def check_config(found: Mapping[str, Any], where: str, *, dim: int | None, multivector_dim: int | None,
                 multivector_storage: str | None) -> None:
    """Compare what a store was built with against explicit arguments (None = take the store's)."""
    if found.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{where} was written by a newer omnivec (store format {found['format']}); upgrade omnivec")
    wanted = {"dim": dim, "multivector_dim": multivector_dim, "multivector_storage": multivector_storage}
    for key, want in wanted.items():
        if want is not None and found.get(key) != want:
            raise ValueError(f"store {where} was built with {key} {found.get(key)!r}, but {want!r} was requested; "
                             "use the same model/settings, omit the option, or index into a new store")


def new_config(dim: int | None, multivector_dim: int | None, storage: str | None, where: str) -> dict[str, Any]:
    """The config a fresh store persists; dim is required since nothing can be inferred yet."""
    if dim is None:
        raise ValueError(f"cannot create store {where} without dim (the dense vector size)")
    if dim <= 0 or (multivector_dim is not None and multivector_dim <= 0):
        raise ValueError(f"dimensions must be positive, got dim={dim}, multivector_dim={multivector_dim}")
    storage = storage or "float16"
    check_storage(storage)
    return {"format": FORMAT_VERSION, "dim": int(dim),
            "multivector_dim": None if multivector_dim is None else int(multivector_dim),
            "multivector_storage": storage}


def dir_size(root: str) -> int:
    """Total bytes of regular files below ``root`` (0 when it does not exist)."""
    import os
    total = 0
    for base, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(base, f))
            except OSError:
                pass
    return total
