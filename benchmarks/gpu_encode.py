"""GPU encode throughput: omnivec's packed path vs a reference-style jina-v4 pipeline, same weights.

Model: Qwen2.5-VL-3B architecture (``--scale full``) or a tiny one (``--scale tiny``, CPU smoke),
randomly initialised in bf16 on the device, with random non-zero LoRA (r=32, 3 tasks) on
q/k/v/o/gate/up/down of every LM layer and on the multi-vector projector Linear(2048 -> 128).

Baseline (reference-style): transformers ``Qwen2_5_VLForConditionalGeneration`` + **peft** LoRA
(one adapter active; a task's items run with its adapter set), fixed batches of 8 in input order
padded to the longest, bf16 autocast, ``output_hidden_states=True`` (lm_head computed too, as the
reference's ``super().forward`` does; ``--baseline-no-lm-head`` drops it), mean pooling over the
attention mask (text) or the vision_start..vision_end span (images), projector on all tokens,
images one per batch.

omnivec path: length-sorted token-budget batches (``--batch-tokens``), all rows packed into one
sequence with varlen attention (``omnivec.models.packing``; vision tower packed too), only the
last layer kept, LoRA applied unmerged per batch task or routed per token for mixed-task batches,
CPU batch preparation in a background thread into pinned memory.

Workloads: (1) text passages, log-normal lengths (median ~200, cap 2048), retrieval; (2) document
pages at 768 visual tokens; (3) a mixed stream of both with the 3 tasks interleaved.

Prints tokens/s, pages/s, omnivec/baseline ratio, model FLOP utilisation against a measured bf16
matmul peak, peak memory per phase and the min cosine between the two paths' vectors (>= 0.999).

    python benchmarks/gpu_encode.py                      # full scale, CUDA
    python benchmarks/gpu_encode.py --quick              # 10x smaller workloads
    python benchmarks/gpu_encode.py --scale tiny --device cpu --n-text 64 --n-images 4
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from omnivec.models import packing  # noqa: E402

TASKS = ["retrieval", "text-matching", "code"]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA = 32, 32


# ------------------------------------------------------------------------------------------
# Model construction
# ------------------------------------------------------------------------------------------
@dataclass
class Scale:
    """Architecture + workload geometry of one benchmark scale."""

    text: dict
    vision: dict
    special: dict  # image/video/vision_start/vision_end token ids
    image_grid: tuple[int, int, int]  # patch grid (t, h, w) of one page
    vocab_hi: int  # random text ids are drawn from [100, vocab_hi)
    template: tuple[list[int], list[int]]  # ids before <vision_start> and after <vision_end>


def make_scale(name: str) -> Scale:
    """Qwen2.5-VL-3B (reference sec. 1) or a tiny CPU-sized config with the same structure."""
    if name == "full":
        text = dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                    num_key_value_heads=2, intermediate_size=11008, vocab_size=151936,
                    rms_norm_eps=1e-6, max_position_embeddings=128000, tie_word_embeddings=True)
        mrope, theta = [16, 24, 24], 1e6
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                      out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31], window_size=112,
                      patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
        special = dict(image_token_id=151655, video_token_id=151656,
                       vision_start_token_id=151652, vision_end_token_id=151653)
        # <|im_start|>user\n  ...  Describe the image.<|im_end|>\n   (ids as in Qwen's tokenizer)
        template = ([151644, 872, 198], [74785, 279, 2168, 13, 151645, 198])
        return Scale(text | dict(rope_theta=theta), vision, special, (1, 64, 48), 150000, template)
    text = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=1000, rms_norm_eps=1e-6,
                max_position_embeddings=4096, tie_word_embeddings=True)
    mrope, theta = [2, 3, 3], 1e6
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  fullatt_block_indexes=[1], window_size=112, patch_size=14, temporal_patch_size=2,
                  spatial_merge_size=2, in_channels=3)
    special = dict(image_token_id=990, video_token_id=991, vision_start_token_id=992,
                   vision_end_token_id=993)
    template = ([994, 5, 6], [7, 8, 9, 10, 995, 6])
    return Scale(text | dict(rope_theta=theta), vision, special, (1, 16, 12), 900, template)


def build_config(scale: Scale) -> Any:
    """A Qwen2_5_VLConfig; passes rope both as 5.x ``rope_parameters`` and legacy keys."""
    from transformers import Qwen2_5_VLConfig

    hd = scale.text["hidden_size"] // scale.text["num_attention_heads"]
    mrope = [16, 24, 24] if hd == 128 else [2, 3, 3]
    text = dict(scale.text)
    theta = text.pop("rope_theta")
    text.update(rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": theta},
                rope_scaling={"type": "mrope", "mrope_section": mrope}, rope_theta=theta,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(scale.vision), **scale.special,
                           tie_word_embeddings=text["tie_word_embeddings"])
    cfg._attn_implementation = "sdpa"
    for sub in (cfg.text_config, cfg.vision_config):
        sub._attn_implementation = "sdpa"
    return cfg


class RefModel(nn.Module):
    """jina-v4 layout: the VLM plus the multi-vector projector (both LoRA targets)."""

    def __init__(self, vlm: nn.Module, hidden: int) -> None:
        super().__init__()
        self.vlm = vlm
        self.multi_vector_projector = nn.Linear(hidden, 128)


def _no_init() -> contextlib.AbstractContextManager:
    """Skip transformers' weight init when the helper exists (we fill weights ourselves)."""
    try:
        from transformers.modeling_utils import no_init_weights
        return no_init_weights()
    except Exception:
        return contextlib.nullcontext()


