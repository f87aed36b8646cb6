"""Per-request and global budgets (issue 15): URL fetches apart from preparation, admission by
cost (pixels, tokens, values), responses streamed without holding the whole body.

Fast: the fake model family, small inputs, budgets set low.
"""
from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from omnivec.embedder import Embedder
from omnivec.inputs import Image, InputLimits
from omnivec.server import ServerSettings, create_app
from omnivec.server import pipeline
from omnivec.server.dialects import DIALECTS
from omnivec.server.engine import Engine, JobResult, Overloaded
from omnivec.server.jsonstream import Deferred, dumps, iter_json
from omnivec.testing import FakeModel

from _server_util import LiveServer


def png(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


class _SlowImages(http.server.BaseHTTPRequestHandler):
    """``/slow`` answers a PNG after ``delay`` seconds; ``/fast`` at once."""

    delay = 3.0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/slow"):
            time.sleep(self.delay)
        body = png()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the fetcher gave up first

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowImages)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _post(url: str, body: dict, timeout: float = 30) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    r = httpx.post(url + "/v1/embeddings", json=body, timeout=timeout)
    return r, time.perf_counter() - started


# ------------------------------------------------------------------ URL fetches (finding 5)
def test_slow_urls_do_not_hold_preparation(image_host) -> None:
    """Two requests of 3 slow URLs each; an unrelated text request is not queued behind them
    (before: fetches ran on the 2-thread preparation pool, and it waited ~seconds)."""
    limits = InputLimits(url_timeout_s=10, url_request_timeout_s=20)
    settings_ = ServerSettings(allow_url_fetch=True, allow_private_urls=True, limits=limits)
    with LiveServer(create_app(Embedder(FakeModel()), settings_)) as server:
        slow = {"model": "default", "input": [{"image": f"{image_host}/slow?{i}"} for i in range(3)]}
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(_post(server.url, slow)[0])) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)                               # both are fetching now
        r, took = _post(server.url, {"model": "default", "input": ["an unrelated text"]})
        assert r.status_code == 200
        assert took < 2.0, took                       # the slow fetches take >= 3 s each
        for t in threads:
            t.join(timeout=30)
        assert [x.status_code for x in results] == [200, 200]


def test_one_deadline_for_all_urls_of_a_request(image_host) -> None:
    limits = InputLimits(url_timeout_s=4.0, url_request_timeout_s=1.5)
    settings_ = ServerSettings(allow_url_fetch=True, allow_private_urls=True, limits=limits)
    with LiveServer(create_app(Embedder(FakeModel()), settings_)) as server:
        body = {"model": "default", "input": [{"image": f"{image_host}/slow?{i}"} for i in range(3)]}
        r, took = _post(server.url, body)
        assert r.status_code == 422, r.text
        assert "url_request_timeout_s" in r.json()["detail"] and r.json()["errors"][0]["field"] == "input[0].image"
        assert took < 3.0, took                        # before: 3 x 3 s (each under url_timeout_s)
        fast = {"model": "default", "input": [{"image": f"{image_host}/fast?{i}"} for i in range(3)]}
        r = _post(server.url, fast)[0]
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------ admission by cost
def _spec(inputs, **kw) -> pipeline.EmbedSpec:
    base = dict(inputs=inputs, paths=[f"input[{i}]" for i in range(len(inputs))], task="text-matching",
                dimensions=None, normalize=True, multivector=False, truncate=False, late_chunking=False,
                tokenized=False, encodings=["float"], encoding_list=False)
    base.update(kw)
    return pipeline.EmbedSpec(**base)


