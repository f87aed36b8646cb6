"""jina-embeddings-v3 (family ``jina-v3``) against an independent plain-torch reference.

The reference at the top of this file reads the tiny checkpoint written by
``omnivec.testing.make_tiny_jina_v3`` directly (``config.json`` + ``model.safetensors`` with
``safetensors.torch.load_file``, ``tokenizer.json`` with ``tokenizers``) and recomputes
XLMRobertaLoRA by hand, in float64, one text at a time (batch of one, no padding):

* LoRA merged per task t (scaling = lora_alpha / lora_rank):
  Linear ``W_t = W + (B[t] @ A[t]) * s``; Embedding ``E_t = E + (A[t] @ B[t]) * s``;
* ``x = LN_emb(E_t[ids] + T_t[0])`` (token-type row 0, task-adapted; no absolute positions);
* post-norm blocks: ``h = LN1(x + Attn(x))``, ``x = LN2(h + fc2(gelu_erf(fc1(h))))``;
* fused ``Wqkv`` (Q, K, V column blocks, head-major), rotary GPT-NeoX half-split over the full
  head dim (base ``rotary_emb_base``, positions 0..n-1) on q and k, softmax scale 1/sqrt(d);
* mean pooling over every token (``<s>`` and ``</s>`` included), Matryoshka: truncate, then
  L2-normalise; text = ``task_instructions[task] + text``.

Late chunking: ``<s> + ids(instruction + text1) + ids(text2) + ... + </s>`` in one pass, each
text mean-pooled over its span (the first span also holds ``<s>`` and the instruction, the last
one ``</s>``).

Two checkpoints: ``make_tiny_jina_v3``'s as written (layout, registry, info; exactness too), and a
"sharp" copy of it whose Linear weights, biases and LoRA factors are scaled up. In the tiny one
the attention is nearly uniform and the Linear LoRA deltas are ~2% of the weights, so a missing
rotary or Linear LoRA moves vectors by less than the tolerance (measured: 1 - cos ~ 5e-6 and
~5e-5). The sharp copy makes rotary base, layout, softmax scale, Linear LoRA and GELU
flavour visible; ``test_reference_is_discriminative`` checks this. Besides cosine >= 0.99999,
vectors must agree element-wise to ``ATOL`` (the float32 implementation is at ~2e-7).
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

V3_TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
OFFICIAL_INSTRUCTIONS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
AUTO_MODEL = "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA"
LONG_TEXT = "The quick brown fox jumps over the lazy dog near the old river bank. " * 50   # > 600 tokens
TEXTS = [
    "how much protein should a female eat",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。 Привет, как дела? emoji 😀 and café",
    "",
    "  multiple   spaces\tand\ttabs; def add(a, b): return a + b",
    LONG_TEXT,
]
COS_MIN = 0.99999
ATOL = 1e-5            # max |ours - reference| over unit vectors (float32 vs float64: ~2e-7)
SHARP_WEIGHT_SCALE, SHARP_LORA_SCALE = 4.0, 8.0


# =============================================================================================
# Reference: plain torch, float64, one unpadded sequence at a time
# =============================================================================================
class V3Reference:
    """XLMRobertaLoRA recomputed from the checkpoint's files (no omnivec code involved)."""

    def __init__(self, path: Path) -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.cfg = json.loads((self.path / "config.json").read_text())
        self.sd = {k: v.to(torch.float64) for k, v in load_file(str(self.path / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tok.no_truncation()
        self.tok.no_padding()
        cfg = self.cfg
        self.tasks = list(cfg["lora_adaptations"])
        self.instructions = dict(cfg["task_instructions"])
        self.hidden = cfg["hidden_size"]
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.head_dim = self.hidden // self.heads
        self.eps = cfg["layer_norm_eps"]
        self.base = float(cfg["rotary_emb_base"])
        self.gelu, self.linear_lora = "none", True
        self.scaling = cfg["lora_alpha"] / cfg["lora_rank"]
        assert cfg.get("rotary_emb_dim", self.head_dim) == self.head_dim     # rotary over the full head
        self.bos = self.tok.token_to_id("<s>")
        self.eos = self.tok.token_to_id("</s>")
        self._merged: dict[str | None, dict[str, torch.Tensor]] = {}

    def variant(self, *, rotary_base: float | None = None, gelu: str = "none",
                linear_lora: bool = True) -> "V3Reference":
        """A deliberately wrong copy (same loaded tensors), only to show that the tests can tell
        such a mistake apart (``test_reference_is_discriminative``)."""
        other = copy.copy(self)
        other.base = self.base if rotary_base is None else float(rotary_base)
        other.gelu, other.linear_lora, other._merged = gelu, linear_lora, {}
        return other

    # ---------------------------------------------------------------- LoRA merging
    def _linear(self, module: str, t: int | None) -> torch.Tensor:
        w = self.sd[f"{module}.parametrizations.weight.original"]                # [out, in]
        if t is None or not self.linear_lora:
            return w
        a = self.sd[f"{module}.parametrizations.weight.0.lora_A"][t]              # [r, in]
        b = self.sd[f"{module}.parametrizations.weight.0.lora_B"][t]              # [out, r]
        return w + (b @ a) * self.scaling

    def _embedding_rows(self, module: str, rows: torch.Tensor, t: int | None) -> torch.Tensor:
        e = self.sd[f"{module}.parametrizations.weight.original"]                # [num, dim]
        out = e[rows]
        if t is None:
            return out
        a = self.sd[f"{module}.parametrizations.weight.0.lora_A"][t]              # [num, r]
        b = self.sd[f"{module}.parametrizations.weight.0.lora_B"][t]              # [r, dim]
        return out + (a[rows] @ b) * self.scaling                                # rows of A @ B

    def weights(self, task: str | None) -> dict[str, torch.Tensor]:
        """Merged Linear weights of ``task`` (None: base weights, no LoRA)."""
        if task not in self._merged:
            t = None if task is None else self.tasks.index(task)
            merged = {}
            for i in range(self.layers):
                p = f"roberta.encoder.layers.{i}."
                for m in ("mixer.Wqkv", "mixer.out_proj", "mlp.fc1", "mlp.fc2"):
                    merged[p + m] = self._linear(p + m, t)
            self._merged[task] = merged
        return self._merged[task]

    # ---------------------------------------------------------------- pieces
    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden,), self.sd[f"{name}.weight"], self.sd[f"{name}.bias"], self.eps)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        """GPT-NeoX (non-interleaved) rotary over the full head dim; x: [S, heads, head_dim]."""
        n, d = x.shape[0], self.head_dim
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        freqs = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)       # [S, d/2]
        cos = torch.cat([freqs.cos(), freqs.cos()], -1)[:, None, :]
        sin = torch.cat([freqs.sin(), freqs.sin()], -1)[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        rotated = torch.cat([-x2, x1], -1)
        return x * cos + rotated * sin

    # ---------------------------------------------------------------- forward
    def token_states(self, ids: list[int], task: str | None) -> torch.Tensor:
        """Last hidden state [S, hidden] of one unpadded sequence."""
        t = None if task is None else self.tasks.index(task)
        w = self.weights(task)
        sd = self.sd
        ids_t = torch.tensor(ids, dtype=torch.long)
        x = (self._embedding_rows("roberta.embeddings.word_embeddings", ids_t, t)
             + self._embedding_rows("roberta.embeddings.token_type_embeddings",
                                    torch.zeros(len(ids), dtype=torch.long), t))
        x = self._ln(x, "roberta.emb_ln")
        n, nh, hd = len(ids), self.heads, self.head_dim
        for i in range(self.layers):
            p = f"roberta.encoder.layers.{i}."
            qkv = x @ w[p + "mixer.Wqkv"].T + sd[p + "mixer.Wqkv.bias"]           # [S, 3H]
            q, k, v = qkv.view(n, 3, nh, hd).unbind(1)                             # (three h d)
            q, k = self._rope(q), self._rope(k)
            scores = torch.einsum("shd,thd->hst", q, k) / math.sqrt(hd)
            attn = torch.einsum("hst,thd->shd", scores.softmax(-1), v).reshape(n, self.hidden)
            attn = attn @ w[p + "mixer.out_proj"].T + sd[p + "mixer.out_proj.bias"]
            h = self._ln(x + attn, p + "norm1")
            mlp = F.gelu(h @ w[p + "mlp.fc1"].T + sd[p + "mlp.fc1.bias"], approximate=self.gelu)
            mlp = mlp @ w[p + "mlp.fc2"].T + sd[p + "mlp.fc2.bias"]
            x = self._ln(h + mlp, p + "norm2")
        return x

    def ids(self, text: str, task: str | None) -> list[int]:
        prefix = self.instructions[task] if task is not None else ""
        return self.tok.encode(prefix + text).ids                                  # <s> ... </s>

    def mean(self, text: str, task: str | None) -> torch.Tensor:
        """Un-normalised mean-pooled vector (float64)."""
        return _cached_mean(self, text, task)

    def embed(self, text: str, task: str | None, dim: int | None = None) -> np.ndarray:
        """Matryoshka: truncate, then L2-normalise."""
        v = self.mean(text, task)
        if dim is not None:
            v = v[:dim]
        return F.normalize(v, dim=-1).numpy()

    def late_chunks(self, texts: list[str], task: str) -> np.ndarray:
        """One window: <s> + ids(instr + text1) + ids(text2) + ... + </s>, one mean per text span."""
        pieces = [self.tok.encode(self.instructions[task] + texts[0], add_special_tokens=False).ids]
        pieces += [self.tok.encode(t, add_special_tokens=False).ids for t in texts[1:]]
        ids = [self.bos] + [i for piece in pieces for i in piece] + [self.eos]
        states = self.token_states(ids, task)
        out, start = [], 0
        for j, piece in enumerate(pieces):
            end = start + len(piece) + (1 if j == 0 else 0) + (1 if j == len(pieces) - 1 else 0)
            out.append(F.normalize(states[start:end].mean(0), dim=-1))
            start = end
        assert start == len(ids)
        return torch.stack(out).numpy()


@lru_cache(maxsize=None)
def _cached_mean(ref: V3Reference, text: str, task: str | None) -> torch.Tensor:
    return ref.token_states(ref.ids(text, task), task).mean(0)


def cosines(a, b) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays (or tensors)."""
    a = np.asarray(a.detach().cpu().float() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu().float() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_close(ours, expected, what: str = "") -> None:
    """Cosine >= COS_MIN per row, and (both being unit vectors) element-wise within ATOL."""
    ours = np.asarray(ours.detach().cpu().float() if isinstance(ours, torch.Tensor) else ours, np.float64)
    expected = np.asarray(expected, np.float64)
    cos = cosines(ours, expected)
    assert cos.min() >= COS_MIN, f"{what}: min cosine {cos.min():.8f}, per row {np.round(cos, 8).tolist()}"
    ours = ours / np.linalg.norm(ours, axis=-1, keepdims=True)
    expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
    err = np.abs(ours - expected).max(-1)
    assert err.max() <= ATOL, f"{what}: max |diff| {err.max():.2e} (cos {cos.min():.10f}), per row {err.tolist()}"


def max_abs_diff(a, b) -> float:
    a = np.asarray(a, np.float64) / np.linalg.norm(a, axis=-1, keepdims=True)
    b = np.asarray(b, np.float64) / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.abs(a - b).max())


# =============================================================================================
# Fixtures
# =============================================================================================
@pytest.fixture(scope="session")
def v3_dir(tmp_path_factory) -> Path:
    from omnivec.testing import make_tiny_jina_v3
    out = make_tiny_jina_v3(tmp_path_factory.mktemp("jina-v3") / "v3", seed=0)
    return Path(out)


@pytest.fixture(scope="session")
def sharp_dir(v3_dir, tmp_path_factory) -> Path:
    """``v3_dir`` with Linear weights and biases x4 and Linear LoRA factors x8 (same layout)."""
    from safetensors.torch import load_file, save_file
    out = tmp_path_factory.mktemp("jina-v3-sharp") / "sharp"
    shutil.copytree(v3_dir, out)
    sd = load_file(str(v3_dir / "model.safetensors"))
    for key, value in sd.items():
        if ".embeddings." in key or "norm" in key or "emb_ln" in key:
            continue
        if key.endswith(".parametrizations.weight.original") or key.endswith(".bias"):
            sd[key] = value * SHARP_WEIGHT_SCALE
        elif ".lora_" in key:
            sd[key] = value * SHARP_LORA_SCALE
    save_file(sd, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="session")
def tiny_ref(v3_dir) -> V3Reference:
    return V3Reference(v3_dir)


@pytest.fixture(scope="session")
def ref(sharp_dir) -> V3Reference:
    return V3Reference(sharp_dir)


@pytest.fixture(scope="session")
def tiny_torch(v3_dir):
    import omnivec
    return omnivec.load(str(v3_dir), device="cpu", backend="torch")


@pytest.fixture(scope="session")
def v3_torch(sharp_dir):
    import omnivec
    return omnivec.load(str(sharp_dir), device="cpu", backend="torch")


@pytest.fixture(scope="session")
def v3_onnx(sharp_dir):
    pytest.importorskip("onnxruntime")
    import omnivec
    return omnivec.load(str(sharp_dir), device="cpu", backend="onnx")


BACKENDS = ["torch", pytest.param("onnx", marks=pytest.mark.slow)]


@pytest.fixture(params=BACKENDS)
def v3(request):
    """The loaded model, once per backend (session-scoped underneath)."""
    return request.getfixturevalue(f"v3_{request.param}")


def _config_copy(v3_dir: Path, dst: Path, edit) -> Path:
    """``v3_dir`` with an edited config.json (the other files linked, not copied)."""
    dst.mkdir(parents=True)
    for f in v3_dir.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((v3_dir / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


# =============================================================================================
# The checkpoint writer: the official layout
# =============================================================================================
def test_tiny_checkpoint_has_the_official_layout(v3_dir, tiny_ref):
    ref = tiny_ref
    cfg = ref.cfg
    assert cfg["architectures"] == ["XLMRobertaLoRA"]
    assert cfg["auto_map"]["AutoModel"] == AUTO_MODEL
    assert cfg["model_type"] == "xlm-roberta" and cfg["position_embedding_type"] == "rotary"
    assert tuple(cfg["lora_adaptations"]) == V3_TASKS
    assert cfg["task_instructions"] == OFFICIAL_INSTRUCTIONS
    assert cfg["vocab_size"] == 250002 and cfg["pad_token_id"] == 1 and cfg["type_vocab_size"] == 1
    assert cfg["max_position_embeddings"] == 8194
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    assert any(d <= cfg["hidden_size"] for d in cfg["matryoshka_dimensions"])
    sd, r, n_tasks = ref.sd, cfg["lora_rank"], len(V3_TASKS)
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    lora_modules = {"roberta.embeddings.word_embeddings": ((V, H), (n_tasks, V, r), (n_tasks, r, H)),
                    "roberta.embeddings.token_type_embeddings": ((1, H), (n_tasks, 1, r), (n_tasks, r, H)),
                    "roberta.pooler.dense": ((H, H), (n_tasks, r, H), (n_tasks, H, r))}
    for i in range(cfg["num_hidden_layers"]):
        p = f"roberta.encoder.layers.{i}."
        lora_modules[p + "mixer.Wqkv"] = ((3 * H, H), (n_tasks, r, H), (n_tasks, 3 * H, r))
        lora_modules[p + "mixer.out_proj"] = ((H, H), (n_tasks, r, H), (n_tasks, H, r))
        lora_modules[p + "mlp.fc1"] = ((I, H), (n_tasks, r, H), (n_tasks, I, r))
        lora_modules[p + "mlp.fc2"] = ((H, I), (n_tasks, r, I), (n_tasks, H, r))
        for norm in ("norm1", "norm2"):
            assert sd[p + norm + ".weight"].shape == (H,) and sd[p + norm + ".bias"].shape == (H,)
    for m, (w_shape, a_shape, b_shape) in lora_modules.items():
        assert sd[f"{m}.parametrizations.weight.original"].shape == w_shape, m
        a = sd[f"{m}.parametrizations.weight.0.lora_A"]
        b = sd[f"{m}.parametrizations.weight.0.lora_B"]
        assert a.shape == a_shape and b.shape == b_shape, m
        for t in range(n_tasks):                                   # a real delta for every task
            assert a[t].abs().sum() > 0 and b[t].abs().sum() > 0, (m, t)
    assert "roberta.emb_ln.weight" in sd and "roberta.pooler.dense.bias" in sd
    assert not any("position_embeddings" in k for k in sd)
    assert all(k.startswith("roberta.") for k in sd)
    assert ref.tok.encode("hello").ids[0] == 0 and ref.tok.encode("hello").ids[-1] == 2   # <s> ... </s>


def test_reference_is_discriminative(ref):
    """On the sharp checkpoint, each plausible mistake moves vectors far beyond the tolerance,
    so the exactness tests below bite."""
    texts = TEXTS[:3]
    for task in ("retrieval.query", "separation"):
        good = np.stack([ref.embed(t, task) for t in texts])
        base = np.stack([ref.embed(t, None) for t in texts])
        assert max_abs_diff(good, base) > 100 * ATOL and 1 - cosines(good, base).max() > 1e-3, task
        for wrong in (dict(rotary_base=10000.0), dict(rotary_base=1e12),       # base / ~no rotary
                      dict(gelu="tanh"), dict(linear_lora=False)):
            other = ref.variant(**wrong)
            moved = max_abs_diff(good, np.stack([other.embed(t, task) for t in texts]))
            assert moved > 3 * ATOL, (task, wrong, moved)
        # pooling without <s>/</s> would be visible too
        no_special = np.stack([F.normalize(ref.token_states(ref.ids(t, task), task)[1:-1].mean(0), dim=-1).numpy()
                               for t in texts])
        assert max_abs_diff(good, no_special) > 3 * ATOL, task
    assert 1 - float(cosines(ref.embed(TEXTS[0], "separation")[None],
                             ref.embed(TEXTS[0], "classification")[None])[0]) > 1e-3
    assert len(ref.ids(LONG_TEXT, "retrieval.query")) > 600


@pytest.mark.slow
def test_reference_agrees_with_transformers_port(ref):
    """The reference's architecture (post-norm blocks, fused-qkv split, rotary, erf GELU, token
    type row) cross-checked against transformers' native JinaEmbeddingsV3Model fed the same
    LoRA-merged weights (its rotary tables are float32, hence the 1e-5 bound)."""
    tf = pytest.importorskip("transformers")
    if not hasattr(tf, "JinaEmbeddingsV3Model"):
        pytest.skip("this transformers has no JinaEmbeddingsV3Model")
    cfg, H = ref.cfg, ref.hidden
    hf_cfg = tf.JinaEmbeddingsV3Config(
        vocab_size=cfg["vocab_size"], hidden_size=H, num_hidden_layers=ref.layers,
        num_attention_heads=ref.heads, intermediate_size=cfg["intermediate_size"], hidden_act="gelu",
        layer_norm_eps=ref.eps, type_vocab_size=1,
        rope_parameters={"rope_type": "default", "rope_theta": ref.base})
    hf_cfg._attn_implementation = "eager"
    model = tf.JinaEmbeddingsV3Model(hf_cfg, add_pooling_layer=False).double().eval()
    for task in ("retrieval.query", "classification"):
        t = ref.tasks.index(task)
        vocab = torch.arange(cfg["vocab_size"])
        state = {"embeddings.word_embeddings.weight":
                 ref._embedding_rows("roberta.embeddings.word_embeddings", vocab, t),
                 "embeddings.token_type_embeddings.weight":
                 ref._embedding_rows("roberta.embeddings.token_type_embeddings", torch.arange(1), t),
                 "embeddings.LayerNorm.weight": ref.sd["roberta.emb_ln.weight"],
                 "embeddings.LayerNorm.bias": ref.sd["roberta.emb_ln.bias"]}
        w = ref.weights(task)
        for i in range(ref.layers):
            p, q = f"roberta.encoder.layers.{i}.", f"layers.{i}."
            qkv_w, qkv_b = w[p + "mixer.Wqkv"], ref.sd[p + "mixer.Wqkv.bias"]
            for j, name in enumerate("qkv"):
                state[f"{q}self_attn.{name}_proj.weight"] = qkv_w[j * H:(j + 1) * H]
                state[f"{q}self_attn.{name}_proj.bias"] = qkv_b[j * H:(j + 1) * H]
            for ours, theirs in (("mixer.out_proj", "self_attn.o_proj"), ("mlp.fc1", "mlp.fc1"),
                                 ("mlp.fc2", "mlp.fc2")):
                state[f"{q}{theirs}.weight"] = w[p + ours]
                state[f"{q}{theirs}.bias"] = ref.sd[f"{p}{ours}.bias"]
            for ours, theirs in (("norm1", "post_attention_layernorm"), ("norm2", "post_mlp_layernorm")):
                state[f"{q}{theirs}.weight"] = ref.sd[f"{p}{ours}.weight"]
                state[f"{q}{theirs}.bias"] = ref.sd[f"{p}{ours}.bias"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and not [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]
        for text in (TEXTS[0], TEXTS[2], LONG_TEXT):
            ids = ref.ids(text, task)
            with torch.no_grad():
                theirs = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            err = (theirs - ref.token_states(ids, task)).abs().max().item()
            assert err < 1e-5, (task, len(ids), err)


# =============================================================================================
# Exactness against the reference
# =============================================================================================
@pytest.mark.parametrize("task", V3_TASKS)
def test_tiny_checkpoint_matches_reference(tiny_torch, tiny_ref, task):
    """The checkpoint exactly as ``make_tiny_jina_v3`` writes it (torch backend)."""
    assert tiny_torch.model.family == "jina-v3"
    out = tiny_torch.encode(TEXTS, task=task)
    assert out.shape == (len(TEXTS), tiny_ref.hidden) and out.dtype == np.float32
    assert_close(out, np.stack([tiny_ref.embed(t, task) for t in TEXTS]), task)


@pytest.mark.parametrize("task", V3_TASKS)
def test_every_task_matches_reference(v3, ref, task):
    assert v3.model.family == "jina-v3"
    assert v3.info()["max_tokens"] >= len(ref.ids(LONG_TEXT, task))   # the long text is not truncated
    out = v3.encode(TEXTS, task=task)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (len(TEXTS), ref.hidden)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    expected = np.stack([ref.embed(t, task) for t in TEXTS])
    assert_close(out, expected, f"{task}")


def test_matryoshka_truncate_then_normalise(v3, ref):
    dims = [d for d in ref.cfg["matryoshka_dimensions"] if d <= ref.hidden]
    assert dims
    for task in ("retrieval.query", "classification"):
        for d in dims:
            out = v3.encode(TEXTS, task=task, dimensions=d)
            assert out.shape == (len(TEXTS), d)
            np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
            expected = np.stack([ref.embed(t, task, dim=d) for t in TEXTS])
            assert_close(out, expected, f"{task} dimensions={d}")


def _varied_texts(n: int = 32) -> list[str]:
    words = ["alpha", "Fuchs", "東京", "café", "42", "def", "über", "Привет", "river", "😀", "the", "lazy"]
    texts = []
    for i in range(n):
        length = (i * 37) % 150 + (i % 3)               # 0 .. ~150 words
        texts.append(" ".join(words[(i + j) % len(words)] for j in range(length)))
    return texts


def test_batch_of_32_equals_one_by_one(v3, ref):
    import omnivec
    texts = _varied_texts(32)
    one_batch = omnivec.Embedder(v3.model, batch_tokens=1_000_000, max_batch_rows=32)
    together = one_batch.encode(texts, task="retrieval.passage", batch_size=32)
    alone = np.concatenate([v3.encode([t], task="retrieval.passage") for t in texts])
    assert_close(together, alone, "batch 32 vs batch 1")
    assert_close(together, np.stack([ref.embed(t, "retrieval.passage") for t in texts]), "batch 32 vs ref")


def test_mixed_tasks_in_one_call(v3, ref):
    texts = TEXTS[:5] + _varied_texts(5)
    tasks = [V3_TASKS[i % len(V3_TASKS)] for i in range(len(texts))]
    mixed = v3.encode(texts, task=tasks)
    assert mixed.shape == (len(texts), ref.hidden)
    for task in V3_TASKS:
        rows = [i for i, t in enumerate(tasks) if t == task]
        single = v3.encode([texts[i] for i in rows], task=task)
        assert_close(mixed[rows], single, f"mixed vs {task}")
    assert_close(mixed, np.stack([ref.embed(t, task) for t, task in zip(texts, tasks)]), "mixed vs ref")


def test_instruction_and_adapter_matter(v3, ref):
    text = ["What is the capital of Germany?"]
    q = v3.encode(text, task="retrieval.query")
    p = v3.encode(text, task="retrieval.passage")
    assert 1 - cosines(q, p)[0] > 1e-3                                   # instruction + adapter
    sep = v3.encode(text, task="separation")
    cls = v3.encode(text, task="classification")
    tm = v3.encode(text, task="text-matching")
    assert ref.instructions["separation"] == ref.instructions["classification"] == ""
    assert 1 - cosines(sep, cls)[0] > 1e-3                               # only the adapter differs
    assert 1 - cosines(sep, tm)[0] > 1e-3 and 1 - cosines(cls, tm)[0] > 1e-3
    # and each is the reference of its own task, not of the bare backbone
    for vec, task in ((q, "retrieval.query"), (p, "retrieval.passage"), (sep, "separation"),
                      (cls, "classification"), (tm, "text-matching")):
        assert_close(vec, ref.embed(text[0], task)[None], task)
        assert 1 - cosines(vec, ref.embed(text[0], None)[None])[0] > 1e-3, f"{task}: LoRA not applied"


# =============================================================================================
# Late chunking
# =============================================================================================
LATE_TEXTS = ["Berlin is the capital and largest city of Germany.",
              "Its population is about 3.8 million.",
              "Die Stadt liegt an der Spree, 東京 is far away."]


def _dense(result) -> np.ndarray:
    d = result.dense
    d = d.detach().cpu().float().numpy() if isinstance(d, torch.Tensor) else np.asarray(d, np.float32)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


@pytest.mark.parametrize("task", ["retrieval.passage", "text-matching"])
def test_late_chunking_matches_reference(v3, ref, task):
    out = _dense(v3.embed(LATE_TEXTS, task=task, late_chunking=True))
    assert out.shape == (len(LATE_TEXTS), ref.hidden)
    assert_close(out, ref.late_chunks(LATE_TEXTS, task), f"late chunking {task}")
    # the context matters: a chunk differs from the same text embedded alone
    alone = v3.encode(LATE_TEXTS[1:2], task=task)
    assert 1 - cosines(out[1:2], alone)[0] > 1e-4


def test_late_chunking_of_one_text_is_its_embedding(v3, ref):
    out = _dense(v3.embed(LATE_TEXTS[:1], task="retrieval.passage", late_chunking=True))
    assert_close(out, ref.embed(LATE_TEXTS[0], "retrieval.passage")[None], "late chunking, one text")


# =============================================================================================
# Registry, info, task refusal
# =============================================================================================
def test_detect_family(v3_dir):
    from omnivec.models.registry import detect_family
    assert detect_family(v3_dir) == "jina-v3"


def test_other_custom_class_is_refused_by_name(v3_dir, tmp_path):
    from omnivec.models.registry import detect_family

    def edit(cfg):
        cfg["auto_map"] = {"AutoModel": "someone/other--modeling.FooModel"}
        cfg["architectures"] = ["FooModel"]
    path = _config_copy(v3_dir, tmp_path / "foo", edit)
    with pytest.raises(ValueError, match="FooModel"):
        detect_family(path)


@pytest.mark.slow       # ~3.5 s: builds a stock XLMRobertaModel with a 250k vocabulary
def test_stock_xlmr_lookalike_refuses_to_load(v3_dir, tmp_path):
    """Without auto_map/architectures the checkpoint looks like a stock XLM-R: its weights
    (rotary, fused Wqkv, LoRA parametrizations) do not fit XLMRobertaModel, so no random model."""
    import omnivec
    from omnivec.models.base import CheckpointMismatch

    def edit(cfg):
        cfg.pop("auto_map", None)
        cfg.pop("architectures", None)
    path = _config_copy(v3_dir, tmp_path / "stock", edit)
    assert issubclass(CheckpointMismatch, ValueError)
    with pytest.raises(CheckpointMismatch):
        omnivec.load(str(path), device="cpu", backend="torch")


def test_info_tasks(tiny_torch):
    tasks = tiny_torch.info()["tasks"]
    assert set(tasks) == set(V3_TASKS)
    assert all(tasks[t] == t for t in V3_TASKS)            # each API task runs its same-named adapter


@pytest.mark.parametrize("task", ["code.query", "code.passage"])
def test_code_tasks_are_refused(tiny_torch, task):
    with pytest.raises(ValueError) as err:
        tiny_torch.encode(["def f(): pass"], task=task)
    message = str(err.value)
    for adapter in V3_TASKS:
        assert adapter in message, message