@torch.no_grad()
def build_model(scale: Scale, device: torch.device, dtype: torch.dtype, seed: int) -> RefModel:
    """Random model built directly on ``device`` in ``dtype`` (no CPU materialisation)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = build_config(scale)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device, _no_init():
            vlm = Qwen2_5_VLForConditionalGeneration(cfg)
            model = RefModel(vlm, scale.text["hidden_size"])
    finally:
        torch.set_default_dtype(prev)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and "norm" in name:  # not all ones: pre/post final-norm mix-ups show up
            p.normal_(1.0, 0.1, generator=gen)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def lora_target_names(model: RefModel) -> list[str]:
    """Module paths that get LoRA: the 7 LM projections of every layer + the projector."""
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if (leaf in LORA_TARGETS and "language_model" in name) or leaf == "multi_vector_projector":
            out.append(name)
    return out


@torch.no_grad()
def random_lora(model: RefModel, device: torch.device, dtype: torch.dtype, seed: int
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{path: (A (T, r, in), B (T, out, r))}, non-zero so the delta is ~10-20% of the base."""
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    weights = {}
    for name in lora_target_names(model):
        lin = model.get_submodule(name)
        a = torch.empty(len(TASKS), R, lin.in_features, device=device, dtype=dtype).normal_(0, 0.02, generator=gen)
        b = torch.empty(len(TASKS), lin.out_features, R, device=device, dtype=dtype).normal_(0, 0.03, generator=gen)
        weights[name] = (a, b)
    return weights


def attach_peft(model: RefModel, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """Reference adapters: a peft LoRA per task on the same modules, loaded with our weights."""
    from peft import LoraConfig, get_peft_model

    pattern = r".*language_model.*\.(" + "|".join(LORA_TARGETS) + r")$|.*multi_vector_projector$"
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=pattern, bias="none")
    peft_model = get_peft_model(model, cfg, adapter_name=TASKS[0])
    for t in TASKS[1:]:
        peft_model.add_adapter(t, cfg)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name, (a, b) in lora.items():
            layer = inner.get_submodule(name)
            for ti, t in enumerate(TASKS):
                layer.lora_A[t].weight.copy_(a[ti])
                layer.lora_B[t].weight.copy_(b[ti])
    peft_model.eval()
    return peft_model


