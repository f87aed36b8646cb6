"""HTTP-level hardening of ``omnivec serve`` on a real uvicorn (loopback, fake model).

Header timeout (``server/http.py``), header size/count limits, ambiguous body framing
(``server/framing.py``) and the body read deadline (``security.read_body_capped``).
"""
from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from typing import Any

import h11
import httpx
import pytest
import uvicorn
from starlette.requests import Request

from omnivec.embedder import Embedder
from omnivec.server import ServerSettings, create_app
from omnivec.server import framing
from omnivec.server.http import HeaderTimeoutH11Protocol, uvicorn_config
from omnivec.server.security import BodyTimeout, BodyTooLarge, read_body_capped
from omnivec.testing import FakeModel

HEADER_TIMEOUT = 0.5
MAX_HEADER_BYTES = 4096
SETTINGS = ServerSettings(header_timeout_s=HEADER_TIMEOUT, max_header_bytes=MAX_HEADER_BYTES, keep_alive_s=5.0,
                          max_wait_ms=1.0)


class Server:
    """uvicorn with :func:`uvicorn_config` in a thread, on a free loopback port."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn_config(app, settings, log_level="warning", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def server():
    with Server(create_app(Embedder(FakeModel()), SETTINGS), SETTINGS) as live:
        yield live


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends within ``limit_s``, and whether it closed the connection."""
    data, deadline = b"", time.monotonic() + limit_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def responses(data: bytes, closed: bool = True) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse the raw responses in ``data`` (with h11, as a client); ``closed``: the stream ended."""
    conn, out = h11.Connection(h11.CLIENT), []
    conn.receive_data(data)
    if closed:
        conn.receive_data(b"")
    while conn.their_state is not h11.CLOSED:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:  # closed with no (whole) further response
                return out
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append((status, headers, body))
                break
        if conn.their_state is h11.MUST_CLOSE:
            break
    return out


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Exactly one response from a connection that stays open."""
    data = b""
    sock.settimeout(5)
    while True:
        if data:
            parsed = responses(data, closed=False)
            if parsed:
                [response] = parsed
                return response
        chunk = sock.recv(65536)
        assert chunk, "closed before a whole response"
        data += chunk


EMBED_BODY = json.dumps({"model": "default", "input": ["hello"]}).encode()


