"""Server mechanics with a fake, controllably slow model: batching, back-pressure, disconnects, auth.

No real model here, so these run in milliseconds and are deterministic.
"""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from omnivec.embedder import Embedder
from omnivec.models.base import PrepareOptions
from omnivec.server import ServerSettings, create_app
from omnivec.server.engine import Engine, Overloaded
from omnivec.tasks import resolve_task
from omnivec.testing import FakeModel

from _server_util import LiveServer, metric


def _vec(text: str, task: str) -> torch.Tensor:
    """What the fake family gives ``text`` alone (raw, un-normalised): the engine must match it."""
    out = Embedder(FakeModel()).embed([text], task, normalize=False)
    return torch.from_numpy(out.dense[0])


def test_engine_merges_concurrent_requests_and_routes_rows_back() -> None:
    model = FakeModel(delay=0.05)
    engine = Engine(Embedder(model), max_wait_ms=20)
    tasks = ["retrieval.query", "code.passage", "text-matching"]

    async def main():
        engine.start()
        try:
            async def one(i: int):
                texts = [f"request {i} item {k}" for k in range(1 + i % 3)]
                task = resolve_task(tasks[i % 3])
                prepared, _ = await engine.prepare(texts, [task] * len(texts), PrepareOptions(), engine.embedder.limits)
                res = await engine.submit(prepared, multivector=False)
                return texts, task, res
            return await asyncio.gather(*(one(i) for i in range(24)))
        finally:
            await engine.stop()

    for texts, task, res in asyncio.run(main()):
        want = torch.stack([_vec(t, task.api_name) for t in texts]).numpy()
        np.testing.assert_array_equal(res.dense, want)
    assert model.max_concurrent == 1           # exactly one forward at a time
    assert len(model.forwards) < 24            # rows of different requests shared batches
    assert sum(model.forwards) == sum(1 + i % 3 for i in range(24))


def test_engine_skips_cancelled_jobs() -> None:
    model = FakeModel(delay=0.2)
    engine = Engine(Embedder(model), max_wait_ms=0)

    async def main():
        engine.start()
        try:
            task = resolve_task("text-matching")
            first, _ = await engine.prepare(["busy"], [task], PrepareOptions(), engine.embedder.limits)
            second, _ = await engine.prepare(["dropped a", "dropped b"], [task] * 2, PrepareOptions(),
                                             engine.embedder.limits)
            busy = asyncio.ensure_future(engine.submit(first, False))
            await asyncio.sleep(0.05)          # the worker is now inside the first forward
            gone = asyncio.ensure_future(engine.submit(second, False))
            await asyncio.sleep(0.01)
            gone.cancel()
            await busy
            await asyncio.sleep(0.3)
        finally:
            await engine.stop()

    asyncio.run(main())
    assert model.forwards == [1]
    assert engine.metrics.dropped._value.get() == 2


def _timed_requests(engine: Engine, requests: dict[str, tuple[list[str], float]]) -> tuple[dict, dict]:
    """Submit each named text-matching request after its delay (s); completion times and results."""
    done: dict[str, float] = {}
    results: dict = {}

    async def main():
        engine.start()
        loop = asyncio.get_running_loop()
        task = resolve_task("text-matching")
        start = loop.time()
        try:
            async def one(name: str, texts: list[str], after: float):
                await asyncio.sleep(after)
                prepared, _ = await engine.prepare(texts, [task] * len(texts), PrepareOptions(), engine.embedder.limits)
                results[name] = await engine.submit(prepared, multivector=False)
                done[name] = loop.time() - start
            await asyncio.gather(*(one(name, texts, after) for name, (texts, after) in requests.items()))
        finally:
            await engine.stop()

    asyncio.run(main())
    return done, results


def test_request_answered_when_its_rows_are_done_not_at_end_of_round() -> None:
    """A one-item request that shares a batch plan with a four-item one is answered after its own
    forward, and a request arriving while the four-item one runs does not wait for all of it."""
    model = FakeModel(delay=0.1)
    engine = Engine(Embedder(model, max_batch_rows=1), max_wait_ms=30)
    requests = {"small": (["s"], 0.0), "big": (["b1", "b2", "b3", "b4"], 0.01), "late": (["l"], 0.15)}
    done, results = _timed_requests(engine, requests)
    for name, (texts, _) in requests.items():
        want = torch.stack([_vec(t, "text-matching") for t in texts]).numpy()
        np.testing.assert_array_equal(results[name].dense, want)
    assert model.forwards == [1] * 6 and model.max_concurrent == 1
    assert done["small"] < 0.2                 # after its own forward, not after the four others
    assert done["big"] > 0.4
    assert done["late"] < done["big"]          # jobs take turns: no wait for a round to end


def test_small_request_not_held_back_by_a_large_one_queued_before_it() -> None:
    model = FakeModel(delay=0.02)
    # 2 rows of 4 tokens per pass: the large request needs 20 passes
    engine = Engine(Embedder(model, max_batch_rows=2, batch_tokens=8), max_wait_ms=0)
    done, _ = _timed_requests(engine, {"large": ([f"row {i}" for i in range(40)], 0.0), "small": (["s"], 0.05)})
    assert sum(model.forwards) == 41
    assert done["large"] > 0.35                # 20 forwards of 2 rows
    assert done["small"] < 0.15                # within a pass or two of arriving


