"""Refuse requests whose body framing is ambiguous (request smuggling) or whose head is oversized.

A request that carries both ``Content-Length`` and ``Transfer-Encoding`` can be framed two ways:
h11 (like RFC 9112 section 6.3) lets ``Transfer-Encoding: chunked`` win, while a proxy in front may
trust ``Content-Length``; the bytes one of them counts as body are a second, smuggled request to
the other. RFC 9112 allows a server to reject such a message, and must then close the
connection, which is what :class:`RefuseAmbiguousFraming` does: a 400 in the merged error envelope
(``errors.error_body``) with ``Connection: close``. uvicorn then closes the connection after the
response, so whatever followed on it (a pipelined or smuggled request) is never read.

h11 (uvicorn's parser here) already refuses, with uvicorn's own plain-text 400 before any ASGI
code runs: conflicting ``Content-Length`` values, a ``Content-Length`` that is not digits, more
than one ``Transfer-Encoding`` header and any coding other than ``chunked``. The same checks are
repeated here so that they hold under another HTTP implementation (httptools) too.

Header limits are enforced here as well (431): their count, which nothing else caps, and their
size, which h11 caps only for heads that arrive in pieces (see :class:`RefuseAmbiguousFraming`).
"""
from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable, Iterable

from starlette.responses import JSONResponse

from .errors import ApiError, error_body

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

MALFORMED_REQUEST = "INPUT_MALFORMED_REQUEST"
HEADERS_TOO_LARGE = "INPUT_HEADERS_TOO_LARGE"
MAX_HEADERS = 100   # Apache's LimitRequestFields default


def head_size(scope: Scope) -> int:
    """Bytes of the request line and header fields, as re-serialised from the parsed scope.

    Slightly under what was on the wire (h11 strips optional whitespace around values).
    """
    target = len(scope.get("raw_path") or b"") + (1 + len(scope["query_string"]) if scope.get("query_string") else 0)
    line = len(scope.get("method", "")) + 1 + target + len(" HTTP/") + len(scope.get("http_version", "1.1")) + 2
    return line + sum(len(name) + 2 + len(value) + 2 for name, value in scope.get("headers") or [])


def framing_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why the request's body framing is ambiguous or unsupported, or None when it is fine.

    ``headers`` are ASGI scope headers (lower-case names, as uvicorn gives them).
    """
    lengths: set[bytes] = set()
    encodings: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name == b"content-length":
            lengths.update(part.strip() for part in value.split(b","))
        elif name == b"transfer-encoding":
            encodings.append(value)
    if lengths and encodings:
        return ("the request carries both Content-Length and Transfer-Encoding; "
                "send exactly one of them")
    if len(lengths) > 1:
        return "the request carries conflicting Content-Length values"
    if lengths and not next(iter(lengths)).isdigit():
        return "the request's Content-Length is not a number"
    if len(encodings) > 1:
        return "the request carries more than one Transfer-Encoding header"
    if encodings and encodings[0].strip().lower() != b"chunked":
        return "only 'Transfer-Encoding: chunked' is supported"
    return None


class RefuseAmbiguousFraming:
    """Pure ASGI middleware: 400 + ``Connection: close`` for an ambiguous body framing (see module doc).

    It also answers 431 (``Connection: close``) when a request has more than ``max_headers``
    header lines, or, with ``max_header_bytes``, a request line plus headers larger than that.
    uvicorn's ``h11_max_incomplete_event_size`` (set to the same ``max_header_bytes`` in
    ``http.py``) only caps a head that is still *incomplete*: h11 checks its buffer when it needs
    more data, so a head that arrives whole in one read (up to asyncio's 256 KiB) passes it.
    The body is never read: the server closes the connection after the answer.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, max_headers: int = MAX_HEADERS,
                 max_header_bytes: int | None = None) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        err = self.problem(scope)
        if err is None:
            await self.app(scope, receive, send)
        else:
            await refuse(err, scope, receive, send)

    def problem(self, scope: Scope) -> ApiError | None:
        """The error to answer for this request's head, or None to pass it on."""
        headers = scope.get("headers") or []
        if len(headers) > self.max_headers:
            return ApiError(431, f"the request has {len(headers)} header fields, over this server's limit "
                            f"of {self.max_headers}", HEADERS_TOO_LARGE)
        if self.max_header_bytes is not None and (size := head_size(scope)) > self.max_header_bytes:
            return ApiError(431, f"the request line and headers take {size} bytes, over this server's limit "
                            f"of {self.max_header_bytes}", HEADERS_TOO_LARGE)
        reason = framing_problem(headers)
        return None if reason is None else ApiError(400, reason, MALFORMED_REQUEST)


async def refuse(err: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``err`` in the merged envelope and have the server close the connection after it."""
    request_id = uuid.uuid4().hex[:16]
    app = scope.get("app")
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.errors.labels(str(err.status), err.code).inc()
    response = JSONResponse(error_body(err, None, request_id), status_code=err.status,
                            headers={"Connection": "close", "X-Request-ID": request_id})
    await response(scope, receive, send)
