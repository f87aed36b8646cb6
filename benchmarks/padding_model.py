"""How much of a CPU forward is padding and per-call overhead, by request size (modelled, not timed).

For random draws of N texts from the server benchmark's corpus, plans the batches as the
library does (overhead-aware plan, 1024 tokens x 16 rows) and prints the modelled cost
``sum(overhead + rows x longest)`` divided by the real token count. The cost model is the
least-squares fit of ONNX call time on the 2-core machine (6.0 ms + 0.17 ms per padded token,
i.e. an overhead of 36 tokens; benchmarks/RESULTS.md, repeated by ``onnx_call_overhead.py``).
The ratio between two sizes bounds how close small requests can get to large ones without
padding-free (packed) execution.

    python benchmarks/padding_model.py [--sizes 8,32,64,512] [--draws 200]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import corpus  # noqa: E402

OVERHEAD_TOKENS = 36


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,32,64,512")
    ap.add_argument("--draws", type=int, default=200)
    args = ap.parse_args()
    import omnivec
    from omnivec.batching import plan_batches
    from omnivec.models.base import PrepareOptions
    from omnivec.tasks import TaskSpec
    model = omnivec.load().model
    spec, opts = TaskSpec("text-matching", "query"), PrepareOptions()
    costs = np.array([model.prepare(t, spec, opts).cost for t in corpus(2048)])
    rng = np.random.default_rng(0)
    print(f"{len(costs)} texts, mean {costs.mean():.1f} tokens; overhead {OVERHEAD_TOKENS} tokens per call")
    print("texts per call | modelled cost / real tokens | efficiency vs the largest size")
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        ratios = []
        for _ in range(args.draws):
            c = costs[rng.choice(len(costs), n, replace=False)].tolist()
            plan = plan_batches(c, max_tokens=1024, max_rows=16, overhead_tokens=OVERHEAD_TOKENS)
            ratios.append(sum(OVERHEAD_TOKENS + len(b) * max(c[i] for i in b) for b in plan) / sum(c))
        rows.append((n, float(np.mean(ratios))))
    best = min(r for _, r in rows)
    for n, r in rows:
        print(f"{n:>14} | {r:.3f} | {best / r:.2f}x")


if __name__ == "__main__":
    main()
