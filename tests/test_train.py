"""``omnivec train`` end to end on a tiny BERT built in the test (real tokenizer, real stdlib pairs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import assert_micro_batches_match_full_batch

pytestmark = pytest.mark.slow  # trains adapters and projectors on real models



@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """96 real docstring -> code pairs from the standard library, as JSONL with hard negatives."""
    from omnivec.train.data import stdlib_code_pairs
    from omnivec.data.stdlib import stdlib_root
    pairs, _ = stdlib_code_pairs(roots=[stdlib_root() / "json"])
    pairs += stdlib_code_pairs(roots=[stdlib_root() / "email"])[0]
    assert len(pairs) >= 96
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with path.open("w") as fh:
        for p in pairs[:96]:
            fh.write(json.dumps({"query": p.query, "positive": p.positive, "negatives": p.negatives}) + "\n")
    return path


def _config(base, data, out, **kw):
    from omnivec.train import TrainConfig
    args = dict(task="code", data=str(data), out=str(out), base=str(base), batch_size=8, max_steps=12,
                lr=5e-3, projector_lr=5e-3, temperature=0.05, val_fraction=0.1, eval_every=6, save_every=3,
                multivector_dim=16, max_doc_tokens=64, max_query_tokens=32, seed=3)
    args.update(kw)
    return TrainConfig(**args)


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(folder / "adapter_model.safetensors"))


def test_loss_falls_backbone_frozen_and_output_loads(tiny_encoder, pairs_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import omnivec
    from omnivec.train import Trainer
    before = load_file(str(tiny_encoder / "model.safetensors"))
    trainer = Trainer(_config(tiny_encoder, pairs_file, tmp_path / "ad", max_steps=24), progress=False)
    result = trainer.run()
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert result.steps == 24 and len(losses) >= 2
    assert np.mean(trainer.step_losses[-6:]) < np.mean(trainer.step_losses[:6]), trainer.step_losses
    # the backbone is frozen: every non-LoRA weight of the trained model equals the checkpoint's
    live = {k.replace(".base.", "."): v for k, v in trainer.enc.module.state_dict().items() if "lora_" not in k}
    assert before.keys() <= live.keys()
    for key, value in before.items():
        assert torch.equal(live[key], value), key
    out = tmp_path / "ad"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_names"] == ["code"] and cfg["r"] == 8
    assert (out / "multivector_projector.safetensors").is_file()
    meta = json.loads((out / "omnivec-adapters.json").read_text())
    assert meta["tasks"]["code"]["steps"] == 24

    # the tiny model's 30522 x 32 embedding matrix counts as "large": task graphs share it (the
    # graphs are built here, in-process, where that threshold applies; a fresh cache)
    import omnivec.models.encoder_onnx as encoder_onnx
    from omnivec.models.encoder import build_graph
    monkeypatch.setattr(encoder_onnx, "SHARED_INITIALIZER_MIN_BYTES", 2_000_000)
    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path / "cache"))
    build_graph(tiny_encoder)
    build_graph(tiny_encoder, adapter_dir=out, task="code")
    texts = ["Return the JSON encoding of an object.", "def f(x):\n    return x + 1"]
    bare = omnivec.load(str(tiny_encoder), adapters=None, backend="torch")
    torch_m = omnivec.load(str(tiny_encoder), adapters=str(out), backend="torch")
    onnx_m = omnivec.load(str(tiny_encoder), adapters=str(out), backend="onnx")
    assert torch_m.multivector_dim == 16 and onnx_m.multivector_dim == 16
    for task in ("code.query", "code.passage"):
        a = torch_m.encode(texts, task=task)
        b = onnx_m.encode(texts, task=task)
        assert np.min(np.sum(a * b, axis=1)) > 0.9999                    # merged-ONNX == routed torch
        assert np.max(np.abs(a - bare.encode(texts, task=task))) > 1e-3  # the adapter does something
    shared = onnx_m.model.backbone.shared
    assert len(shared) == 1 and "word_embeddings" in next(iter(shared)), list(shared)
    assert onnx_m.model.backbone.shared and onnx_m.model.task_graphs.graphs["code"].shared
    # a task without an adapter runs the bare backbone, on both backends, also in a mixed batch
    mixed = ["retrieval.query", "code.query"]
    for m in (torch_m, onnx_m):
        got = m.encode(texts, task=mixed)
        assert np.allclose(got[0], bare.encode(texts[:1], task="retrieval.query")[0], atol=1e-5)
        assert np.allclose(got[1], torch_m.encode(texts[1:], task="code.query")[0], atol=1e-4)


def test_deterministic_and_resumable(tiny_encoder, pairs_file, tmp_path):
    from omnivec.train import Trainer
    Trainer(_config(tiny_encoder, pairs_file, tmp_path / "a"), progress=False).run()
    Trainer(_config(tiny_encoder, pairs_file, tmp_path / "b"), progress=False).run()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # interrupted (Ctrl-C) after step 7, last checkpoint at step 6; the rerun resumes there
    def interrupt(step, parts):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tiny_encoder, pairs_file, tmp_path / "c"), progress=False, on_step=interrupt).run()
    logs: list[str] = []
    Trainer(_config(tiny_encoder, pairs_file, tmp_path / "c"), progress=False, log=logs.append).run()
    assert any("resumed from step 6" in m for m in logs), logs
    c = _weights(tmp_path / "c")
    assert all(np.allclose(a[k], c[k], atol=1e-6) for k in a)


def test_second_task_joins_the_folder_and_cosent(tiny_encoder, tmp_path):
    """A graded (CoSENT) text-matching adapter added to a folder that holds a code adapter."""
    from omnivec.train import Trainer
    rows = []
    words = ["cat", "dog", "car", "tree", "house", "river", "phone", "bread"]
    for i, w in enumerate(words):
        for j, v in enumerate(words):
            rows.append({"text1": f"a photo of a {w}", "text2": f"a picture of a {v}", "score": 5.0 if i == j else 0.0})
    data = tmp_path / "sts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    code_rows = tmp_path / "code.jsonl"
    code_rows.write_text("\n".join(json.dumps({"query": f"add {i}", "positive": f"x + {i}"}) for i in range(40)))
    out = tmp_path / "ad"
    Trainer(_config(tiny_encoder, code_rows, out, max_steps=3, eval_every=3), progress=False).run()
    code_before = _weights(out)
    res = Trainer(_config(tiny_encoder, data, out, task="text-matching", loss="cosent", max_steps=6, eval_every=3),
                  progress=False).run()
    assert "spearman" in res.best_val
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_names"] == ["code", "text-matching"]
    after = _weights(out)
    for k, v in code_before.items():          # the code adapter is kept as it was
        assert np.array_equal(after[k], v)
    assert any(".text-matching." in k for k in after)


def test_bad_inputs_are_clear(tiny_encoder, tmp_path):
    from omnivec.train import Trainer
    from omnivec.train.data import read_jsonl
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "positive": "b"}\n{"oops": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(bad)
    bad.write_text('{"query": "a", "positive": "b"}\nnot json\n')
    with pytest.raises(ValueError, match="invalid JSON"):
        read_jsonl(bad)
    with pytest.raises(FileNotFoundError):
        Trainer(_config(tiny_encoder, tmp_path / "missing.jsonl", tmp_path / "o"), progress=False).run()
    ok = tmp_path / "ok.jsonl"
    ok.write_text("\n".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) for i in range(40)))
    with pytest.raises(ValueError, match="task must be"):
        Trainer(_config(tiny_encoder, ok, tmp_path / "o", task="summarise"), progress=False).run()
    with pytest.raises(ValueError, match="cosent"):
        Trainer(_config(tiny_encoder, ok, tmp_path / "o", loss="cosent"), progress=False).run()


def test_builders_hold_out_evaluation_data():
    from omnivec.data.humaneval import humaneval_pairs
    from omnivec.train.data import (DJANGO_TRAIN_LANGUAGES, _shingles, django_parallel_pairs, is_heldout_string,
                                    stdlib_code_pairs)
    from omnivec.data.stdlib import stdlib_root
    pairs, stats = stdlib_code_pairs(roots=[stdlib_root() / "json", stdlib_root() / "collections"])
    assert stats["kept"] == len(pairs) > 20
    he = set()
    for p in humaneval_pairs():
        he |= _shingles(p.query) | _shingles(p.document)
    for p in pairs:
        assert not (_shingles(p.query) | _shingles(p.positive)) & he
        assert p.query not in p.positive          # the docstring is removed from the document
    dj, per_lang = django_parallel_pairs(DJANGO_TRAIN_LANGUAGES[:2])
    assert set(per_lang) == set(DJANGO_TRAIN_LANGUAGES[:2])
    english = {p.query for p in dj[::2]}
    assert english and not any(is_heldout_string(e) for e in english)
    assert "ar" not in DJANGO_TRAIN_LANGUAGES and "ko" not in DJANGO_TRAIN_LANGUAGES


def test_cached_gradient_micro_batches_match_the_full_batch(tiny_encoder, pairs_file, tmp_path):
    """--micro-batch (GradCache) gives the same loss and the same gradients as one full batch."""
    from omnivec.train import Trainer
    assert_micro_batches_match_full_batch(
        lambda micro: Trainer(_config(tiny_encoder, pairs_file, tmp_path / f"m{micro}", micro_batch=micro),
                              progress=False),
        lambda t: [t.train_rows[i] for i in range(8)])


def test_cli_train_writes_a_loadable_folder(tiny_encoder, pairs_file, tmp_path):
    from typer.testing import CliRunner

    from omnivec.cli import app
    out = tmp_path / "cli-ad"
    args = ["train", "code", "--data", str(pairs_file), "--out", str(out), "--base", str(tiny_encoder),
            "--max-steps", "2", "--batch-size", "8", "--eval-every", "2", "--multivector-dim", "16"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "adapter_config.json").read_text())["task_names"] == ["code"]
    bad = CliRunner().invoke(app, ["train", "summarise", "--data", str(pairs_file), "--out", str(out),
                                   "--base", str(tiny_encoder)])
    assert bad.exit_code == 2 and "task must be" in bad.output


def _projector_config(base, out, *sources, **kw):
    from omnivec.train import ProjectorConfig
    args = dict(out=str(out), base=str(base), sources=tuple(sources), dim=16, epochs=4, batch_size=8, lr=5e-3,
                val_fraction=0.1, max_query_tokens=32, max_doc_tokens=64)
    args.update(kw)
    return ProjectorConfig(**args)


def test_projector_distillation_learns_keeps_weights_and_loads(tiny_encoder, pairs_file, tmp_path):
    from safetensors.numpy import load_file

    import omnivec
    from omnivec.train import ProjectorTrainer, Trainer
    out = tmp_path / "ad"
    assert Trainer(_config(tiny_encoder, pairs_file, out, loss="infonce"), progress=False).run().best_step > 0
    assert not (out / "multivector_projector.safetensors").exists()
    adapters_before = (out / "adapter_model.safetensors").read_bytes()
    backbone_before = (tiny_encoder / "model.safetensors").read_bytes()
    code, retrieval = f"{pairs_file}:code", f"{pairs_file}:retrieval"
    trainer = ProjectorTrainer(_projector_config(tiny_encoder, out, code, retrieval), progress=False)
    result = trainer.run()
    assert len(trainer.step_losses) == 4 * 2 * 10          # 4 epochs x 2 sources x 10 batches of 8
    assert np.mean(trainer.step_losses[-8:]) < np.mean(trainer.step_losses[:8]), trainer.step_losses
    assert (out / "adapter_model.safetensors").read_bytes() == adapters_before
    assert (tiny_encoder / "model.safetensors").read_bytes() == backbone_before
    # each source's token states went through its own task's adapter (code: trained LoRA; retrieval: bare)
    row = trainer.sources[0].train[0]
    assert trainer.sources[1].train[0]["q"] == row["q"]       # the tiny model's prompts are the same
    assert not torch.equal(trainer.cache.states["code", row["q"]], trainer.cache.states["retrieval", row["q"]])
    weights = load_file(str(out / "multivector_projector.safetensors"))
    assert weights["weight"].shape == (16, 32) and weights["bias"].shape == (16,)
    meta = json.loads((out / "omnivec-adapters.json").read_text())["projector"]
    assert meta["best_epoch"] == result.best_epoch and "code" in json.loads((out / "omnivec-adapters.json").read_text())["tasks"]
    for key in (f"{code}/projected", f"{code}/raw", f"{code}/dense", f"{retrieval}/projected"):
        assert 0.0 < result.best_val[key] <= 1.0, key
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2, 3, 4]
    m = omnivec.load(str(tiny_encoder), adapters=str(out))
    assert m.multivector_dim == 16
    vecs = m.encode(["Return the JSON encoding of an object."], task="code.query", multivector=True)[0]
    assert vecs.shape[1] == 16 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    raw = omnivec.load(str(tiny_encoder), adapters=str(out), projector=False)     # raw token states instead
    assert raw.multivector_dim == 32
    assert np.allclose(raw.encode(["x"], task="code.query"), m.encode(["x"], task="code.query"), atol=1e-6)


def test_projector_alone_on_the_bare_backbone_and_cli(tiny_encoder, pairs_file, tmp_path):
    from typer.testing import CliRunner

    import omnivec
    from omnivec.cli import app
    out = tmp_path / "proj-only"
    args = ["train-projector", "--out", str(out), "--base", str(tiny_encoder), "--source", f"{pairs_file}:retrieval",
            "--dim", "8", "--epochs", "1", "--batch-size", "8"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["multivector_projector.safetensors", "omnivec-adapters.json"]
    bare = omnivec.load(str(tiny_encoder), adapters=None)
    m = omnivec.load(str(tiny_encoder), adapters=str(out))     # a projector without task adapters loads
    assert m.multivector_dim == 8 and m.model.adapters == ()
    text = ["Serialize obj to a JSON formatted str."]
    assert np.allclose(m.encode(text, task="retrieval.query"), bare.encode(text, task="retrieval.query"), atol=1e-5)
    for bad, message in ((f"{pairs_file}", "DATA:TASK"), (f"{pairs_file}:summarise", "DATA:TASK"),
                         ("no-such-file.jsonl:code", "not a file")):
        res = CliRunner().invoke(app, ["train-projector", "--out", str(tmp_path / "x"), "--base", str(tiny_encoder),
                                       "--source", bad, "--dim", "8"])
        assert res.exit_code == 2 and message in res.output, res.output


def test_projector_bad_settings_are_clear(tiny_encoder, pairs_file, tmp_path):
    from omnivec.train import ProjectorTrainer
    graded = tmp_path / "sts.jsonl"
    graded.write_text("\n".join(json.dumps({"text1": f"a {i}", "text2": f"b {i}", "score": i % 5}) for i in range(40)))
    cases = ((_projector_config(tiny_encoder, tmp_path / "a", f"{pairs_file}:code", dim=64), "hidden size 32"),
             (_projector_config(tiny_encoder, tmp_path / "b", f"{graded}:text-matching"), "needs pairs"),
             (_projector_config(tiny_encoder, tmp_path / "c", f"{pairs_file}:code", batch_size=500), "fewer than one batch"))
    for cfg, message in cases:
        with pytest.raises(ValueError, match=message):
            ProjectorTrainer(cfg, progress=False).run()
