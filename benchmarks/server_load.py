"""Closed-loop HTTP load against ``omnivec serve`` vs the library on the same items, in one run.

Starts the server (embedded default model unless ``--model``) as a subprocess on a free
loopback port, measures the library's items/s on the same items in this process before and
after the load (the server idle; the mean is the baseline), and runs ``--clients`` client
processes, each sending one request at a time (``--batch`` texts per request) for
``--duration`` seconds. Prints requests/s, items/s, p50/p95/p99 latency, errors, the
server's RSS (start, end, peak) and the ratio server items/s / library items/s.

    python benchmarks/server_load.py [--duration 20] [--clients 4] [--batch 8]
                                     [--big-clients 1 --big-batch 256]

With ``--big-clients`` the load is mixed: the latency percentiles are the ``--clients``' (small
requests sharing the server with large ones) and ``big_p50_ms`` / ``big_p95_ms`` the large
requests'; items/s and the ratio count both.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SERVER = """
import sys, uvicorn, omnivec
from omnivec.server import ServerSettings, create_app
m = omnivec.load(sys.argv[2] or None)
uvicorn.run(create_app(m, ServerSettings()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def corpus(n: int, seed: int = 0) -> list[str]:
    """Varied-length sentences (5..60 words) from a fixed vocabulary: realistic token counts."""
    rng = np.random.default_rng(seed)
    words = ("the model embeds text images and pdf pages into vectors for search retrieval code query "
             "passage server batch token budget latency memory throughput request client engine").split()
    return [" ".join(rng.choice(words, size=int(rng.integers(5, 60)))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def client(url: str, texts: list[str], batch: int, until: float, seed: int, out: mp.Queue) -> None:
    import httpx
    rng = np.random.default_rng(seed)
    lat, items, errors = [], 0, 0
    with httpx.Client(timeout=60) as c:
        while time.time() < until:
            start = rng.integers(0, len(texts) - batch)
            body = {"model": "default", "input": texts[start:start + batch], "encoding_format": "base64"}
            t0 = time.perf_counter()
            try:
                r = c.post(url, json=body)
                ok = r.status_code == 200 and len(r.json()["data"]) == batch
            except Exception:  # noqa: BLE001 - counted, never fatal
                ok = False
            lat.append(time.perf_counter() - t0)
            items += batch if ok else 0
            errors += 0 if ok else 1
    out.put((lat, items, errors, time.process_time(), seed))


def library_rate(m, texts: list[str], seconds: float) -> float:
    """Items/s of the library's ``encode`` on 512-text calls of the same texts, for ``seconds``."""
    items, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        m.encode(texts[:512])
        items += 512
    return items / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="texts per request")
    ap.add_argument("--model", default="")
    ap.add_argument("--items", type=int, default=2048)
    ap.add_argument("--big-clients", type=int, default=0,
                    help="extra clients sending --big-batch texts per request (a mixed load)")
    ap.add_argument("--big-batch", type=int, default=256)
    args = ap.parse_args()
    texts = corpus(args.items)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), args.model])
    try:
        import httpx
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        httpx.post(url + "/v1/embeddings", json={"model": "default", "input": texts[:64]}, timeout=120)

        import omnivec
        m = omnivec.load(args.model or None)
        m.encode(texts[:64])                          # warm-up
        lib_before = library_rate(m, texts, min(args.duration, 15.0) / 2)

        rss_start = rss_kb(server.pid)
        q: mp.Queue = mp.get_context("spawn").Queue()
        until = time.time() + args.duration
        sizes = [args.batch] * args.clients + [args.big_batch] * args.big_clients
        procs = [mp.get_context("spawn").Process(target=client, args=(url + "/v1/embeddings", texts, size,
                                                                        until, i, q)) for i, size in enumerate(sizes)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        results = [q.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
        rss_end, rss_peak = rss_kb(server.pid), rss_kb(server.pid, "VmHWM")
        # measured again after the load (the server idle): drift between the two shows as a gap
        lib_after = library_rate(m, texts, min(args.duration, 15.0) / 2)
        lib_rate = (lib_before + lib_after) / 2
    finally:
        server.terminate()
        server.wait(timeout=30)

    results.sort(key=lambda r: r[4])              # main clients first, then the big ones
    lat = np.array([x for r in results[:args.clients] for x in r[0]])
    items = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "clients": args.clients, "batch": args.batch, "duration_s": round(wall, 1),
        "requests_per_s": round(sum(len(r[0]) for r in results) / wall, 1), "items_per_s": round(items / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1),
        "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 1),
        "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 1),
        "errors": errors, "server_rss_mb_start": round(rss_start / 1024), "server_rss_mb_end": round(rss_end / 1024),
        "server_rss_mb_peak": round(rss_peak / 1024), "library_items_per_s": round(lib_rate, 1),
        "library_before_after": [round(lib_before, 1), round(lib_after, 1)],
        "server_vs_library": round(items / wall / lib_rate, 2),
        # CPU the client processes themselves used, as a share of the machine: on a small
        # machine that is taken from the server, while the library baseline has no clients.
        "client_cpu_share": round(sum(r[3] for r in results) / (wall * (os.cpu_count() or 1)), 3),
    }
    if args.big_clients:   # the latencies above are the main clients'; the big ones' here
        big = np.array([x for r in results[args.clients:] for x in r[0]])
        report.update({"big_clients": args.big_clients, "big_batch": args.big_batch,
                       "big_p50_ms": round(float(np.percentile(big, 50)) * 1e3, 1),
                       "big_p95_ms": round(float(np.percentile(big, 95)) * 1e3, 1)})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
