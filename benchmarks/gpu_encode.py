"""GPU encode throughput: omnivec's product path vs a reference-style jina-v4 pipeline, same checkpoint.

A random jina-embeddings-v4 checkpoint is written to a temporary directory in the official
layout (``omnivec.testing.make_random_jina_v4``: config.json with the jina keys, sharded
safetensors in the original key layout, adapters/ with non-zero LoRA r=32 for the 3 tasks on
q/k/v/o/gate/up/down and the projector, Qwen tokenizer, preprocessor config).
``--scale full`` is Qwen2.5-VL-3B (reference sec. 1); ``--scale tiny`` a CPU-sized smoke test.

BASELINE phase (reference-style, run first, then freed): ``Qwen2_5_VLForConditionalGeneration
.from_pretrained(dir)`` in bf16 + the projector Linear from the checkpoint + **peft** LoRA (one
named adapter per task, ``set_adapter`` per task group), texts tokenised with their
``Query: ``/``Passage: `` prefix in batches of 8 in input order padded to the longest, images
through the Qwen2-VL image processor one per batch with the reference's chat template, bf16
autocast, ``output_hidden_states=True`` (lm_head logits computed, as the reference's
``super().forward`` does; ``--baseline-no-lm-head`` drops them), mean pooling over the mask
(text) or the vision_start..vision_end span (images), projector on all tokens.

OMNIVEC phase: ``omnivec.load(dir)`` (JinaV4Model + Embedder: background preparation,
token-budget batches longest first, packed varlen forward on CUDA, per-token task routing) and
one ``embed(inputs, task=..., dense=True, multivector=True)`` per workload, timed end to end:
strings / PIL images in, numpy vectors out.

Workloads: (1) text passages, log-normal lengths (median ~200 tokens, cap 2048), retrieval.passage;
(2) 896x672 px document pages (768 visual tokens); (3) a mixed stream of texts and pages with
tasks interleaved (one embed call; the baseline groups by task and modality as a user must).

Prints tokens/s, pages/s, omnivec/baseline ratio, model FLOP utilisation against an 8192^3 bf16
matmul measured in the run, peak memory per phase, and cosines between the two paths' vectors
(dense min, multi-vector per-token min and per-item mean min; target >= 0.999).

    python benchmarks/gpu_encode.py                           # full scale, CUDA
    python benchmarks/gpu_encode.py --quick                   # 10x smaller workloads
    python benchmarks/gpu_encode.py --scale tiny --device cpu --n-text 64 --n-images 4
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import omnivec  # noqa: E402
from omnivec.models import packing  # noqa: E402
from omnivec.testing import (full_qwen25vl_config_dict, make_random_jina_v4,  # noqa: E402
                             tiny_qwen25vl_config_dict)

TASKS = ["retrieval", "text-matching", "code"]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R, ALPHA = 32, 32
PAGE_W, PAGE_H = 896, 672        # 64 x 48 patches of 14 px -> 768 merged tokens at max_pixels 602112
IMAGE_TEXT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"


# ------------------------------------------------------------------------------------------
# Workloads: real inputs (strings and PIL images) with a task spec each
# ------------------------------------------------------------------------------------------
@dataclass
class Workload:
    inputs: list[Any]            # str or PIL.Image
    tasks: list[str]             # "retrieval.passage", "code.query", ...


def ordinary_token_ids(tok: Any) -> np.ndarray:
    """Ids of plain BPE word tokens (leading space + 2+ ASCII letters): decode/encode round-trips."""
    pat = re.compile(r"^\u0120[A-Za-z]{2,}$")
    vocab = tok.get_vocab(with_added_tokens=False)
    return np.array(sorted(i for t, i in vocab.items() if pat.match(t)), dtype=np.int64)


def make_texts(n: int, tok: Any, pool: np.ndarray, seed: int) -> list[str]:
    """Strings decoded from random ordinary token ids, log-normal target lengths (median 200)."""
    rng = np.random.default_rng(seed)
    lens = np.clip(np.round(np.exp(rng.normal(math.log(200.0), 0.8, n))), 4, 2044).astype(int)
    return [tok.decode(rng.choice(pool, size=int(L)).tolist()) for L in lens]


def make_pages(n: int, seed: int) -> list[Any]:
    """Random-noise RGB pages of 896x672 px (no resize at max_pixels 602112: 768 tokens)."""
    from PIL import Image

    rng = np.random.default_rng(seed + 7)
    return [Image.fromarray(rng.integers(0, 256, (PAGE_H, PAGE_W, 3), dtype=np.uint8), "RGB")
            for _ in range(n)]


# ------------------------------------------------------------------------------------------
# Baseline (reference-style)
# ------------------------------------------------------------------------------------------
class RefModel(nn.Module):
    """jina-v4 layout: the VLM plus the multi-vector projector (both LoRA targets)."""

    def __init__(self, vlm: nn.Module, projector: nn.Linear) -> None:
        super().__init__()
        self.vlm = vlm
        self.multi_vector_projector = projector


def load_baseline(ckpt: Path, dev: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any, dict]:
    """from_pretrained + projector from the shards + peft LoRA with the checkpoint's adapters."""
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    cfg = json.loads((ckpt / "config.json").read_text())
    vlm = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(ckpt), dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    proj_sd = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                if k.startswith("multi_vector_projector."):
                    proj_sd[k.split(".", 1)[1]] = fh.get_tensor(k)
    w = proj_sd["weight"]
    projector = nn.Linear(w.shape[1], w.shape[0], device=dev, dtype=dtype)
    projector.load_state_dict(proj_sd)
    model = RefModel(vlm, projector)

    acfg = json.loads((ckpt / "adapters" / "adapter_config.json").read_text())
    pattern = r".*language_model.*\.(" + "|".join(LORA_TARGETS) + r")$|.*multi_vector_projector$"
    lcfg = LoraConfig(r=acfg["r"], lora_alpha=acfg["lora_alpha"], lora_dropout=0.0,
                      target_modules=pattern, bias="none")
    pm = get_peft_model(model, lcfg, adapter_name=TASKS[0])
    for t in TASKS[1:]:
        pm.add_adapter(t, lcfg)
    inner = pm.base_model.model
    key_re = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.([^.]+)\.weight$")
    copied = 0
    with torch.no_grad():
        for key, val in load_file(str(ckpt / "adapters" / "adapter_model.safetensors")).items():
            path, ab, task = key_re.match(key).groups()
            if path == "multi_vector_projector":
                mod = inner.multi_vector_projector
            else:
                layer, rest = re.search(r"layers\.(\d+)\.(.+)$", path).groups()
                mod = inner.get_submodule(f"vlm.model.language_model.layers.{layer}.{rest}")
            getattr(mod, f"lora_{ab}")[task].weight.copy_(val)
            copied += 1
    n_expected = sum(1 for n, _ in inner.named_modules() if n.endswith(".lora_A") or n.endswith(".lora_B"))
    if copied != n_expected * len(TASKS):
        raise RuntimeError(f"copied {copied} LoRA tensors, expected {n_expected * len(TASKS)}")
    pm.eval()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    pp = json.loads((ckpt / "preprocessor_config.json").read_text())
    proc = Qwen2VLImageProcessorPil(min_pixels=pp["min_pixels"], max_pixels=pp["max_pixels"],
                                    patch_size=pp["patch_size"], merge_size=pp["merge_size"],
                                    temporal_patch_size=pp["temporal_patch_size"],
                                    image_mean=pp["image_mean"], image_std=pp["image_std"])
    return pm, tok, proc, cfg


