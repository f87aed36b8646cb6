"""The ``jina-v3`` family: jina-embeddings-v3, an XLM-RoBERTa with rotary positions and task LoRA.

Why a family of its own: the checkpoint says ``model_type: xlm-roberta`` but runs its own code
(``XLMRobertaLoRA``): no absolute positions (rotary on q and k, base ``rotary_emb_base``), a
fused ``Wqkv`` projection, and one rank-``lora_rank`` adapter per task on every Linear and
Embedding, selected per row. A stock ``XLMRobertaModel`` would load it with most weights
random. What this module reproduces (float32, per row ``t`` = the row's task):

* embeddings: ``E_t[ids] + T_t[0]`` with ``E_t = E + A_t B_t * alpha / r`` (the token-type
  table likewise), then ``emb_ln``; no position embeddings;
* 24 post-norm blocks: ``h = LN1(x + Wo_t attn(RoPE(q), RoPE(k), v))``,
  ``x = LN2(h + W2_t gelu(W1_t h))`` with ``W_t = W + B_t A_t * alpha / r``; RoPE is the
  half-split (GPT-NeoX) rotation over the whole head, positions ``0 .. n-1``;
* mean pooling over every token, Matryoshka cut, then normalisation (the shared heads);
* the task instruction of ``config.json`` (``task_instructions``) before the text
  (:mod:`.jina_v3_processing`).

Per-row adapters are computed as ``W x + B_t (A_t x)`` with the rows' A/B gathered by task
index (rank 4: about 1% of a layer's FLOPs), so one graph serves every task. That is also what
the ONNX Runtime backend (the CPU default) runs: the same module exported once with a
``task_ids`` input, cached like the encoder family's graphs and built in a child process.
The pooler (``roberta.pooler``) is in the checkpoint but mean pooling never runs it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Capabilities, CheckpointMismatch, EmbeddingModel, Prepared, TaskTable, TokenStates, pick_device
from .encoder import identity_projector, load_tokenizer, pad_ids
from .jina_v3_processing import JinaV3Processor

Backend = Literal["torch", "onnx"]
_PREFIX = "roberta."
_UNUSED_PREFIXES = ("pooler.",)          # in the checkpoint, never run by mean pooling
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu_pytorch_tanh": "tanh"}
# The reference encodes at most this many tokens (its tokenizer's model_max_length default).
REFERENCE_MAX_TOKENS = 8192
# The cache variant of the ONNX graph; bump when export_graph's recipe changes (graphs rebuild).
GRAPH_VARIANT = "jina-v3-graph2"
# Weights past this many bytes go to a data file beside the graph (protobuf caps a file at 2 GB).
_INLINE_WEIGHTS_MAX_BYTES = 1_800_000_000


@dataclass(frozen=True)
class V3Config:
    """The fields of a jina-embeddings-v3 ``config.json`` this implementation reads."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    type_vocab_size: int
    layer_norm_eps: float
    rotary_emb_base: float
    gelu_approximate: str
    tasks: tuple[str, ...]
    instructions: dict[str, str]
    lora_rank: int
    lora_alpha: float
    pad_token_id: int
    max_position_embeddings: int
    matryoshka_dims: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_rank

    @classmethod
    def read(cls, path: Path) -> "V3Config":
        """Parse and check ``path/config.json``; anything this code does not implement is refused."""
        raw = json.loads((path / "config.json").read_text())
        if raw.get("position_embedding_type", "rotary") != "rotary":
            raise ValueError(f"{path}: position_embedding_type {raw.get('position_embedding_type')!r}; "
                             "the jina-v3 family implements rotary positions only")
        if raw.get("emb_pooler") not in (None, "mean"):
            raise ValueError(f"{path}: emb_pooler {raw.get('emb_pooler')!r}; the jina-v3 family mean-pools")
        act = raw.get("hidden_act", "gelu")
        if act not in _GELU:
            raise ValueError(f"{path}: hidden_act {act!r} is not implemented (known: {sorted(_GELU)})")
        hidden, heads = int(raw.get("hidden_size", 1024)), int(raw.get("num_attention_heads", 16))
        if hidden % heads or (hidden // heads) % 2:
            raise ValueError(f"{path}: hidden_size {hidden} / {heads} heads gives no even head size for rotary")
        if int(raw.get("rotary_emb_dim", hidden // heads) or hidden // heads) != hidden // heads:
            raise ValueError(f"{path}: a partial rotary_emb_dim is not implemented")
        if raw.get("rotary_emb_scale_base") or raw.get("rotary_emb_interleaved"):
            raise ValueError(f"{path}: rotary scaling / interleaved rotary are not implemented")
        tasks = tuple(raw.get("lora_adaptations") or ())
        instructions = dict(raw.get("task_instructions") or {})
        unknown = sorted(set(instructions) - set(tasks))
        if unknown:
            raise ValueError(f"{path}: task_instructions for tasks without an adapter: {unknown}")
        return cls(hidden_size=hidden, num_hidden_layers=int(raw.get("num_hidden_layers", 24)),
                   num_attention_heads=heads, intermediate_size=int(raw.get("intermediate_size", 4096)),
                   vocab_size=int(raw.get("vocab_size", 250002)), type_vocab_size=int(raw.get("type_vocab_size", 1)),
                   layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
                   rotary_emb_base=float(raw.get("rotary_emb_base", 10000.0)), gelu_approximate=_GELU[act],
                   tasks=tasks, instructions=instructions, lora_rank=int(raw.get("lora_rank", 4)),
                   lora_alpha=float(raw.get("lora_alpha", 1)), pad_token_id=int(raw.get("pad_token_id", 1)),
                   max_position_embeddings=int(raw.get("max_position_embeddings", 8194)),
                   matryoshka_dims=tuple(int(d) for d in raw.get("matryoshka_dimensions") or ()))


# ------------------------------------------------------------------------------- the torch module

class TaskLoRALinear(nn.Module):
    """``y = x W^T + b + (x A_t^T) B_t^T * scaling`` with ``t`` the row's task.

    ``lora_A`` is (tasks + 1, r, in), ``lora_B`` (tasks + 1, out, r): the checkpoint's layout
    plus one all-zero adapter at index ``tasks`` for rows that run the base weights.
    """

    def __init__(self, in_features: int, out_features: int, tasks: int, rank: int, scaling: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.lora_A = nn.Parameter(torch.zeros(tasks + 1, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(tasks + 1, out_features, rank))
        self.scaling = scaling

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, in), ``task`` (B,) indices -> (B, L, out)."""
        a = self.lora_A.index_select(0, task).transpose(1, 2)      # (B, in, r)
        b = self.lora_B.index_select(0, task).transpose(1, 2)      # (B, r, out)
        return F.linear(x, self.weight, self.bias) + torch.matmul(torch.matmul(x, a), b) * self.scaling


class TaskLoRAEmbedding(nn.Module):
    """``E[ids] + (A_t[ids]) B_t * scaling``: the reference's ``E + A_t B_t`` looked up per row.

    ``lora_A`` is (tasks + 1, num, r), ``lora_B`` (tasks + 1, r, dim); the rows of every task's
    ``A`` are looked up as one table (index ``task * num + id``), so no (num, dim) delta is formed.
    """

    def __init__(self, num: int, dim: int, tasks: int, rank: int, scaling: float) -> None:
        super().__init__()
        self.num = num
        self.weight = nn.Parameter(torch.zeros(num, dim))
        self.lora_A = nn.Parameter(torch.zeros(tasks + 1, num, rank))
        self.lora_B = nn.Parameter(torch.zeros(tasks + 1, rank, dim))
        self.scaling = scaling

    def forward(self, ids: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """``ids`` (B, L), ``task`` (B,) -> (B, L, dim)."""
        rank = self.lora_A.shape[-1]
        a = F.embedding(task.unsqueeze(1) * self.num + ids, self.lora_A.reshape(-1, rank))   # (B, L, r)
        return F.embedding(ids, self.weight) + torch.matmul(a, self.lora_B.index_select(0, task)) * self.scaling


def rotary_tables(length: int, dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, dim) cos and sin of positions ``0 .. L-1``, computed in float32 as the reference does."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotation of (B, L, heads, d) by (L, 1, d) tables (not interleaved)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention of (B, L, D) q, k, v (``heads`` heads, scale 1/sqrt(d)) over the keys
    where ``mask`` (B, L) is 1; -> (B, L, D)."""
    b, n, d = q.shape
    split = [t.view(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*split, attn_mask=mask.bool()[:, None, None, :])
    return out.transpose(1, 2).reshape(b, n, d)


class _FusedAttention(torch.autograd.Function):
    """:func:`_attention` in torch; in an ONNX export a placeholder ``omnivec::Attention`` node
    that :func:`use_ort_attention` turns into ONNX Runtime's fused ``MultiHeadAttention``.

    Why: ORT's optimizer fuses BERT's attention but not one with rotary q and k; unfused, every
    layer materialises (B, heads, L, L) scores through separate MatMul / Softmax nodes."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                heads: int) -> torch.Tensor:
        return _attention(q, k, v, mask, heads)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, mask: Any, heads: int) -> Any:
        return g.op("omnivec::Attention", q, k, v, mask, num_heads_i=heads)


class _Mixer(nn.Module):
    def __init__(self, cfg: V3Config) -> None:
        super().__init__()
        t, r, s, h = len(cfg.tasks), cfg.lora_rank, cfg.scaling, cfg.hidden_size
        self.Wqkv = TaskLoRALinear(h, 3 * h, t, r, s)
        self.out_proj = TaskLoRALinear(h, h, t, r, s)
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.fused_export = False            # set by export_graph: attention as one ORT kernel

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                task: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.Wqkv(x, task).view(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(2)                                          # (B, L, heads, d)
        q, k = apply_rotary(q, cos, sin).reshape(b, n, -1), apply_rotary(k, cos, sin).reshape(b, n, -1)
        v = v.reshape(b, n, -1)
        if self.fused_export:
            out = _FusedAttention.apply(q, k, v, mask, self.heads)
        else:
            out = _attention(q, k, v, mask, self.heads)
        return self.out_proj(out, task)


class _Mlp(nn.Module):
    def __init__(self, cfg: V3Config) -> None:
        super().__init__()
        t, r, s = len(cfg.tasks), cfg.lora_rank, cfg.scaling
        self.fc1 = TaskLoRALinear(cfg.hidden_size, cfg.intermediate_size, t, r, s)
        self.fc2 = TaskLoRALinear(cfg.intermediate_size, cfg.hidden_size, t, r, s)
        self.approximate = cfg.gelu_approximate

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x, task), approximate=self.approximate), task)


class _Block(nn.Module):
    def __init__(self, cfg: V3Config) -> None:
        super().__init__()
        self.mixer = _Mixer(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _Mlp(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                task: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.mixer(x, mask, cos, sin, task))
        return self.norm2(x + self.mlp(x, task))


class _Embeddings(nn.Module):
    def __init__(self, cfg: V3Config) -> None:
        super().__init__()
        t, r, s = len(cfg.tasks), cfg.lora_rank, cfg.scaling
        self.word_embeddings = TaskLoRAEmbedding(cfg.vocab_size, cfg.hidden_size, t, r, s)
        self.token_type_embeddings = (TaskLoRAEmbedding(cfg.type_vocab_size, cfg.hidden_size, t, r, s)
                                      if cfg.type_vocab_size > 0 else None)

    def forward(self, ids: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(ids, task)
        if self.token_type_embeddings is not None:     # every token is of type 0
            x = x + self.token_type_embeddings(torch.zeros_like(ids), task)
        return x


class _Encoder(nn.Module):
    def __init__(self, cfg: V3Config) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_hidden_layers))


class JinaV3Backbone(nn.Module):
    """Token ids + mask + one task index per row -> last hidden states (B, L, hidden).

    Parameter names follow the checkpoint's with ``roberta.`` dropped and the
    parametrisation spelled out (``...Wqkv.parametrizations.weight.original`` is
    ``...Wqkv.weight``, ``...parametrizations.weight.0.lora_A`` is ``...lora_A``).
    """

    def __init__(self, cfg: V3Config) -> None:
        super().__init__()
        self.cfg = cfg
        # what the ONNX helpers read of a config (hidden size, vocabulary, pad id)
        self.config = SimpleNamespace(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                                      pad_token_id=cfg.pad_token_id, num_attention_heads=cfg.num_attention_heads)
        self.embeddings = _Embeddings(cfg)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = _Encoder(cfg)

    @property
    def no_task(self) -> int:
        """The index of the all-zero adapter: rows that run the base weights."""
        return len(self.cfg.tasks)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        task = torch.where(task_ids < 0, torch.full_like(task_ids, self.no_task), task_ids)
        x = self.emb_ln(self.embeddings(input_ids, task))
        cos, sin = rotary_tables(input_ids.shape[1], self.cfg.head_dim, self.cfg.rotary_emb_base, x.device)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)            # (L, 1, d): broadcast over heads
        for layer in self.encoder.layers:
            x = layer(x, attention_mask, cos, sin, task)
        return x


# ------------------------------------------------------------------------------- loading

def _module_key(file_key: str) -> str | None:
    """A checkpoint key -> this module's parameter name (None: a key mean pooling never uses)."""
    key = file_key[len(_PREFIX):] if file_key.startswith(_PREFIX) else file_key
    if key.startswith(_UNUSED_PREFIXES):
        return None
    key = key.replace(".parametrizations.weight.original", ".weight")
    return key.replace(".parametrizations.weight.0.lora_", ".lora_")


def load_backbone(path: Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> JinaV3Backbone:
    """The official layout (``model.safetensors``, any number of shards) into :class:`JinaV3Backbone`;
    a weight missing from the file, left over in it, or of the wrong shape is an error."""
    from safetensors import safe_open

    cfg = V3Config.read(path)
    with torch.device("meta"):
        model = JinaV3Backbone(cfg)
    expected = dict(model.named_parameters())
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    unused, wrong = [], []
    for file in files:
        with safe_open(str(file), "pt") as f:
            for file_key in f.keys():
                name = _module_key(file_key)
                if name is None:
                    continue
                if name not in expected:
                    unused.append(file_key)
                    continue
                tensor = f.get_tensor(file_key).to(torch.float32)
                want = tuple(expected[name].shape)
                if ".lora_" in name:      # the file has one adapter per task; ours adds the zero one
                    if tensor.shape[0] != len(cfg.tasks) or tuple(tensor.shape[1:]) != want[1:]:
                        wrong.append(f"{file_key} {tuple(tensor.shape)} (expected {(len(cfg.tasks),) + want[1:]})")
                        continue
                    tensor = torch.cat([tensor, torch.zeros((1,) + want[1:], dtype=tensor.dtype)])
                elif tuple(tensor.shape) != want:
                    wrong.append(f"{file_key} {tuple(tensor.shape)} (expected {want})")
                    continue
                state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if missing or unused or wrong:
        raise CheckpointMismatch.listing(f"{path}: the weights do not fit jina-embeddings-v3's layout",
                                         missing=missing, unused=unused, wrong=wrong)
    model.load_state_dict(state, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _max_tokens(path: Path, cfg: V3Config) -> int:
    """The reference's default limit (8192, or its tokenizer's ``model_max_length`` if lower)."""
    limit = min(REFERENCE_MAX_TOKENS, cfg.max_position_embeddings)
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        value = json.loads(tok_cfg.read_text()).get("model_max_length")
        if isinstance(value, (int, float)) and 0 < value < limit:
            limit = int(value)
    return limit


# ------------------------------------------------------------------------------- ONNX

def export_graph(backbone: JinaV3Backbone, out_file: Path) -> None:
    """The module as one ONNX graph with inputs ``input_ids``, ``attention_mask``, ``task_ids``,
    then ORT's transformer optimizer (fusions only).

    Why the optimizer: it fuses each block's residual + LayerNorm (``SkipLayerNormalization``)
    and the erf GELU, measured 1.17x faster here (e5-small-sized random v3, 16 x 64 tokens,
    2 cores). Its attention fusion does not match rotary attention, so attention is exported as
    :class:`_FusedAttention` placeholders that :func:`use_ort_attention` rewrites into ORT's
    ``MultiHeadAttention`` first: 0.57x -> 0.75x the encoder family's throughput at equal size.
    """
    import tempfile

    from onnxruntime.transformers.optimizer import optimize_model

    names = ["input_ids", "attention_mask", "task_ids"]
    ids, mask, tasks = _dummy_batch(backbone.cfg, 3, 16)
    for layer in backbone.encoder.layers:
        layer.mixer.fused_export = True
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "task_ids": {0: "batch"}, "last_hidden_state": {0: "batch", 1: "sequence"}}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_file.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")    # TracerWarnings, exporter deprecation notices
            try:
                torch.onnx.export(backbone.float().eval(), (ids, mask, tasks), str(raw), dynamo=False,
                                  input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                                  opset_version=17, do_constant_folding=True, custom_opsets={"omnivec": 1})
            finally:
                for layer in backbone.encoder.layers:
                    layer.mixer.fused_export = False
        use_ort_attention(raw)
        cfg = backbone.cfg
        opt = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size, opt_level=0, use_gpu=False)
        # jina-embeddings-v3 is 2.3 GB in float32, past protobuf's 2 GB: weights beside the graph
        opt.save_model_to_file(str(out_file), use_external_data_format=_large(backbone))


def _large(backbone: nn.Module) -> bool:
    """Whether the float32 graph would pass protobuf's 2 GB limit inline (then: external data)."""
    return sum(p.numel() for p in backbone.parameters()) * 4 > _INLINE_WEIGHTS_MAX_BYTES


def use_ort_attention(file: Path) -> None:
    """Rewrite every ``omnivec::Attention`` placeholder of the graph in ``file`` into
    ``com.microsoft.MultiHeadAttention`` (q, k, v, no bias, the int32 key padding mask; ORT
    masks with -10000 as the reference does), in place."""
    import onnx
    from onnx import TensorProto, helper

    # a graph over 2 GB comes with its weights in files beside it: note which, then read them in
    model = onnx.load(str(file), load_external_data=False)
    external = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    onnx.load_external_data_for_model(model, str(file.parent))
    nodes, casts = [], {}
    for node in model.graph.node:
        if node.domain != "omnivec":
            nodes.append(node)
            continue
        if node.op_type != "Attention":
            raise RuntimeError(f"unexpected placeholder node omnivec::{node.op_type}")
        q, k, v, mask = node.input
        if mask not in casts:
            casts[mask] = f"{mask}_int32"
            nodes.append(helper.make_node("Cast", [mask], [casts[mask]], to=TensorProto.INT32,
                                          name=f"{mask}_to_int32"))
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        nodes.append(helper.make_node("MultiHeadAttention", [q, k, v, "", casts[mask]], list(node.output),
                                      domain="com.microsoft", num_heads=heads, name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    imports = [o for o in model.opset_import if o.domain != "omnivec"]
    if not any(o.domain == "com.microsoft" for o in imports):
        imports.append(helper.make_opsetid("com.microsoft", 1))
    del model.opset_import[:]
    model.opset_import.extend(imports)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > _INLINE_WEIGHTS_MAX_BYTES:     # past protobuf's 2 GB limit (ByteSize itself fails): a data file
        for name in external:         # the exporter's per-tensor files, now read in
            (file.parent / name).unlink(missing_ok=True)
        onnx.save_model(model, str(file), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=file.name + ".data")
    else:
        onnx.save(model, str(file))


def _dummy_batch(cfg: V3Config, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids, a right-padded last row and every row on another task (the check's inputs)."""
    g = torch.Generator().manual_seed(rows * 1000 + length)
    ids = torch.randint(5, max(6, min(cfg.vocab_size, 30000)), (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0
    tasks = torch.arange(rows) % max(1, len(cfg.tasks) + 1) - 1     # -1 (base weights) included
    return ids, mask, tasks


def check_graph(session: Any, backbone: JinaV3Backbone) -> None:
    """Refuse a graph that disagrees with the torch module (two shapes, mixed tasks)."""
    for rows, length in ((3, 16), (6, 9)):
        ids, mask, tasks = _dummy_batch(backbone.cfg, rows, length)
        ours = session(ids.numpy(), mask.numpy(), tasks.numpy())
        with torch.inference_mode():
            ref = backbone(ids, mask, tasks).float().numpy()
        keep = mask.numpy().astype(bool)
        a, b = ours[keep], ref[keep]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        if ours.shape != ref.shape or float(cos.min()) < 0.99999:
            raise RuntimeError(f"exported jina-v3 graph disagrees with torch (shape {ours.shape} vs "
                               f"{ref.shape}, min cosine {float(cos.min()):.7f})")


def build_graph(model_dir: Path, *, quantize: bool = False, adapter_dir: Path | None = None,
                task: str | None = None) -> Path:
    """Export the one multi-task graph in this process (what an ``onnx_build`` child runs)."""
    if quantize or adapter_dir is not None or task is not None:
        raise ValueError("jina-v3 has one graph for all its tasks, float32 (no quantize, adapters or task)")
    from .encoder_onnx import build_onnx
    return build_onnx(model_dir, load_torch=lambda: load_backbone(Path(model_dir)), export=export_graph,
                      check=check_graph, variant=GRAPH_VARIANT)


# ------------------------------------------------------------------------------- the family

def _choose_backend(device: torch.device, dtype: torch.dtype | None, backend: str | None) -> Backend:
    if backend not in (None, "torch", "onnx"):
        raise ValueError(f"backend must be 'torch', 'onnx' or None, got {backend!r}")
    on_cpu_fp32 = device.type == "cpu" and dtype in (None, torch.float32)
    if backend == "onnx" and not on_cpu_fp32:
        raise ValueError("backend='onnx' runs float32 on the CPU only")
    return backend or ("onnx" if on_cpu_fp32 else "torch")


class JinaV3Model(EmbeddingModel):
    """jina-embeddings-v3: :class:`JinaV3Processor`, :class:`JinaV3Backbone` (torch or ONNX).

    Multi-vectors are the normalised last-layer token states (v3 has no multi-vector head).
    """

    family = "jina-v3"
    capabilities = Capabilities(native_images=False, late_chunking=True, token_ids=True, trainable=False)

    def __init__(self, backbone: Any, processor: JinaV3Processor, cfg: V3Config, *, name: str,
                 device: torch.device, dtype: torch.dtype) -> None:
        from .encoder_onnx import OnnxBackbone

        self.backend: Backend = "onnx" if isinstance(backbone, OnnxBackbone) else "torch"
        self.backbone = backbone
        self.processor = processor
        self.cfg = cfg
        self.name = name
        self.device = device
        self.dtype = dtype
        self.dim = self.multivector_dim = cfg.hidden_size
        self.matryoshka_dims = tuple(d for d in cfg.matryoshka_dims if d <= cfg.hidden_size) or (cfg.hidden_size,)
        self._projector = identity_projector(cfg.hidden_size).to(device).eval()
        if self.backend == "onnx":
            # The encoder family's measured CPU settings (small, cache-resident batches; the
            # fixed cost of one ORT call in tokens, see omnivec.models.encoder), same runtime.
            self.batch_tokens, self.max_batch_rows, self.batch_overhead_tokens = 1024, 16, 36

    @property
    def projector(self) -> nn.Module:
        return self._projector

    @classmethod
    def from_directory(cls, path: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, *, backend: Backend | None = None,
                       adapters: str | Path | None = "auto", quantize: bool = False,
                       projector: bool = True) -> "JinaV3Model":
        """Load an official jina-embeddings-v3 directory (``config.json``, safetensors, tokenizer).

        ``backend``: ``"onnx"`` (CPU float32 default: one graph for every task, exported in a
        child process on first use and cached), or ``"torch"`` (GPU default; bfloat16 there, as
        the reference runs). ``adapters``: ``"auto"`` / ``"default"`` use the checkpoint's five
        task adapters; ``None`` runs the bare backbone without instructions for every task
        (the reference's ``task=None``). ``projector`` is accepted for the loader's signature:
        v3 has no multi-vector head either way.
        """
        path = Path(path)
        if quantize:
            raise ValueError("quantize=True is not available for jina-v3 yet: it runs float32 on the CPU")
        if adapters not in (None, "auto", "default"):
            raise ValueError(f"adapters={str(adapters)!r}: jina-v3's task adapters live in its checkpoint; "
                             "pass 'auto' (them) or None (the bare backbone)")
        cfg = V3Config.read(path)
        dev = pick_device(device)
        chosen = _choose_backend(dev, dtype, backend)
        if dtype is None:
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        backbone: Any = None
        if chosen == "onnx":
            from .encoder_onnx import build_in_child, load_onnx_backbone
            try:
                backbone = load_onnx_backbone(path, variant=GRAPH_VARIANT, build=lambda: build_in_child(path))
            except Exception as e:
                if backend == "onnx":
                    raise
                warnings.warn(f"omnivec: the ONNX graph of {path.name} failed ({type(e).__name__}: {e}); "
                              "using the torch backend", RuntimeWarning, stacklevel=2)
        if backbone is None:
            backbone = load_backbone(path, dtype=dtype, device=dev)
        tasks = TaskTable(adapters=cfg.tasks) if adapters is not None else TaskTable()
        name = path.name
        processor = JinaV3Processor(load_tokenizer(path), name=name, instructions=cfg.instructions,
                                    max_tokens=_max_tokens(path, cfg), pad_id=cfg.pad_token_id, tasks=tasks)
        return cls(backbone, processor, cfg, name=name, device=dev, dtype=dtype)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["backend"] = "onnxruntime" if self.backend == "onnx" else "torch"
        info["instructions"] = {t: s for t, s in self.cfg.instructions.items() if s}
        return info

    def token_states(self, batch: Sequence[Prepared], *, grad: bool = False) -> TokenStates:
        """One padded pass, each row through its own task's adapter, returned packed."""
        if grad:
            raise ValueError("the jina-v3 family cannot be trained (capabilities.trainable is False)")
        lengths = [p.cost for p in batch]
        ids, mask = pad_ids([p.input_ids for p in batch], self.processor.pad_id)
        names = [self.processor.tasks.adapter_for(p.task) for p in batch]
        tasks = np.array([self.cfg.tasks.index(n) if n is not None else -1 for n in names], dtype=np.int64)
        if self.backend == "onnx":
            hidden = torch.from_numpy(self.backbone(ids, mask, tasks))
        else:
            with torch.inference_mode():
                hidden = self.backbone(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device),
                                       torch.from_numpy(tasks).to(self.device))
        states = hidden[torch.from_numpy(mask).to(hidden.device).bool()]
        return TokenStates(states=states, lengths=lengths, row_tasks=[-1] * len(batch))
