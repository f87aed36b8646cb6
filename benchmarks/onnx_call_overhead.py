"""Fixed cost of one ONNX Runtime call of the default model, as a least-squares fit over batch shapes.

Loads the default model (``omnivec.load()``, ONNX Runtime on the CPU) and times one forward pass
(``omnivec.execution.run_batch``) of batches of ``rows`` texts of exactly ``tokens`` tokens each
(``m.model.processor.prepare`` with ``PrepareOptions(max_tokens=tokens)`` on a long text, task
``retrieval.passage``, the bare backbone), for every shape of the ``--rows`` x ``--tokens``
grid. Shapes are measured in alternating rounds (the order reverses every other round); each
measurement repeats the call for ``--seconds`` (at least ``--min-calls`` times) and keeps the
median call time; a shape's time is the median over rounds. It then fits

    call ms = intercept + slope x padded tokens (rows x tokens)

by least squares and prints the intercept (ms), the slope (ms per padded token) and their ratio:
the per-call overhead in tokens, the unit of ``batch_overhead_tokens`` in
``omnivec/models/encoder.py`` and ``OVERHEAD_TOKENS`` in ``benchmarks/padding_model.py``. The load
average before and after is printed. No timed assertions.

    python benchmarks/onnx_call_overhead.py [--rows 1,2,4,8,16] [--tokens 8,16,32,64,128] \
        [--rounds 3] [--seconds 1] [--min-calls 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def ints(spec: str) -> list[int]:
    return [int(x) for x in spec.split(",") if x.strip()]


def time_call(model, batch, seconds: float, min_calls: int) -> float:
    """Median wall time of one ``run_batch`` call, in ms."""
    from omnivec.execution import run_batch

    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run_batch(model, batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8,16", help="rows per batch (comma-separated)")
    ap.add_argument("--tokens", default="8,16,32,64,128", help="tokens per row (comma-separated)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum time per shape and round")
    ap.add_argument("--min-calls", type=int, default=5, help="minimum calls per shape and round")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    import omnivec
    from omnivec.models.base import PrepareOptions
    from omnivec.tasks import TaskSpec

    rows_grid, tokens_grid = ints(args.rows), ints(args.tokens)
    load_before = os.getloadavg()
    m = omnivec.load()
    model = m.model
    if getattr(model, "backend", None) != "onnx":
        raise SystemExit(f"the default model loaded with the {getattr(model, 'backend', '?')} backend, not onnx")
    spec = TaskSpec("retrieval", "passage")
    text = " ".join(["the model embeds text images and pdf pages into vectors for search"] * 40)
    rows_of: dict[int, object] = {}
    for n_tok in tokens_grid:
        p = model.processor.prepare(text, spec, PrepareOptions(max_tokens=n_tok))
        if p.cost != n_tok:
            raise SystemExit(f"could not build a {n_tok}-token row (got {p.cost})")
        rows_of[n_tok] = p
    shapes = [(r, t) for r in rows_grid for t in tokens_grid]
    for r, t in shapes:                                    # warm-up: every shape once
        time_call(model, [rows_of[t]] * r, 0.0, 1)

    per_round: dict[tuple[int, int], list[float]] = {s: [] for s in shapes}
    for k in range(args.rounds):
        for r, t in (shapes if k % 2 == 0 else shapes[::-1]):
            per_round[(r, t)].append(time_call(model, [rows_of[t]] * r, args.seconds, args.min_calls))
    ms = {s: statistics.median(v) for s, v in per_round.items()}
    load_after = os.getloadavg()

    x = np.array([r * t for r, t in shapes], dtype=float)
    y = np.array([ms[s] for s in shapes])
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    print(f"{platform.machine()}, {os.cpu_count()} cpus; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}; {args.rounds} rounds")
    print("rows x tokens | padded tokens | median call ms")
    for r, t in shapes:
        print(f"{r:>4} x {t:<4} | {r * t:>6} | {ms[(r, t)]:8.2f}")
    overhead = intercept / slope if slope > 0 else float("inf")
    print(f"fit: {intercept:.2f} ms + {slope:.4f} ms per padded token "
          f"(overhead ~{overhead:.0f} tokens; residual rms {float(np.sqrt(np.mean(resid ** 2))):.2f} ms)")
    if args.json:
        print(json.dumps({
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "load_average_before": load_before[0], "load_average_after": load_after[0],
            "rounds": args.rounds, "ms": {f"{r}x{t}": ms[(r, t)] for r, t in shapes},
            "intercept_ms": float(intercept), "ms_per_token": float(slope),
            "overhead_tokens": float(overhead)}, indent=2))


if __name__ == "__main__":
    main()
