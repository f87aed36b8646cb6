"""Operations: SIGTERM drains in-flight requests then exits 0; JSON access logs (issue 24).

The server runs in a child process (signals), on a fake model whose forward takes a while.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

SERVER = """
import sys
from omnivec.embedder import Embedder
from omnivec.server import ServerSettings, create_app
from omnivec.server.http import serve_then_exit   # what omnivec serve runs
from omnivec.testing import FakeModel
settings = ServerSettings(log_format="json", drain_timeout_s=float(sys.argv[3]))
print("serving", flush=True)
serve_then_exit(create_app(Embedder(FakeModel(delay=float(sys.argv[2]))), settings), settings,
                port=int(sys.argv[1]), log_level="info")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(delay: float, drain: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(delay), str(drain)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server not ready: {proc.stderr.read() if proc.stderr else ''}")


def test_sigterm_drains_in_flight_requests_then_exits_0():
    proc, url = start(delay=1.5, drain=10)
    try:
        got: list[httpx.Response] = []
        t = threading.Thread(target=lambda: got.append(httpx.post(
            url + "/v1/embeddings", json={"model": "default", "input": ["in flight"]}, timeout=30)))
        t.start()
        time.sleep(0.5)                                   # the request is in its forward pass now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):            # the listener is closed: new ones refused
            httpx.post(url + "/v1/embeddings", json={"model": "default", "input": ["late"]}, timeout=5)
        t.join(timeout=30)
        assert got and got[0].status_code == 200 and len(got[0].json()["data"]) == 1
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "serving" in out
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("logger") == "omnivec.access"]
    assert access and access[0]["status"] == 200 and access[0]["dialect"] == "jina"
    assert access[0]["items"] == 1 and access[0]["tokens"] == 4 and access[0]["seconds"] >= 1.0
    assert len(access[0]["request_id"]) == 16
    assert not [line for line in err.splitlines() if '"GET /ready' in line or "HTTP/1.1\" 200" in line]


def test_drain_is_bounded_by_the_grace_period():
    proc, url = start(delay=20, drain=1)
    try:
        threading.Thread(target=lambda: httpx.post(url + "/v1/embeddings", timeout=60,
                                                   json={"model": "default", "input": ["slow"]}),
                         daemon=True).start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10           # not the 20 s forward pass
    finally:
        if proc.poll() is None:
            proc.kill()
