"""``omnivec train``: fit one task adapter (LoRA) and the multi-vector projector on a frozen backbone.

The recipe is jina-v4's (reference sec 5): backbone frozen; per batch of pairs the joint loss
``w_dense * InfoNCE(dense, Matryoshka-summed) + w_multi * InfoNCE(MaxSim / |q|) + w_kl * KL``
with in-batch and hard negatives; graded pairs use CoSENT. Large effective batches on small
memory use cached gradients (GradCache): embeddings of the whole batch are computed without
autograd, the loss's gradient w.r.t. them is taken once, then each micro-batch is re-run with
autograd and back-propagated with that cached gradient (exactly the full-batch gradient).

A hold-out of the *training* data (``val_fraction``) picks the best checkpoint; evaluation
suites are never read here. Checkpoints (``<out>/.checkpoints/<task>/``) make runs resumable.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..execution import token_states
from ..models.encoder import PROJECTOR_FILE
from ..tasks import ADAPTERS
from .common import META_FILE, false_negatives, length_chunks, mrr10, task_specs
from .data import Example, GradedExample, PairExample, iter_batches, load_examples, split_validation
from .losses import cosent, info_nce_from_scores, kl_divergence, matryoshka, maxsim_matrix
from .model import Reps, TrainableModel, pca_projector

CHUNK_TOKENS = 2048     # padded tokens per forward chunk (cache-friendly on a CPU)


@dataclass
class TrainConfig:
    task: str                                   # adapter: retrieval | text-matching | code
    data: str                                   # JSONL path or builder (stdlib-code, django-parallel)
    out: str
    base: str | None = None                     # model name/dir (None: the embedded default)
    loss: str = "joint"                         # joint | infonce | cosent
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    micro_batch: int | None = None              # < batch_size: cached-gradient micro-batches
    lr: float = 5e-4
    projector_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: float = 0.05
    rank: int = 8
    alpha: float = 16.0
    temperature: float = 0.05
    w_dense: float = 1.0
    w_multi: float = 1.0
    w_kl: float = 0.5
    w_cosent: float = 1.0
    matryoshka_dims: tuple[int, ...] | None = None   # None: full, 256, 128, 64 (those below full)
    multivector_dim: int = 128
    train_projector: bool | None = None          # None: only when the out folder has no projector
    max_query_tokens: int = 128
    max_doc_tokens: int = 256
    max_negatives: int = 1                      # hard negatives used per pair
    val_fraction: float = 0.05
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0
    threads: int | None = None

    def fingerprint(self) -> str:
        """What a checkpoint must agree with to be resumed."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("eval_every", "save_every", "threads")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    out: Path
    steps: int
    seconds: float
    best_step: int
    best_val: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    data_info: dict[str, Any] = field(default_factory=dict)


class _Prepared:
    """Rows of every training example, prepared once (the backbone is the slow part)."""

    def __init__(self, enc: TrainableModel, examples: Sequence[Example], cfg: TrainConfig) -> None:
        q_spec, d_spec = task_specs(cfg.task)
        self.rows: list[dict[str, Any]] = []
        for ex in examples:
            if isinstance(ex, PairExample):
                q = enc.prepare([ex.query], q_spec, cfg.max_query_tokens)[0]
                docs = enc.prepare([ex.positive] + ex.negatives[:cfg.max_negatives], d_spec, cfg.max_doc_tokens)
                self.rows.append({"q": q, "pos": docs[0], "negs": docs[1:], "group": ex.group})
            else:
                a, b = enc.prepare([ex.text1, ex.text2], q_spec, cfg.max_doc_tokens)
                self.rows.append({"a": a, "b": b, "score": float(ex.score)})