@dataclass
class Vectors:
    dense: dict[int, torch.Tensor] = field(default_factory=dict)   # (H,) float32 CPU
    multi: dict[int, torch.Tensor] = field(default_factory=dict)   # (n, 128) float32 CPU
    tokens: dict[int, int] = field(default_factory=dict)


class Baseline:
    """Reference-like loop: peft adapter per task group, text batches of 8 padded, images alone."""

    def __init__(self, pm: Any, tok: Any, proc: Any, cfg: dict, dev: torch.device, lm_head: bool,
                 dtype: torch.dtype) -> None:
        self.pm, self.tok, self.proc, self.cfg, self.dev = pm, tok, proc, cfg, dev
        self.dtype = dtype
        inner = pm.base_model.model
        self.vlm, self.proj = inner.vlm, inner.multi_vector_projector
        self.wants_tt = "mm_token_type_ids" in inspect.signature(self.vlm.forward).parameters
        self.lm_head = lm_head

    def _forward(self, **kw: Any) -> torch.Tensor:
        with torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.lm_head:
                out = self.vlm(**kw, output_hidden_states=True, use_cache=False)
            else:
                out = self.vlm.model(**kw, output_hidden_states=True, use_cache=False)
            return out.hidden_states[-1]

    def _emit(self, hs: torch.Tensor, pool: torch.Tensor, mask: torch.Tensor, idx: list[int],
              vec: Vectors) -> None:
        with torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            multi = self.proj(hs)                       # projector on all tokens, as the reference
        pm = pool.to(torch.float32).unsqueeze(-1)
        dense = F.normalize((hs.float() * pm).sum(1) / pm.sum(1), dim=-1).cpu()
        multi = F.normalize(multi.float(), dim=-1).cpu()
        n_tok = mask.sum(1).tolist()
        for i, k in enumerate(idx):
            vec.dense[k] = dense[i]
            vec.multi[k] = multi[i, : n_tok[i]]
            vec.tokens[k] = int(n_tok[i])

    @torch.inference_mode()
    def run(self, wl: Workload, batch_size: int = 8) -> Vectors:
        from PIL import Image

        vec = Vectors()
        groups: dict[tuple[str, str, bool], list[int]] = {}
        for i, (x, t) in enumerate(zip(wl.inputs, wl.tasks)):
            adapter, _, prompt = t.partition(".")
            groups.setdefault((adapter, prompt or "query", isinstance(x, Image.Image)), []).append(i)
        for (adapter, prompt, is_img), idx in groups.items():
            self.pm.set_adapter(adapter)
            if not is_img:
                prefix = "Query: " if adapter == "text-matching" or prompt == "query" else "Passage: "
                for s in range(0, len(idx), batch_size):
                    chunk = idx[s: s + batch_size]
                    enc = self.tok([prefix + wl.inputs[k] for k in chunk], padding="longest", truncation=True,
                                   max_length=32768, add_special_tokens=False, return_tensors="pt")
                    ids, mask = enc["input_ids"].to(self.dev), enc["attention_mask"].to(self.dev)
                    hs = self._forward(input_ids=ids, attention_mask=mask)
                    self._emit(hs, mask, mask, chunk, vec)
                continue
            for k in idx:                      # batch of 1, as reference users do to avoid OOM
                feats = self.proc(images=[wl.inputs[k].convert("RGB")], return_tensors="pt")
                n = int(feats["image_grid_thw"][0].prod()) // 4
                enc = self.tok(IMAGE_TEXT.replace("<|image_pad|>", "<|image_pad|>" * n),
                               add_special_tokens=False, return_tensors="pt")
                ids = enc["input_ids"].to(self.dev)
                mask = enc["attention_mask"].to(self.dev)
                extra = dict(pixel_values=feats["pixel_values"].to(self.dev),
                             image_grid_thw=feats["image_grid_thw"].to(self.dev))
                if self.wants_tt:
                    extra["mm_token_type_ids"] = (ids == self.cfg["image_token_id"]).int()
                hs = self._forward(input_ids=ids, attention_mask=mask, **extra)
                s0 = int((ids[0] == self.cfg["vision_start_token_id"]).nonzero()[0, 0])
                e0 = int((ids[0] == self.cfg["vision_end_token_id"]).nonzero()[0, 0])
                span = torch.zeros_like(ids)
                span[0, s0: e0 + 1] = 1
                self._emit(hs, span, mask, [k], vec)
        return vec


