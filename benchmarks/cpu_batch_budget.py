"""CPU encode speed of the default model over a grid of batch budgets (tokens x rows per forward).

One model is loaded once (``omnivec.load()``, ONNX Runtime on the CPU); each configuration is an
``omnivec.Embedder`` over that same model with its own ``batch_tokens`` and ``max_batch_rows``.
The workload is ``cpu_encode.py``'s: the first ``--n`` Python standard-library docstrings,
``task="retrieval.passage"``, all of them in one ``encode`` call. Configurations are measured in
alternating rounds (the order reverses every other round) so drift hits all of them; each
measurement repeats the call until ``--seconds`` have passed. Prints texts/s per configuration
(median over rounds) and its ratio to the default 1,024 x 16 measured in the same run, with the
load average before and after. No timed assertions.

``--overhead 0`` plans batches greedily (fill each batch up to the budget), the planner in use
when the default budget was chosen; by default the model's own per-call overhead is used (the
overhead-aware plan of ``omnivec.batching``).

    python benchmarks/cpu_batch_budget.py [--n 667] [--rounds 3] [--seconds 10] \
        [--configs 8192x64,4096x64,2048x32,1024x16,768x16,512x8,16384x128] [--overhead N] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

DEFAULT_CONFIGS = "8192x64,4096x64,2048x32,1024x16,768x16,512x8,16384x128"
BASELINE = (1024, 16)


def parse_configs(spec: str) -> list[tuple[int, int]]:
    configs: list[tuple[int, int]] = []
    for part in spec.split(","):
        tokens, rows = part.lower().strip().split("x")
        config = (int(tokens), int(rows))
        if config not in configs:
            configs.append(config)
    if BASELINE not in configs:      # every ratio is against the default, measured in the same run
        configs.append(BASELINE)
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=667, help="passages per encode call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="minimum time per configuration and round")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated TOKENSxROWS budgets")
    ap.add_argument("--overhead", type=int, default=None,
                    help="per-call overhead in tokens for the batch planner (0: greedy; default: the model's)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    import omnivec
    from omnivec.data.stdlib import stdlib_passages

    configs = parse_configs(args.configs)
    passages = stdlib_passages(args.n)
    load_before = os.getloadavg()
    base = omnivec.load(device="cpu")
    model = base.model
    if args.overhead is not None:
        model.batch_overhead_tokens = args.overhead
    embedders = {c: omnivec.Embedder(model, batch_tokens=c[0], max_batch_rows=c[1]) for c in configs}

    def encode(m: omnivec.Embedder) -> None:
        m.encode(passages, task="retrieval.passage", progress=False)

    for m in embedders.values():     # warm-up: thread pools, allocator, each batch shape once
        m.encode(passages[:64], task="retrieval.passage", progress=False)

    rates: dict[tuple[int, int], list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        order = configs if r % 2 == 0 else configs[::-1]
        for c in order:
            n, t0 = 0, time.perf_counter()
            while True:
                encode(embedders[c])
                n += len(passages)
                elapsed = time.perf_counter() - t0
                if elapsed >= args.seconds:
                    break
            rates[c].append(n / elapsed)
    load_after = os.getloadavg()

    median = {c: statistics.median(v) for c, v in rates.items()}
    ref = median[BASELINE]
    info = base.info()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"model: {info.get('model', '?')} backend {info.get('backend', '?')}; planner overhead "
          f"{model.batch_overhead_tokens} tokens; {len(passages)} stdlib docstrings, median "
          f"{statistics.median(len(p) for p in passages)} chars; {args.rounds} rounds x >= {args.seconds:g} s, "
          f"alternated, median")
    print(f"{'tokens x rows':>15s} {'texts/s':>9s} {'vs 1024 x 16':>13s}   rounds")
    for c in configs:
        mark = "  (default)" if c == BASELINE else ""
        runs = ", ".join(f"{x:.1f}" for x in rates[c])
        print(f"{c[0]:>7d} x {c[1]:<5d} {median[c]:9.1f} {median[c] / ref:12.2f}x   {runs}{mark}")
    if args.json:
        print(json.dumps({
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
            "overhead_tokens": model.batch_overhead_tokens, "n": len(passages),
            "texts_per_s": {f"{t}x{r}": round(median[(t, r)], 1) for t, r in configs},
            "ratio_vs_1024x16": {f"{t}x{r}": round(median[(t, r)] / ref, 3) for t, r in configs},
        }, indent=2))


if __name__ == "__main__":
    main()
