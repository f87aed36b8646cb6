"""Retrieval datasets and their on-disk formats (reference sec 7).

- BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text`` or ``image``), ``queries.jsonl``
  (``_id``, ``text``), ``qrels/<split>.tsv`` (query-id, corpus-id, score); the ViDoRe v2 variant
  keeps ``corpus``/``queries``/``qrels`` as parquet files (or ``datasets`` saves) with
  ``corpus-id``/``image``, ``query-id``/``query`` and ``query-id``/``corpus-id``/``score`` columns.
- ViDoRe / Jina-VDR QA: rows of (query, image, image_filename). The corpus is every distinct
  ``image_filename``; queries are deduplicated (first appearance order, null queries skipped) and
  each query has exactly one relevant page, the one of its first row: qrels {query: {file: 1}}.
  Read from parquet files or a ``datasets.save_to_disk`` directory (with ``datasets`` when it is
  installed, else straight from the Arrow files with pyarrow).
"""
from __future__ import annotations

import base64
import binascii
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Union


@dataclass(frozen=True)
class PageImage:
    """An image corpus entry kept as encoded bytes: hashable for the OCR cache, cheap to carry."""

    data: bytes
    name: str = ""

    def __repr__(self) -> str:
        return f"PageImage({self.name or 'bytes'}, {len(self.data)} B)"


Doc = Union[str, PageImage]


@dataclass
class RetrievalDataset:
    """Queries, corpus and graded judgements, plus how to embed them."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, Doc]
    qrels: dict[str, dict[str, int]]
    query_task: str = "retrieval.query"
    passage_task: str = "retrieval.passage"
    headline: str = "nDCG@10"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def visual(self) -> bool:
        return any(isinstance(d, PageImage) for d in self.corpus.values())

    def judged(self) -> "RetrievalDataset":
        """Only queries that have a relevant document in the corpus (others cannot be scored)."""
        keep = {q for q, docs in self.qrels.items() if q in self.queries
                and any(r > 0 and d in self.corpus for d, r in docs.items())}
        return replace(self, queries={q: t for q, t in self.queries.items() if q in keep},
                       qrels={q: {d: r for d, r in self.qrels[q].items() if d in self.corpus} for q in keep})

    def subsample(self, n_queries: int | None, seed: int = 0) -> "RetrievalDataset":
        """At most ``n_queries`` queries drawn with a fixed seed (the corpus stays whole)."""
        if n_queries is None or n_queries >= len(self.queries):
            return self
        picked = set(random.Random(seed).sample(sorted(self.queries), n_queries))
        meta = dict(self.meta, subsampled=f"{n_queries} of {len(self.queries)} queries (seed {seed})")
        return replace(self, queries={q: t for q, t in self.queries.items() if q in picked},
                       qrels={q: r for q, r in self.qrels.items() if q in picked}, meta=meta)


class FormatError(ValueError):
    """A dataset file that does not follow the format it claims."""


# ------------------------------------------------------------------------------ images
def _image_bytes(value: Any, base: Path | None) -> bytes:
    """Encoded image bytes from a datasets struct, raw bytes, PIL image, base64 or path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "save") and hasattr(value, "size"):        # PIL image (decoded datasets)
        import io
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(value, str) and value:
        if value.startswith("data:"):
            value = value.split(",", 1)[-1]
        path = Path(value) if base is None or Path(value).is_absolute() else base / value
        if len(value) < 1024 and path.is_file():
            return path.read_bytes()
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"image {value[:60]!r} is neither a file nor base64") from None
    raise FormatError(f"cannot read an image from {type(value).__name__}")