# ------------------------------------------------------------------------------------------
# omnivec
# ------------------------------------------------------------------------------------------
def run_omnivec(m: Any, wl: Workload) -> Vectors:
    res = m.embed(wl.inputs, task=wl.tasks, dense=True, multivector=True)
    vec = Vectors()
    for i, o in enumerate(res.origins):
        vec.dense[o] = torch.from_numpy(res.dense[i])
        vec.multi[o] = torch.from_numpy(res.multivector[i])
        vec.tokens[o] = int(res.tokens[i])
    return vec


def compare(a: Vectors, b: Vectors) -> dict[str, float]:
    """Dense min cosine; multi-vector per-token min, per-item mean min, and overall mean."""
    dmin, mmin, tmin, tsum, tn = 1.0, 1.0, 1.0, 0.0, 0
    for k in b.dense:
        dmin = min(dmin, F.cosine_similarity(a.dense[k].float(), b.dense[k].float(), dim=0).item())
        ma, mb = a.multi[k].float(), b.multi[k].float()
        if ma.shape != mb.shape:
            raise AssertionError(f"item {k}: multi-vector shapes {tuple(ma.shape)} vs {tuple(mb.shape)}")
        c = F.cosine_similarity(ma, mb, dim=-1)
        mmin, tmin = min(mmin, c.mean().item()), min(tmin, c.min().item())
        tsum, tn = tsum + c.sum().item(), tn + c.numel()
    return {"dense_min_cos": dmin, "multi_min_item_mean_cos": mmin, "multi_min_token_cos": tmin,
            "multi_mean_token_cos": tsum / max(tn, 1), "compared_items": len(b.dense)}


