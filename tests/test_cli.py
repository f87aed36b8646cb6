"""The command line, run in-process on the embedded default model."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from omnivec.cli import app

runner = CliRunner()

pytestmark = pytest.mark.slow  # runs the CLI on the embedded default model


def test_embed_writes_npy_and_jsonl(tmp_path, default_model):
    out = tmp_path / "v.npy"
    r = runner.invoke(app, ["embed", "How do I reset my password?", "Open Settings.", "--task",
                            "retrieval.passage", "--dimensions", "128", "--out", str(out)])
    assert r.exit_code == 0, r.output
    v = np.load(out)
    assert v.shape == (2, 128)
    expected = default_model.encode(["How do I reset my password?", "Open Settings."],
                                    task="retrieval.passage", dimensions=128)
    np.testing.assert_allclose(v, expected, atol=1e-5)

    lines_file = tmp_path / "texts.txt"
    lines_file.write_text("first line\n\nsecond line\n", encoding="utf-8")
    jl = tmp_path / "mv.jsonl"
    r = runner.invoke(app, ["embed", "--file", str(lines_file), "--multivector", "--out", str(jl)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in jl.read_text().splitlines()]
    assert [row["input"] for row in rows] == ["first line", "second line"]
    assert len(rows[0]["embeddings"][0]) == default_model.multivector_dim


def test_embed_errors_are_clear_and_exit_2():
    r = runner.invoke(app, ["embed", "x", "--task", "search"])
    assert r.exit_code == 2 and "unknown task 'search'" in r.output
    r = runner.invoke(app, ["embed"])
    assert r.exit_code == 2 and "nothing to embed" in r.output


def test_info_json():
    r = runner.invoke(app, ["info", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout[r.stdout.index("{"):])
    assert data["model"] == "multilingual-e5-small" and data["dim"] == 384
    assert "retrieval.query" in data["tasks"] and data["images"] == "OCR to text"


def _tiny_beir(folder):
    folder.mkdir()
    rows = [{"_id": "d0", "text": "Erneut anmelden"}, {"_id": "d1", "text": "Mein Passwort ändern"}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "Log in again"}) + "\n")
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("q\td0\t1\n")
    return folder


def test_eval_raw_multivectors_reaches_the_model_load(default_model, tmp_path, monkeypatch):
    pytest.importorskip("pytrec_eval")
    import omnivec
    calls = []

    def fake_load(model=None, **kwargs):              # the session's model, loaded once
        calls.append(kwargs)
        return default_model

    monkeypatch.setattr(omnivec, "load", fake_load)
    data = _tiny_beir(tmp_path / "d")
    base = ["eval", str(data), "--multivector", "--baseline", "none", "--out", str(tmp_path / "o")]
    r = runner.invoke(app, base + ["--raw-multivectors"])
    assert r.exit_code == 0, r.output
    assert calls[-1].get("projector") is False
    assert "multivector" in json.loads((tmp_path / "o" / "results.json").read_text())["summary"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    assert "projector" not in calls[-1]                 # without the flag: the model's projector


def test_eval_raw_multivectors_refused_clearly(tmp_path):
    data = _tiny_beir(tmp_path / "d")
    r = runner.invoke(app, ["eval", str(data), "--raw-multivectors"])
    assert r.exit_code == 2 and "add --multivector" in r.output
    jina = tmp_path / "jina"          # detected as jina-v4 from its config alone; refused before any load
    jina.mkdir()
    (jina / "config.json").write_text(json.dumps({"architectures": ["JinaEmbeddingsV4Model"]}))
    r = runner.invoke(app, ["eval", str(data), "--multivector", "--raw-multivectors", "--model", str(jina)])
    assert r.exit_code == 2 and "--raw-multivectors: jina-v4 models" in r.output


def test_quantize_is_refused_up_front_for_a_family_without_int8(tmp_path):
    from typer.testing import CliRunner

    from omnivec.cli import app
    from omnivec.testing import make_tiny_jina_v3

    path = make_tiny_jina_v3(tmp_path / "v3")
    for command in (["serve", "--model", str(path), "--quantize", "--port", "0"],
                    ["prepare", "--model", str(path), "--quantize"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "jina-v3 family has no int8 path" in result.output