# ------------------------------------------------------------------------------------------
# omnivec-side LoRA (local stand-in; the lead swaps in omnivec.adapters.MultiTaskLoRALinear)
# ------------------------------------------------------------------------------------------
class LoRAState:
    """Routing for one forward: a single task index, or a per-token (N, T*r) column mask."""

    def __init__(self) -> None:
        self.task: int | None = None
        self.mask: torch.Tensor | None = None

    def set(self, token_tasks: torch.Tensor | None, single: int | None, dtype: torch.dtype) -> None:
        """Single task -> one low-rank pair; mixed -> stacked A, column mask, stacked B."""
        self.task = single
        if single is None and token_tasks is not None:
            cols = torch.arange(len(TASKS) * R, device=token_tasks.device) // R
            self.mask = (token_tasks[:, None] == cols[None, :]).to(dtype)
        else:
            self.mask = None


class BenchLoRALinear(nn.Module):
    """base(x) + B_t(A_t(x)) * alpha/r with the task chosen per batch or per token."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, state: LoRAState) -> None:
        super().__init__()
        self.base, self.state, self.scale = base, state, ALPHA / R
        self.a, self.b = a, b  # (T, r, in), (T, out, r)
        self.a_cat = a.reshape(-1, a.shape[-1])  # (T*r, in)
        self.b_cat = b.permute(1, 0, 2).reshape(b.shape[1], -1)  # (out, T*r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        st = self.state
        if st.task is not None:
            delta = F.linear(F.linear(x, self.a[st.task]), self.b[st.task])
        else:  # per-token routing: all tasks' A in one matmul, zero foreign columns, one B matmul
            h = F.linear(x, self.a_cat)
            delta = F.linear(h * st.mask.view(*([1] * (h.dim() - 2)), *st.mask.shape), self.b_cat)
        return y + delta * self.scale if self.scale != 1.0 else y + delta


@contextlib.contextmanager
def omnivec_lora(peft_model: Any, lora: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 state: LoRAState) -> Iterator[RefModel]:
    """Swap peft's LoRA layers for BenchLoRALinear over the same base weights, then restore."""
    inner = peft_model.base_model.model
    saved = []
    for name, (a, b) in lora.items():
        parent_name, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        parent = inner.get_submodule(parent_name) if parent_name else inner
        peft_layer = getattr(parent, leaf)
        saved.append((parent, leaf, peft_layer))
        setattr(parent, leaf, BenchLoRALinear(peft_layer.get_base_layer(), a, b, state))
    try:
        yield inner
    finally:
        for parent, leaf, layer in saved:
            setattr(parent, leaf, layer)


# ------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One input: text ids, or a page (template ids + a pixel pool slot)."""

    idx: int
    task: int
    ids: torch.Tensor  # (n,) int64 including the image placeholder run for pages
    image: int | None = None  # index into the pixel pool
    pos: torch.Tensor | None = None  # (3, n) M-RoPE positions (pages)

    @property
    def n(self) -> int:
        return int(self.ids.numel())


def make_texts(n: int, scale: Scale, start: int, tasks: Sequence[int], seed: int) -> list[Item]:
    """Log-normal lengths (median ~200, sigma 0.8, cap 2048), random ids."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.exp(torch.randn(n, generator=g) * 0.8 + math.log(200.0)).round().clamp(4, 2048).long()
    return [Item(start + i, tasks[i % len(tasks)], torch.randint(100, scale.vocab_hi, (int(L),), generator=g))
            for i, L in enumerate(lens.tolist())]


def make_pages(n: int, scale: Scale, start: int, tasks: Sequence[int], backbone: Any) -> list[Item]:
    """Pages with the reference's image template; M-RoPE positions from get_rope_index."""
    t, h, w = scale.image_grid
    n_img = t * h * w // 4
    pre, post = scale.template
    sp = scale.special
    ids = torch.tensor(pre + [sp["vision_start_token_id"]] + [sp["image_token_id"]] * n_img
                       + [sp["vision_end_token_id"]] + post)
    pos = packing.rope_index_for_row(backbone, ids, torch.tensor([scale.image_grid])).cpu()
    return [Item(start + i, tasks[i % len(tasks)], ids, image=i, pos=pos) for i in range(n)]


