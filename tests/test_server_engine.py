"""Server mechanics with a fake, controllably slow model: batching, back-pressure, disconnects, auth.

No real model here, so these run in milliseconds and are deterministic.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

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
    big, small, other = (engine.admission.ticket() for _ in range(3))
    big.reserve("items", 10)                    # alone: admitted even over budget
    with pytest.raises(Overloaded) as e:
        small.reserve("items", 1)
    assert e.value.resource == "items" and "max_pending_items" in str(e.value)
    big.release()
    small.reserve("items", 3)
    other.reserve("items", 1)
    with pytest.raises(Overloaded):
        other.reserve("items", 1)               # a refusal holds nothing more
    assert engine.admission.in_use["items"] == 4
    with small, other:
        pass                                    # leaving the block gives everything back
    assert engine.admission.in_use["items"] == 0


def test_each_budget_counts_what_requests_hold() -> None:
    engine = Engine(Embedder(FakeModel()), budgets={"tokens": 100, "pixels": 1000, "values": 50})
    a, b = engine.admission.ticket(), engine.admission.ticket()
    a.reserve("tokens", 90)
    a.reserve("pixels", 5000)                   # alone in pixels: admitted over budget
    b.reserve("tokens", 10)                     # 100: full, not over
    b.reserve("values", 50)
    for resource in ("tokens", "pixels"):
        with pytest.raises(Overloaded) as e:
            b.reserve(resource, 1)
        assert e.value.resource == resource
    with pytest.raises(Overloaded):
        a.reserve("tokens", 1)                  # b holds tokens too: nobody may go over now
    b.release("tokens")
    a.reserve("tokens", 1000)                   # alone in tokens again: admitted over budget
    assert engine.admission.in_use["tokens"] == 1090
    a.release("pixels")
    b.reserve("pixels", 1000)
    a.release(), b.release()
    assert all(v == 0 for v in engine.admission.in_use.values())


@pytest.fixture(scope="module")
def slow_server():
    # 0.8 s a forward: the disconnect test cancels a queued request while the batch ahead of it
    # runs; with 0.4 s a loaded machine sometimes noticed the disconnect only after that batch,
    # and the row was computed instead of dropped
    model = FakeModel(delay=0.8)
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
    for private in ("/metrics", "/docs", "/openapi.json"):             # the rest needs the key
        assert httpx.get(slow_server.url + private).status_code == 401, private
        assert httpx.get(slow_server.url + private, headers=AUTH).status_code == 200, private


def test_public_metrics_is_a_choice() -> None:
    settings = ServerSettings(api_keys=["k"], public_metrics=True)
    with LiveServer(create_app(Embedder(FakeModel()), settings)) as server:
        for public in ("/metrics", "/docs", "/openapi.json", "/health", "/ready"):
            assert httpx.get(server.url + public).status_code == 200, public
        assert httpx.get(server.url + "/v1/models").status_code == 401


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
    r = httpx.post(url, content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
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
    before = httpx.get(slow_server.url + "/metrics", headers=AUTH).text
    results: dict[str, httpx.Response] = {}

    def busy():
        results["busy"] = httpx.post(url, json={"model": "default", "input": ["a", "b", "c"]}, headers=AUTH,
                                     timeout=30)
    t = threading.Thread(target=busy)
    t.start()
    engine = slow_server.server.config.app.state.omnivec.engine
    for _ in range(1000):                        # 3 of 4 pending items taken (no fixed sleep: a
        if engine.admission.in_use["items"] >= 3:   # loaded machine may admit it later than 0.15 s)
            break
        time.sleep(0.005)
    r = httpx.post(url, json={"model": "default", "input": ["d", "e"]}, headers=AUTH)
    assert r.status_code == 503 and 1 <= int(r.headers["Retry-After"]) <= 60   # see test_retry_after_...
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
                queued = metric((await client.get(slow_server.url + "/metrics", headers=AUTH)).text, "omnivec_queue_depth")
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
    after = httpx.get(slow_server.url + "/metrics", headers=AUTH).text
    assert metric(after, "omnivec_dropped_items_total") - metric(before, "omnivec_dropped_items_total") == 1
    assert metric(after, "omnivec_rejected_requests_total") >= 1
    assert httpx.post(url, json={"model": "default", "input": ["after"]}, headers=AUTH).status_code == 200


# ------------------------------------------------------------------ hardening (issue 15)
JINA_OPENAPI = Path(__file__).resolve().parent / "data" / "jina-openapi.json"


@pytest.fixture(scope="module")
def open_server():
    """No keys, a 1 MiB body cap and a tiny response budget (fake texts: words + 2 tokens x 8 dims)."""
    model = FakeModel()
    settings = ServerSettings(max_body_bytes=2**20)
    settings.max_response_values = 100
    with LiveServer(create_app(Embedder(model), settings)) as server:
        server.model = model
        yield server


def _post(server, content: bytes | str, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return httpx.post(server.url + "/v1/embeddings", content=content, headers=headers, timeout=30)


def _still_serving(server) -> None:
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "default", "input": ["still serving"]}, timeout=30)
    assert r.status_code == 200, r.text


def test_deeply_nested_json_is_a_400_not_a_500(open_server) -> None:
    for body in ("[" * 100000 + "]" * 100000,                                  # was a RecursionError -> 500
                 '{"model": "default", "input": ' + "[" * 200 + "]" * 200 + "}"):  # parses, but far too deep
        r = _post(open_server, body)
        assert r.status_code == 400, r.text[:300]
        out = r.json()
        assert out["code"] == "INPUT_MALFORMED_JSON" and out["error"]["code"] == "input_malformed_json"
        assert "nest" in out["detail"]
    _still_serving(open_server)


def test_json_body_needs_a_json_content_type(open_server) -> None:
    body = json.dumps({"model": "default", "input": ["x"]})
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", "application/jsonp", None):
        r = _post(open_server, body, content_type)
        assert r.status_code == 415, (content_type, r.text)
        out = r.json()     # the dialect is not known yet: both envelopes
        assert out["code"] == "INPUT_UNSUPPORTED_MEDIA_TYPE" and out["request_id"] == r.headers["X-Request-ID"]
        assert out["error"]["code"] == "input_unsupported_media_type" and "application/json" in out["detail"]
    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                         "application/vnd.api+json"):
        assert _post(open_server, body, content_type).status_code == 200, content_type


def test_unknown_fields_are_refused_by_name_in_both_dialects(open_server) -> None:
    url = open_server.url + "/v1/embeddings"
    r = httpx.post(url, json={"model": "default", "input": ["x"], "dimension": 4, "normalise": True})
    assert r.status_code == 422, r.text
    assert {"dimension", "normalise"} <= {e["field"] for e in r.json()["errors"]}
    assert "dimension" in r.json()["detail"]
    r = httpx.post(url, json={"model": "default", "input": ["x"], "encoding_format": "float", "dimension": 4})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "dimension" and "dimension" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "default", "input": [{"text": "x", "lang": "en"}]})
    assert r.status_code == 422 and "input[0].lang" in [e["field"] for e in r.json()["errors"]], r.text
    # every field of OpenAI's CreateEmbeddingRequest stays accepted
    r = httpx.post(url, json={"model": "default", "input": ["x"], "encoding_format": "base64", "dimensions": 4,
                              "user": "user-1234"})
    assert r.status_code == 200, r.text
    # ... and every field of Jina's EmbeddingsV4Request (plus normalized)
    documented = json.loads(JINA_OPENAPI.read_text())["components"]["schemas"]["EmbeddingsV4Request"]["properties"]
    jina = {"model": "default", "input": ["x y"], "embedding_type": "float", "truncate": True,
            "late_chunking": False, "dimensions": 4, "task": "retrieval.query", "return_multivector": False,
            "return_tokenized_input": False, "normalized": True}
    assert set(documented) <= set(jina)
    r = httpx.post(url, json=jina)
    assert r.status_code == 200, r.text


def _resolve(schema: dict, spec: dict) -> dict:
    ref = schema.get("$ref", "")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_openapi_documents_embeddings_body_and_errors(open_server) -> None:
    import jsonschema

    spec = httpx.get(open_server.url + "/openapi.json").json()
    op = spec["paths"]["/v1/embeddings"]["post"]
    body_schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert op["requestBody"]["required"] is True
    members = body_schema.get("oneOf") or body_schema.get("anyOf")
    assert {m["$ref"].rsplit("/", 1)[1] for m in members} == {"JinaRequest", "OpenAIRequest"}

    def valid(instance, schema) -> bool:
        try:
            jsonschema.validate(instance, {**schema, "components": spec["components"]})
            return True
        except jsonschema.ValidationError:
            return False

    jina, openai_ = ({"$ref": m["$ref"]} for m in sorted(members, key=lambda m: m["$ref"]))
    assert valid({"model": "default", "input": [{"text": "x"}], "return_multivector": True}, jina)
    assert valid({"model": "default", "input": [[1, 2]], "encoding_format": "float", "user": "u"}, openai_)
    assert not valid({"model": "default", "input": ["x"], "dimension": 4}, body_schema)   # extra fields refused
    for status in ("400", "401", "404", "413", "415", "422", "503"):
        assert status in op["responses"], status
        schema = op["responses"][status]["content"]["application/json"]["schema"]
        assert _resolve(schema, spec)
    refused = _post(open_server, "{}", "text/plain")
    assert valid(refused.json(), op["responses"]["415"]["content"]["application/json"]["schema"])
    assert not valid({"nothing": "here"}, op["responses"]["422"]["content"]["application/json"]["schema"])


def test_multivector_output_budget_refused_before_the_forward(open_server) -> None:
    url = open_server.url + "/v1/embeddings"
    six = "one two three four five six"                 # 8 tokens x 8 dims = 64 values
    forwards = len(open_server.model.forwards)
    r = httpx.post(url, json={"model": "default", "input": [six, six], "return_multivector": True})
    assert r.status_code == 422, r.text                   # 128 values > max_response_values=100
    out = r.json()
    assert out["code"] == "OUTPUT_TOO_LARGE" and "max_response_values" in out["detail"]
    for hint in ("100", "fewer inputs", "truncate", "binary", "return_multivector"):
        assert hint in out["detail"], hint
    assert len(open_server.model.forwards) == forwards  # refused before any forward
    r = httpx.post(url, json={"model": "default", "input": [six, six], "return_multivector": True,
                              "embedding_type": ["float", "base64"]})
    assert r.status_code == 422                           # two encodings cost more, not less
    assert httpx.post(url, json={"model": "default", "input": [six], "return_multivector": True}).status_code == 200
    r = httpx.post(url, json={"model": "default", "input": [six, six], "return_multivector": True,
                              "embedding_type": "binary"})
    assert r.status_code == 200, r.text                   # packed bits: 1/8 of the cost
    # dense vectors: n x dim (16 inputs x 8 = 128 > 100); OpenAI dialect shape
    r = httpx.post(url, json={"model": "default", "input": ["x"] * 16, "encoding_format": "float"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "output_too_large", r.text
    assert httpx.post(url, json={"model": "default", "input": ["x"] * 16, "dimensions": 4}).status_code == 200


def test_retry_after_follows_the_measured_drain_rate() -> None:
    model = FakeModel(delay=0.05)
    engine = Engine(Embedder(model, max_batch_rows=1), max_wait_ms=0, max_pending_items=4)

    async def main() -> list[int]:
        engine.start()
        try:
            one, other = engine.admission.ticket(), engine.admission.ticket()
            one.reserve("items", 1)
            with pytest.raises(Overloaded) as before:  # nothing measured yet: the floor
                other.reserve("items", 4)
            one.release()
            task = resolve_task("text-matching")
            prepared, _ = await engine.prepare([f"t{i}" for i in range(6)], [task] * 6, PrepareOptions(),
                                               engine.embedder.limits)
            await engine.submit(prepared, multivector=False)   # 6 passes of 1 row: ~20 rows/s
            seen = [before.value.retry_after]
            for pending in (40, 100000):
                one.reserve("items", pending)                   # alone: admitted over budget
                with pytest.raises(Overloaded) as e:
                    other.reserve("items", 1)
                seen.append(e.value.retry_after)
                one.release()
            return seen
        finally:
            await engine.stop()

    floor, forty, huge = asyncio.run(main())
    assert floor == 1
    assert 2 <= forty <= 8, forty      # ceil(40 / ~20 per s): at most 20 per s with 0.05 s per pass
    assert huge == 60                  # clamped


def test_schema_valid_numbers_and_token_lists_are_read_as_the_schema_says() -> None:
    # found by the fuzz test: JSON Schema's integer accepts 10.0, so the server must too; an empty
    # inner token list is an OpenAI-dialect error naming it (not a Jina "not a string")
    with LiveServer(create_app(Embedder(FakeModel()), ServerSettings())) as server:
        url = server.url + "/v1/embeddings"
        r = httpx.post(url, json={"model": "default", "input": "a b", "dimensions": 4.0})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 4, r.text
        assert httpx.post(url, json={"model": "default", "input": "a", "dimensions": 4.5}).status_code == 422
        assert httpx.post(url, json={"model": "default", "input": "a", "dimensions": "4"}).status_code == 422
        r = httpx.post(url, json={"model": "default", "input": [[1, 2], []]})
        assert r.status_code == 422 and r.json()["error"]["param"].startswith("input"), r.text
        r = httpx.post(url, json={"model": "default", "input": []})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "input", r.text
