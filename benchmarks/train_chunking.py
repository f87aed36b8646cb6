"""Training step of ``omnivec train``: length-sorted chunks of <= 2,048 padded tokens vs one padded batch.

Sets up the trainer as ``omnivec train TASK --data DATA`` does (default: the code adapter on the
built-in ``stdlib-code`` pairs, batch 32, temperature 0.02, 3% validation hold-out, seed 0; the
adapter folder is a temporary directory), then:

1. Padding, no timing: over every batch of the first epoch, the padded tokens of each side of the
   batch (queries; positives + hard negatives) cut as the trainer cuts them
   (``omnivec.train.common.length_chunks`` with ``omnivec.train.trainer.CHUNK_TOKENS``) and as one
   padded batch, against the real token count; printed as totals and the ratio of wasted
   (padded - real) tokens.
2. Unless ``--steps 0``: wall time of ``Trainer.step`` (forward + backward + optimiser step) on the
   first ``--steps`` batches, each batch run both ways, the order alternated; with one padded
   batch meaning ``CHUNK_TOKENS`` raised above any batch. Prints the median seconds per step of
   each way. (The LoRA weights move between steps, which does not change the work per step.)

    python benchmarks/train_chunking.py [--task code --data stdlib-code --batch-size 32] [--steps 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time


def padded(costs: list[int], chunks: list[list[int]]) -> int:
    return sum(len(c) * max(costs[i] for i in c) for c in chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="code")
    ap.add_argument("--data", default="stdlib-code", help="JSONL of pairs or a builder (as omnivec train --data)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.02)
    ap.add_argument("--val-fraction", type=float, default=0.03)
    ap.add_argument("--steps", type=int, default=3, help="batches timed both ways (0: padding counts only)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    from omnivec.train import TrainConfig, Trainer
    from omnivec.train import trainer as trainer_module
    from omnivec.train.common import length_chunks
    from omnivec.train.data import iter_batches

    chunk_tokens = trainer_module.CHUNK_TOKENS
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(task=args.task, data=args.data, out=out, batch_size=args.batch_size,
                          temperature=args.temperature, val_fraction=args.val_fraction, seed=0)
        tr = Trainer(cfg)
        tr.setup()
        rows = tr.train_rows
        batches = list(iter_batches(len(rows), cfg.batch_size, cfg.seed, 0))

        real = chunked = single = 0
        for idx in batches:
            batch = [rows[j] for j in idx]
            for side in ([r["q"] for r in batch], [r["pos"] for r in batch] + [n for r in batch for n in r["negs"]]):
                costs = [p.cost for p in side]
                real += sum(costs)
                chunked += padded(costs, length_chunks(costs, len(side), chunk_tokens))
                single += len(costs) * max(costs)
        print(f"{platform.machine()}, {os.cpu_count()} cpus; load average before {load_before[0]:.2f}")
        print(f"{len(rows)} training pairs, {len(batches)} batches of {cfg.batch_size} (epoch 1)")
        print(f"real tokens {real:,}; padded: chunks of <= {chunk_tokens} {chunked:,}, one batch {single:,}")
        waste_ratio = (single - real) / max(1, chunked - real)
        print(f"wasted (padded - real) tokens: chunks {chunked - real:,}, one batch {single - real:,} "
              f"({waste_ratio:.1f}x); padded tokens one batch / chunks {single / chunked:.2f}x")

        times: dict[str, list[float]] = {"chunks": [], "one batch": []}
        for k, idx in enumerate(batches[:args.steps]):
            batch = [rows[j] for j in idx]
            for way in (("chunks", "one batch") if k % 2 == 0 else ("one batch", "chunks")):
                trainer_module.CHUNK_TOKENS = chunk_tokens if way == "chunks" else 1 << 40
                try:
                    t0 = time.perf_counter()
                    tr.step(batch)
                    times[way].append(time.perf_counter() - t0)
                finally:
                    trainer_module.CHUNK_TOKENS = chunk_tokens
        medians = {way: statistics.median(v) for way, v in times.items() if v}
        if medians:
            print(f"seconds per step (median of {args.steps}): chunks {medians['chunks']:.1f}, "
                  f"one padded batch {medians['one batch']:.1f}; load average after {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps({"pairs": len(rows), "batches": len(batches), "real_tokens": real,
                          "padded_chunks": chunked, "padded_one_batch": single, "wasted_ratio": waste_ratio,
                          "step_seconds": medians, "load_average_before": load_before[0]}, indent=2))


if __name__ == "__main__":
    main()
