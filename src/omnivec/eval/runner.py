"""Runs one retrieval dataset through a model: every Matryoshka size asked for, multi-vector
MaxSim, and lexical / OCR baselines, all scored by the same metric code.

Why one embedding pass: dense vectors are embedded once at full size and cut + re-normalised for
each dimension (identical to ``embed(dimensions=d)``), and the same forward pass yields the
multi-vectors. MaxSim ranks the whole corpus when it has at most ``full_maxsim_max_docs``
documents; larger corpora rerank the dense top-``depth`` (recorded as ``multivector_mode``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import heads
from ..inputs import Image
from ..scoring import dense_scores, maxsim_scores
from .bm25 import bm25_rank
from .datasets import PageImage, RetrievalDataset
from .metrics import DEFAULT_KS, evaluate, make_run, ranking

BASELINES = ("bm25", "ocr-text")


@dataclass
class EvalSettings:
    """What to compute; the defaults are the paper's protocol on a CPU-sized budget."""

    dimensions: Sequence[int] | None = None        # None: the model's full size only
    multivector: bool = False
    baselines: Sequence[str] = ("bm25",)
    ks: Sequence[int] = DEFAULT_KS
    depth: int = 100                               # run depth and MaxSim rerank depth
    full_maxsim_max_docs: int = 1000
    cache_dir: Path | None = None                  # OCR cache
    query_task: str | None = None                  # override the dataset's tasks
    passage_task: str | None = None


@dataclass
class _Encoded:
    dense: np.ndarray
    multi: list[np.ndarray] | None


@dataclass
class EmbeddingCache:
    """Per-run memo of text embeddings (suites like django-xlang reuse the same strings)."""

    store: dict[tuple[str, bool, str], tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)


def _encode(embedder: Any, items: Sequence[Any], task: str, multivector: bool,
            cache: EmbeddingCache) -> _Encoded:
    keys = [(task, multivector, x) if isinstance(x, str) else None for x in items]
    todo = [i for i, k in enumerate(keys) if k is None or k not in cache.store]
    if todo:
        inputs = [Image(items[i].data) if isinstance(items[i], PageImage) else items[i] for i in todo]
        res = embedder.embed(inputs, task, dense=True, multivector=multivector, normalize=False)
        if len(res.origins) != len(inputs):
            raise ValueError("an input expanded into several items (PDF?): give one page per corpus entry")
        fresh = {i: (res.dense[j], res.multivector[j] if multivector else None) for j, i in enumerate(todo)}
    else:
        fresh = {}
    rows = []
    for i, k in enumerate(keys):
        row = fresh[i] if i in fresh else cache.store[k]
        if k is not None:
            cache.store[k] = row
        rows.append(row)
    dense = np.stack([r[0] for r in rows]) if rows else np.zeros((0, embedder.dim), np.float32)
    return _Encoded(dense.astype(np.float32), [r[1] for r in rows] if multivector else None)


def evaluate_dataset(embedder: Any, ds: RetrievalDataset, settings: EvalSettings,
                     cache: EmbeddingCache | None = None,
                     step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Metrics per system for one dataset, plus sizes, timings and how MaxSim was run."""
    step = step or (lambda _msg: None)
    cache = cache or EmbeddingCache()
    ds = ds.judged()
    qids, docids = list(ds.queries), list(ds.corpus)
    q_texts, docs = [ds.queries[q] for q in qids], [ds.corpus[d] for d in docids]
    q_task = settings.query_task or ds.query_task
    p_task = settings.passage_task or ds.passage_task
    dims = sorted(set(settings.dimensions or [embedder.dim]), reverse=True)
    result: dict[str, Any] = {"name": ds.name, "n_queries": len(qids), "n_docs": len(docids),
                              "visual": ds.visual, "headline": ds.headline, "query_task": q_task,
                              "passage_task": p_task, "systems": {}, "timings_s": {}, "meta": ds.meta}

    def score(system: str, ranked: np.ndarray) -> None:
        result["systems"][system] = evaluate(ds.qrels, make_run(ranked, qids, docids), settings.ks)

    t = time.perf_counter()
    step(f"{ds.name}: embedding {len(docids)} documents")
    d_enc = _encode(embedder, docs, p_task, settings.multivector, cache)
    step(f"{ds.name}: embedding {len(qids)} queries")
    q_enc = _encode(embedder, q_texts, q_task, settings.multivector, cache)
    result["timings_s"]["embed"] = round(time.perf_counter() - t, 2)
    prefix = "image→model" if ds.visual else "dense"
    for d in dims:
        sims = dense_scores(heads.matryoshka(q_enc.dense, d, True),
                            heads.matryoshka(d_enc.dense, d, True))
        score(f"{prefix}@{d}", ranking(sims, settings.depth))
    if settings.multivector:
        t = time.perf_counter()
        step(f"{ds.name}: MaxSim")
        name = "image→model multivector" if ds.visual else "multivector"
        score(name, _maxsim_rank(q_enc, d_enc, settings))
        result["multivector_mode"] = ("full corpus" if len(docids) <= settings.full_maxsim_max_docs
                                      else f"rerank of dense top-{settings.depth}")
        result["timings_s"]["maxsim"] = round(time.perf_counter() - t, 2)
    _baselines(embedder, ds, settings, cache, q_texts, docs, q_task, p_task, result, score, step)
    return result


def _maxsim_rank(q: _Encoded, d: _Encoded, settings: EvalSettings) -> np.ndarray:
    if len(d.multi) <= settings.full_maxsim_max_docs:
        return ranking(maxsim_scores(q.multi, d.multi), settings.depth)
    full = heads.matryoshka(q.dense, None, True) @ heads.matryoshka(d.dense, None, True).T
    cands = ranking(full, settings.depth)
    out = np.empty_like(cands)
    for i, row in enumerate(cands):
        s = maxsim_scores([q.multi[i]], [d.multi[j] for j in row])[0]
        out[i] = row[np.argsort(-s, kind="stable")]
    return out


def _baselines(embedder: Any, ds: RetrievalDataset, settings: EvalSettings, cache: EmbeddingCache,
               q_texts: list[str], docs: list[Any], q_task: str, p_task: str,
               result: dict[str, Any], score: Callable[[str, np.ndarray], None],
               step: Callable[[str], None]) -> None:
    wanted = [b for b in settings.baselines if b in BASELINES]
    if not wanted:
        return
    texts = docs
    if ds.visual:
        from .ocr_cache import ocr_texts
        t = time.perf_counter()
        step(f"{ds.name}: OCR for baselines")
        pages = [d for d in docs if isinstance(d, PageImage)]
        read = iter(ocr_texts(pages, settings.cache_dir))
        texts = [next(read) if isinstance(d, PageImage) else d for d in docs]
        result["timings_s"]["ocr"] = round(time.perf_counter() - t, 2)
    if "bm25" in wanted:
        score("ocr+bm25" if ds.visual else "bm25", bm25_rank(q_texts, texts, settings.depth))
    if "ocr-text" in wanted and ds.visual:
        step(f"{ds.name}: OCR text through the text model")
        t = time.perf_counter()
        d_enc = _encode(embedder, texts, p_task, False, cache)
        q_enc = _encode(embedder, q_texts, q_task, False, cache)
        sims = dense_scores(heads.matryoshka(q_enc.dense, None, True),
                            heads.matryoshka(d_enc.dense, None, True))
        score(f"ocr+text-model@{embedder.dim}", ranking(sims, settings.depth))
        result["timings_s"]["ocr_text_embed"] = round(time.perf_counter() - t, 2)