def test_pixels_are_reserved_before_any_decoding() -> None:
    emb = Embedder(FakeModel())
    engine = Engine(emb, budgets={"pixels": 2000})
    decoded: list[str] = []

    class Watched(Image):                             # records whether pixels were ever decoded
        def plan(self, limits=InputLimits()):
            plan = super().plan(limits)
            return type(plan)(plan.pixels, lambda: decoded.append("x") or plan.load())

    async def main() -> None:
        engine.start()
        try:
            other = engine.admission.ticket()
            other.reserve("pixels", 1000)             # another request is decoding
            ticket = engine.admission.ticket()
            with pytest.raises(Overloaded) as e:      # 40 x 30 = 1200 more: over 2000
                await pipeline.compute(_spec([Watched(png())]), emb, engine, emb.limits, ticket)
            assert e.value.resource == "pixels" and decoded == []
            assert ticket.held["pixels"] == 0
            other.release()
            with engine.admission.ticket() as alone:  # alone, the same request runs
                await pipeline.compute(_spec([Watched(png())]), emb, engine, emb.limits, alone)
            assert decoded == ["x"]
        finally:
            await engine.stop()

    asyncio.run(main())


def test_response_values_are_held_until_sent_and_then_given_back() -> None:
    """A multi-vector answer in flight holds its values: a second one over the global budget is a
    503 naming it; once both are answered nothing stays reserved."""
    model = FakeModel(delay=0.6)
    settings_ = ServerSettings(max_pending_values=100, max_response_values=80)
    with LiveServer(create_app(Embedder(model), settings_)) as server:
        engine = server.server.config.app.state.omnivec.engine
        body = {"model": "default", "input": ["one two three four five"], "return_multivector": True}
        # 7 tokens x 8 dims = 56 values: one fits, two (112) do not
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(_post(server.url, body)[0]))
        t.start()
        for _ in range(400):
            if engine.admission.in_use["values"]:
                break
            time.sleep(0.005)
        r, _ = _post(server.url, body)
        assert r.status_code == 503 and "max_pending_values" in r.json()["detail"], r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        t.join(timeout=30)
        assert first[0].status_code == 200 and len(first[0].json()["data"][0]["embeddings"]) == 7
        assert _post(server.url, body)[0].status_code == 200
        assert all(v == 0 for v in engine.admission.in_use.values()), engine.admission.in_use


def test_refused_requests_give_back_what_they_held() -> None:
    settings_ = ServerSettings(max_response_values=10)
    with LiveServer(create_app(Embedder(FakeModel()), settings_)) as server:
        engine = server.server.config.app.state.omnivec.engine
        r, _ = _post(server.url, {"model": "default", "input": ["a b c"] * 4})   # 4 x 8 > 10
        assert r.status_code == 422 and r.json()["code"] == "OUTPUT_TOO_LARGE"
        assert all(v == 0 for v in engine.admission.in_use.values()), engine.admission.in_use


# ------------------------------------------------------------------ streamed responses (finding 3)
def test_render_streams_without_holding_the_body() -> None:
    """The body is encoded a vector at a time: the peak while sending 1M values is a small part
    of the JSON (before, it was rendered whole: Python floats + text + bytes, > 3x its size)."""
    emb = Embedder(FakeModel(dim=512))
    rng = np.random.default_rng(0)
    n = 2000
    result = JobResult(rng.standard_normal((n, 512)).astype(np.float32), None)
    spec = _spec(["x"] * n)
    tracemalloc.start()
    try:
        chunks = pipeline.render(DIALECTS["openai"], spec, result, [3] * n, list(range(n)), "default")
        size = 0
        head = b""
        for chunk in chunks:
            size += len(chunk)
            head = head or chunk[:64]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert head.startswith(b'{"object":"list"')
    assert size > 15_000_000                           # ~20 bytes a value
    normalised = n * 512 * 4                          # the float32 Matryoshka/normalised copy
    assert peak < normalised + size / 8, (peak, size)


nested = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(nested)
def test_streamed_json_is_the_same_text_as_json_dumps(value) -> None:
    want = json.dumps(value, separators=(",", ":")).encode()
    assert dumps(value) == want
    assert b"".join(iter_json(value, chunk_bytes=3)) == want
    assert dumps({"v": Deferred(lambda: value), "w": [Deferred(lambda: value)]}) == \
        json.dumps({"v": value, "w": [value]}, separators=(",", ":")).encode()