# ------------------------------------------------------------------------------------------
# FLOPs and timing
# ------------------------------------------------------------------------------------------
def lm_flops(cfg: dict, lengths: Sequence[int]) -> float:
    """2*LM matmul params*tokens + causal attention 4*n^2/2*hidden per layer + LoRA + projector."""
    h, L, i = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    p = cfg.get("multi_vector_projector_dim", 128)
    mats = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    per_tok = 2 * L * sum(a * b for a, b in mats) + 2 * h * p
    lora = 2 * R * (L * sum(a + b for a, b in mats) + h + p)
    attn = L * sum(4 * n * n / 2 * h for n in lengths)
    return float((per_tok + lora) * sum(lengths) + attn)


def vision_flops(cfg: dict, n_pages: int) -> float:
    """Vision tower matmuls (blocks, patch embed, merger) + windowed/full attention per page."""
    v = cfg["vision_config"]
    p = (PAGE_H // v["patch_size"]) * (PAGE_W // v["patch_size"])
    hid, inter, depth = v["hidden_size"], v["intermediate_size"], v["depth"]
    block = hid * 3 * hid + hid * hid + 3 * hid * inter
    patch_in = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
    merger = p // 4 * (4 * hid * 4 * hid + 4 * hid * v["out_hidden_size"])
    mm = 2 * (p * (depth * block + patch_in * hid) + merger)
    win = (v["window_size"] // v["patch_size"]) ** 2
    n_full = len(v["fullatt_block_indexes"])
    attn = 4 * hid * (n_full * p * p + (depth - n_full) * p * win)
    return float((mm + attn) * n_pages)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_peak(dev: torch.device, dtype: torch.dtype) -> float:
    """Achievable dense matmul FLOP/s measured here (8192^3 on CUDA, 1024^3 on CPU) in ``dtype``."""
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
    dt = time.perf_counter() - t0
    del a, b
    return 2 * n ** 3 * reps / dt


def timed(dev: torch.device, fn: Callable[[], Vectors]) -> tuple[Vectors, float, float]:
    """(result, seconds, peak GiB allocated during the call, resident weights included)."""
    gc.collect()
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


def subset(wl: Workload, n: int | None) -> Workload:
    return wl if n is None or n >= len(wl.inputs) else Workload(wl.inputs[:n], wl.tasks[:n])


# ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-text", type=int, default=None, help="text passages (default 10000 full / 64 tiny)")
    ap.add_argument("--n-images", type=int, default=None, help="pages (default 500 full / 4 tiny)")
    ap.add_argument("--n-mixed-text", type=int, default=None, help="default n_text // 5")
    ap.add_argument("--n-mixed-images", type=int, default=None, help="default n_images // 5")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                    help="compute dtype of both paths (default bf16 on CUDA; float32 on CPU, whose bf16 matmuls crawl)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="omnivec token budget (model default)")
    ap.add_argument("--packed", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--baseline-batch", type=int, default=8)
    ap.add_argument("--baseline-max-items", type=int, default=None,
                    help="baseline runs only the first N items of each workload (time budget); "
                         "its rates and the cosine check use those")
    ap.add_argument("--baseline-no-lm-head", action="store_true",
                    help="baseline skips the lm_head logits the reference computes")
    ap.add_argument("--quick", action="store_true", help="10x smaller workloads")
    ap.add_argument("--workloads", default="text,images,mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-cos", type=float, default=0.999)
    ap.add_argument("--workdir", default=None, help="where the temporary checkpoint goes")
    ap.add_argument("--keep-checkpoint", action="store_true")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top kernels of omnivec's text run")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    import peft
    import transformers

    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
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
               varlen_attn=packing._varlen_fn() is not None, dtype=str(dtype))
    print("env:", json.dumps(env), flush=True)

    # ---- checkpoint
    t0 = time.perf_counter()
    ckpt = Path(tempfile.mkdtemp(prefix="omnivec-bench-", dir=args.workdir)) / f"random-jina-v4-{args.scale}"
    cfg = full_qwen25vl_config_dict() if args.scale == "full" else tiny_qwen25vl_config_dict(projector_dim=128)
    make_random_jina_v4(ckpt, cfg, seed=args.seed, r=R, alpha=ALPHA, device=dev, dtype=torch.bfloat16,
                        scaled_init=True)
    sync(dev)
    ckpt_gb = sum(f.stat().st_size for f in ckpt.rglob("*.safetensors")) / 1e9
    print(f"checkpoint: {args.scale}, {ckpt_gb:.2f} GB safetensors "
          f"({', '.join(sorted(f.name for f in ckpt.glob('*.safetensors')))}) in {time.perf_counter() - t0:.1f}s",
          flush=True)
    peak = measure_peak(dev, dtype)
    print(f"measured matmul peak: {peak / 1e12:.4g} TFLOP/s ({dtype})", flush=True)

    # ---- inputs
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    pool = ordinary_token_ids(tok)
    wanted = args.workloads.split(",")
    workloads: dict[str, Workload] = {}
    if "text" in wanted:
        workloads["text"] = Workload(make_texts(n_text, tok, pool, args.seed), ["retrieval.passage"] * n_text)
    if "images" in wanted:
        workloads["images"] = Workload(make_pages(n_img, args.seed), ["retrieval.passage"] * n_img)
    if "mixed" in wanted:
        text_tasks = ["retrieval.passage", "retrieval.query", "text-matching", "code.query", "code.passage"]
        img_tasks = ["retrieval.passage", "text-matching", "code.passage"]
        items = [(x, text_tasks[i % 5]) for i, x in enumerate(make_texts(n_mt, tok, pool, args.seed + 1))]
        items += [(x, img_tasks[i % 3]) for i, x in enumerate(make_pages(n_mi, args.seed + 1))]
        order = np.random.default_rng(args.seed + 2).permutation(len(items))
        workloads["mixed"] = Workload([items[i][0] for i in order], [items[i][1] for i in order])
    warm = Workload(make_texts(16, tok, pool, args.seed + 3) + make_pages(2, args.seed + 3),
                    ["retrieval.passage", "code.query"] * 8 + ["text-matching"] * 2)
    print(f"inputs built in {time.perf_counter() - t0:.1f}s ({len(pool)} ordinary token ids)", flush=True)

    results: dict[str, Any] = dict(env=env, args=vars(args), peak_matmul_tflops=peak / 1e12,
                                   checkpoint_gb=ckpt_gb, workloads={})

    # ---- BASELINE phase
    t0 = time.perf_counter()
    pm, btok, proc, _ = load_baseline(ckpt, dev, dtype)
    sync(dev)
    n_params = sum(p.numel() for n, p in pm.named_parameters() if "lora_" not in n)
    n_lora = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    results.update(params=n_params, lora_params=n_lora)
    print(f"baseline loaded in {time.perf_counter() - t0:.1f}s: {n_params / 1e9:.3f}B params "
          f"+ {n_lora / 1e6:.1f}M LoRA (3 tasks)", flush=True)
    base = Baseline(pm, btok, proc, cfg, dev, lm_head=not args.baseline_no_lm_head, dtype=dtype)
    base.run(warm, args.baseline_batch)
    base_out: dict[str, tuple[Vectors, float, float]] = {}
    for name, wl in workloads.items():
        sub = subset(wl, args.baseline_max_items)
        base_out[name] = timed(dev, lambda: base.run(sub, args.baseline_batch))
        print(f"baseline {name}: {len(sub.inputs)} items in {base_out[name][1]:.2f}s", flush=True)
    del base, pm
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # ---- OMNIVEC phase
    t0 = time.perf_counter()
    packed = None if args.packed == "auto" else args.packed == "on"
    m = omnivec.load(str(ckpt), device=dev, dtype=dtype, batch_tokens=args.batch_tokens, packed=packed)
    sync(dev)
    load_mem = torch.cuda.memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else float("nan")
    print(f"omnivec loaded in {time.perf_counter() - t0:.1f}s (packed={m.model.packed}, "
          f"batch_tokens={m.batch_tokens}, weights {load_mem:.2f} GiB)", flush=True)
    results.update(omnivec_weights_gib=load_mem, omnivec_packed=m.model.packed, batch_tokens=m.batch_tokens)
    run_omnivec(m, warm)
    ok = True
    rows = []
    for name, wl in workloads.items():
        vo, to, mo = timed(dev, lambda: run_omnivec(m, wl))
        if args.profile and name in ("text", "images") and dev.type == "cuda":
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run_omnivec(m, subset(wl, 300 if name == "text" else 20))
                sync(dev)
            sort = "cuda_time_total" if name == "text" else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60)
            print(table)
            results[f"profile_{name}"] = table
        vb, tb, mb = base_out[name]
        n_b = len(vb.dense)
        is_img = [not isinstance(x, str) for x in wl.inputs]
        lengths = [vo.tokens[i] for i in range(len(wl.inputs))]
        n_tok, n_pages = sum(lengths), sum(is_img)
        flops = lm_flops(cfg, lengths) + vision_flops(cfg, n_pages)
        b_lengths = [vb.tokens[i] for i in range(n_b)]
        b_pages = sum(is_img[:n_b])
        b_flops = lm_flops(cfg, b_lengths) + vision_flops(cfg, b_pages)
        cos = compare(vo, vb)
        passed = min(cos["dense_min_cos"], cos["multi_min_token_cos"]) >= args.min_cos
        ok &= passed
        text_tok = sum(t for t, im in zip(lengths, is_img) if not im)
        r = dict(items=len(wl.inputs), texts=len(wl.inputs) - n_pages, pages=n_pages, tokens=n_tok,
                 text_tokens=text_tok, max_text_tokens=max([t for t, im in zip(lengths, is_img) if not im], default=0),
                 useful_tflop=flops / 1e12,
                 baseline=dict(items=n_b, seconds=tb, tokens_per_s=sum(b_lengths) / tb,
                               pages_per_s=b_pages / tb, items_per_s=n_b / tb,
                               mfu=b_flops / tb / peak, peak_mem_gib=mb),
                 omnivec=dict(items=len(wl.inputs), seconds=to, tokens_per_s=n_tok / to,
                              pages_per_s=n_pages / to, items_per_s=len(wl.inputs) / to,
                              mfu=flops / to / peak, peak_mem_gib=mo),
                 cosine=cos, cosine_ok=passed)
        r["ratio_tokens_per_s"] = r["omnivec"]["tokens_per_s"] / r["baseline"]["tokens_per_s"]
        r["ratio_items_per_s"] = r["omnivec"]["items_per_s"] / r["baseline"]["items_per_s"]
        results["workloads"][name] = r
        print(f"\n[{name}] {r['texts']} texts + {n_pages} pages, {n_tok} tokens "
              f"(text max {r['max_text_tokens']}), {flops / 1e12:.4g} useful TFLOP", flush=True)
        for k in ("baseline", "omnivec"):
            x = r[k]
            print(f"  {k:9s} {x['items']:6d} items {x['seconds']:8.2f}s  {x['tokens_per_s']:10.0f} tok/s  "
                  f"{x['pages_per_s']:7.2f} pages/s  {x['items_per_s']:8.1f} items/s  "
                  f"MFU {100 * x['mfu']:5.1f}%  peak mem {x['peak_mem_gib']:.2f} GiB")
        print(f"  omnivec/baseline: {r['ratio_tokens_per_s']:.2f}x tokens/s   cosine dense min "
              f"{cos['dense_min_cos']:.5f}  multi token min {cos['multi_min_token_cos']:.5f} "
              f"item-mean min {cos['multi_min_item_mean_cos']:.5f} mean {cos['multi_mean_token_cos']:.6f}"
              f"  {'OK' if passed else 'FAIL'}", flush=True)
        rows.append((name, r))
        del vo
    results["all_cosine_ok"] = ok
    results["attention_calls"] = dict(packing.STATS)

    print(f"\nsummary (omnivec vs baseline; MFU vs measured {dtype} matmul peak "
          f"{peak / 1e12:.0f} TFLOP/s)")
    print(f"{'workload':9s} {'omni tok/s':>11s} {'base tok/s':>11s} {'ratio':>6s} {'omni pg/s':>9s} "
          f"{'base pg/s':>9s} {'omni MFU':>8s} {'base MFU':>8s} {'omni GiB':>8s} {'base GiB':>8s} "
          f"{'dense cos':>9s} {'tok cos':>8s}")
    for name, r in rows:
        o, b, c = r["omnivec"], r["baseline"], r["cosine"]
        print(f"{name:9s} {o['tokens_per_s']:11.0f} {b['tokens_per_s']:11.0f} {r['ratio_tokens_per_s']:5.2f}x "
              f"{o['pages_per_s']:9.2f} {b['pages_per_s']:9.2f} {100 * o['mfu']:7.1f}% {100 * b['mfu']:7.1f}% "
              f"{o['peak_mem_gib']:8.2f} {b['peak_mem_gib']:8.2f} {c['dense_min_cos']:9.5f} "
              f"{c['multi_min_token_cos']:8.5f}")
    print(f"attention calls: {packing.STATS}")
    print("cosine check:", "PASS" if ok else "FAIL", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=2)
        print("wrote", args.json_out)
    if not args.keep_checkpoint:
        shutil.rmtree(ckpt.parent, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
