"""Hostile requests against a live ``omnivec serve``: status, time, peak RSS, and whether it still serves.

Starts ``omnivec serve`` (``python -m omnivec.cli serve``: the embedded default model unless a
``--server-arg=--model=...`` says otherwise, on CPU) as a subprocess on a free 127.0.0.1 port, waits
(bounded) for ``/ready``, then sends each hostile request below, one at a time, and prints for each:

* the HTTP status, or ``closed`` (connection dropped without an answer) or ``timeout``;
* the seconds until it was answered;
* the server's peak RSS increase over its resting RSS during the request: before each request
  the kernel's high-water mark is reset (``echo 5 > /proc/PID/clear_refs``, needs root or the
  same user) and ``VmHWM`` read after the answer minus ``VmRSS`` read before it (one process:
  every thread shares the mm, so the mark covers the preparation pools and the forward);
  ``+next MB`` is the same mark read again after the follow-up request, so work that goes on
  after the hostile request was answered (or timed out) still shows;
* whether a normal request right after (``{"model": "default", "input": ["hello world"]}`` to
  ``/v1/embeddings``) is served 200, and how long it took.

Run it (from the repository root, in the venv; the model loads from the local cache)::

    HF_HUB_OFFLINE=1 python benchmarks/abuse.py [--only NAME[,NAME...]] [--json out.json]
        [--timeout 120] [--server-arg=--allow-url-fetch] [--server-log server.log]

``--list`` prints the request names. Everything is built in code and small on the wire
(base64 PDFs and PNGs of a few hundred KB, a ~1 MB flate bomb; the text cases are 5 and 50 MB).

Targets, printed with the final table (the load average at start and end too: the timings mean
little on a loaded machine):

* every hostile request answered 4xx within 5 s (``text-50mb-truncate`` may also be a 200: a
  truncated embedding is a correct answer to ``truncate: true``);
* the server's peak RSS increase at most 1 GB;
* the next normal request served 200.

Special cases: ``slow-headers`` opens 20 sockets that each send a request one byte per second;
its target is every connection closed (or answered 408) within 15 s, and a normal request served
200 while they are open. ``cl-te-smuggle`` sends a POST with both ``Content-Length`` and
``Transfer-Encoding: chunked`` whose body carries a second ``GET /v1/models``; its target is a 400
and the smuggled request left unanswered. ``slow-urls`` only runs when the server gets
``--server-arg=--allow-url-fetch``: it points an image input at a local HTTP server that sends one
byte per second, and expects a quick 4xx (the CLI keeps private addresses refused; the test suite
covers slow URLs with private addresses allowed: tests/test_server_budgets.py,
tests/test_inputs.py). Without the flag it is skipped.

A hostile request that does not answer within ``--timeout`` (default 120 s) is reported as
``timeout``; if the server dies it is reported as ``died`` and a fresh one is started for the next
request. The server is always killed at the end.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

HOST = "127.0.0.1"
NORMAL = {"model": "default", "input": ["hello world"]}
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt "
         "ut labore et dolore magna aliqua").split()
MB = 2**20
GB = 2**30
FAST_S = 5.0                      # a hostile request must be answered within this
MAX_PEAK_BYTES = 1 * GB           # ... with at most this much extra RSS
SLOW_HEADER_SOCKETS = 20
SLOW_HEADER_CAP_S = 30.0          # stop feeding the slow sockets after this
SLOW_HEADER_TARGET_S = 15.0       # header_timeout_s (10 s) plus slack


# ---------------------------------------------------------------------------- payloads
def jbody(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def words(n_chars: int) -> str:
    """``lorem ipsum ...`` repeated to about ``n_chars`` characters."""
    unit = " ".join(WORDS) + " "
    return (unit * (n_chars // len(unit) + 1))[:n_chars].rstrip()


def blank_pdf(pages: int, size_pt: float = 14400) -> bytes:
    import pypdfium2 as pdfium
    doc = pdfium.PdfDocument.new()
    for _ in range(pages):
        doc.new_page(size_pt, size_pt)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def big_png(side: int = 8000) -> bytes:
    """A side x side RGB PNG: a diagonal gradient with 0.01 % random pixels (~0.2 MB encoded)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    ramp = (np.arange(side, dtype=np.uint16)[:, None] + np.arange(side, dtype=np.uint16)[None, :]) % 256
    arr = np.repeat(ramp.astype(np.uint8)[:, :, None], 3, axis=2)
    n = side * side // 10000
    arr[rng.integers(0, side, n), rng.integers(0, side, n)] = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def flate_bomb_pdf(inflated: int = GB, chunk: int = 4 * MB) -> bytes:
    """A one-page PDF whose content stream is ``inflated`` bytes of spaces, FlateDecode'd (~1 MB).

    Written by hand (catalog, pages, page, stream, xref with real offsets); the stream is
    compressed in chunks, never held inflated."""
    comp = zlib.compressobj(9)
    block = b" " * chunk
    parts = [comp.compress(block) for _ in range(inflated // chunk)]
    parts.append(comp.compress(b" " * (inflated % chunk)))
    parts.append(comp.flush())
    stream = b"".join(parts)
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << >> /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def check_pdf(data: bytes, pages: int) -> None:
    """Open (never render) the PDF with pypdfium2: it must parse and have ``pages`` pages."""
    import pypdfium2 as pdfium
    doc = pdfium.PdfDocument(data)
    try:
        assert len(doc) == pages, (len(doc), pages)
    finally:
        doc.close()


# ---------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


class Server:
    """``omnivec serve`` as a subprocess; ``start`` waits for ``/ready`` (bounded)."""

    def __init__(self, server_args: list[str], log_path: Path, ready_timeout: float) -> None:
        self.server_args = server_args
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> float:
        self.port = free_port()
        cmd = [sys.executable, "-m", "omnivec.cli", "serve", "--host", HOST, "--port", str(self.port),
               "--device", "cpu", "--log-level", "warning", *self.server_args]
        log = open(self.log_path, "ab")
        log.write(f"\n=== {' '.join(cmd)}\n".encode())
        log.flush()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = t0 + self.ready_timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + self.log_tail())
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
            try:
                conn.request("GET", "/ready")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - t0
            except (http.client.HTTPException, OSError):
                pass
            finally:
                conn.close()
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {self.ready_timeout:.0f} s; log: {self.log_path}\n"
                           + self.log_tail())

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    # -- memory
    def reset_peak(self) -> int:
        """Reset VmHWM to the current RSS; return the RSS (bytes) just before."""
        rss = proc_kb(self.pid, "VmRSS") * 1024
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return rss

    def peak(self) -> int:
        return proc_kb(self.pid, "VmHWM") * 1024