def make_pixel_pool(scale: Scale, k: int, seed: int) -> list[torch.Tensor]:
    """k distinct random pages (fp32, as the processor emits); pages cycle through the pool."""
    t, h, w = scale.image_grid
    g = torch.Generator().manual_seed(seed + 7)
    v = scale.vision
    dim = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    return [torch.randn(t * h * w, dim, generator=g) for _ in range(k)]


# ------------------------------------------------------------------------------------------
# Outputs and comparison
# ------------------------------------------------------------------------------------------
@dataclass
class Vectors:
    """Per-item dense (H,) fp32 and multi-vector (n, 128) kept on device until comparison."""

    dense: dict[int, torch.Tensor] = field(default_factory=dict)
    multi: dict[int, torch.Tensor] = field(default_factory=dict)


def compare(a: Vectors, b: Vectors) -> dict[str, float]:
    """Min dense cosine over items; min over items of the mean per-token cosine; min token cos."""
    dmin, mmin, tmin = 1.0, 1.0, 1.0
    for k in a.dense:
        dmin = min(dmin, F.cosine_similarity(a.dense[k].float(), b.dense[k].float(), dim=0).item())
        ma, mb = a.multi[k].float(), b.multi[k].float()
        if ma.shape != mb.shape:
            raise AssertionError(f"item {k}: multi-vector shapes {tuple(ma.shape)} vs {tuple(mb.shape)}")
        c = F.cosine_similarity(ma, mb, dim=-1)
        mmin, tmin = min(mmin, c.mean().item()), min(tmin, c.min().item())
    return {"dense_min_cos": dmin, "multi_min_item_cos": mmin, "multi_min_token_cos": tmin}


# ------------------------------------------------------------------------------------------
# Baseline (reference-style)
# ------------------------------------------------------------------------------------------
class Baseline:
    """Reference-like loop: peft adapter per task, batches of 8 padded, images one at a time."""

    def __init__(self, peft_model: Any, scale: Scale, pool: list[torch.Tensor], device: torch.device,
                 lm_head: bool) -> None:
        self.pm, self.scale, self.pool, self.dev = peft_model, scale, pool, device
        inner = peft_model.base_model.model
        self.vlm, self.proj = inner.vlm, inner.multi_vector_projector
        fwd = inspect.signature(self.vlm.forward).parameters
        self.wants_tt = "mm_token_type_ids" in fwd
        self.lm_head = lm_head

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, **extra: Any) -> torch.Tensor:
        with torch.autocast(self.dev.type, dtype=torch.bfloat16):
            if self.lm_head:
                out = self.vlm(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                               use_cache=False, **extra)
                return out.hidden_states[-1]
            out = self.vlm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                 use_cache=False, **extra)
            return out.hidden_states[-1] if out.hidden_states is not None else out.last_hidden_state

    def _pool(self, hs: torch.Tensor, pool_mask: torch.Tensor, mask: torch.Tensor, items: list[Item],
              vec: Vectors) -> None:
        with torch.autocast(self.dev.type, dtype=torch.bfloat16):
            multi = self.proj(hs)  # projector on all tokens, as the reference
        pm = pool_mask.to(hs.dtype).unsqueeze(-1)
        dense = F.normalize((hs.float() * pm).sum(1) / pm.sum(1), dim=-1)
        multi = F.normalize(multi.float(), dim=-1)
        for i, it in enumerate(items):
            vec.dense[it.idx] = dense[i]
            vec.multi[it.idx] = multi[i, : it.n].to(torch.bfloat16)

    @torch.inference_mode()
    def run(self, items: list[Item], batch_size: int = 8) -> Vectors:
        vec = Vectors()
        sp = self.scale.special
        for t in sorted({it.task for it in items}):
            self.pm.set_adapter(TASKS[t])
            texts = [it for it in items if it.task == t and it.image is None]
            pages = [it for it in items if it.task == t and it.image is not None]
            for s in range(0, len(texts), batch_size):
                chunk = texts[s: s + batch_size]
                L = max(it.n for it in chunk)
                ids = torch.zeros(len(chunk), L, dtype=torch.long)
                mask = torch.zeros(len(chunk), L, dtype=torch.long)
                for i, it in enumerate(chunk):
                    ids[i, : it.n] = it.ids
                    mask[i, : it.n] = 1
                ids, mask = ids.to(self.dev), mask.to(self.dev)
                hs = self._forward(ids, mask)
                self._pool(hs, mask, mask, chunk, vec)
            for it in pages:  # batch of 1, as the reference does to avoid OOM
                ids = it.ids.view(1, -1).to(self.dev)
                mask = torch.ones_like(ids)
                extra: dict[str, Any] = dict(pixel_values=self.pool[it.image % len(self.pool)].to(self.dev),
                                             image_grid_thw=torch.tensor([self.scale.image_grid], device=self.dev))
                if self.wants_tt:
                    extra["mm_token_type_ids"] = (ids == sp["image_token_id"]).int()
                hs = self._forward(ids, mask, **extra)
                start = (ids[0] == sp["vision_start_token_id"]).nonzero()[0, 0]
                end = (ids[0] == sp["vision_end_token_id"]).nonzero()[0, 0]
                span = torch.zeros_like(ids)
                span[0, start: end + 1] = 1
                self._pool(hs, span, mask, [it], vec)
        return vec