def embed_request(body: bytes = EMBED_BODY, extra: str = "") -> bytes:
    return (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


# ---------------------------------------------------------------------- header timeout
def test_idle_connection_is_closed_after_header_timeout(server):
    with connect(server) as sock:
        started = time.monotonic()
        data, closed = read_until_closed(sock, 3 * HEADER_TIMEOUT)
        elapsed = time.monotonic() - started
    assert closed, "an idle connection stayed open past 3x header_timeout_s"
    assert data == b""  # nothing was sent: closed silently
    assert HEADER_TIMEOUT * 0.8 <= elapsed <= 3 * HEADER_TIMEOUT


def dribble(sock: socket.socket, head: bytes, limit_s: float, every_s: float = 0.05) -> tuple[bytes, float | None]:
    """Send ``head`` then one header byte every ``every_s`` until the server answers or closes."""
    sock.sendall(head)
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            data, closed = read_until_closed(sock, 1.0)
            return data, time.monotonic() - started if closed else None
        try:
            sock.sendall(b"a")
        except (BrokenPipeError, ConnectionResetError):
            return b"", time.monotonic() - started
    return b"", None


def test_partial_header_dribbler_gets_408_and_is_closed(server):
    with connect(server) as sock:
        data, closed_after = dribble(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ", 3 * HEADER_TIMEOUT)
    assert closed_after is not None, "a client dribbling header bytes kept its connection"
    assert closed_after <= 3 * HEADER_TIMEOUT
    assert data.startswith(b"HTTP/1.1 408 ")


def test_keep_alive_dribbler_is_closed_after_header_timeout(server):
    # uvicorn's keep-alive timer (keep_alive_s=5) is cancelled by any byte; the header deadline is not
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        data, closed_after = dribble(sock, b"GET /health HTTP/1.1\r\n", 3 * HEADER_TIMEOUT)
    assert closed_after is not None and closed_after <= 3 * HEADER_TIMEOUT
    assert data.startswith(b"HTTP/1.1 408 ")


def test_slow_body_and_slow_response_are_not_cut_by_header_timeout():
    # once the head is in, the header deadline is off: a body trickling in over 2x header_timeout_s
    # and a forward pass taking 2x header_timeout_s are still answered, on a kept-alive connection
    settings = ServerSettings(header_timeout_s=0.3, max_wait_ms=1.0)
    with Server(create_app(Embedder(FakeModel(delay=0.6)), settings), settings) as live, connect(live) as sock:
        request = embed_request()
        head, body = request[: -len(EMBED_BODY)], request[-len(EMBED_BODY):]
        sock.sendall(head)
        for i in range(0, len(body), 8):
            time.sleep(0.6 / (len(body) / 8))
            sock.sendall(body[i:i + 8])
        started = time.monotonic()
        data, closed = read_until_closed(sock, 2.0)
        # the answer comes, then the connection idles and is closed by the header deadline
        assert closed and time.monotonic() - started >= 0.3
        [(status, headers, payload)] = responses(data)
        assert status == 200, payload
        assert headers.get("connection") != "close"
        assert len(json.loads(payload)["data"]) == 1


def test_keep_alive_client_works_across_requests(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        ports = set()
        for i in range(4):
            r = client.post("/v1/embeddings", json={"model": "default", "input": [f"text {i}"]})
            assert r.status_code == 200, r.text
            assert len(r.json()["data"]) == 1
            stream = r.extensions["network_stream"]
            ports.add(stream.get_extra_info("socket").getsockname()[1])
            time.sleep(HEADER_TIMEOUT / 5)
        assert client.get("/health").json() == {"status": "ok"}
    assert len(ports) == 1, "the connection was not kept alive"
    # pipelined requests are all answered (the head timer is off while each one is served)
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + embed_request())
        data, closed = read_until_closed(sock, 3 * HEADER_TIMEOUT)
    assert closed  # by the header deadline once idle
    assert [status for status, _, _ in responses(data)] == [200, 200, 200]
    # an idle keep-alive connection past header_timeout_s is closed; httpx simply reconnects
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/health").status_code == 200
        time.sleep(HEADER_TIMEOUT * 2)
        assert client.get("/health").status_code == 200


def test_uvicorn_config_carries_the_settings():
    settings = ServerSettings(header_timeout_s=1.5, max_header_bytes=1234, max_connections=7, keep_alive_s=2.5)
    config = uvicorn_config(create_app(Embedder(FakeModel()), settings), settings, port=0)
    config.load()
    assert config.h11_max_incomplete_event_size == 1234
    assert config.limit_concurrency == 7 and config.timeout_keep_alive == 2.5
    assert issubclass(config.http_protocol_class, HeaderTimeoutH11Protocol)
    assert config.http_protocol_class.header_timeout_s == 1.5


# ---------------------------------------------------------------------- header size and count
def test_header_over_max_header_bytes_is_refused(server):
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    # arriving in one read, the head passes h11 (it checks its buffer only while a head is
    # incomplete): the middleware answers 431 from the parsed head
    with connect(server) as sock:
        sock.sendall(big)
        data, closed = read_until_closed(sock, 3.0)
    assert closed
    [(status, headers, body)] = responses(data)
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["code"] == framing.HEADERS_TOO_LARGE
    # arriving in pieces, h11 refuses it once its buffer is over the limit ("Receive buffer too
    # long", hint 431), which uvicorn answers with its own plain-text 400 and a close
    bigger = big.replace(b"X-Big: ", b"X-Big: " + b"a" * MAX_HEADER_BYTES)
    with connect(server) as sock:
        sock.sendall(bigger[: MAX_HEADER_BYTES + 100])
        time.sleep(0.1)
        try:
            sock.sendall(bigger[MAX_HEADER_BYTES + 100:])
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = read_until_closed(sock, 3.0)
    assert closed
    [(status, headers, body)] = responses(data)
    assert status == 400 and headers["connection"] == "close"
    assert body == b"Invalid HTTP request received."
    # just under the limit is fine
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES - 100) + b"\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_too_many_headers_get_431(server):
    many = "".join(f"X-H{i}: v\r\n" for i in range(framing.MAX_HEADERS + 1))
    with connect(server) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        data, closed = read_until_closed(sock, 3.0)
    assert closed
    [(status, headers, body)] = responses(data)
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["code"] == framing.HEADERS_TOO_LARGE
    with connect(server) as sock:  # at the limit is fine (Host + 99)
        few = "".join(f"X-H{i}: v\r\n" for i in range(framing.MAX_HEADERS - 1))
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\n{few}\r\n".encode())
        data, _ = read_until_closed(sock, 1.0)
    assert responses(data)[0][0] == 200


# ---------------------------------------------------------------------- ambiguous framing
SMUGGLED = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"


def test_content_length_with_transfer_encoding_is_refused_and_smuggled_request_not_served(server):
    # h11 frames this by Transfer-Encoding (the body ends at "0\r\n\r\n"), a proxy trusting
    # Content-Length would see one request: the GET after it is the smuggled one
    chunked = b"0\r\n\r\n" + SMUGGLED
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(chunked)).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    with connect(server) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock, 3.0)
    assert closed, "the connection stayed open after an ambiguous request"
    [(status, headers, body)] = responses(data)  # exactly one answer: /v1/models was not served
    assert data.count(b"HTTP/1.1 ") == 1
    assert status == 400 and headers["connection"] == "close"
    err = json.loads(body)
    assert err["code"] == framing.MALFORMED_REQUEST and "request_id" in err          # Jina half
    assert err["error"]["code"] == framing.MALFORMED_REQUEST.lower()                  # OpenAI half
    assert headers["x-request-id"] == err["request_id"]
    assert b"/v1/models" not in data and b'"object":"list"' not in data


