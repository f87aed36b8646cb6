"""Run the app on uvicorn with the HTTP limits of :class:`ServerSettings` (``omnivec serve``).

=========================  ==================================================================
``max_header_bytes``       ``h11_max_incomplete_event_size``: h11 refuses a request line plus
                           headers larger than this (uvicorn answers a plain-text 400 and
                           closes; h11's hint would be 431 but uvicorn ignores it).
``max_connections``        ``limit_concurrency``: requests over it get uvicorn's 503.
``keep_alive_s``           ``timeout_keep_alive``: an idle kept-alive connection is closed.
``header_timeout_s``       :class:`HeaderTimeoutH11Protocol` (no uvicorn option exists).
``body_timeout_s``         not here: ``security.read_body_capped(..., timeout_s=...)``.
``drain_timeout_s``        ``timeout_graceful_shutdown``: on SIGTERM/SIGINT the listener closes
                           (new connections are refused, idle kept-alive ones closed), requests
                           in flight get this long to finish, then :func:`serve` returns and
                           the process exits 0 (uvicorn would re-raise the signal: exit 143).
``log_format``             ``"json"``: uvicorn's access lines off, one JSON line a request on
                           the ``omnivec.access`` logger (:mod:`.access_log`).
=========================  ==================================================================

The header count is capped by ``framing.RefuseAmbiguousFraming`` (431), which also refuses
ambiguous body framing. The h11 implementation is always used, also when httptools is installed,
because the header timeout is written against it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

log = logging.getLogger("omnivec.server")

__all__ = ["HeaderTimeoutH11Protocol", "header_timeout_protocol", "serve", "serve_then_exit", "uvicorn_config"]

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not send a request head in time.

    A connection must deliver a complete request line and headers within ``header_timeout_s``
    of being opened, and again within ``header_timeout_s`` of each response completing
    (keep-alive). The deadline is absolute: bytes trickling in do not extend it. When it passes,
    the connection is closed, after a bare ``408 Request Timeout`` if part of a head had arrived
    (silently if nothing had, as uvicorn's keep-alive timeout does). Once a head is complete the
    timer is off until the response completes, so slow bodies (``body_timeout_s``, in the app)
    and slow responses are not affected; a WebSocket upgrade turns it off for good.

    Why a subclass: uvicorn 0.54 has no request/header timeout. ``timeout_keep_alive`` is armed
    only in ``on_response_complete`` and cancelled by every ``data_received``, so a client that
    connects and sends nothing, or dribbles a header byte now and then, holds its connection
    (and a ``limit_concurrency`` slot) forever (uvicorn issues #1192, #1332: idle ``telnet``
    connections are never closed).

    uvicorn internals relied on (all in ``uvicorn/protocols/http/h11_impl.py``):

    * the ``asyncio.Protocol`` callbacks ``connection_made``, ``data_received`` and
      ``connection_lost``, extended with ``super()`` calls;
    * ``on_response_complete()``: called by uvicorn when a response has been sent;
    * ``handle_websocket_upgrade(event)``: called when the connection is handed over to a
      WebSocket protocol;
    * the attributes ``transport`` (set in ``connection_made``), ``loop``, ``conn`` (the
      ``h11.Connection``: ``their_state``, ``trailing_data`` are h11's public API) and ``cycle``
      (the current ``RequestResponseCycle``, None before the first request; its
      ``response_complete`` flag). "Waiting for a head" is: no cycle, or its response is done.

    ``header_timeout_s`` is a class attribute; :func:`header_timeout_protocol` makes a subclass
    with the wanted value, which is what ``uvicorn.Config(http=...)`` takes.
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._upgraded = False

    # ------------------------------------------------------------------ uvicorn hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._sync_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._sync_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_header_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        self._cancel_header_timer()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ the timer
    def _waiting_for_head(self) -> bool:
        if self._upgraded or self.transport is None or self.transport.is_closing():
            return False
        return self.cycle is None or self.cycle.response_complete

    def _sync_header_timer(self) -> None:
        """Arm the timer when a head is awaited (never re-arm a running one), else cancel it."""
        if not self._waiting_for_head():
            self._cancel_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self._waiting_for_head():
            return
        partial = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        log.debug("closing connection from %s: no complete request head within %.3g s%s", self.client,
                  self.header_timeout_s, " (partial head)" if partial else "")
        if partial:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """A :class:`HeaderTimeoutH11Protocol` subclass with this timeout, for ``uvicorn.Config(http=...)``."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s!r}")
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": float(header_timeout_s)})


def uvicorn_config(app: Any, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8080,
                   log_level: str = "info", **overrides: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` carrying ``settings``' HTTP limits (table in the module doc).

    ``overrides`` go to ``uvicorn.Config`` as well (e.g. ``timeout_graceful_shutdown``).
    """
    options: dict[str, Any] = dict(
        host=host, port=port, log_level=log_level,
        http=header_timeout_protocol(settings.header_timeout_s),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        access_log=settings.log_format != "json",
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(app: Any, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info") -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain (see the table above) and return.

    Like ``uvicorn.run`` with :func:`uvicorn_config`, except that a stop signal ends in a
    normal return (exit 0 for ``omnivec serve``) once the drain is done: uvicorn re-raises the
    signal it caught, which the no-op handlers installed here absorb.
    """
    if settings.log_format == "json":
        from .access_log import install_json_logging
        install_json_logging(log_level)
    server = uvicorn.Server(uvicorn_config(app, settings, host=host, port=port, log_level=log_level))
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:  # as uvicorn.run: the port could not be bound, or the lifespan failed
        sys.exit(STARTUP_FAILURE)


def serve_then_exit(app: Any, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8080,
                    log_level: str = "info") -> None:
    """:func:`serve`, then end the process with status 0 at once (``omnivec serve``).

    Why not a normal exit: Python joins worker threads at exit, so a forward pass still running
    when the drain deadline passed (its request was cut off) would hold the process for as long
    as it takes; the grace period is the bound an orchestrator relies on.
    """
    serve(app, settings, host=host, port=port, log_level=log_level)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
