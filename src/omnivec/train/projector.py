"""``omnivec train-projector``: distil a small multi-vector projector from the full token states.

Why: MaxSim over raw token states (the hidden size, 384 on e5-small) is the best late-interaction
signal we have, but it stores 3x the bytes of the 128-d multi-vectors jina-v4 uses. With the
backbone and the task adapters frozen, each training text's token states never change, so they
are computed once (the fast inference path, each source through its own task's adapter) and
cached; the projector alone then trains for a few epochs on the cache. Per batch of pairs the
loss is ``InfoNCE(MaxSim of projected tokens / |q|)`` over in-batch and hard negatives plus
``w_distill * KL(raw-state MaxSim || projected MaxSim)`` over the same candidates, so the small
vectors learn to rank like the full ones. One projector serves every task, so it trains on a mix
of sources (``DATA:TASK``); the epoch kept is the one with the best mean projected MaxSim MRR@10
on the sources' validation hold-outs (the same split ``omnivec train`` uses: never evaluation data).
"""
from __future__ import annotations

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

from .. import heads
from ..execution import token_states
from ..models.base import PrepareOptions
from ..models.encoder import PROJECTOR_FILE
from ..tasks import TaskSpec
from .common import META_FILE, false_negatives, length_chunks, mrr10, task_specs
from .data import PairExample, iter_batches, load_examples, split_validation
from .losses import info_nce_from_scores, kl_divergence, maxsim_matrix
from .model import pca_projector

PCA_TOKENS = 20_000      # token states sampled for the projector's PCA start


@dataclass
class ProjectorConfig:
    out: str                                    # adapter folder: its adapters route each source
    sources: tuple[str, ...] = ("stdlib-code:code", "django-parallel:text-matching", "stdlib-code:retrieval")
    base: str | None = None                     # model name/dir (None: the embedded default)
    dim: int = 128
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    temperature: float = 0.02
    w_distill: float = 1.0
    max_pairs: int | None = None                # per source, after the validation split
    max_query_tokens: int = 128
    max_doc_tokens: int = 256
    max_negatives: int = 1
    val_fraction: float = 0.03
    seed: int = 0


@dataclass
class ProjectorResult:
    out: Path
    seconds: float
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def parse_source(spec: str) -> tuple[str, str]:
    """``"stdlib-code:code"`` -> ``("stdlib-code", "code")`` (the data may itself hold a colon)."""
    data, sep, task = spec.rpartition(":")
    if not sep or not data or task not in ("retrieval", "text-matching", "code"):
        raise ValueError(f"a projector source is DATA:TASK with TASK retrieval | text-matching | code, got {spec!r}")
    return data, task


@dataclass
class _Source:
    name: str
    task: str
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]


class _StateCache:
    """Last-layer token states of every distinct (task, token ids), float16, computed once."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.states: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def fill(self, task: str, seqs: Sequence[tuple[int, ...]], advance: Callable[[int], None]) -> None:
        todo = list(dict.fromkeys(s for s in seqs if (task, s) not in self.states))
        spec = TaskSpec(task, "query")        # routing only: the ids already carry their prompt
        for chunk in length_chunks([len(s) for s in todo], 32, 4096):
            rows = [todo[i] for i in chunk]
            ts = token_states(self.model, [self.model.processor.text_row(list(r), spec) for r in rows])
            for r, states in zip(rows, torch.split(ts.states, ts.lengths)):
                self.states[task, r] = states.to(torch.float16).clone()
            advance(len(rows))

    def padded(self, task: str, seqs: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, hidden) float32 states and (B, L) mask of some cached texts."""
        parts = [self.states[task, s] for s in seqs]
        longest = max(p.shape[0] for p in parts)
        x = torch.zeros(len(parts), longest, parts[0].shape[1])
        mask = torch.zeros(len(parts), longest, dtype=torch.bool)
        for k, p in enumerate(parts):
            x[k, :p.shape[0]] = p.float()
            mask[k, :p.shape[0]] = True
        return x, mask


