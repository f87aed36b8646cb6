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
