"""Encode a response body as JSON in chunks, computing its large values only when reached.

Why: rendering a response whole held it several times over (the vectors as Python floats at
~32 bytes a number, the JSON text, its bytes: a 2.65 GB multi-vector body took RSS from 2.4 to
12.9 GB). Here the body's vectors are :class:`Deferred`; :func:`iter_json` walks the small
structure around them and encodes each vector only when the stream reaches it, so one vector's
text plus one chunk is alive at a time, next to the float32 arrays the answer comes from.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator

__all__ = ["Deferred", "iter_json", "dumps"]

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


class Deferred:
    """A JSON value made by ``make()`` when the encoder reaches it (encoded whole, in C)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _pieces(value: Any) -> Iterator[str]:
    if isinstance(value, Deferred):
        yield _encode(value.make())
    elif isinstance(value, dict):
        yield "{"
        for k, (key, item) in enumerate(value.items()):
            yield ("," if k else "") + _encode(str(key)) + ":"
            yield from _pieces(item)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "["
        for k, item in enumerate(value):
            if k:
                yield ","
            yield from _pieces(item)
        yield "]"
    else:
        yield _encode(value)


def iter_json(value: Any, chunk_bytes: int = 1 << 18) -> Iterator[bytes]:
    """``value`` as compact JSON (same text as ``json.dumps(..., separators=(",", ":"))``), in
    UTF-8 chunks of about ``chunk_bytes``; :class:`Deferred` values are made as they are reached."""
    buf: list[str] = []
    size = 0
    for piece in _pieces(value):
        buf.append(piece)
        size += len(piece)
        if size >= chunk_bytes:
            yield "".join(buf).encode("ascii")
            buf, size = [], 0
    if buf:
        yield "".join(buf).encode("ascii")


def dumps(value: Any) -> bytes:
    """The whole body at once (small bodies, tests)."""
    return b"".join(iter_json(value))