# ------------------------------------------------------------------------------------------
# omnivec path
# ------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A packed batch's host tensors (pinned on CUDA) and its layout."""

    items: list[Item]
    ids: torch.Tensor  # (N,)
    pos: torch.Tensor  # (3, 1, N)
    cu: torch.Tensor  # (R+1,) int32
    max_len: int
    lengths: list[int]
    row_ids: torch.Tensor  # (N,)
    pool_w: torch.Tensor  # (N,) fp32 pooling weight (1/count inside the pooled span)
    token_tasks: torch.Tensor | None  # (N,) for mixed-task batches
    single_task: int | None
    pixels: torch.Tensor | None  # (P, C) bf16
    grid: torch.Tensor | None  # (I, 3)


def plan_batches(items: list[Item], budget: int) -> list[list[Item]]:
    """Length-sorted (longest first) token-budget batches; a row longer than budget goes alone."""
    order = sorted(items, key=lambda it: -it.n)
    batches, cur, used = [], [], 0
    for it in order:
        if cur and used + it.n > budget:
            batches.append(cur)
            cur, used = [], 0
        cur.append(it)
        used += it.n
    if cur:
        batches.append(cur)
    return batches


def prepare(batch: list[Item], scale: Scale, pool: list[torch.Tensor], pin: bool,
            dtype: torch.dtype) -> Prepared:
    """Build host tensors for one batch (runs in the background thread)."""
    sp = scale.special
    lengths = [it.n for it in batch]
    ids = torch.cat([it.ids for it in batch])
    pos_rows = [it.pos if it.pos is not None else packing.text_position_ids(it.n) for it in batch]
    pos = torch.cat(pos_rows, 1).unsqueeze(1)
    cu, max_len = packing.cu_seqlens_from_lengths(lengths)
    row_ids = packing.token_row_ids(lengths)
    w = []
    for it in batch:
        if it.image is None:
            w.append(torch.full((it.n,), 1.0 / it.n))
        else:
            s = int((it.ids == sp["vision_start_token_id"]).nonzero()[0, 0])
            e = int((it.ids == sp["vision_end_token_id"]).nonzero()[0, 0])
            ww = torch.zeros(it.n)
            ww[s: e + 1] = 1.0 / (e + 1 - s)
            w.append(ww)
    pool_w = torch.cat(w)
    tasks = {it.task for it in batch}
    single = next(iter(tasks)) if len(tasks) == 1 else None
    token_tasks = None if single is not None else packing.token_task_ids([it.task for it in batch], lengths)
    pages = [it for it in batch if it.image is not None]
    pixels = grid = None
    if pages:
        pixels = torch.cat([pool[it.image % len(pool)] for it in pages]).to(dtype)
        grid = torch.tensor([scale.image_grid] * len(pages))
    tensors = [ids, pos, cu, row_ids, pool_w, token_tasks, pixels, grid]
    if pin:
        tensors = [t.pin_memory() if t is not None else None for t in tensors]
    ids, pos, cu, row_ids, pool_w, token_tasks, pixels, grid = tensors
    return Prepared(batch, ids, pos, cu, max_len, lengths, row_ids, pool_w, token_tasks, single,
                    pixels, grid)