# ---------------------------------------------------------------------------- clients
@dataclass
class Answer:
    status: str          # "200", "422", ..., "closed", "timeout", "error: ..."
    seconds: float
    note: str = ""


def _error_note(status: int, data: bytes) -> str:
    if status == 200:
        return f"{len(data) / MB:.1f} MB response"
    try:
        err = json.loads(data)
        inner = err.get("error") if isinstance(err.get("error"), dict) else {}
        code = str(err.get("code") or inner.get("code") or "")
        detail = err.get("detail") or inner.get("message") or ""
        if isinstance(detail, list):
            detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail[:2])
        return f"{code}: {str(detail)[:110]}" if code else str(detail)[:120]
    except (ValueError, AttributeError):
        return data[:120].decode(errors="replace")


def post(url: str, body: bytes, content_type: str, timeout: float) -> Answer:
    """POST ``body`` to /v1/embeddings on a fresh connection; ``timeout`` bounds each socket wait."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    early = ""
    try:
        try:
            conn.request("POST", "/v1/embeddings", body=body,
                         headers={"Content-Type": content_type, "Connection": "close"})
        except (BrokenPipeError, ConnectionResetError) as e:
            early = f"connection {type(e).__name__} while sending; "   # an early answer may be buffered
        resp = conn.getresponse()
        data = resp.read()
        return Answer(str(resp.status), time.perf_counter() - t0, early + _error_note(resp.status, data))
    except (socket.timeout, TimeoutError):
        return Answer("timeout", time.perf_counter() - t0, early)
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        return Answer("closed", time.perf_counter() - t0, early + type(e).__name__)
    finally:
        conn.close()


def normal(url: str, timeout: float) -> Answer:
    return post(url, jbody(NORMAL), "application/json", timeout)


def read_responses(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends within ``seconds`` (or until it closes), and when its first
    byte came (perf_counter; the deadline when nothing came)."""
    sock.settimeout(0.2)
    data = b""
    first = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        first = first or time.perf_counter()
        data += chunk
    return data, first or time.perf_counter()


