"""Loaders for BEIR, ViDoRe QA (parquet, save_to_disk) and BEIR-with-images on files written here."""
import base64
import io
import json

import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from omnivec.eval.datasets import PageImage, load_beir, load_path, load_qa  # noqa: E402


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_beir_text(tmp_path):
    _jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "alpha"}, {"_id": "d2", "text": "beta"}])
    _jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a?"}, {"_id": "q2", "text": "unjudged"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n")
    ds = load_path(tmp_path)
    assert ds.corpus == {"d1": "T alpha", "d2": "beta"}
    assert ds.queries == {"q1": "a?"} and ds.qrels == {"q1": {"d1": 2, "d2": 0}}
    assert ds.headline == "nDCG@10" and not ds.visual


def test_beir_images_path_and_base64(tmp_path):
    (tmp_path / "p1.png").write_bytes(_png("red"))
    _jsonl(tmp_path / "corpus.jsonl", [{"_id": "d1", "image": "p1.png"},
                                      {"_id": "d2", "image": base64.b64encode(_png("blue")).decode()}])
    _jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "red page"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    ds = load_beir(tmp_path)
    assert ds.visual and ds.headline == "nDCG@5"
    assert ds.corpus["d1"].data == _png("red") and ds.corpus["d2"].data == _png("blue")


def _qa_rows():
    return [{"query": "q red", "image": {"bytes": _png("red"), "path": None}, "image_filename": "a.png"},
            {"query": "q red", "image": {"bytes": _png("red"), "path": None}, "image_filename": "a.png"},
            {"query": None, "image": {"bytes": _png("green"), "path": None}, "image_filename": "c.png"},
            {"query": "q blue", "image": {"bytes": _png("blue"), "path": None}, "image_filename": "b.png"}]


def _check_qa(ds):
    assert list(ds.queries.values()) == ["q red", "q blue"]           # deduplicated, nulls skipped
    assert sorted(ds.corpus) == ["a.png", "b.png", "c.png"]           # corpus-only page kept
    assert ds.qrels == {"q0": {"a.png": 1}, "q1": {"b.png": 1}}
    assert isinstance(ds.corpus["b.png"], PageImage) and ds.corpus["b.png"].data == _png("blue")
    assert ds.headline == "nDCG@5"


def test_qa_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(_qa_rows()), tmp_path / "test.parquet")
    _check_qa(load_qa(tmp_path / "test.parquet"))
    _check_qa(load_path(tmp_path))                                    # a folder of parquet files


def test_qa_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _qa_rows()
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]},
                                    features=datasets.Features({"query": datasets.Value("string"),
                                                                "image": datasets.Image(),
                                                                "image_filename": datasets.Value("string")}))
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    _check_qa(load_path(tmp_path / "saved"))


def test_vidore_v2_beir_parquet(tmp_path):
    for part, rows in {"corpus": [{"corpus-id": 7, "image": {"bytes": _png("red"), "path": None}}],
                       "queries": [{"query-id": 1, "query": "red?"}],
                       "qrels": [{"query-id": 1, "corpus-id": 7, "score": 1}]}.items():
        (tmp_path / part).mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / part / "test-00000.parquet")
    ds = load_path(tmp_path)
    assert ds.queries == {"1": "red?"} and ds.qrels == {"1": {"7": 1}}
    assert ds.corpus["7"].data == _png("red")
