"""Rows/s of `omnivec embed-dataset` on Ray (1 and 2 actors) against the plain library, same run.

Run it as root inside a network namespace that has only `lo`, so Ray binds 127.0.0.1 only:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/ray_scaling.py --rows 3000'

Corpus: real passages (Python stdlib docstrings, `omnivec.data.stdlib.stdlib_passages`) in one
Parquet file. Arms, alternated and repeated (`--repeats`): `library` = `omnivec.load().embed(texts,
"retrieval.passage")` on the driver (model loaded before the clock starts); `ray-1` / `ray-2` =
`omnivec.distributed.run_job` into a fresh Parquet folder with 1 or 2 actors on a local Ray
instance started once. Each Ray arm reports end-to-end time (actor start and model load
included). Memory: peak RSS of the driver and of each actor (read from /proc by the actors' pids).
Prints a markdown table and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _actor_pids() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if "MapWorker" in cmd and "UnitEmbedder" in cmd:
                out.append(int(entry.name))
    return out


def run_ray(table: Path, actors: int, rows_per_unit: int) -> dict:
    import omnivec.distributed as od

    out = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    shutil.rmtree(out)
    marks: list[tuple[float, int]] = []
    actor_mem: dict[int, float] = {}

    def seen(summary) -> None:
        marks.append((time.perf_counter(), summary.rows))
        for pid in _actor_pids():
            actor_mem[pid] = max(actor_mem.get(pid, 0.0), _rss_mib(pid))

    start = time.perf_counter()
    summary = od.run_job(str(table), str(out), od.EmbedSettings(rows_per_unit=rows_per_unit), address=None,
                         actors=actors, on_progress=seen)
    total = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {"rows": summary.rows, "seconds": total, "rows_per_s": summary.rows / total,
            "actor_peak_mib": sorted(round(v) for v in actor_mem.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--rows-per-unit", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    import omnivec
    from omnivec.data.stdlib import stdlib_passages
    from omnivec.distributed.cluster import connect, node_addresses, only_loopback

    if not only_loopback():
        raise SystemExit("run inside `unshare -n` with only lo up (see the docstring): Ray must bind 127.0.0.1 only")
    texts = stdlib_passages(args.rows)
    work = Path(tempfile.mkdtemp(prefix="ray-bench-in-"))
    table = work / "passages.parquet"
    pq.write_table(pa.table({"text": texts}), table, row_group_size=args.rows_per_unit * 4)
    model = omnivec.load()
    model.embed(texts[:64], "retrieval.passage")                   # warm
    connect("local")
    assert set(node_addresses()) == {"127.0.0.1"}
    results: dict[str, list[dict]] = {"library": [], "ray-1": [], "ray-2": []}
    for _ in range(args.repeats):
        for arm in results:                                         # alternated A/B/C, repeated
            if arm == "library":
                start = time.perf_counter()
                model.embed(texts, "retrieval.passage", progress=False)
                seconds = time.perf_counter() - start
                results[arm].append({"rows": len(texts), "seconds": seconds, "rows_per_s": len(texts) / seconds})
            else:
                results[arm].append(run_ray(table, int(arm[-1]), args.rows_per_unit))
    lib = statistics.median(r["rows_per_s"] for r in results["library"])
    report = {"rows": len(texts), "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
              "driver_peak_mib": round(_rss_mib(os.getpid())), "arms": results}
    print("| arm | rows/s end-to-end (median) | vs library | actor peak MiB |")
    print("|---|---|---|---|")
    for arm, runs in results.items():
        e2e = statistics.median(r["rows_per_s"] for r in runs)
        mem = runs[-1].get("actor_peak_mib", [])
        print(f"| {arm} | {e2e:.1f} | {e2e / lib:.2f}x | {mem or '-'} |")
    print(f"driver peak RSS {report['driver_peak_mib']} MiB (model loaded for the library arm); "
          f"load average {report['load_avg']}")
    print(json.dumps(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