def status_lines(data: bytes) -> list[str]:
    """Status codes of every response in ``data`` (a response may follow a body with no line break)."""
    return [m.decode() for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


# ---------------------------------------------------------------------------- cases
@dataclass
class Result:
    name: str
    status: str
    seconds: float
    rest_mb: float = 0.0
    peak_mb: float = 0.0          # VmHWM after the answer - VmRSS before the request
    peak_next_mb: float = 0.0     # VmHWM after the follow-up normal request - same base
    next_status: str = ""
    next_seconds: float = 0.0
    wire_mb: float = 0.0
    note: str = ""
    expect: str = "4xx"
    ok: bool = False
    failed: list[str] = field(default_factory=list)


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[bytes, str]] | None = None   # -> (body, content type), for plain POSTs
    raw: Callable[["Server", float], Result] | None = None  # custom client
    expect: str = "4xx"                                     # "4xx" or "2xx|4xx"
    needs: str = ""                                         # server flag it needs


def jina(items: list, **fields: Any) -> tuple[bytes, str]:
    return jbody({"model": "default", "input": items, **fields}), "application/json"


def pdf_case(pages: int) -> Callable[[], tuple[bytes, str]]:
    def build() -> tuple[bytes, str]:
        data = blank_pdf(pages)
        check_pdf(data, pages)
        return jina([{"pdf": b64(data)}])
    return build


_PNG: list[str] = []


def png_case(copies: int) -> Callable[[], tuple[bytes, str]]:
    def build() -> tuple[bytes, str]:
        if not _PNG:
            _PNG.append(b64(big_png()))
        return jina([{"image": _PNG[0]}] * copies)
    return build


def flate_case() -> tuple[bytes, str]:
    data = flate_bomb_pdf()
    check_pdf(data, 1)
    return jina([{"pdf": b64(data)}])


def text_case(n_chars: int, **fields: Any) -> Callable[[], tuple[bytes, str]]:
    return lambda: jina([words(n_chars)], **fields)


def multivector_case() -> tuple[bytes, str]:
    # ~1 token per word with the default tokenizer: 500 words ~ 502 tokens, the model's 512 cap
    text = " ".join(WORDS[i % len(WORDS)] for i in range(500))
    return jina([text] * 2048, return_multivector=True)


def slow_headers(server: Server, timeout: float) -> Result:
    """20 sockets each sending a request one byte per second; when does the server close them?"""
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 40\r\nX-Padding: " + b"a" * 64 + b"\r\n\r\n")
    t0 = time.perf_counter()
    socks = []
    for _ in range(SLOW_HEADER_SOCKETS):
        s = socket.create_connection((HOST, server.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    closed_at: dict[int, float] = {}
    replies: dict[int, bytes] = {}
    meanwhile: list[Answer] = []
    probe: Optional[threading.Thread] = None
    sent = 0
    cap = min(SLOW_HEADER_CAP_S, timeout)
    while len(closed_at) < len(socks) and time.perf_counter() - t0 < cap:
        if probe is None and time.perf_counter() - t0 > 3:
            probe = threading.Thread(target=lambda: meanwhile.append(normal(server.url, timeout)), daemon=True)
            probe.start()
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                readable, _, _ = select.select([s], [], [], 0)
                if readable:
                    chunk = s.recv(65536)
                    if chunk:
                        replies[i] = replies.get(i, b"") + chunk
                    else:
                        closed_at[i] = time.perf_counter() - t0
                        continue
                if sent < len(request):
                    s.send(request[sent:sent + 1])
            except OSError:
                closed_at[i] = time.perf_counter() - t0
        sent += 1
        time.sleep(max(0.0, t0 + sent - time.perf_counter()))
    for s in socks:
        s.close()
    if probe is not None:
        probe.join(timeout)
    elapsed = time.perf_counter() - t0
    codes = sorted({c for data in replies.values() for c in status_lines(data)})
    n_closed = len(closed_at)
    if n_closed == len(socks):
        status = "/".join(codes) if codes else "closed"
        seconds = max(closed_at.values())
    else:
        status = "open"
        seconds = elapsed
    first = f", first closed at {min(closed_at.values()):.1f} s" if closed_at else ""
    probe_ans = meanwhile[0] if meanwhile else Answer("timeout", timeout)
    note = (f"{n_closed}/{len(socks)} closed by {seconds:.1f} s{first}; replies {codes or 'none'}; "
            f"normal request meanwhile: {probe_ans.status} in {probe_ans.seconds:.2f} s")
    r = Result("slow-headers", status, seconds, note=note, expect="closed<=15s")
    r.failed = []
    if n_closed < len(socks) or seconds > SLOW_HEADER_TARGET_S:
        r.failed.append(f"not all closed within {SLOW_HEADER_TARGET_S:.0f} s")
    if any(c not in ("408", "400") for c in codes):
        r.failed.append(f"answered {codes}")
    if probe_ans.status != "200":
        r.failed.append("normal request meanwhile not served")
    return r


def cl_te_smuggle(server: Server, timeout: float) -> Result:
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body))
    t0 = time.perf_counter()
    with socket.create_connection((HOST, server.port), timeout=5) as s:
        s.sendall(head + body)
        data, first = read_responses(s, min(timeout, 8.0))
    codes = status_lines(data)
    seconds = first - t0   # until the first answer byte (or the end of the read window)
    status = codes[0] if codes else "closed"
    answered_smuggled = len(codes) > 1
    r = Result("cl-te-smuggle", status, seconds, expect="400, no 2nd",
               note=f"responses {codes or 'none'}; smuggled GET answered: {'YES' if answered_smuggled else 'no'}")
    if status != "400":
        r.failed.append(f"status {status}, want 400")
    if answered_smuggled:
        r.failed.append("smuggled request answered")
    return r


