"""Retrieval metrics through ``pytrec_eval`` (trec_eval's own code): no hand-rolled formulas.

Why rank-based run scores: trec_eval breaks score ties by document id, which would make the
numbers depend on id spelling; :func:`make_run` writes ``depth - rank`` as the score so the order
we computed (score descending, corpus order on ties) is exactly the order trec_eval sees.
MRR@k is trec_eval's ``recip_rank`` on the run cut to its first k documents.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]
Run = dict[str, dict[str, float]]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 100)


def _pytrec_eval():
    try:
        import pytrec_eval
    except ImportError:
        raise ImportError("metrics need pytrec_eval: pip install 'omnivec[eval]' "
                          "(the pytrec-eval-terrier wheel)") from None
    return pytrec_eval


def ranking(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the top ``depth`` columns per row, score descending, lower index first on ties."""
    scores = np.asarray(scores)
    depth = min(depth, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def make_run(ranked: Sequence[Sequence[int]], qids: Sequence[str], docids: Sequence[str]) -> Run:
    """A trec run from ranked document indices per query (scores encode the rank)."""
    run: Run = {}
    for qid, row in zip(qids, ranked):
        n = len(row)
        run[qid] = {docids[j]: float(n - r) for r, j in enumerate(row)}
    return run


def cut(run: Run, k: int) -> Run:
    """The run limited to each query's k best documents."""
    return {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:k]) for q, docs in run.items()}


def metric_names(ks: Iterable[int] = DEFAULT_KS) -> list[str]:
    """Names :func:`evaluate` returns, in report order."""
    ks = sorted(set(ks))
    return ([f"nDCG@{k}" for k in ks] + [f"R@{k}" for k in ks] + [f"MRR@{k}" for k in ks if k <= 10]
            + [f"MAP@{k}" for k in ks if k >= 10])


def evaluate(qrels: Qrels, run: Run, ks: Iterable[int] = DEFAULT_KS, *,
             per_query: bool = False) -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean nDCG@k, Recall@k, MRR@k (k <= 10) and MAP@k (k >= 10) over the queries of ``qrels``.

    Queries with judgements but no retrieved documents count as zero (trec_eval skips them,
    so they are added back explicitly); queries absent from ``qrels`` are ignored.
    """
    pte = _pytrec_eval()
    ks = sorted(set(ks))
    qrels = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items() if docs}
    run = {q: dict(docs) for q, docs in run.items() if q in qrels}
    k_list = ",".join(map(str, ks))
    main = pte.RelevanceEvaluator(qrels, {f"ndcg_cut.{k_list}", f"recall.{k_list}", f"map_cut.{k_list}"})
    scored = main.evaluate(run)
    mrr = pte.RelevanceEvaluator(qrels, {"recip_rank"})
    rows: dict[str, dict[str, float]] = {}
    for q in sorted(qrels):
        base = scored.get(q, {})
        row = {f"nDCG@{k}": base.get(f"ndcg_cut_{k}", 0.0) for k in ks}
        row.update({f"R@{k}": base.get(f"recall_{k}", 0.0) for k in ks})
        row.update({f"MAP@{k}": base.get(f"map_cut_{k}", 0.0) for k in ks if k >= 10})
        rows[q] = row
    for k in (k for k in ks if k <= 10):
        cut_scores = mrr.evaluate(cut(run, k))
        for q in rows:
            rows[q][f"MRR@{k}"] = cut_scores.get(q, {}).get("recip_rank", 0.0)
    if per_query:
        return rows
    names = metric_names(ks)
    n = max(1, len(rows))
    return {m: float(sum(r[m] for r in rows.values()) / n) for m in names}
