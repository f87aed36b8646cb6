"""Compute precision (fp32 | int8 | bf16): CPU feature detection, the checks of a request, the
int8 graph's comparison with fp32, and the bf16 path (issue 23)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import omnivec
import omnivec.cpu_features as cpu_features
from omnivec.cpu_features import parse_cpuinfo
from omnivec.models import encoder_onnx
from omnivec.precision import PrecisionError, plan

# /proc/cpuinfo flag lines as real machines print them (abridged to the flags that matter)
ZEN2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 ssse3 fma avx f16c avx2 bmi2 sha_ni\n"
ZEN4 = ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 "
        "avx512_vnni avx512_vbmi2\n")
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx_vnni avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm\n"

CPU = torch.device("cpu")


def test_cpuinfo_flags_decide_the_paths():
    zen2, zen4, spr = parse_cpuinfo(ZEN2), parse_cpuinfo(ZEN4), parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert (zen2.avx2, zen2.avx512, zen2.int8_dot, zen2.bf16) == (True, False, False, False)
    assert zen2.summary() == "AVX2, no VNNI, no BF16"
    assert (zen4.avx512, zen4.int8_dot, zen4.bf16) == (True, True, True)
    assert zen4.summary() == "AVX-512, avx512_vnni, avx512_bf16"
    assert spr.int8_dot and spr.bf16 and "amx_int8" in spr.summary() and "amx_bf16" in spr.summary()
    arm = parse_cpuinfo(GRAVITON)
    assert arm.known and not arm.avx2 and not arm.bf16        # ARM's bf16 is not the x86 path
    unknown = parse_cpuinfo("")
    assert not unknown.known and "not readable" in unknown.summary()


def test_this_machine_is_detected():
    features = cpu_features.detect()
    assert features is cpu_features.detect()                  # read once per process
    if features.known:
        assert features.summary() and isinstance(features.as_dict()["int8_dot"], bool)


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision="int4"), "precision='int4' is not one of fp32, int8, bf16"),
    (dict(precision="bf16", quantize=True), "quantize=True (--quantize) means precision='int8'"),
    (dict(precision="bf16", dtype=torch.float32), "contradicts precision='bf16'"),
    (dict(precision="int8", dtype=torch.bfloat16), "contradicts precision='int8'"),
    (dict(quantize=True, dtype=torch.float16), "contradicts quantize=True"),
    (dict(precision="int8", device=torch.device("cuda")), "precision='int8' is a CPU path"),
    (dict(precision="int8", family_int8=False, family="jina-v3"), "the jina-v3 family has no int8 path"),
    (dict(precision="bf16"), "needs a CPU with native bf16"),
])
def test_impossible_requests_are_refused_naming_the_field(kwargs, message):
    args = dict(precision=None, quantize=False, dtype=None, device=CPU, family="encoder", family_int8=True,
                features=parse_cpuinfo(ZEN2))
    args.update(kwargs)
    with pytest.raises(PrecisionError, match="precision") as info:
        plan(**args)
    assert message in str(info.value)


def test_requests_map_to_the_family_loader():
    zen2, zen4 = parse_cpuinfo(ZEN2), parse_cpuinfo(ZEN4)
    base = dict(dtype=None, device=CPU, family="encoder", family_int8=True)
    default = plan(None, quantize=False, features=zen2, **base)
    assert (default.name, default.dtype, default.quantize) == ("fp32", None, False)
    assert "the default" in default.reason and "no VNNI" in default.reason
    assert "native dot products" in plan(None, quantize=False, features=zen4, **base).reason
    int8 = plan("int8", quantize=False, features=zen2, **base)
    assert int8.quantize and int8.dtype is None and "checked against its fp32 graph" in int8.reason
    assert plan(None, quantize=True, features=zen2, **base) == int8          # the older spelling
    bf16 = plan("bfloat16", quantize=False, features=zen4, **base)
    assert (bf16.name, bf16.dtype) == ("bf16", torch.bfloat16)
    gpu = plan("bf16", quantize=False, features=zen2, **{**base, "device": torch.device("cuda")})
    assert gpu.dtype == torch.bfloat16                                        # GPUs need no CPU flag


def _fake_cpu(monkeypatch, text: str) -> None:
    monkeypatch.setattr(cpu_features, "detect", lambda: parse_cpuinfo(text))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


TEXTS = ["how do I reset my password", "def add(a, b):\n    return a + b",
         "Die Bundesregierung hat neue Regeln beschlossen.", "La tour Eiffel se trouve à Paris."]


def test_bf16_runs_torch_bfloat16_where_the_cpu_has_it(tiny_encoder, monkeypatch):
    """On a CPU with AVX512_BF16 (simulated here: torch's bf16 arithmetic is the same, only
    slower, without it), precision='bf16' loads the torch backbone in bfloat16."""
    _fake_cpu(monkeypatch, ZEN4)
    fp32 = omnivec.load(tiny_encoder, device="cpu")
    bf16 = omnivec.load(tiny_encoder, device="cpu", precision="bf16")
    info = bf16.info()
    assert (info["precision"], info["backend"], info["dtype"]) == ("bf16", "torch", "bfloat16")
    assert "avx512_bf16" in info["precision_reason"]
    a = fp32.encode(TEXTS, task="retrieval.passage")
    b = bf16.encode(TEXTS, task="retrieval.passage")
    assert b.dtype == np.float32 and b.shape == a.shape
    assert _cos(a, b).min() >= 0.999
    mv = bf16.encode(TEXTS[:2], task="retrieval.query", multivector=True)
    assert mv[0].dtype == np.float32 and np.isfinite(mv[0]).all()


def test_bf16_is_refused_where_the_cpu_would_emulate_it(tiny_encoder, monkeypatch):
    _fake_cpu(monkeypatch, ZEN2)
    with pytest.raises(PrecisionError, match="AVX2, no VNNI, no BF16"):
        omnivec.load(tiny_encoder, device="cpu", precision="bf16")
    from typer.testing import CliRunner

    from omnivec.cli import app
    result = CliRunner().invoke(app, ["info", "--model", str(tiny_encoder), "--precision", "bf16"])
    assert result.exit_code == 2 and "needs a CPU with native bf16" in result.output


def test_int8_graph_is_checked_against_fp32_and_says_so(tiny_encoder, tmp_path, monkeypatch):
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_encoder, model_dir)
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path / "cache"))
    m = omnivec.load(model_dir, device="cpu", precision="int8", adapters=None)
    info = m.info()
    assert info["precision"] == "int8" and info["quantization"] == "int8-dynamic"
    check = info["int8_check"]
    assert check["texts"] == len(encoder_onnx.CHECK_TEXTS) and check["bar"] == encoder_onnx.INT8_MIN_COSINE
    assert 0.99 <= check["min_cosine"] <= check["mean_cosine"] <= 1.0
    assert json.loads(encoder_onnx.check_file(m.model.backbone.file).read_text()) == check
    fp32 = omnivec.load(model_dir, device="cpu", adapters=None)
    assert _cos(m.encode(TEXTS), fp32.encode(TEXTS)).min() >= 0.99


def test_an_int8_graph_that_strays_from_fp32_is_refused_and_never_cached(tiny_encoder, tmp_path, monkeypatch):
    """A model with an outlier feature (one hidden dimension 300x the others, the pattern that
    breaks per-tensor int8 activations: its scale rounds every other dimension towards zero)
    quantises badly (min cosine ~0.95): the check refuses it and nothing is cached."""
    from transformers import BertModel

    model_dir = tmp_path / "outliers"
    shutil.copytree(tiny_encoder, model_dir)
    bert = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False)
    with torch.no_grad():
        bert.embeddings.word_embeddings.weight[:, 0] *= 300.0
    bert.save_pretrained(model_dir)
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="strays from its fp32 graph"):
        encoder_onnx.build_onnx(model_dir, quantize=True,
                                load_torch=lambda: BertModel.from_pretrained(str(model_dir), add_pooling_layer=False))
    float_file = encoder_onnx.onnx_file(model_dir)
    int8_file = encoder_onnx.onnx_file(model_dir, quantize=True)
    assert float_file.is_file()                                   # the fp32 graph is fine and kept
    assert not int8_file.exists() and not encoder_onnx.check_file(int8_file).exists()
    assert sorted(p.name for p in int8_file.parent.iterdir() if "int8" in p.name) == []


def test_a_refused_int8_graph_fails_the_load_instead_of_running_unchecked_int8(tiny_encoder, tmp_path, monkeypatch):
    """The load does not swap in torch's dynamic int8 (never compared with fp32) when the ONNX
    int8 graph is refused; it fails and says why."""

    def refused(*args, **kwargs):
        raise RuntimeError("the int8 graph of tiny strays from its fp32 graph (min cosine 0.95 < 0.99)")

    monkeypatch.setattr(encoder_onnx, "load_onnx_backbone", refused)
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="strays from its fp32 graph") as info:
        omnivec.load(tiny_encoder, device="cpu", precision="int8", adapters=None)
    assert "the int8 path is unavailable" in str(info.value)


def test_cli_names_the_flag_that_contradicts(tiny_encoder):
    from typer.testing import CliRunner

    from omnivec.cli import app
    result = CliRunner().invoke(app, ["info", "--model", str(tiny_encoder), "--precision", "int4"])
    assert result.exit_code == 2 and "--precision: precision='int4' is not one of fp32, int8, bf16" in result.output
    result = CliRunner().invoke(app, ["prepare", "--model", str(tiny_encoder), "--quantize", "--precision", "bf16"])
    assert result.exit_code == 2 and "--quantize" in result.output and "means precision='int8'" in result.output
    result = CliRunner().invoke(app, ["info", "--model", str(tiny_encoder), "--precision", "int8", "--device", "nope"])
    assert result.exit_code == 2 and "Traceback" not in result.output
