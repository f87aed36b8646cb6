"""Process memory of the default model on the CPU as task graphs open (RSS), one fresh process each.

Each scenario runs in its own subprocess (``python -c``), so no measurement inherits another's
memory: it loads the default model (``omnivec.load()``, ONNX Runtime; ``bare`` loads
``omnivec.load(adapters=None)``), encodes 16 short texts with ``retrieval.passage`` (the bare
graph), then 16 with each task of the scenario in turn (the first use of a task opens its
adapter's ONNX graph: exported on a cache miss, else read from the cache). After each step it
prints the process's resident set (``VmRSS``) and peak (``VmHWM``) from ``/proc/self/status``
in MB, the step's wall time, whether the step exported a graph, and the export time the cache
recorded for that graph (``export.json``).

Scenarios: ``bare`` (no adapters), ``code``, ``text-matching``, ``both`` (code, then
text-matching).

    python benchmarks/task_graph_memory.py [--scenarios bare,code,text-matching,both] [--json]

The graphs are cached where ``omnivec`` caches them (``$OMNIVEC_CACHE_DIR``, else the user cache
directory); point ``OMNIVEC_CACHE_DIR`` at an empty folder to time first exports (the default
model is then materialised there again too).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import gc, json, sys, time
from pathlib import Path

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0

def report(step, seconds, exported=None, export_seconds=None):
    gc.collect()
    print(json.dumps({"step": step, "rss_mb": round(status("VmRSS")), "peak_mb": round(status("VmHWM")),
                      "seconds": round(seconds, 2), "exported": exported,
                      "recorded_export_seconds": export_seconds}), flush=True)

scenario = sys.argv[1]
tasks = {"bare": [], "code": ["code.query"], "text-matching": ["text-matching"],
         "both": ["code.query", "text-matching"]}[scenario]
texts = [f"how do I read a file line by line in python, example {i}" for i in range(16)]
t0 = time.perf_counter()
import omnivec
from omnivec.models import encoder_onnx
m = omnivec.load(adapters=None) if scenario == "bare" else omnivec.load()
report("load", time.perf_counter() - t0)
t0 = time.perf_counter()
m.encode(texts, task="retrieval.passage")
report("encode retrieval.passage", time.perf_counter() - t0)
for task in tasks:
    before = encoder_onnx.child_builds["count"]
    t0 = time.perf_counter()
    m.encode(texts, task=task)
    seconds = time.perf_counter() - t0
    adapter = task.split(".")[0]
    graphs = getattr(m.model, "task_graphs", None)
    recorded = None
    if graphs is not None and adapter in graphs.graphs:
        meta = Path(graphs.graphs[adapter].file).parent / "export.json"
        if meta.is_file():
            recorded = json.loads(meta.read_text()).get("export_seconds")
    report(f"first encode {task}", seconds, encoder_onnx.child_builds["count"] > before, recorded)
"""

SCENARIOS = ("bare", "code", "text-matching", "both")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}")

    print(f"{platform.machine()}, {os.cpu_count()} cpus; load average {os.getloadavg()[0]:.2f}")
    results: dict[str, list[dict]] = {}
    for scenario in scenarios:
        done = subprocess.run([sys.executable, "-c", CHILD, scenario], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"scenario {scenario} failed:\n{done.stderr[-4000:]}")
        steps = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        results[scenario] = steps
        print(f"\n{scenario} (fresh process)")
        print("step | RSS MB | peak MB | seconds | exported | recorded export s")
        for s in steps:
            exported = "" if s["exported"] is None else ("yes" if s["exported"] else "no (cache)")
            recorded = "" if s["recorded_export_seconds"] is None else str(s["recorded_export_seconds"])
            print(f"{s['step']} | {s['rss_mb']} | {s['peak_mb']} | {s['seconds']} | {exported} | {recorded}")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
