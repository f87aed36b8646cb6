"""The ONNX Runtime backend of the encoder family equals the torch one; its cache is reused."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from omnivec.execution import run_batch
from omnivec.models import encoder_onnx
from omnivec.models.base import PrepareOptions
from omnivec.models.e5_materialize import materialize_e5
from omnivec.models.encoder import EncoderModel
from omnivec.tasks import TaskSpec

from _helpers_encoder import SENTENCES, minilm_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("onnxruntime")
PASSAGE = TaskSpec("retrieval", "passage")
TEXTS = SENTENCES + [
    "The mitochondria is the powerhouse of the cell; it makes ATP through oxidative "
    "phosphorylation, and its DNA is inherited from the mother. " * 4,
    "Return a new list containing all items from the iterable in ascending order. A custom key "
    "function can be supplied to customize the sort order.",
]   # 12 texts of 3 to ~120 tokens: one padded batch

pytestmark = pytest.mark.slow  # exports and runs e5-small ONNX graphs


@pytest.fixture(scope="module")
def e5_dir():
    return materialize_e5()


@pytest.fixture(scope="module")
def e5_torch(e5_dir):
    return EncoderModel.from_directory(e5_dir, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def e5_onnx(e5_dir):
    return EncoderModel.from_directory(e5_dir, device="cpu")     # default on the CPU: onnx


def _forward(model, texts, **kw):
    prepared = [model.prepare(t, PASSAGE, PrepareOptions()) for t in texts]
    return run_batch(model, prepared, **kw)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_default_backend_and_info(e5_onnx, e5_torch):
    assert e5_onnx.backend == "onnx" and e5_torch.backend == "torch"
    assert e5_onnx.info()["backend"] == "onnxruntime" and e5_onnx.info()["quantization"] is None
    assert e5_torch.info()["backend"] == "torch"


def test_onnx_matches_torch_dense_and_multivector(e5_onnx, e5_torch):
    ours = _forward(e5_onnx, TEXTS, dense=True, multivector=True)
    ref = _forward(e5_torch, TEXTS, dense=True, multivector=True)
    assert ours.dense.dtype == torch.float32 and ours.dense.shape == ref.dense.shape
    assert _cos(ours.dense, ref.dense).min() >= 0.9999
    for a, b in zip(ours.multivector, ref.multivector):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert _cos(a, b).min() >= 0.9999                        # every token
        assert torch.allclose(a.norm(dim=-1), torch.ones(a.shape[0]), atol=1e-5)
    alone = _forward(e5_onnx, TEXTS[:1], dense=True)             # padding-invariant
    assert _cos(alone.dense, ours.dense[:1]).min() >= 0.9999


def test_int8_close_to_torch_float(e5_dir, e5_torch):
    q = EncoderModel.from_directory(e5_dir, device="cpu", quantize=True)
    assert q.backend == "onnx" and q.info()["quantization"] == "int8-dynamic"
    assert q.backbone.file.name == encoder_onnx.INT8_FILE
    assert q.info()["int8_check"]["min_cosine"] >= 0.99      # compared with its fp32 graph when built
    cos = _cos(_forward(q, TEXTS).dense, _forward(e5_torch, TEXTS).dense)
    assert cos.min() >= 0.99, cos


def test_minilm_onnx_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    path = minilm_dir()
    model = EncoderModel.from_directory(path, device="cpu", backend="onnx")
    assert "token_type_ids" in model.backbone.input_names           # BERT: segment ids exported
    ref = st.SentenceTransformer(str(path), device="cpu")
    expected = torch.from_numpy(ref.encode(TEXTS, batch_size=len(TEXTS), normalize_embeddings=True))
    assert _cos(_forward(model, TEXTS).dense, expected).min() >= 0.9999


def test_cache_is_reused(e5_dir, e5_onnx):
    file = encoder_onnx.onnx_cache_dir(e5_dir) / encoder_onnx.FLOAT_FILE
    assert file.is_file() and file.parent.parent.parent == e5_dir     # <e5 dir>/onnx/<key>/
    assert e5_onnx.backbone.file == file
    before = (file.stat().st_mtime_ns, dict(encoder_onnx.export_count), dict(encoder_onnx.child_builds))
    again = EncoderModel.from_directory(e5_dir, device="cpu")
    assert again.backend == "onnx"
    assert (file.stat().st_mtime_ns, encoder_onnx.export_count, encoder_onnx.child_builds) == before
    assert not [p for p in file.parent.iterdir() if ".tmp-" in p.name]


def test_falls_back_to_torch_without_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # import now raises ImportError
    with pytest.warns(RuntimeWarning, match="onnxruntime does not import"):
        model = EncoderModel.from_directory(minilm_dir(), device="cpu")
    assert model.backend == "torch" and model.info()["backend"] == "torch"
    assert _forward(model, TEXTS[:2]).dense.shape == (2, 384)
    with pytest.raises(RuntimeError, match="backend='onnx' unavailable"):
        EncoderModel.from_directory(minilm_dir(), device="cpu", backend="onnx")


def test_falls_back_to_torch_when_export_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path))           # cache miss: must export

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(encoder_onnx, "build_in_child", broken)
    with pytest.warns(RuntimeWarning, match="simulated exporter failure"):
        model = EncoderModel.from_directory(minilm_dir(), device="cpu")
    assert model.backend == "torch"
    assert not list((tmp_path / "onnx").rglob("*.onnx"))


def test_backend_argument_checked(e5_dir):
    with pytest.raises(ValueError, match="backend must be"):
        EncoderModel.from_directory(e5_dir, device="cpu", backend="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        EncoderModel.from_directory(e5_dir, device="cpu", dtype=torch.bfloat16, backend="onnx")


def test_word_embeddings_held_as_shared_values_from_load(e5_onnx):
    # task graphs reuse them without reopening the bare session (no double copy at any time)
    shared = e5_onnx.backbone.shared
    assert len(shared) == 1 and "word_embeddings" in next(iter(shared))
    hidden = _forward(e5_onnx, TEXTS[:2], dense=True).dense
    assert hidden.shape == (2, 384) and torch.isfinite(hidden).all()