def prefetch(fn: Callable[[Any], Prepared], batches: list[Any], depth: int = 2) -> Iterator[Prepared]:
    """Yield fn(b) for each batch, computed ``depth`` ahead in one background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = object()

    def worker() -> None:
        try:
            for b in batches:
                q.put(fn(b))
        except BaseException as e:  # surface errors in the consumer
            q.put(e)
        q.put(stop)

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    while (x := q.get()) is not stop:
        if isinstance(x, BaseException):
            raise x
        yield x
    th.join()


class Omnivec:
    """Packed path over the same base weights with BenchLoRALinear swapped in."""

    def __init__(self, inner: RefModel, state: LoRAState, scale: Scale, pool: list[torch.Tensor],
                 device: torch.device, dtype: torch.dtype, budget: int) -> None:
        self.inner, self.state, self.scale, self.pool = inner, state, scale, pool
        self.dev, self.dtype, self.budget = device, dtype, budget
        self.backbone = inner.vlm.model
        self.lm = self.backbone.language_model
        self.visual = self.backbone.visual

    @torch.inference_mode()
    def run(self, items: list[Item]) -> Vectors:
        vec = Vectors()
        batches = plan_batches(items, self.budget)
        pin = self.dev.type == "cuda"
        sp = self.scale.special
        for pb in prefetch(lambda b: prepare(b, self.scale, self.pool, pin, self.dtype), batches):
            nb = pin
            ids = pb.ids.to(self.dev, non_blocking=nb)
            pos = pb.pos.to(self.dev, non_blocking=nb)
            cu = pb.cu.to(self.dev, non_blocking=nb)
            row_ids = pb.row_ids.to(self.dev, non_blocking=nb)
            pool_w = pb.pool_w.to(self.dev, non_blocking=nb)
            tt = pb.token_tasks.to(self.dev, non_blocking=nb) if pb.token_tasks is not None else None
            self.state.set(tt, pb.single_task, self.dtype)
            emb = self.lm.embed_tokens(ids)
            if pb.pixels is not None:
                pixels = pb.pixels.to(self.dev, non_blocking=nb)
                grid = pb.grid.to(self.dev, non_blocking=nb)
                with packing.varlen_attention(self.lm, self.visual):
                    feats = self.visual(pixels, grid_thw=grid)
                feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
                emb = emb.masked_scatter((ids == sp["image_token_id"]).unsqueeze(-1), feats.to(emb.dtype))
            hidden = packing.packed_forward(self.lm, emb.unsqueeze(0), pos, cu, pb.max_len)  # (N, H)
            multi = F.normalize(self.inner.multi_vector_projector(hidden).float(), dim=-1).to(torch.bfloat16)
            dense = torch.zeros(len(pb.items), hidden.shape[-1], device=self.dev, dtype=torch.float32)
            dense.index_add_(0, row_ids, hidden.float() * pool_w.unsqueeze(-1))
            dense = F.normalize(dense, dim=-1)
            for i, (it, m) in enumerate(zip(pb.items, torch.split(multi, pb.lengths))):
                vec.dense[it.idx] = dense[i]
                vec.multi[it.idx] = m
        return vec


# ------------------------------------------------------------------------------------------
# FLOPs and timing
# ------------------------------------------------------------------------------------------
def lm_flops(scale: Scale, lengths: Sequence[int], lora_tasks_per_token: int = 1) -> float:
    """2*LM matmul params*tokens + causal attention 4*n^2/2*hidden per layer + LoRA + projector."""
    t = scale.text
    h, L, i = t["hidden_size"], t["num_hidden_layers"], t["intermediate_size"]
    kv = h // t["num_attention_heads"] * t["num_key_value_heads"]
    mats = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    per_tok = 2 * L * sum(a * b for a, b in mats) + 2 * h * 128
    lora = 2 * R * (L * sum(a + b for a, b in mats) + h + 128) * lora_tasks_per_token
    n_tok = sum(lengths)
    attn = L * sum(4 * n * n / 2 * h for n in lengths)
    return float((per_tok + lora) * n_tok + attn)


def vision_flops(scale: Scale, n_pages: int) -> float:
    """Vision tower matmuls (blocks, patch embed, merger) + windowed/full attention per page."""
    v = scale.vision
    t, gh, gw = scale.image_grid
    p = t * gh * gw
    hid, inter, depth = v["hidden_size"], v["intermediate_size"], v["depth"]
    block = hid * 3 * hid + hid * hid + 3 * hid * inter
    patch_in = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    merged = p // 4
    merger = merged * (4 * hid * 4 * hid + 4 * hid * v["out_hidden_size"])
    mm = 2 * (p * (depth * block + patch_in * hid) + merger)
    win = (v["window_size"] // v["patch_size"]) ** 2  # patches per window (8x8 = 64)
    n_full = len(v["fullatt_block_indexes"])
    attn = 4 * hid * (n_full * p * p + (depth - n_full) * p * win)
    return float((mm + attn) * n_pages)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_peak(dev: torch.device, dtype: torch.dtype) -> float:
    """Achievable dense matmul FLOP/s measured here (8192^3 bf16 on CUDA, smaller on CPU)."""
    n = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    reps = 20 if dev.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def timed(dev: torch.device, fn: Callable[[], Vectors]) -> tuple[Vectors, float, float]:
    """(result, seconds, peak memory GiB) with synchronisation and a per-phase memory reset."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else float("nan")
    return out, dt, mem


# ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-text", type=int, default=None, help="text passages (default 10000 full / 64 tiny)")
    ap.add_argument("--n-images", type=int, default=None, help="pages (default 500 full / 4 tiny)")
    ap.add_argument("--n-mixed-text", type=int, default=None, help="default n_text // 5")
    ap.add_argument("--n-mixed-images", type=int, default=None, help="default n_images // 5")
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--baseline-batch", type=int, default=8)
    ap.add_argument("--baseline-no-lm-head", action="store_true",
                    help="baseline skips the lm_head logits the reference computes")
    ap.add_argument("--quick", action="store_true", help="10x smaller workloads")
    ap.add_argument("--workloads", default="text,images,mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-cos", type=float, default=0.999)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    import transformers
    import peft

    dev = torch.device(args.device)
    dtype = torch.bfloat16
    scale = make_scale(args.scale)
    n_text = args.n_text if args.n_text is not None else (10000 if args.scale == "full" else 64)
    n_img = args.n_images if args.n_images is not None else (500 if args.scale == "full" else 4)
    if args.quick:
        n_text, n_img = max(1, n_text // 10), max(1, n_img // 10)
    n_mt = args.n_mixed_text if args.n_mixed_text is not None else max(1, n_text // 5)
    n_mi = args.n_mixed_images if args.n_mixed_images is not None else max(1, n_img // 5)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)

    env = dict(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
               python=platform.python_version(),
               device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
               varlen_attn=packing._varlen_fn() is not None)
    print("env:", json.dumps(env))
    t0 = time.perf_counter()
    model = build_model(scale, dev, dtype, args.seed)
    lora = random_lora(model, dev, dtype, args.seed)
    pm = attach_peft(model, lora)
    sync(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.scale} {n_params / 1e9:.3f}B params (+LoRA {sum(a.numel() + b.numel() for a, b in lora.values()) / 1e6:.1f}M), "
          f"built in {time.perf_counter() - t0:.1f}s")
    peak = measure_peak(dev, dtype)
    print(f"measured matmul peak: {peak / 1e12:.3g} TFLOP/s ({dtype})")

    backbone = pm.base_model.model.vlm.model
    pool = make_pixel_pool(scale, 8, args.seed)
    state = LoRAState()
    base = Baseline(pm, scale, pool, dev, lm_head=not args.baseline_no_lm_head)
    ret = TASKS.index("retrieval")
    workloads: dict[str, list[Item]] = {}
    wanted = args.workloads.split(",")
    if "text" in wanted:
        workloads["text"] = make_texts(n_text, scale, 0, [ret], args.seed)
    if "images" in wanted:
        workloads["images"] = make_pages(n_img, scale, 10 ** 6, [ret], backbone)
    if "mixed" in wanted:
        mixed = make_texts(n_mt, scale, 2 * 10 ** 6, [0, 1, 2], args.seed + 1) + \
            make_pages(n_mi, scale, 3 * 10 ** 6, [1, 2, 0], backbone)
        g = torch.Generator().manual_seed(args.seed + 2)
        workloads["mixed"] = [mixed[i] for i in torch.randperm(len(mixed), generator=g).tolist()]

    results: dict[str, Any] = dict(env=env, args=vars(args), peak_matmul_tflops=peak / 1e12,
                                   params=n_params, workloads={})
    ok = True
    for name, items in workloads.items():
        texts = [it for it in items if it.image is None]
        pages = [it for it in items if it.image is not None]
        lengths = [it.n for it in items]
        n_tok = sum(lengths)
        tasks_per_tok_mixed = 1
        flops = lm_flops(scale, lengths, tasks_per_tok_mixed) + vision_flops(scale, len(pages))
        # warm-up both paths on a slice (kernels, allocator, autotuning)
        warm = texts[:16] + pages[:2]
        base.run(warm, args.baseline_batch)
        with omnivec_lora(pm, lora, state) as inner:
            ov = Omnivec(inner, state, scale, pool, dev, dtype, args.batch_tokens)
            ov.run(warm)
        vb, tb, mb = timed(dev, lambda: base.run(items, args.baseline_batch))
        with omnivec_lora(pm, lora, state) as inner:
            ov = Omnivec(inner, state, scale, pool, dev, dtype, args.batch_tokens)
            vo, to, mo = timed(dev, lambda: ov.run(items))
        cos = compare(vo, vb)
        passed = cos["dense_min_cos"] >= args.min_cos and cos["multi_min_item_cos"] >= args.min_cos
        ok &= passed
        r = dict(items=len(items), texts=len(texts), pages=len(pages), tokens=n_tok,
                 useful_tflop=flops / 1e12,
                 baseline=dict(seconds=tb, tokens_per_s=n_tok / tb, pages_per_s=len(pages) / tb,
                               items_per_s=len(items) / tb, mfu=flops / tb / peak, peak_mem_gib=mb),
                 omnivec=dict(seconds=to, tokens_per_s=n_tok / to, pages_per_s=len(pages) / to,
                              items_per_s=len(items) / to, mfu=flops / to / peak, peak_mem_gib=mo,
                              batches=len(plan_batches(items, args.batch_tokens))),
                 speedup=tb / to, cosine=cos, cosine_ok=passed)
        results["workloads"][name] = r
        print(f"\n[{name}] {len(texts)} texts + {len(pages)} pages, {n_tok} tokens, "
              f"{flops / 1e12:.3g} useful TFLOP")
        for k in ("baseline", "omnivec"):
            x = r[k]
            print(f"  {k:9s} {x['seconds']:8.2f}s  {x['tokens_per_s']:10.0f} tok/s  "
                  f"{x['pages_per_s']:7.2f} pages/s  {x['items_per_s']:8.1f} items/s  "
                  f"MFU {100 * x['mfu']:5.1f}%  peak mem {x['peak_mem_gib']:.2f} GiB")
        print(f"  omnivec/baseline: {r['speedup']:.2f}x   cosine dense min {cos['dense_min_cos']:.5f}  "
              f"multi min item {cos['multi_min_item_cos']:.5f} (min token {cos['multi_min_token_cos']:.4f})"
              f"  {'OK' if passed else 'FAIL'}")
        del vb, vo
    results["all_cosine_ok"] = ok
    print(f"\nattention calls: {packing.STATS}")
    print("cosine check:", "PASS" if ok else "FAIL")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
        print("wrote", args.json_out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