# ------------------------------------------------------------------------------ tables
def _read_saved(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``datasets.save_to_disk`` directory (the ``test`` split of a DatasetDict)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return _read_saved(path / ("test" if "test" in splits else splits[0]))
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        ds = datasets.load_from_disk(str(path))
        for name, feature in ds.features.items():
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
        return ds.with_format("arrow")[:].to_pylist()
    import pyarrow as pa
    state = json.loads((path / "state.json").read_text())
    rows: list[dict[str, Any]] = []
    for f in state["_data_files"]:
        with pa.memory_map(str(path / f["filename"])) as src:
            rows.extend(pa.ipc.open_stream(src).read_all().to_pylist())
    return rows


def _is_saved(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file, a folder of parquet files (sorted) or a ``save_to_disk`` folder."""
    path = Path(path)
    if _is_saved(path):
        return _read_saved(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FormatError(f"{path}: no parquet files and not a datasets.save_to_disk directory")
    import pyarrow.parquet as pq
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ------------------------------------------------------------------------------ QA format
def load_qa(path: str | Path, name: str | None = None) -> RetrievalDataset:
    """A ViDoRe / Jina-VDR QA dataset (see module doc for the protocol)."""
    path = Path(path)
    rows = read_rows(path)
    if rows and not {"query", "image_filename"} <= set(rows[0]):
        raise FormatError(f"{path}: QA rows need query, image and image_filename columns, got {sorted(rows[0])}")
    base = path if path.is_dir() else path.parent
    corpus: dict[str, Doc] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    seen: dict[str, str] = {}
    for row in rows:
        fname = str(row["image_filename"])
        if fname not in corpus:
            if row.get("image") is not None:
                corpus[fname] = PageImage(_image_bytes(row["image"], base), fname)
            elif row.get("text") is not None:
                corpus[fname] = str(row["text"])
            else:
                raise FormatError(f"{path}: row for {fname} has neither image nor text")
        query = row.get("query")
        if query is None or not str(query).strip() or query in seen:
            continue
        qid = f"q{len(seen)}"
        seen[query] = qid
        queries[qid] = str(query)
        qrels[qid] = {fname: 1}
    return RetrievalDataset(name or path.stem, queries, corpus, qrels, headline="nDCG@5",
                            meta={"format": "qa", "source": str(path)})


# ------------------------------------------------------------------------------ BEIR format
def _beir_doc(row: dict[str, Any], base: Path) -> Doc:
    image = row.get("image")
    if image is not None:
        return PageImage(_image_bytes(image, base), str(row.get("_id", row.get("corpus-id", ""))))
    title, text = str(row.get("title") or "").strip(), str(row.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def _beir_part(root: Path, part: str) -> list[dict[str, Any]] | None:
    """Rows of ``part`` in jsonl, parquet or save_to_disk form; None when absent."""
    if (root / f"{part}.jsonl").is_file():
        return _jsonl(root / f"{part}.jsonl")
    for candidate in (root / part, root / f"{part}.parquet"):
        if candidate.exists() and (candidate.is_file() or _is_saved(candidate) or any(candidate.rglob("*.parquet"))):
            return read_rows(candidate)
    return None


def load_beir(path: str | Path, split: str = "test", name: str | None = None) -> RetrievalDataset:
    """A BEIR directory (jsonl + tsv), or ViDoRe v2's BEIR-with-images layout (parquet)."""
    root = Path(path)
    corpus_rows, query_rows = _beir_part(root, "corpus"), _beir_part(root, "queries")
    if corpus_rows is None or query_rows is None:
        raise FormatError(f"{root}: a BEIR directory needs corpus and queries (jsonl or parquet)")
    corpus = {str(r.get("_id", r.get("corpus-id"))): _beir_doc(r, root) for r in corpus_rows}
    queries = {str(r.get("_id", r.get("query-id"))): str(r.get("text", r.get("query"))) for r in query_rows}
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, score in _beir_qrels(root, split):
        qrels.setdefault(qid, {})[did] = score
    headline = "nDCG@5" if any(isinstance(d, PageImage) for d in corpus.values()) else "nDCG@10"
    return RetrievalDataset(name or root.name, queries, corpus, qrels, headline=headline,
                            meta={"format": "beir", "source": str(root), "split": split}).judged()


def _beir_qrels(root: Path, split: str) -> Iterable[tuple[str, str, int]]:
    tsv = root / "qrels" / f"{split}.tsv"
    if tsv.is_file():
        for i, line in enumerate(tsv.read_text(encoding="utf-8").splitlines()):
            cols = line.split("\t")
            if len(cols) < 3 or (i == 0 and not cols[2].strip().lstrip("-").isdigit()):
                continue                                   # header or blank line
            yield cols[0], cols[1], int(cols[2])
        return
    rows = _beir_part(root, "qrels")
    if rows is None:
        raise FormatError(f"{root}: no qrels/{split}.tsv and no qrels parquet")
    for r in rows:
        yield str(r["query-id"]), str(r["corpus-id"]), int(r.get("score", 1))


def load_path(path: str | Path, split: str = "test") -> RetrievalDataset:
    """Either format, told apart by what the path holds."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir() and (_beir_part(path, "corpus") is not None and _beir_part(path, "queries") is not None):
        return load_beir(path, split)
    return load_qa(path)
