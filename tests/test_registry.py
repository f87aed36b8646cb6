import json

import pytest

from omnivec.models.registry import detect_family, resolve_model_path


def test_detect_family(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl",
                                                      "architectures": ["JinaEmbeddingsV4Model"]}))
    assert detect_family(tmp_path) == "jina-v4"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    assert detect_family(tmp_path) == "encoder"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="unsupported model type 'llama'"):
        detect_family(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        detect_family(tmp_path / "missing")


def test_unknown_names_and_offline_hub_ids_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        resolve_model_path("nope")
    with pytest.raises(ValueError, match="pass the local directory"):
        resolve_model_path("jinaai/jina-embeddings-v4")
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        resolve_model_path(f)


def test_builtin_minilm_resolves_to_the_installed_package():
    path = resolve_model_path("all-MiniLM-L6-v2")
    assert (path / "config.json").exists()


@pytest.mark.parametrize("edit", ["drop", "extra"])
def test_encoder_weights_missing_or_unused_refuse_the_load(tiny_encoder, tmp_path, edit):
    """transformers only logs a partial load (random layers still give vectors); omnivec refuses it."""
    import shutil

    from _checkpoint_edits import tamper

    import omnivec
    from omnivec.models.base import CheckpointMismatch

    path = tmp_path / "bert"
    shutil.copytree(tiny_encoder, path)
    tamper(path / "model.safetensors", edit, drop_suffix="layer.1.output.dense.weight",
           extra_name="encoder.layer.0.attention.self.extra.weight")
    with pytest.raises(CheckpointMismatch, match="output.dense" if edit == "drop" else "extra"):
        omnivec.load(str(path), device="cpu", backend="torch")


def test_an_encoder_saved_with_its_pretraining_head_loads(tmp_path):
    """bert-base-uncased and friends ship an MLM head beside the encoder: unused by embedding,
    so not a mismatch (only the encoder's own modules must load whole)."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM

    import omnivec
    from _helpers_encoder import minilm_dir

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    path = tmp_path / "mlm"
    BertForMaskedLM(cfg).save_pretrained(path)
    import shutil
    shutil.copy(minilm_dir() / "tokenizer.json", path / "tokenizer.json")
    m = omnivec.load(str(path), device="cpu", backend="torch")
    v = m.encode(["hello world"], task="retrieval.query")
    assert v.shape == (1, 32) and np.isfinite(v).all()
