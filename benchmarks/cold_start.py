"""Cold and warm start of ``omnivec serve``: time to ``/ready``, first request of each task, RSS.

Starts ``omnivec serve`` (the embedded default unless ``--model``) as a subprocess on a free
loopback port, first on an empty cache (``OMNIVEC_CACHE_DIR`` set to a fresh temporary folder:
a fresh machine, every ONNX graph built) and then again on that now-warm cache, and for each
start prints:

* seconds until ``/ready`` answers 200;
* seconds of the first request of each task after ``/ready`` (one short text, Jina dialect);
* the serving process's RSS at rest after those requests and its peak (``VmHWM``): the serving
  process only, not the child processes that build graphs (their memory leaves with them).

Targets (issue 24): first request of each task < 1 s; serving RSS at rest <= 1.2 GB and peak
<= 1.6 GB with every task graph open; warm ``/ready`` <= 5 s.

    HF_HUB_OFFLINE=1 python benchmarks/cold_start.py [--model M] [--only cold|warm] [--json]

``--only warm`` reuses the normal cache (run ``omnivec prepare`` first).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TASKS = ("retrieval.query", "retrieval.passage", "text-matching", "code.query", "code.passage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one_start(model: str | None, env: dict[str, str], ready_timeout: float) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "omnivec.cli", "serve", "--port", str(port), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while time.perf_counter() - started < ready_timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    ready = time.perf_counter() - started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if ready is None:
            raise RuntimeError(f"not ready within {ready_timeout:.0f} s")
        first = {}
        for task in TASKS:
            t0 = time.perf_counter()
            r = httpx.post(url + "/v1/embeddings", timeout=300,
                           json={"model": "default", "input": ["how do I sort a list in python"], "task": task})
            first[task] = round(time.perf_counter() - t0, 3)
            r.raise_for_status()
        time.sleep(1.0)
        return {"ready_s": round(ready, 1), "first_request_s": first,
                "rss_rest_mb": round(status_kb(proc.pid, "VmRSS") / 1024), "rss_peak_mb": round(status_kb(proc.pid, "VmHWM") / 1024)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--only", choices=("cold", "warm"), default=None)
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="omnivec-cold-") as cache:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if args.only != "warm":
            env["OMNIVEC_CACHE_DIR"] = cache
        for name in ("cold", "warm"):
            if args.only and name != args.only:
                continue
            results[name] = one_start(args.model, env, args.ready_timeout)
            r = results[name]
            firsts = ", ".join(f"{t} {s:.2f} s" for t, s in r["first_request_s"].items())
            print(f"{name}: /ready after {r['ready_s']} s; first requests: {firsts}; serving RSS at rest "
                  f"{r['rss_rest_mb']} MB, peak {r['rss_peak_mb']} MB", flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
