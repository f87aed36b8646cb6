"""API keys and capped body reading: the bits that must hold before any request work starts."""
from __future__ import annotations

import hmac
from typing import Sequence

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body is over the configured cap (raised before it is all read)."""


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


async def read_body_capped(request: Request, max_bytes: int) -> bytes:
    """Read the body, refusing by ``Content-Length`` first and then by counting streamed bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise BodyTooLarge
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