def slow_urls(server: Server, timeout: float) -> Result:
    """An image URL on a local server that sends one byte per second (a private address)."""
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(120):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((HOST, 0), Slow)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://{HOST}:{httpd.server_address[1]}/slow.png"
        ans = post(server.url, jbody({"model": "default", "input": [{"image": url}] * 4}), "application/json",
                   timeout)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return Result("slow-urls", ans.status, ans.seconds, note=ans.note)


CASES: list[Case] = [
    Case("pdf-huge-pages", pdf_case(16)),
    Case("pdf-256-huge-pages", pdf_case(256)),
    Case("png-8000-x8", png_case(8)),
    Case("png-8000-x40", png_case(40)),
    Case("flate-bomb-pdf", flate_case),
    Case("text-5mb", text_case(5_000_000)),
    Case("text-50mb", text_case(50_000_000)),
    Case("text-50mb-truncate", text_case(50_000_000, truncate=True), expect="2xx|4xx"),
    Case("multivector-2048x512", multivector_case),
    Case("deep-json", lambda: (b"[" * 100_000 + b"]" * 100_000, "application/json")),
    Case("text-plain-json", lambda: (jbody(NORMAL), "text/plain")),
    Case("unknown-field", lambda: jina(["x"], dimension=64)),
    Case("slow-headers", raw=slow_headers),
    Case("cl-te-smuggle", raw=cl_te_smuggle),
    Case("slow-urls", raw=slow_urls, needs="--allow-url-fetch"),
]


# ---------------------------------------------------------------------------- runner
def status_ok(status: str, expect: str) -> bool:
    if not status.isdigit():
        return False
    code = int(status)
    return (400 <= code < 500) or ("2xx" in expect and 200 <= code < 300)


def run_case(case: Case, server: Server, timeout: float) -> Result:
    body: bytes = b""
    if case.build is not None:
        t = time.perf_counter()
        body, ctype = case.build()
        build_s = time.perf_counter() - t
    rest = server.reset_peak()
    if case.raw is not None:
        result = case.raw(server, timeout)
    else:
        ans = post(server.url, body, ctype, timeout)
        result = Result(case.name, ans.status, ans.seconds, note=ans.note, wire_mb=len(body) / MB)
        result.note = (result.note + f" (built in {build_s:.1f} s)").strip()
    result.expect = case.expect if case.raw is None else result.expect
    result.rest_mb = rest / MB
    alive = server.alive()
    if alive:
        result.peak_mb = max(0, server.peak() - rest) / MB
        nxt = normal(server.url, timeout)
        result.next_status, result.next_seconds = nxt.status, nxt.seconds
        if server.alive():
            result.peak_next_mb = max(0, server.peak() - rest) / MB
    if not server.alive():
        code = server.proc.returncode if server.proc else None
        result.note = f"SERVER DIED (exit {code}); " + result.note
        if not result.next_status:
            result.next_status = "died"
        if result.status in ("closed", "timeout") or not result.status.isdigit():
            result.status = "died"
    if case.raw is None:
        if not status_ok(result.status, case.expect):
            result.failed.append(f"status {result.status}")
        if result.seconds > FAST_S:
            result.failed.append(f"{result.seconds:.1f} s > {FAST_S:.0f} s")
    if max(result.peak_mb, result.peak_next_mb) * MB > MAX_PEAK_BYTES:
        result.failed.append(f"peak +{max(result.peak_mb, result.peak_next_mb):.0f} MB > 1 GB")
    if result.next_status != "200":
        result.failed.append(f"next request {result.next_status}")
    result.ok = not result.failed
    return result


