"""A jina-embeddings-v3 checkpoint served over HTTP: its five tasks, its refusals, its model card.

The tiny checkpoint (official layout, random weights) runs the torch backend: what is tested
here is the API around the family (task names, /v1/models, late chunking), not the numerics
(tests/test_jina_v3.py holds those against an independent reference).
"""
from __future__ import annotations

import httpx
import numpy as np
import pytest

import omnivec
from omnivec.server import ServerSettings, create_app
from omnivec.testing import JINA_V3_TASKS, make_tiny_jina_v3

from _server_util import LiveServer

pytestmark = pytest.mark.slow  # a live server


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return omnivec.load(str(make_tiny_jina_v3(tmp_path_factory.mktemp("v3") / "jina-v3-tiny")),
                        device="cpu", backend="torch")


@pytest.fixture(scope="module")
def live(v3):
    with LiveServer(create_app(v3, ServerSettings())) as server:
        yield server


def post(live, body) -> httpx.Response:
    return httpx.post(live.url + "/v1/embeddings", json=body, timeout=60)


def test_models_lists_the_five_v3_tasks(live) -> None:
    entry = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert set(entry["tasks"]) == set(JINA_V3_TASKS)
    assert entry["tasks"]["retrieval.query"] == "retrieval.query"
    assert entry["max_output_length"] == 64
    assert entry["precision"] == "fp32"                 # the compute precision it was loaded with


@pytest.mark.parametrize("task", JINA_V3_TASKS)
def test_every_v3_task_is_served_as_the_library_embeds_it(live, v3, task) -> None:
    texts = ["A short text.", "Ein zweiter, etwas längerer Text über Füchse."]
    for dialect_body in ({"input": texts, "task": task},                          # Jina
                         {"input": texts, "task": task, "encoding_format": "float"}):   # OpenAI + extension
        r = post(live, {"model": v3.info()["model"], **dialect_body})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        want = v3.encode(texts, task=task)
        assert np.allclose(got, want, atol=1e-5)


def test_a_task_the_checkpoint_lacks_is_a_4xx_naming_its_tasks(live, v3) -> None:
    r = post(live, {"model": v3.info()["model"], "input": ["x"], "task": "code.query"})
    assert r.status_code in (400, 422), r.text
    assert "retrieval.passage" in r.text and "code" in r.text
    r = post(live, {"model": v3.info()["model"], "input": ["x"], "task": "separation"})
    assert r.status_code == 200


def test_late_chunking_on_v3(live, v3) -> None:
    texts = ["The Eiffel tower stands in Paris.", "It was built in 1889.", "It is 330 metres tall."]
    r = post(live, {"model": v3.info()["model"], "input": texts, "task": "retrieval.passage",
                    "late_chunking": True})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    want = v3.embed(texts, task="retrieval.passage", late_chunking=True)
    dense = np.asarray(want.dense)
    dense = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    assert np.allclose(got, dense, atol=1e-5)
    assert r.json()["usage"]["total_tokens"] == sum(want.tokens)
    # in context: differs from each text embedded alone
    alone = v3.encode(texts, task="retrieval.passage")
    assert float(np.min(np.sum(got * alone, axis=1))) < 0.9999