class ProjectorTrainer:
    """Runs one distillation job; ``run()`` writes ``<out>/multivector_projector.safetensors``."""

    def __init__(self, cfg: ProjectorConfig, *, progress: bool | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.step_losses: list[float] = []

    # ---------------------------------------------------------------- setup
    def _load_model(self) -> Any:
        from ..models.registry import load_model
        out = Path(self.cfg.out)
        adapters = out if (out / "adapter_config.json").is_file() else None
        model = load_model(self.cfg.base, device="cpu", adapters=adapters)
        if not model.lora_targets:
            raise ValueError(f"{model.name}: the {model.family} projector is part of its checkpoint and carries "
                             "per-task LoRA; train it with its task adapter (omnivec train), not train-projector")
        return model

    def _sources(self, model: Any) -> list[_Source]:
        cfg = self.cfg
        opts = (PrepareOptions(max_tokens=cfg.max_query_tokens, truncate=True),
                PrepareOptions(max_tokens=cfg.max_doc_tokens, truncate=True))
        loaded: dict[str, list[Any]] = {}
        sources = []
        for spec in cfg.sources:
            data, task = parse_source(spec)
            if data not in loaded:
                loaded[data] = load_examples(data)[0]
            examples = [e for e in loaded[data] if isinstance(e, PairExample)]
            if not examples:
                raise ValueError(f"{data}: projector training needs pairs {{query, positive}}, not graded rows")
            train, val = split_validation(examples, cfg.val_fraction, cfg.seed)
            if cfg.max_pairs is not None:
                train = train[:cfg.max_pairs]
            if len(train) < cfg.batch_size:
                raise ValueError(f"{spec}: {len(train)} training pairs is fewer than one batch ({cfg.batch_size})")
            sources.append(_Source(spec, task, self._rows(model, train, task, opts),
                                   self._rows(model, val, task, opts)))
        return sources

    def _rows(self, model: Any, examples: list[PairExample], task: str,
              opts: tuple[PrepareOptions, PrepareOptions]) -> list[dict[str, Any]]:
        """Token ids of pairs as inference builds them (the task's query / document prompts)."""
        q_spec, d_spec = task_specs(task)

        def ids(text: Any, spec: Any, opt: PrepareOptions) -> tuple[int, ...]:
            return tuple(model.prepare(text, spec, opt).input_ids)

        return [{"q": ids(e.query, q_spec, opts[0]), "pos": ids(e.positive, d_spec, opts[1]),
                 "negs": [ids(n, d_spec, opts[1]) for n in e.negatives[:self.cfg.max_negatives]],
                 "group": e.group} for e in examples]

    # ---------------------------------------------------------------- loss
    def _loss(self, proj: torch.nn.Linear, src: _Source, batch: list[dict[str, Any]]) -> torch.Tensor:
        cfg = self.cfg
        qh, qm = self.cache.padded(src.task, [r["q"] for r in batch])
        dh, dm = self.cache.padded(src.task, [r["pos"] for r in batch] + [n for r in batch for n in r["negs"]])
        with torch.no_grad():
            teacher = maxsim_matrix(F.normalize(qh, dim=-1), qm, F.normalize(dh, dim=-1), dm)
        student = maxsim_matrix(F.normalize(proj(qh), dim=-1), qm, F.normalize(proj(dh), dim=-1), dm)
        hide = false_negatives(batch)
        if hide is not None:
            teacher, student = teacher.masked_fill(hide, -1e4), student.masked_fill(hide, -1e4)
        loss = info_nce_from_scores(student, cfg.temperature)
        if cfg.w_distill:
            loss = loss + cfg.w_distill * kl_divergence(teacher, student, cfg.temperature)
        return loss

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, proj: torch.nn.Linear | None) -> dict[str, float]:
        """Per source: MaxSim MRR@10 of each held-out query against all held-out positives
        (``proj=None``: raw normalised token states, the teacher; also dense mean pooling)."""
        from ..scoring import maxsim_scores
        out: dict[str, float] = {}
        for src in self.sources:
            if not src.val:
                continue
            q = [self.cache.states[src.task, r["q"]].float() for r in src.val]
            d = [self.cache.states[src.task, r["pos"]].float() for r in src.val]
            if proj is None:
                qd = F.normalize(heads.pool_rows(q), dim=-1)
                dd = F.normalize(heads.pool_rows(d), dim=-1)
                out[f"{src.name}/dense"] = mrr10(qd @ dd.T)
            f = (lambda x: F.normalize(x, dim=-1)) if proj is None else (lambda x: F.normalize(proj(x), dim=-1))
            scores = maxsim_scores([f(x).numpy() for x in q], [f(x).numpy() for x in d])
            out[f"{src.name}/{'raw' if proj is None else 'projected'}"] = mrr10(torch.from_numpy(scores))
        return out

    @staticmethod
    def _score(metrics: dict[str, float]) -> float:
        vals = [v for k, v in metrics.items() if k.endswith("/projected")]
        return float(np.mean(vals)) if vals else 0.0

    # ---------------------------------------------------------------- run
    def run(self) -> ProjectorResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        cfg = self.cfg
        if cfg.dim < 1 or cfg.epochs < 1:
            raise ValueError(f"dim and epochs must be positive, got {cfg.dim}, {cfg.epochs}")
        for spec in cfg.sources:      # fail on a typo before the model loads
            parse_source(spec)
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model = self._load_model()
        if cfg.dim > model.dim:
            raise ValueError(f"--dim {cfg.dim} is larger than the model's hidden size {model.dim}")
        self.sources = self._sources(model)
        self.cache = _StateCache(model)
        enabled = sys.stderr.isatty() if self.progress is None else self.progress
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, disable=not enabled) as bar:
            for src in self.sources:
                seqs = [s for r in src.train + src.val for s in (r["q"], r["pos"], *r["negs"])]
                job = bar.add_task(f"token states {src.name}", total=len(set(seqs)))
                self.cache.fill(src.task, seqs, lambda n, job=job: bar.update(job, advance=n))
        size = sum(t.numel() * t.element_size() for t in self.cache.states.values())
        self.log(f"cached token states of {len(self.cache.states)} texts ({size / 1e9:.2f} GB float16) "
                 f"in {time.perf_counter() - start:.0f}s")
        proj = self._pca_init(model.dim)
        history = [{"epoch": 0, **self.validate(None), **self.validate(proj)}]
        self.log(f"epoch 0 (PCA start) validation: {_fmt(history[0])}")
        reference = {k: v for k, v in history[0].items() if k.endswith(("/raw", "/dense"))}
        best = {"epoch": 0, "score": self._score(history[0]),
                "metrics": {k: v for k, v in history[0].items() if "/" in k},
                "state": {k: v.clone() for k, v in proj.state_dict().items()}}
        plan = [self._epoch_batches(e) for e in range(cfg.epochs)]
        total = sum(len(p) for p in plan)
        opt = torch.optim.AdamW(proj.parameters(), lr=cfg.lr, weight_decay=0.0)
        warm = max(1, total // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        with Progress(*columns, disable=not enabled) as bar:
            job = bar.add_task("train projector", total=total)
            for epoch, batches in enumerate(plan, start=1):
                for src, idx in batches:
                    loss = self._loss(proj, src, [src.train[i] for i in idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    self.step_losses.append(float(loss.detach()))
                    bar.update(job, advance=1, description=f"train projector loss {self.step_losses[-1]:.3f}")
                m = self.validate(proj)
                history.append({"epoch": epoch, "loss": float(np.mean(self.step_losses[-len(batches):])), **m})
                self.log(f"epoch {epoch} validation: {_fmt(m)}")
                if self._score(m) > best["score"]:
                    best = {"epoch": epoch, "score": self._score(m), "metrics": {**reference, **m},
                            "state": {k: v.clone() for k, v in proj.state_dict().items()}}
        proj.load_state_dict(best["state"])
        seconds = time.perf_counter() - start
        self._write(proj, best, history, seconds)
        return ProjectorResult(Path(cfg.out), seconds, best["epoch"], best["metrics"], history)

    def _pca_init(self, hidden: int) -> torch.nn.Linear:
        """PCA of up to PCA_TOKENS training-document token states, spread over the sources."""
        rng = random.Random(self.cfg.seed)
        per_source = PCA_TOKENS // len(self.sources)
        parts = []
        for src in self.sources:
            docs = list(dict.fromkeys(r["pos"] for r in src.train))
            rng.shuffle(docs)
            got = 0
            for d in docs:
                if got >= per_source:
                    break
                x = self.cache.states[src.task, d]
                parts.append(x.float())
                got += x.shape[0]
        return pca_projector(torch.cat(parts), min(self.cfg.dim, hidden))

    def _epoch_batches(self, epoch: int) -> list[tuple[_Source, list[int]]]:
        """Each batch from one source (its in-batch negatives share a task), sources interleaved."""
        out = [(src, idx) for src in self.sources
               for idx in iter_batches(len(src.train), self.cfg.batch_size, self.cfg.seed, epoch)]
        random.Random(self.cfg.seed * 7919 + epoch).shuffle(out)
        return out

    def _write(self, proj: torch.nn.Linear, best: dict[str, Any], history: list[dict[str, float]],
               seconds: float) -> None:
        from safetensors.torch import save_file
        out = Path(self.cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (PROJECTOR_FILE + ".tmp")
        save_file({k: v.detach().contiguous() for k, v in proj.state_dict().items()}, str(tmp))
        tmp.replace(out / PROJECTOR_FILE)
        meta_path = out / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.setdefault("base", str(self.cfg.base or "default"))
        meta["projector"] = {"config": {k: v for k, v in asdict(self.cfg).items() if k != "out"},
                             "sources": {s.name: {"train_pairs": len(s.train), "val_pairs": len(s.val)}
                                         for s in self.sources},
                             "best_epoch": best["epoch"], "best_validation": best["metrics"],
                             "seconds": round(seconds, 1), "history": history}
        meta_path.write_text(json.dumps(meta, indent=2, default=str))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float)
                     and math.isfinite(v))
