"""CPU encode throughput: omnivec's default model vs sentence-transformers on the same weights.

Both run the materialised multilingual-e5-small (fp32) on the same >= 2,000 real passages (Python
standard-library docstrings, "passage: " prefix), in the same process, alternating A/B rounds so
drift hits both. Prints passages/s of each, the ratio, and the cosine between their vectors;
then the same for omnivec's dynamic-int8 path. omnivec uses its default CPU backend (ONNX
Runtime when available; ``--backend torch`` for the PyTorch path). No timed assertions.

    python benchmarks/cpu_encode.py [--n 2000] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backend", choices=["onnx", "torch"], default=None,
                    help="omnivec backend (default: the model's choice, onnx on the CPU)")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers batch size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import omnivec
    from omnivec.data.stdlib import stdlib_passages
    from omnivec.models.registry import resolve_model_path
    from sentence_transformers import SentenceTransformer, models

    passages = stdlib_passages(args.n)
    path = str(resolve_model_path(None))
    ours = omnivec.load(device="cpu", backend=args.backend)
    ours_q = omnivec.load(device="cpu", quantize=True, backend=args.backend)
    word = models.Transformer(path, max_seq_length=512)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean"),
                                      models.Normalize()], device="cpu")
    prefixed = ["passage: " + p for p in passages]

    def run_ours():
        return ours.encode(passages, task="retrieval.passage", progress=False)

    def run_ours_q():
        return ours_q.encode(passages, task="retrieval.passage", progress=False)

    def run_st():
        return st.encode(prefixed, batch_size=args.st_batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)

    runners = {"omnivec": run_ours, "sentence-transformers": run_st, "omnivec-int8": run_ours_q}
    # warm-up (allocator, thread pools, lazy init)
    ours.encode(passages[:64], task="retrieval.passage")
    ours_q.encode(passages[:64], task="retrieval.passage")
    st.encode(prefixed[:64], batch_size=args.st_batch_size)

    times: dict[str, list[float]] = {k: [] for k in runners}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            start = time.perf_counter()
            vectors[name] = np.asarray(runners[name]())
            times[name].append(time.perf_counter() - start)

    rate = {k: len(passages) / statistics.median(v) for k, v in times.items()}
    cos = lambda a, b: float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {args.threads}")
    print(f"passages: {len(passages)} stdlib docstrings, median {statistics.median(len(p) for p in passages)} chars; "
          f"rounds: {args.rounds} (A/B alternated, median)")
    print(f"omnivec backend: {ours.info()['backend']}, int8 path: {ours_q.info()['backend']} "
          f"{ours_q.info()['quantization']}; load average: {os.getloadavg()[0]:.2f}")
    for name in runners:
        print(f"  {name:24s} {rate[name]:8.1f} passages/s   (runs: {', '.join(f'{t:.1f}s' for t in times[name])})")
    base = rate["sentence-transformers"]
    print(f"ratio omnivec / sentence-transformers:      {rate['omnivec'] / base:.2f}x  "
          f"min cos {cos(vectors['omnivec'], vectors['sentence-transformers']):.6f}")
    print(f"ratio omnivec-int8 / sentence-transformers: {rate['omnivec-int8'] / base:.2f}x  "
          f"min cos {cos(vectors['omnivec-int8'], vectors['sentence-transformers']):.6f}")


if __name__ == "__main__":
    main()
