"""Library encode speed on CPU: greedy batch plan vs the overhead-aware plan, same model and process.

Setups: ``greedy`` (fill each batch up to the token budget: the behaviour before) and ``plan``
(the default: cut the length-sorted rows where the modelled cost, a fixed per-call overhead
plus padded tokens, is lowest; see omnivec.batching). Each is measured on calls of
``--sizes`` texts (the server benchmark's 5-60-word texts, random windows), in alternating
rounds so drift hits all setups. Prints texts/s per setup and size (median over rounds).
No timed assertions.

    python benchmarks/cpu_batching.py [--sizes 512,32,8] [--seconds 6] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,32,8", help="texts per encode call")
    ap.add_argument("--seconds", type=float, default=6.0, help="per setup, size and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="")
    args = ap.parse_args()

    import omnivec
    m = omnivec.load(args.model or None)
    model = m.model
    overhead = model.batch_overhead_tokens
    setups = {"greedy": 0, "plan": overhead}
    texts = corpus(2048)
    m.encode(texts[:64])
    rng = np.random.default_rng(0)
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, ov in setups.items():
            model.batch_overhead_tokens = ov
            for size in (int(s) for s in args.sizes.split(",")):
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    start = int(rng.integers(0, len(texts) - size))
                    m.encode(texts[start:start + size])
                    n += size
                rates.setdefault((name, size), []).append(n / (time.perf_counter() - t0))
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "overhead_tokens": overhead,
        "texts_per_s": {f"{name} x{size}": round(statistics.median(v), 1) for (name, size), v in rates.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