def test_h11_itself_refuses_other_bad_framing(server):
    """Pins h11/uvicorn's own refusals (before any ASGI code; passes without framing.py too)."""
    for framing_headers in (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Transfer-Encoding: gzip\r\n",
                            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                            b"Content-Length: +5\r\n"):
        with connect(server) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n" + framing_headers + b"\r\nhello" + SMUGGLED)
            data, closed = read_until_closed(sock, 3.0)
        assert closed, framing_headers
        [(status, headers, body)] = responses(data)
        assert (status, body) == (400, b"Invalid HTTP request received."), framing_headers


@pytest.mark.parametrize("headers, problem", [
    ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], "both"),
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"0")], "both"),
    ([(b"content-length", b"5"), (b"content-length", b"6")], "conflicting"),
    ([(b"content-length", b"5, 6")], "conflicting"),
    ([(b"content-length", b"-1")], "not a number"),
    ([(b"transfer-encoding", b"gzip, chunked")], "only"),
    ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], "more than one"),
    ([(b"content-length", b"5"), (b"content-length", b"5")], None),
    ([(b"content-length", b"5, 5")], None),
    ([(b"transfer-encoding", b"Chunked")], None),
    ([(b"content-type", b"application/json")], None),
])
def test_framing_problem(headers, problem):
    reason = framing.framing_problem(headers)
    assert (reason is None) == (problem is None)
    if problem is not None:
        assert problem in reason


def test_middleware_refuses_without_reading_the_body():
    # the same checks under any server (httptools lets through what h11 refuses itself)
    called, sent = [], []

    async def app(scope, receive, send):
        called.append(scope)

    async def receive():
        raise AssertionError("the body must not be read")

    async def send(message):
        sent.append(message)

    mw = framing.RefuseAmbiguousFraming(app)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"5"),
                                                                        (b"content-length", b"7")]}
    asyncio.run(mw(scope, receive, send))
    assert not called
    assert sent[0]["status"] == 400 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["code"] == framing.MALFORMED_REQUEST
    asyncio.run(mw({**scope, "headers": [(b"content-length", b"5")]}, receive, send))
    asyncio.run(mw({"type": "lifespan"}, receive, send))
    assert len(called) == 2


# ---------------------------------------------------------------------- body deadline
def fake_request(chunks: list[bytes], every_s: float, content_length: int | None = None) -> Request:
    """A Request whose body arrives as ``chunks``, one every ``every_s``; then it hangs (more_body)."""
    pending = list(chunks)

    async def receive():
        await asyncio.sleep(every_s)
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or content_length is None}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def test_read_body_capped_deadline_covers_the_whole_body():
    async def run():
        # a chunk every 0.05 s, forever: progress does not extend the deadline
        request = fake_request([b"x"] * 1000, 0.05)
        started = time.monotonic()
        with pytest.raises(BodyTimeout) as e:
            await read_body_capped(request, 10_000, timeout_s=0.3)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed <= 1.0 and e.value.timeout_s == 0.3
        # the client that sends nothing at all
        with pytest.raises(BodyTimeout):
            await read_body_capped(fake_request([], 0.0, content_length=10), 10_000, timeout_s=0.1)
        # a body that makes it in time
        assert await read_body_capped(fake_request([b"ab", b"cd"], 0.01, 4), 10_000, timeout_s=1.0) == b"abcd"
        # the size cap still wins, by Content-Length and by counting
        with pytest.raises(BodyTooLarge):
            await read_body_capped(fake_request([b"x" * 10], 0.0, 10), 5, timeout_s=1.0)
        with pytest.raises(BodyTooLarge):
            await read_body_capped(fake_request([b"xxx"] * 10, 0.0), 5, timeout_s=1.0)
        # no timeout: as before
        assert await read_body_capped(fake_request([b"ab", b"cd"], 0.01, 4), 10_000) == b"abcd"

    asyncio.run(run())


def test_slow_body_gets_408_and_the_connection_closed():
    # a client whose body trickles past body_timeout_s is answered 408 (request-timeout envelope)
    # and the connection is closed instead of drained
    settings = ServerSettings(header_timeout_s=5.0, body_timeout_s=0.5, max_wait_ms=1.0)
    with Server(create_app(Embedder(FakeModel()), settings), settings) as live, connect(live) as sock:
        request = embed_request()
        head, body = request[: -len(EMBED_BODY)], request[-len(EMBED_BODY):]
        sock.sendall(head + body[:4])
        started = time.monotonic()
        data, closed = read_until_closed(sock, 3.0)
        assert closed and time.monotonic() - started < 2.5
        [(status, headers, payload)] = responses(data)
        assert status == 408 and headers.get("connection") == "close"
        assert json.loads(payload)["code"] == "REQUEST_TIMEOUT"