def _pad_cat(parts: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    return torch.cat([F.pad(p, (0, 0, 0, length - p.shape[1])) if p.dim() == 3 else F.pad(p, (0, length - p.shape[1]))
                      for p in parts])


def _reordered(reps: Sequence[Reps], chunks: Sequence[Sequence[int]]) -> Reps:
    """Chunk outputs joined back into the batch's original row order (gradients flow through)."""
    joined = _joined(reps)
    order = torch.tensor([i for c in chunks for i in c])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    if joined.tokens is None:
        return Reps(joined.dense[inverse], None, None)
    return Reps(joined.dense[inverse], joined.tokens[inverse], joined.mask[inverse])


def _joined(reps: Sequence[Reps]) -> Reps:
    dense = torch.cat([r.dense for r in reps])
    if reps[0].tokens is None:
        return Reps(dense, None, None)
    length = max(r.tokens.shape[1] for r in reps)
    return Reps(dense, _pad_cat([r.tokens for r in reps], length), _pad_cat([r.mask for r in reps], length))


class Trainer:
    """Runs one training job; ``run()`` returns a :class:`TrainResult` and writes ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> None:
        """``log`` receives one line per validation; ``on_step(step, losses)`` runs after each step."""
        self.cfg = cfg
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.on_step = on_step
        self.step_losses: list[float] = []

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Load the model and data, attach the task's LoRA, build the optimiser (``run`` calls it)."""
        from ..models.registry import load_for_training, resolve_model_path
        cfg = self.cfg
        if cfg.loss not in ("joint", "infonce", "cosent"):
            raise ValueError(f"loss must be joint, infonce or cosent, got {cfg.loss!r}")
        if cfg.task not in ("retrieval", "text-matching", "code"):
            raise ValueError(f"task must be retrieval, text-matching or code, got {cfg.task!r}")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        path = resolve_model_path(cfg.base)
        self.base_path = path
        self.out = Path(cfg.out)
        model = load_for_training(path, self.out if (self.out / "adapter_config.json").is_file() else None)
        examples, self.data_info = load_examples(cfg.data)
        graded = sum(isinstance(e, GradedExample) for e in examples)
        if cfg.loss == "cosent" and graded != len(examples):
            raise ValueError("--loss cosent needs graded rows {text1, text2, score} only")
        if cfg.loss != "cosent" and graded:
            raise ValueError("graded rows {text1, text2, score} need --loss cosent")
        train, val = split_validation(examples, cfg.val_fraction, cfg.seed)
        if len(train) < cfg.batch_size:
            raise ValueError(f"{len(train)} training examples is fewer than one batch ({cfg.batch_size})")
        self.multivector = cfg.loss == "joint"
        # A family whose adapters come with its checkpoint (jina-v4) keeps its shared projector;
        # the projector's per-task LoRA trains with the task's adapter.
        self.own_projector = bool(model.lora_targets)
        if not self.own_projector and cfg.train_projector:
            raise ValueError(f"the {model.family} projector is shared by every task (its task LoRA trains "
                             "with the adapter); drop --train-projector")
        has_projector = (self.out / PROJECTOR_FILE).is_file()
        self.train_projector = self.own_projector and self.multivector and (
            cfg.train_projector if cfg.train_projector is not None else not has_projector)
        projector = None
        if has_projector and self.own_projector:
            from ..models.encoder import load_projector_file
            projector = load_projector_file(self.out / PROJECTOR_FILE, model.dim)
        self.enc = TrainableModel(model, cfg.task, rank=cfg.rank, alpha=cfg.alpha,
                                  adapter_dir=self.out if (self.out / "adapter_config.json").is_file() else None,
                                  projector=projector)
        self.log(f"preparing {len(train)} training and {len(val)} validation examples")
        self.train_rows = _Prepared(self.enc, train, cfg).rows
        self.val_rows = _Prepared(self.enc, val, cfg).rows
        if self.train_projector and projector is None:
            self.enc.projector = self._pca_init()
        self.dims = self._matryoshka_dims(model.dim)
        params = [{"params": self.enc.lora_parameters(), "lr": cfg.lr}]
        for p in self.enc.projector.parameters():
            p.requires_grad_(self.train_projector)
        if self.train_projector:
            params.append({"params": list(self.enc.projector.parameters()), "lr": cfg.projector_lr})
        self.optimizer = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
        per_epoch = len(self.train_rows) // cfg.batch_size
        self.total_steps = cfg.max_steps or max(1, int(math.ceil(per_epoch * cfg.epochs)))
        warm = max(1, int(self.total_steps * cfg.warmup))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warm, max(0.0, (self.total_steps - s) / max(1, self.total_steps - warm))))

    def _matryoshka_dims(self, full: int) -> list[int]:
        if self.cfg.matryoshka_dims:
            dims = sorted({int(d) for d in self.cfg.matryoshka_dims}, reverse=True)
            if dims[0] > full or dims[-1] < 1:
                raise ValueError(f"matryoshka dims must lie in 1..{full}, got {dims}")
            return dims
        return [full] + [d for d in (256, 128, 64) if d < full]

    def _pca_init(self) -> torch.nn.Linear:
        """PCA of token states of up to 64 training documents (frozen backbone; the task's
        adapter as it starts: a fresh LoRA is a no-op)."""
        docs = [r.get("pos", r.get("a")) for r in self.train_rows[:64]]
        states = token_states(self.enc.model, docs).states
        dim = min(self.cfg.multivector_dim, states.shape[0], states.shape[-1])
        return pca_projector(states.clone(), dim)

    # ---------------------------------------------------------------- loss
    def _loss(self, q: Reps, d: Reps, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        t = cfg.temperature
        hide = false_negatives(batch)          # candidates that are not negatives of a row

        def masked(scores: torch.Tensor) -> torch.Tensor:
            return scores if hide is None else scores.masked_fill(hide, float("-inf"))

        dense_loss = matryoshka(lambda a, b: info_nce_from_scores(masked(a @ b.T), t), self.dims)(q.dense, d.dense)
        parts = {"dense": float(dense_loss.detach())}
        loss = cfg.w_dense * dense_loss
        if self.multivector and q.tokens is not None:
            multi = maxsim_matrix(q.tokens, q.mask, d.tokens, d.mask)
            multi_loss = info_nce_from_scores(masked(multi), t)
            if hide is not None:   # KL over the candidates both distributions keep
                kl = kl_divergence(masked(q.dense @ d.dense.T).masked_fill(hide, -1e4),
                                   multi.masked_fill(hide, -1e4), t)
            else:
                kl = kl_divergence(q.dense @ d.dense.T, multi, t)
            loss = loss + cfg.w_multi * multi_loss + cfg.w_kl * kl
            parts.update(multi=float(multi_loss.detach()), kl=float(kl.detach()))
        return loss, parts

    def _graded_loss(self, a: Reps, b: Reps, gold: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = matryoshka(lambda x, y: cosent((x * y).sum(-1), gold), self.dims)(a.dense, b.dense)
        return self.cfg.w_cosent * loss, {"cosent": float(loss.detach())}

    # ---------------------------------------------------------------- one step
    def step(self, batch: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step on a batch of pairs (or graded pairs).

        Each side is cut into length-sorted chunks, so a chunk pads only to its own longest row
        (3x fewer FLOPs than one padded batch on mixed-length code). Without ``micro_batch`` all
        chunks keep their graphs and one backward runs; with it, cached gradients bound memory.
        """
        cfg = self.cfg
        graded = "score" in batch[0]
        if graded:
            left = [r["a"] for r in batch]
            right = [r["b"] for r in batch]
        else:
            left = [r["q"] for r in batch]
            right = [r["pos"] for r in batch] + [n for r in batch for n in r["negs"]]
        tokens = self.multivector and not graded
        rows = cfg.micro_batch or len(right)
        budget = CHUNK_TOKENS if cfg.micro_batch is None else 1 << 30
        sides = [(seqs, length_chunks([p.cost for p in seqs], rows, budget)) for seqs in (left, right)]

        def loss_of(l_reps: list[Reps], r_reps: list[Reps]) -> tuple[torch.Tensor, dict[str, float]]:
            lj, rj = (_reordered(reps, chunks) for reps, (_, chunks) in zip((l_reps, r_reps), sides))
            if graded:
                return self._graded_loss(lj, rj, torch.tensor([r["score"] for r in batch]))
            return self._loss(lj, rj, batch)

        def run(seqs: list[Any], chunks: list[list[int]]) -> list[Reps]:
            return [self.enc.represent([seqs[i] for i in c], with_tokens=tokens) for c in chunks]

        self.optimizer.zero_grad(set_to_none=True)
        if cfg.micro_batch is None:
            loss, parts = loss_of(*(run(seqs, chunks) for seqs, chunks in sides))
            loss.backward()
        else:   # cached gradients: full-batch loss on detached embeddings, then per-chunk backward
            with torch.no_grad():
                cached = [run(seqs, chunks) for seqs, chunks in sides]
            for r in cached[0] + cached[1]:
                r.dense.requires_grad_(True)
                if r.tokens is not None:
                    r.tokens.requires_grad_(True)
            loss, parts = loss_of(*cached)
            loss.backward()
            for (seqs, chunks), reps in zip(sides, cached):
                for c, old in zip(chunks, reps):
                    fresh = self.enc.represent([seqs[i] for i in c], with_tokens=tokens)
                    surrogate = (fresh.dense * old.dense.grad).sum()
                    if fresh.tokens is not None:
                        surrogate = surrogate + (fresh.tokens * old.tokens.grad[:, :fresh.tokens.shape[1]]).sum()
                    surrogate.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.scheduler.step()
        parts["loss"] = float(loss.detach())
        return parts

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """MRR@10 (pairs: each query against all validation positives) or Spearman (graded)."""
        rows = self.val_rows
        if not rows:
            return {}
        graded = "score" in rows[0]
        tokens = self.multivector and not graded
        left = [r["a"] if graded else r["q"] for r in rows]
        right = [r["b"] if graded else r["pos"] for r in rows]
        lr = _joined([self.enc.represent(left[i:i + 64], with_tokens=tokens) for i in range(0, len(left), 64)])
        rr = _joined([self.enc.represent(right[i:i + 64], with_tokens=tokens) for i in range(0, len(right), 64)])
        if graded:
            cos = (lr.dense * rr.dense).sum(-1)
            return {"spearman": _spearman(cos, torch.tensor([r["score"] for r in rows], dtype=cos.dtype))}
        out = {"dense_mrr10": mrr10(lr.dense @ rr.dense.T)}
        small = 128 if 128 in self.dims else self.dims[-1]
        out[f"dense{small}_mrr10"] = mrr10(F.normalize(lr.dense[:, :small], dim=-1) @ F.normalize(rr.dense[:, :small], dim=-1).T)
        if tokens:
            from ..scoring import maxsim_scores   # memory-bounded: no (Q, D, Lq, Ld) tensor
            qs = [t[m.bool()].numpy() for t, m in zip(lr.tokens, lr.mask)]
            ds = [t[m.bool()].numpy() for t, m in zip(rr.tokens, rr.mask)]
            out["maxsim_mrr10"] = mrr10(torch.from_numpy(maxsim_scores(qs, ds)))
        return out

    def _score(self, metrics: dict[str, float]) -> float:
        keys = [k for k in ("dense_mrr10", "maxsim_mrr10", "spearman") if k in metrics]
        return float(np.mean([metrics[k] for k in keys])) if keys else 0.0

    # ---------------------------------------------------------------- checkpoints
    def _ckpt_dir(self) -> Path:
        return self.out / ".checkpoints" / self.cfg.task

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, layer in _lora_items(self.enc):
            state[f"{name}.A"] = layer.lora_A[self.cfg.task].weight.detach().clone()
            state[f"{name}.B"] = layer.lora_B[self.cfg.task].weight.detach().clone()
        if self.own_projector:
            for k, v in self.enc.projector.state_dict().items():
                state[f"projector.{k}"] = v.detach().clone()
        return state

    def _load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in _lora_items(self.enc):
                layer.lora_A[self.cfg.task].weight.copy_(state[f"{name}.A"])
                layer.lora_B[self.cfg.task].weight.copy_(state[f"{name}.B"])
            proj = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
            if proj:
                if tuple(proj["weight"].shape) != tuple(self.enc.projector.weight.shape):
                    self.enc.projector = torch.nn.Linear(proj["weight"].shape[1], proj["weight"].shape[0])
                self.enc.projector.load_state_dict(proj)

    def _save_ckpt(self, step: int, best: dict[str, Any], history: list[dict[str, float]]) -> None:
        d = self._ckpt_dir()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "state.pt.tmp"
        torch.save({"fingerprint": self.cfg.fingerprint(), "step": step, "trainable": self._trainable_state(),
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "best": best, "history": history, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(d / "state.pt")      # atomic: a kill mid-save keeps the previous checkpoint

    def _try_resume(self) -> tuple[int, dict[str, Any], list[dict[str, float]]] | None:
        f = self._ckpt_dir() / "state.pt"
        if not f.is_file():
            return None
        ck = torch.load(f, weights_only=False)
        if ck.get("fingerprint") != self.cfg.fingerprint():
            self.log(f"ignoring checkpoint {f}: it was made with different settings")
            return None
        self._load_trainable(ck["trainable"])
        if self.train_projector:     # the optimizer's projector group must point at the live module
            self.optimizer.param_groups[1]["params"] = list(self.enc.projector.parameters())
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"])
        return ck["step"], ck["best"], ck["history"]

    # ---------------------------------------------------------------- run
    def run(self) -> TrainResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        start_time = time.perf_counter()
        self.setup()
        cfg = self.cfg
        step, history = 0, []
        best: dict[str, Any] = {"step": 0, "score": -1.0, "metrics": {}, "state": None}
        resumed = self._try_resume()
        if resumed:
            step, best, history = resumed
            self.log(f"resumed from step {step}")
        if best["state"] is None:
            m = self.validate()
            best = {"step": 0, "score": self._score(m), "metrics": m, "state": self._trainable_state()}
            history.append({"step": 0, **m})
            self.log(f"step 0 validation: {_fmt(m)}")
        batches = self._schedule()
        enabled = sys.stderr.isatty() if self.progress is None else self.progress
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), disable=not enabled) as bar:
            job = bar.add_task(f"train {cfg.task}", total=self.total_steps, completed=step)
            t0, seen = time.perf_counter(), 0
            for i, idx in enumerate(batches):
                if i < step:
                    continue
                parts = self.step([self.train_rows[j] for j in idx])
                step += 1
                seen += len(idx)
                rate = seen / max(1e-9, time.perf_counter() - t0)
                bar.update(job, advance=1, description=f"train {cfg.task} loss {parts['loss']:.3f} {rate:.1f} pairs/s")
                if step % cfg.eval_every == 0 or step == self.total_steps:
                    m = self.validate()
                    history.append({"step": step, "loss": parts["loss"], **m})
                    if not self.val_rows or self._score(m) > best["score"]:   # no hold-out: keep the last
                        best = {"step": step, "score": self._score(m), "metrics": m, "state": self._trainable_state()}
                    self.log(f"step {step} loss {parts['loss']:.4f} validation: {_fmt(m)}")
                if step % cfg.save_every == 0 or step == self.total_steps:
                    self._save_ckpt(step, best, history)
                self.step_losses.append(parts["loss"])
                if self.on_step is not None:
                    self.on_step(step, parts)
        self._load_trainable(best["state"])
        seconds = time.perf_counter() - start_time
        self._write(best, history, seconds, step)
        return TrainResult(self.out, step, seconds, best["step"], best["metrics"], history, self.data_info)

    def _schedule(self) -> list[list[int]]:
        out: list[list[int]] = []
        epoch = 0
        while len(out) < self.total_steps:
            out.extend(iter_batches(len(self.train_rows), self.cfg.batch_size, self.cfg.seed, epoch))
            epoch += 1
        return out[:self.total_steps]

    def _write(self, best: dict[str, Any], history: list[dict[str, float]], seconds: float, steps: int) -> None:
        from safetensors.torch import save_file

        from ..adapters import save_adapters
        out = self.out
        save_adapters(self.enc.module, out, self.enc.task_names,
                      extra_config={"base_model_name_or_path": str(self.cfg.base or "default")})
        if self.multivector and self.own_projector:
            sd = {k: v.detach().contiguous() for k, v in self.enc.projector.state_dict().items()}
            save_file(sd, str(out / PROJECTOR_FILE))
        meta_path = out / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta["base"] = str(self.cfg.base or "default")
        # Encoders: the tasks this folder has no adapter for run the bare backbone, as before.
        meta["bare_tasks"] = [t for t in ADAPTERS if t not in self.enc.task_names] if self.own_projector else []
        meta.setdefault("tasks", {})[self.cfg.task] = {
            "config": {k: v for k, v in asdict(self.cfg).items() if k != "out"},
            "data": self.data_info, "train_examples": len(self.train_rows), "val_examples": len(self.val_rows),
            "steps": steps, "best_step": best["step"], "best_validation": best["metrics"],
            "seconds": round(seconds, 1), "projector_trained": self.train_projector,
            "history": history}
        meta_path.write_text(json.dumps(meta, indent=2, default=str))


def _lora_items(enc: TrainableModel):
    from ..adapters import lora_layers
    return sorted(lora_layers(enc.module).items())


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties sharing their average rank (as Spearman's rho needs)."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts                 # 0-based rank of each distinct value
    return (first + (counts + 1) / 2).to(torch.float64)[inverse]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's r of the (tie-averaged) ranks."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom else 0.0


def _fmt(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in m.items())
