"""omnivec.distributed: rows, units and sinks here; real Ray clusters in a loopback-only namespace.

The cluster tests run ``tests/_ray_scenarios.py`` inside ``unshare -n`` (a network namespace
with only ``lo``), so Ray can only bind 127.0.0.1; they assert that every node says so.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from omnivec.cli import app
from omnivec.distributed.rows import (RowError, dense_matrix, fixed_size_rows, multivector_list, row_input,
                                      token_rows)
from omnivec.distributed.sinks import ParquetSink, SettingsMismatch, check_settings
from omnivec.distributed.units import Unit, plan, read_chunk
from omnivec.inputs import PDF, Image

SCENARIOS = Path(__file__).with_name("_ray_scenarios.py")


# ---------------------------------------------------------------------------------- rows
def test_row_input_follows_the_field_rules():
    assert row_input({"text": "hello"}, "text", None) == "hello"
    assert isinstance(row_input({"text": None, "img": b"%PDF-1.4 ..."}, "text", "img"), PDF)
    assert isinstance(row_input({"text": "caption", "img": b"\x89PNG..."}, "text", "img"), Image)
    assert row_input({"text": "caption", "img": None}, "text", "img") == "caption"   # image null: the text
    with pytest.raises(RowError, match="'body' is missing"):
        row_input({"text": "x"}, "body", None)
    with pytest.raises(RowError, match="'text' is empty"):
        row_input({"text": "  "}, "text", None)
    with pytest.raises(RowError, match="'text' is int"):
        row_input({"text": 3}, "text", None)


def test_vector_columns_round_trip():
    dense = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    multi = [np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32), np.full((1, 4), 2, np.float32)]
    table = pa.table({"dense": fixed_size_rows(dense, 8), "multivector": token_rows(multi, 4)})
    assert table.schema.field("dense").type == pa.list_(pa.float32(), 8)
    np.testing.assert_array_equal(dense_matrix(table.column("dense")), dense)
    for got, want in zip(multivector_list(table.column("multivector")), multi):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------- units
def test_jsonl_units_have_stable_keys_line_ids_and_report_bad_lines(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(5)) + "\nnot json\n"
                 + json.dumps({"text": "last", "n": 1}) + "\n")
    p = plan(f, rows_per_unit=3)
    assert p.fmt == "jsonl"
    assert [u.key for u in p.units] == ["rows.jsonl#L1", "rows.jsonl#L4", "rows.jsonl#L7"]
    assert plan(f, rows_per_unit=3).units == p.units                       # stable across plans
    rows = []
    for u in p.units:
        table, ids, errors = read_chunk(u, 0, 3, None)
        rows += list(zip(ids, table.to_pylist(), errors))
    assert [r[0] for r in rows] == ["rows.jsonl:1", "rows.jsonl:2", "rows.jsonl:3", "rows.jsonl:4",
                                    "rows.jsonl:5", "rows.jsonl:7", "rows.jsonl:8"]   # blank line 6 skipped
    assert "line 7 is not a JSON object" in rows[5][2]
    assert rows[6][1]["text"] == "last" and rows[6][2] is None


def test_parquet_units_are_row_groups_committed_in_chunks(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(10)], "text": [f"t{i}" for i in range(10)]}), f,
                   row_group_size=6)
    units = plan(f, rows_per_unit=4).units
    assert [(u.key, u.rows, u.chunks) for u in units] == [("t.parquet#rg0", 6, 2), ("t.parquet#rg1", 4, 1)]
    table, ids, _errors = read_chunk(units[0], 1, 4, "id")
    assert ids == ["r4", "r5"] and table.column("text").to_pylist() == ["t4", "t5"]
    _table, ids, _errors = read_chunk(units[1], 0, 4, None)
    assert ids == ["t.parquet:6", "t.parquet:7", "t.parquet:8", "t.parquet:9"]
    assert Unit.from_row(units[0].to_row()) == units[0]


def test_a_folder_of_documents_is_planned_one_unit_per_file(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\ntext")
    (tmp_path / "b.py").write_text("def f():\n    return 1\n")
    p = plan(tmp_path)
    assert p.fmt == "documents" and [u.key for u in p.units] == ["a.md", "b.py"]
    assert all(len(u.version) == 64 for u in p.units)                      # sha256 of the file


# ---------------------------------------------------------------------------------- sinks
def test_parquet_sink_commits_atomically_and_replaces_a_chunk(tmp_path):
    sink = ParquetSink(str(tmp_path / "out"))
    rows = pa.table({"id": ["a", "b"], "dense": fixed_size_rows(np.eye(2, dtype=np.float32), 2)})
    sink.commit("k@0", "v1", rows, [("c", "corrupt image")], dim=2, multivector_dim=None, text_field="text")
    sink.commit("k@0", "v1", rows, [("c", "corrupt image")], dim=2, multivector_dim=None, text_field="text")
    (tmp_path / "out" / ".tmp-deadbeef.parquet").write_bytes(b"PAR1 cut short")   # a killed write
    assert sink.committed() == {"k@0": "v1"}
    assert not list((tmp_path / "out").glob(".tmp-*"))                     # cleaned up
    parts = list((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == 1 and pq.read_table(parts[0]).num_rows == 2       # committed twice, there once
    sink.finish([("d.png", "unreadable")])
    lines = [json.loads(x) for x in (tmp_path / "out" / "_failures.jsonl").read_text().splitlines()]
    assert lines == [{"id": "c", "reason": "corrupt image"}, {"id": "d.png", "reason": "unreadable"}]
    sink.remove(["k@0"])
    assert sink.committed() == {}


def test_an_output_refuses_a_job_with_other_settings():
    check_settings(None, {"model": "a"}, "out")
    check_settings({"model": "a", "task": "t"}, {"model": "a", "task": "t"}, "out")
    with pytest.raises(SettingsMismatch, match="task='retrieval.passage', not 'text-matching'"):
        check_settings({"task": "retrieval.passage"}, {"task": "text-matching"}, "out")


def test_cli_refuses_bad_options_before_starting_ray(tmp_path):
    runner = CliRunner()
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    r = runner.invoke(app, ["embed-dataset", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"),
                            "--format", "csv"])
    assert r.exit_code == 2 and "--format must be one of" in r.output
    r = runner.invoke(app, ["embed-dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file or folder" in r.output
    r = runner.invoke(app, ["embed-dataset", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"),
                            "--task", "summarise"])
    assert r.exit_code == 2 and "--task" in r.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["embed-dataset", str(tmp_path / "t.jsonl"), "--out", str(foreign)])
    assert r.exit_code == 2 and "not an embed-dataset output" in r.output
    assert (foreign / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------- clusters
def _in_loopback_namespace(scenario: str, work: Path, timeout: int) -> dict:
    if os.geteuid() != 0:
        pytest.skip("a network namespace (unshare -n) needs root")
    assert shutil.which("unshare") and shutil.which("ip"), "util-linux unshare and iproute2 ip are needed"
    script = f"ip link set lo up && exec {sys.executable} {SCENARIOS} {scenario} {work}"
    run = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads((work / "result.json").read_text())


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory) -> dict:
    """One run of every cluster scenario (a Ray start and the corpus' reference vectors are shared)."""
    return _in_loopback_namespace("all", tmp_path_factory.mktemp("ray"), timeout=480)


@pytest.mark.slow
def test_every_ray_node_binds_loopback_only(ray_run):
    assert ray_run["only_loopback"] is True
    assert ray_run["nodes"] == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.slow
def test_embed_dataset_on_two_nodes_equals_the_library_row_for_row(ray_run):
    out = ray_run["library"]         # 200 real texts, 2 images, a 2-page PDF; 2 bad rows dropped
    assert out["missing"] == [] and out["extra"] == [] and out["ids"] == out["unique_ids"] == 204
    assert out["min_cos"] >= 0.99999


@pytest.mark.slow
def test_job_survives_node_loss_with_every_row_exactly_once(ray_run):
    out = ray_run["table"]
    assert out["nodes_after"] == 1 and 1 <= out["parts_at_removal"] < out["total_parts"]
    assert out["missing"] == [] and out["extra"] == [] and out["ids"] == out["unique_ids"] == 204
    assert out["min_cos"] >= 0.99999 and out["multi_max_abs"] < 1e-4
    assert out["failures"] == out["failures_file"] == ["bad-image", "empty"]
    assert ray_run["rerun"]["chunks"] == 0 and ray_run["rerun"]["done_before"] == out["total_parts"]


@pytest.mark.slow
def test_documents_into_qdrant_equal_omnivec_index_and_rerun_idempotently(ray_run):
    q = ray_run["qdrant"]
    assert q["same_ids"] and q["min_cos"] >= 0.99999 and q["count1"] == q["count2"] == q["local_count"]
    assert q["recommitted"] == 2 and q["failures"] == ["broken.png"]   # two markers dropped: redone, once


@pytest.mark.slow
def test_killed_job_reruns_into_the_output_of_a_clean_run(ray_run):
    res = ray_run["kill"]
    assert res["rerun_rc"] == 0 and res["tmp_left"] == 0
    assert 2 <= res["parts_at_kill"] < res["chunks_in_input"]
    assert res["rerun_done_before"] == res["parts_at_kill"]
    assert res["rerun_done_before"] + res["rerun_chunks"] == res["chunks_in_input"]
    out = res["output"]
    assert out["missing"] == [] and out["extra"] == [] and out["ids"] == out["unique_ids"] == 204
    assert out["min_cos"] >= 0.99999
