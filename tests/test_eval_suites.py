"""Suites, runner, report and CLI on tiny data (the default model, a handful of strings)."""
import json

import pytest

pytest.importorskip("pytrec_eval")
pytest.importorskip("bm25s")

from omnivec.eval import EvalSettings, run_suite  # noqa: E402
from omnivec.eval.bm25 import tokenize  # noqa: E402
from omnivec.eval.datasets import RetrievalDataset  # noqa: E402
from omnivec.eval.suites import Suite, xlang_pair  # noqa: E402

TABLE = {"Save and continue editing": "Sichern und weiter bearbeiten", "Log in again": "Erneut anmelden",
         "Change my password": "Mein Passwort ändern", "Title": "Titel", "Heading": "Titel"}


def test_xlang_pair_qrels_both_directions():
    fwd = xlang_pair(TABLE, "en", "de")
    assert len(fwd.queries) == 5 and len(fwd.corpus) == 4          # two ids share "Titel"
    back = xlang_pair(TABLE, "de", "en")
    titel = next(q for q, t in back.queries.items() if t == "Titel")
    assert len(back.qrels[titel]) == 2                              # both English ids are right


def test_tokenize_cjk():
    assert tokenize("Site Maps 站点地图") == ["site", "maps", "站", "点", "地", "图"]


def test_bm25_punctuation_only_query():
    from omnivec.eval.bm25 import bm25_rank
    assert bm25_rank(["...", "beta"], ["alpha", "beta"]).tolist() == [[0, 1], [1, 0]]


def _tiny_suite():
    return Suite("tiny", [xlang_pair(TABLE, "en", "de"),
                          RetrievalDataset("code", {"a": "add two numbers"},
                                           {"x": "def add(a, b):\n    return a + b", "y": "def neg(a):\n    return -a"},
                                           {"a": {"x": 1}}, query_task="code.query", passage_task="code.passage")])


@pytest.mark.slow  # the embedded default model
def test_run_is_deterministic_and_report_written(default_model, tmp_path):
    from omnivec.eval.report import write
    settings = EvalSettings(dimensions=[64, 384], multivector=True, baselines=["bm25"], cache_dir=tmp_path)
    a = run_suite(default_model, _tiny_suite(), settings, progress=False)
    b = run_suite(default_model, _tiny_suite(), settings, progress=False)
    strip = lambda r: [{k: v for k, v in d.items() if k != "timings_s"} for d in r["datasets"]]  # noqa: E731
    assert strip(a) == strip(b) and a["summary"] == b["summary"]
    assert set(a["summary"]) == {"dense@384", "dense@64", "multivector", "bm25"}
    assert a["datasets"][0]["systems"]["dense@384"]["R@1"] >= 0.6
    paths = write(a, tmp_path / "out")
    assert all(p.exists() for p in paths)
    assert "dense@384" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow  # the embedded default model
def test_cli_eval_on_a_beir_dir(default_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from omnivec import cli
    from omnivec.cli import app
    monkeypatch.setattr(cli, "_load", lambda *a, **k: default_model)     # load once per session
    (tmp_path / "d").mkdir()
    rows = [{"_id": f"d{i}", "text": t} for i, t in enumerate(TABLE.values())]
    (tmp_path / "d" / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d" / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "Erneut anmelden"}) + "\n")
    (tmp_path / "d" / "qrels").mkdir()
    (tmp_path / "d" / "qrels" / "test.tsv").write_text("q\td1\t1\n")
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "d"), "--dimensions", "128,384",
                                   "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["summary"]["dense@384"]["R@1"] == 1.0 and "bm25" in data["summary"]
    assert (tmp_path / "o" / "dimensions.png").exists()
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "d"), "--dimensions", "999", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 2


def test_vdr_column_pages_do_not_repeat_queries():
    pytest.importorskip("django")
    pytest.importorskip("polib")
    from omnivec.eval.vdr_rendered import _column_pages
    rows = list(_column_pages(("de", "fr"), 2))
    assert len(rows) == 4 and len({r["query"] for r in rows}) == 4
    assert all(r["image"][:8] == b"\x89PNG\r\n\x1a\n" for r in rows)


@pytest.mark.slow  # the embedded default model
def test_visual_dataset_with_ocr_baselines(default_model, tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from omnivec.eval.datasets import PageImage
    from omnivec.eval.vdr_rendered import _text_page
    pages = {"a.png": PageImage(_text_page("Weather", "It rains in Paris today.")[0], "a.png"),
             "b.png": PageImage(_text_page("Cooking", "Boil the pasta for ten minutes.")[0], "b.png")}
    ds = RetrievalDataset("pages", {"q0": "how long to boil pasta"}, pages, {"q0": {"b.png": 1}}, headline="nDCG@5")
    settings = EvalSettings(baselines=["bm25", "ocr-text"], cache_dir=tmp_path)
    res = run_suite(default_model, Suite("pages", [ds]), settings, progress=False)
    systems = res["summary"]
    assert set(systems) == {"image→model@384", "ocr+bm25", "ocr+text-model@384"}
    assert systems["image→model@384"]["R@1"] == 1.0 and systems["ocr+bm25"]["R@1"] == 1.0
    # the encoder reads images by OCR, so both paths see the same text
    assert systems["image→model@384"] == systems["ocr+text-model@384"]
    assert (tmp_path / "ocr-cache.json").is_file()
