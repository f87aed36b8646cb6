"""Evaluation with the paper's retrieval protocols (reference sec 7): loaders, built-in suites,
pytrec_eval metrics, BM25/OCR baselines, reports.

>>> from omnivec.eval import run_suite
>>> results = run_suite(omnivec.load(), "humaneval", EvalSettings(multivector=True))  # doctest: +SKIP
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .datasets import PageImage, RetrievalDataset, load_beir, load_path, load_qa
from .metrics import evaluate
from .runner import EmbeddingCache, EvalSettings, evaluate_dataset
from .suites import SUITES, Suite, default_cache_dir

__all__ = ["run_suite", "load_suite", "EvalSettings", "RetrievalDataset", "PageImage", "load_beir",
           "load_qa", "load_path", "evaluate", "SUITES"]


def load_suite(name_or_path: str, cache_dir: Path | None = None, split: str = "test") -> Suite:
    """A built-in suite by name, or a BEIR / QA dataset on disk as a one-dataset suite."""
    if name_or_path in SUITES:
        return SUITES[name_or_path](cache_dir=cache_dir)
    ds = load_path(name_or_path, split)
    return Suite(ds.name, [ds], baselines=("bm25", "ocr-text") if ds.visual else ("bm25",))


def run_suite(embedder: Any, suite: Suite | str, settings: EvalSettings | None = None, *,
              limit: int | None = None, seed: int = 0, progress: bool | None = None,
              command: str | None = None) -> dict[str, Any]:
    """Evaluate every dataset of a suite; returns the results dict the report is written from."""
    from .report import machine, summarize
    settings = settings or EvalSettings()
    if isinstance(suite, str):
        suite = load_suite(suite, settings.cache_dir)
    if settings.cache_dir is None:
        settings.cache_dir = default_cache_dir()
    datasets = [d.judged().subsample(limit, seed) for d in suite.datasets]
    start = time.perf_counter()
    cache = EmbeddingCache()
    show = sys.stderr.isatty() if progress is None else progress
    results: list[dict[str, Any]] = []
    with _Bar(len(datasets), show) as bar:
        for ds in datasets:
            results.append(evaluate_dataset(embedder, ds, settings, cache, step=bar.describe))
            bar.advance()
    info = embedder.info()
    notes = list(suite.notes) + sorted({d.meta["subsampled"] for d in datasets if "subsampled" in d.meta})
    return {"suite": suite.name, "model": {k: info.get(k) for k in ("model", "family", "device", "dim", "dtype", "precision", "adapters", "adapter_dir", "multivector_dim")},
            "ocr_model": not embedder.model.capabilities.native_images and any(d.visual for d in datasets),
            "headline": datasets[0].headline if datasets else "nDCG@10",
            "settings": {"dimensions": list(settings.dimensions or [embedder.dim]),
                         "multivector": settings.multivector, "baselines": list(settings.baselines),
                         "ks": list(settings.ks), "depth": settings.depth, "limit": limit, "seed": seed},
            "n_queries": sum(r["n_queries"] for r in results), "n_docs": sum(r["n_docs"] for r in results),
            "datasets": results, "summary": summarize(results), "notes": notes,
            "time_s": round(time.perf_counter() - start, 1), "machine": machine(),
            "command": command or " ".join(shlex.quote(a) for a in ["omnivec"] + sys.argv[1:])}


class _Bar:
    """A rich progress bar over datasets with the current step as its label (no-op when off)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self._p, self._t = total, enabled, None, None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._p.__enter__()
            self._t = self._p.add_task("eval", total=self.total)
        return self

    def describe(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._t, description=text)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._t)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
