"""Graphs are built in a child process, ahead of use when asked, and loaded without copies.

Issue 24: a first request of a task used to export its ONNX graph inside the serving process
(~20 s, and the exporter's 8 GB stayed with the server). Uses the tiny encoder of conftest.py
with task adapters trained for two steps (a real adapter folder, made in code).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import omnivec
from omnivec.models import encoder_onnx
from omnivec.models.encoder import build_graph, task_variant

pytestmark = pytest.mark.slow   # exports ONNX graphs in child processes


@pytest.fixture(scope="module")
def adapters(tiny_encoder, tmp_path_factory):
    """A real adapter folder for the tiny encoder: LoRA for ``code`` (one task keeps the child
    builds, ~15 s each here, to two)."""
    import torch
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("tiny-adapters")
    torch.manual_seed(1)
    tensors = {}
    for task in ("code",):
        for layer in range(2):
            for name, (i, o) in {"attention.self.query": (32, 32), "attention.self.value": (32, 32)}.items():
                base = f"encoder.layer.{layer}.{name}"
                tensors[f"{base}.lora_A.{task}.weight"] = torch.randn(4, i) * 0.1
                tensors[f"{base}.lora_B.{task}.weight"] = torch.randn(o, 4) * 0.1
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "target_modules": ["query", "value"],
        "task_names": ["code"]}))
    (out / "omnivec-adapters.json").write_text(json.dumps({"bare_tasks": ["retrieval"]}))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cold-cache")    # starts empty: a fresh machine


def test_prepare_builds_every_task_in_child_processes(tiny_encoder, adapters, cache, monkeypatch):
    from typer.testing import CliRunner

    from omnivec.cli import app
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(cache))
    exports, children = dict(encoder_onnx.export_count), encoder_onnx.child_builds["count"]
    result = CliRunner().invoke(app, ["prepare", "--model", str(tiny_encoder), "--adapters", str(adapters)])
    assert result.exit_code == 0, result.output
    assert encoder_onnx.child_builds["count"] == children + 2       # the bare graph, code's
    assert encoder_onnx.export_count == exports                     # nothing exported in this process
    assert encoder_onnx.onnx_file(tiny_encoder, variant=task_variant(adapters, "code")).is_file()
    assert "building the ONNX graph of task 'code'" in result.stderr and "built the ONNX graph" in result.stderr


def test_after_prepare_no_load_or_request_builds_anything(tiny_encoder, adapters, cache, monkeypatch):
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(cache))
    children = encoder_onnx.child_builds["count"]
    m = omnivec.load(str(tiny_encoder), adapters=str(adapters), backend="onnx")
    m.model.load_all_tasks()                                        # what serve does before /ready
    assert set(m.model.task_graphs.graphs) == {"code"}
    ref = omnivec.load(str(tiny_encoder), adapters=str(adapters), backend="torch")
    for task in ("code.query", "retrieval.passage"):
        got, want = m.encode(["sort a list"], task=task), ref.encode(["sort a list"], task=task)
        assert float(np.sum(got * want)) > 0.9999
    assert encoder_onnx.child_builds["count"] == children


def test_large_initializers_are_mapped_from_the_data_file(tiny_encoder, tmp_path, monkeypatch):
    # built here (in-process) with a threshold the tiny model's 30522 x 32 embeddings pass
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encoder_onnx, "SHARED_INITIALIZER_MIN_BYTES", 1_000_000)
    file = build_graph(tiny_encoder)
    manifest = json.loads((file.parent / (file.name + ".shared.json")).read_text())
    [(name, info)] = manifest.items()
    assert "word_embeddings" in name and info["dims"] == [30522, 32]
    assert file.stat().st_size < 1_000_000 < (file.parent / (file.name + ".data")).stat().st_size
    shared = encoder_onnx.shared_initializers(file)
    assert isinstance(shared[name].numpy(), np.ndarray) and shared[name].shape() == [30522, 32]
    m = omnivec.load(str(tiny_encoder), adapters=None, backend="onnx")
    assert set(m.model.backbone.shared) == {name}
    ref = omnivec.load(str(tiny_encoder), adapters=None, backend="torch")
    got, want = m.encode(["the same vector"]), ref.encode(["the same vector"])
    assert float(np.sum(got * want)) > 0.9999


def test_a_failed_child_build_says_why(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path / "cache"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_encoder, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuntimeError, match=r"building the ONNX graph of broken failed \(exit 1\)"):
        encoder_onnx.build_in_child(broken)
