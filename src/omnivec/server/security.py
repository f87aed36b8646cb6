"""API keys and capped body reading: the bits that must hold before any request work starts."""
from __future__ import annotations

import asyncio
import hmac
from typing import Sequence

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body is over the configured cap (raised before it is all read)."""


class BodyTimeout(Exception):
    """The body did not arrive within ``timeout_s`` (the attribute) of starting to read it."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")
        self.timeout_s = timeout_s


def check_api_key(authorization: str | None, keys: Sequence[bytes]) -> bool:
    """True when no keys are configured or ``Authorization: Bearer <key>`` matches one.

    Every configured key is compared (no early exit) with :func:`hmac.compare_digest`, so the
    response time says nothing about how much of a key was right.
    """
    if not keys:
        return True
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


async def read_body_capped(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """Read the body, refusing by ``Content-Length`` first and then by counting streamed bytes.

    With ``timeout_s`` the whole body must have arrived within that many seconds of the call,
    however it trickles in, else :class:`BodyTimeout`; None waits as long as the client sends.
    """
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise BodyTooLarge
    if timeout_s is None:
        return await _read_capped(request, max_bytes)
    try:
        return await asyncio.wait_for(_read_capped(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:  # the builtin TimeoutError on 3.11+
        raise BodyTimeout(timeout_s) from None


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