def table(results: list[Result]) -> str:
    head = f"{'request':<22} {'status':>8} {'secs':>7} {'wire MB':>8} {'peak MB':>8} {'+next MB':>8} " \
           f"{'next':>5} {'next s':>7}  {'target':<6} note"
    lines = [head, "-" * len(head)]
    for r in results:
        verdict = "ok" if r.ok else "FAIL"
        lines.append(f"{r.name:<22} {r.status:>8} {r.seconds:>7.2f} {r.wire_mb:>8.1f} {r.peak_mb:>8.0f} "
                     f"{r.peak_next_mb:>8.0f} {r.next_status:>5} {r.next_seconds:>7.2f}  {verdict:<6} "
                     f"{r.note}" + (f"  [{'; '.join(r.failed)}]" if r.failed else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated request names (see --list)")
    ap.add_argument("--list", action="store_true", help="print the request names and exit")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="how long to wait for /ready (s)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="passed to `omnivec serve` (repeatable), e.g. --server-arg=--allow-url-fetch")
    ap.add_argument("--server-log", default="", help="server output goes here (default: a temp file)")
    args = ap.parse_args()

    if args.list:
        for c in CASES:
            print(c.name + (f"  (needs {c.needs})" if c.needs else ""))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown request(s): {sorted(unknown)}; see --list")
    cases = [c for c in CASES if not names or c.name in names]

    server_args = [a for s in args.server_arg for a in s.split()]
    log_path = Path(args.server_log) if args.server_log else Path(tempfile.mkstemp(prefix="abuse-server-",
                                                                                   suffix=".log")[1])
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"({os.cpu_count()} CPUs)", flush=True)
    print(f"server: omnivec serve --device cpu {' '.join(server_args)}  (log: {log_path})", flush=True)

    server = Server(server_args, log_path, args.ready_timeout)
    results: list[Result] = []
    skipped: list[str] = []
    t_all = time.perf_counter()
    try:
        print(f"ready in {server.start():.1f} s on port {server.port}; resting RSS "
              f"{proc_kb(server.pid, 'VmRSS') / 1024:.0f} MB", flush=True)
        warm = normal(server.url, args.timeout)
        print(f"warm-up normal request: {warm.status} in {warm.seconds:.2f} s", flush=True)
        for case in cases:
            if case.needs and case.needs not in server_args:
                skipped.append(f"{case.name}: skipped, the server runs without {case.needs} (URL inputs refused "
                               f"outright); slow URLs with private addresses allowed are covered by "
                               f"tests/test_server_budgets.py::test_slow_urls_do_not_hold_preparation and "
                               f"tests/test_inputs.py (url_timeout_s)")
                print(skipped[-1], flush=True)
                continue
            if not server.alive():
                print("server is down; starting a fresh one", flush=True)
                server.stop()
                server.start()
            try:
                r = run_case(case, server, args.timeout)
            except Exception as e:  # noqa: BLE001 - one broken case must not end the run
                r = Result(case.name, f"error: {type(e).__name__}", 0.0, note=str(e)[:200], failed=["client error"])
            results.append(r)
            print(f"{r.name}: {r.status} in {r.seconds:.2f} s, peak +{r.peak_mb:.0f} MB "
                  f"(+{r.peak_next_mb:.0f} MB incl. next), next {r.next_status} in {r.next_seconds:.2f} s"
                  f" -> {'ok' if r.ok else 'FAIL: ' + '; '.join(r.failed)}  | {r.note}", flush=True)
    finally:
        server.stop()

    load_end = os.getloadavg()
    print()
    print(table(results))
    for s in skipped:
        print(s)
    print()
    print(f"targets: every hostile request 4xx within {FAST_S:.0f} s (text-50mb-truncate: 2xx also ok), "
          f"peak RSS increase <= 1 GB, next normal request 200; slow-headers: all {SLOW_HEADER_SOCKETS} "
          f"closed (or 408) within {SLOW_HEADER_TARGET_S:.0f} s with a normal request served meanwhile; "
          f"cl-te-smuggle: 400 and the smuggled GET unanswered")
    n_ok = sum(r.ok for r in results)
    print(f"met: {n_ok}/{len(results)}; total {time.perf_counter() - t_all:.0f} s")
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; "
          f"at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "server_args": server_args, "timeout_s": args.timeout, "cpus": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": load_end, "skipped": skipped,
            "results": [asdict(r) for r in results]}, indent=2))
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