def test_exclusive_job_runs_after_queued_rows_and_before_later_ones() -> None:
    model = FakeModel(delay=0.05)
    engine = Engine(Embedder(model, max_batch_rows=1), max_wait_ms=0)
    forwards_before_exclusive: list[int] = []

    async def main():
        engine.start()
        task = resolve_task("text-matching")
        try:
            async def rows(texts: list[str]):
                prepared, _ = await engine.prepare(texts, [task] * len(texts), PrepareOptions(), engine.embedder.limits)
                await engine.submit(prepared, multivector=False)

            first = asyncio.ensure_future(rows(["a", "b", "c"]))
            await asyncio.sleep(0.02)           # first's rows are queued, one forward running
            exclusive = asyncio.ensure_future(
                engine.run_exclusive(lambda: forwards_before_exclusive.append(len(model.forwards)) or 7))
            await asyncio.sleep(0.01)
            later = asyncio.ensure_future(rows(["d"]))
            assert await exclusive == 7
            await asyncio.gather(first, later)
        finally:
            await engine.stop()

    asyncio.run(main())
    assert forwards_before_exclusive == [3]     # all of first's rows, none of later's
    assert model.forwards == [1] * 4


def test_admission_budget() -> None:
    engine = Engine(Embedder(FakeModel()), max_pending_items=4)
    engine.admit(10)                            # alone: admitted even over budget
    with pytest.raises(Overloaded):
        engine.admit(1)
    engine.release(10)
    engine.admit(3)
    engine.admit(1)
    with pytest.raises(Overloaded):
        engine.admit(1)


@pytest.fixture(scope="module")
def slow_server():
    model = FakeModel(delay=0.4)
    settings = ServerSettings(api_keys=["k-one", "k-two"], max_pending_items=4, max_body_bytes=4096,
                              allow_url_fetch=True)
    with LiveServer(create_app(Embedder(model), settings)) as server:
        server.model = model
        yield server


AUTH = {"Authorization": "Bearer k-two"}


def test_api_key_required_in_both_dialects(slow_server) -> None:
    url = slow_server.url + "/v1/embeddings"
    jina = {"model": "default", "input": ["x"]}
    r = httpx.post(url, json=jina)
    assert r.status_code == 401
    body = r.json()   # the dialect is unknown before auth: both envelopes
    assert body["code"] == "AUTH_INVALID_API_KEY" and body["request_id"] and body["detail"]
    assert body["error"]["code"] == "auth_invalid_api_key" and body["error"]["message"]
    assert httpx.post(url, json=jina, headers={"Authorization": "Bearer k-on"}).status_code == 401
    assert httpx.post(url, json=jina, headers={"Authorization": "Basic k-one"}).status_code == 401
    assert httpx.get(slow_server.url + "/v1/models").status_code == 401
    assert httpx.post(url, json=jina, headers=AUTH).status_code == 200
    assert httpx.get(slow_server.url + "/health").status_code == 200   # probes stay open


def test_body_cap_refused_before_reading(slow_server) -> None:
    url = slow_server.url + "/v1/embeddings"
    big = {"model": "default", "input": ["word " * 2000]}
    r = httpx.post(url, json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["code"] == "INPUT_BODY_TOO_LARGE"

    def chunks():                                # no Content-Length: counted while streaming
        yield b'{"model": "default", "input": ["'
        for _ in range(100):
            yield b"a" * 100
        yield b'"]}'
    r = httpx.post(url, content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert httpx.post(url, json={"model": "default", "input": ["ok"]}, headers=AUTH).status_code == 200


def test_url_inputs_to_private_addresses_refused(slow_server) -> None:
    url = slow_server.url + "/v1/embeddings"
    for target in (slow_server.url + "/health", "http://169.254.169.254/latest/meta-data",
                   "http://[::1]/x.png", "file:///etc/passwd", "/etc/passwd"):
        r = httpx.post(url, json={"model": "default", "input": [{"image": target}]}, headers=AUTH)
        assert r.status_code == 422, (target, r.text)
        assert r.json()["errors"][0]["field"] == "input[0].image"


def test_back_pressure_and_disconnect(slow_server) -> None:
    url = slow_server.url + "/v1/embeddings"
    before = httpx.get(slow_server.url + "/metrics").text
    results: dict[str, httpx.Response] = {}

    def busy():
        results["busy"] = httpx.post(url, json={"model": "default", "input": ["a", "b", "c"]}, headers=AUTH,
                                     timeout=30)
    t = threading.Thread(target=busy)
    t.start()
    time.sleep(0.15)                             # 3 of 4 pending items taken
    r = httpx.post(url, json={"model": "default", "input": ["d", "e"]}, headers=AUTH)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["code"] == "SERVICE_OVERLOADED"
    # A client that gives up once its item is queued: the item never reaches the model. (Waiting
    # for the queue, not a fixed client timeout: on a loaded machine a 0.1 s timeout could fire
    # before the request was even queued, and then nothing would be dropped.)
    async def give_up_once_queued() -> None:
        async with httpx.AsyncClient() as client:
            request = asyncio.ensure_future(client.post(url, json={"model": "default", "input": ["never computed"]},
                                                        headers=AUTH, timeout=30))
            for _ in range(200):
                await asyncio.sleep(0.005)
                queued = metric((await client.get(slow_server.url + "/metrics")).text, "omnivec_queue_depth")
                if queued >= 1:
                    break
            assert queued >= 1 and not request.done()
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
    asyncio.run(give_up_once_queued())
    t.join()
    assert results["busy"].status_code == 200
    time.sleep(0.6)
    after = httpx.get(slow_server.url + "/metrics").text
    assert metric(after, "omnivec_dropped_items_total") - metric(before, "omnivec_dropped_items_total") == 1
    assert metric(after, "omnivec_rejected_requests_total") >= 1
    assert httpx.post(url, json={"model": "default", "input": ["after"]}, headers=AUTH).status_code == 200
