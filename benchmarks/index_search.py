"""Vector-store benchmark for ``omnivec index``/``search``: build time, size on disk, query latency.

Synthetic, normalised data (no model): N items with a 384-d dense vector and a ~T-token 128-d
multi-vector, grouped into files of ``--items-per-file`` and committed the way the Index does
(``commit_file`` per file, marker last). For each store (LanceDB directory, Qdrant local mode)
and multi-vector storage (float16, binary) it reports:

* build: seconds to commit every file (plus LanceDB's ``optimize`` compaction, timed apart);
* size: bytes on disk after the build (after ``optimize`` for LanceDB);
* latency p50/p99 over ``--queries`` queries of dense top-10, and of dense top-100 + MaxSim
  rerank done here (``multivectors(ids)`` + :func:`omnivec.scoring.maxsim_scores`), and of
  Qdrant's native two-stage query (float16 only; binary bits live in the payload).

Qdrant local mode is qdrant-client's pure-Python engine (brute force, everything in RAM, points
pickled into SQLite); configurations estimated to exceed ``--max-build-s`` are skipped and said so.
An optional last section times ``omnivec.Index.add_path`` on real text files when the Index and
the default model are available.

    python benchmarks/index_search.py [--sizes 10000,100000] [--queries 200] [--tokens 32]
        [--stores lance,qdrant] [--storages float16,binary] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DIM, MDIM = 384, 128


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Corpus:
    """Deterministic synthetic items, generated file by file so 100k x 32 tokens never sit in RAM twice."""

    def __init__(self, n: int, tokens: int, per_file: int, seed: int = 0) -> None:
        self.n, self.tokens, self.per_file, self.seed = n, tokens, per_file, seed
        self.dense = unit(np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32))

    def files(self) -> Any:
        from omnivec.index.types import Record

        for f, start in enumerate(range(0, self.n, self.per_file)):
            stop = min(self.n, start + self.per_file)
            rng = np.random.default_rng((self.seed, f))
            lengths = rng.integers(max(1, self.tokens // 2), self.tokens * 3 // 2 + 1, stop - start)
            path = f"corpus/dir{f // 100:03d}/file{f:06d}.txt"
            recs = []
            for j, i in enumerate(range(start, stop)):
                mv = unit(rng.standard_normal((int(lengths[j]), MDIM), dtype=np.float32)) if self.tokens else None
                recs.append(Record(id=f"{f:06d}-{j}", path=path, file_hash=f"h{f}", kind="text",
                                   dense=self.dense[i], multivector=mv, text=f"item {i} of {path}",
                                   line_start=j * 20 + 1, line_end=j * 20 + 20, ordinal=j))
            yield path, f"h{f}", recs

    def queries(self, nq: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Dense queries near stored items (so top hits are meaningful), plus 32-token query multi-vectors."""
        rng = np.random.default_rng((self.seed, 10**9))
        idx = rng.integers(0, self.n, nq)
        dense = unit(self.dense[idx] + 0.05 * rng.standard_normal((nq, DIM), dtype=np.float32))
        return dense, [unit(rng.standard_normal((32, MDIM), dtype=np.float32)) for _ in range(nq)]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed(fn: Callable[[int], Any], nq: int, warmup: int = 5) -> dict[str, float]:
    for i in range(min(warmup, nq)):
        fn(i)
    lat = []
    for i in range(nq):
        t = time.perf_counter()
        fn(i)
        lat.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(statistics.median(lat), 2), "p99_ms": round(pct(lat, 99), 2)}


def spec_of(store: str, root: Path) -> str:
    return str(root / "lance") if store == "lance" else f"qdrant+local://{root}/qdrant/bench"


def bench_one(store_kind: str, storage: str, corpus: Corpus, nq: int, workdir: Path) -> dict[str, Any]:
    from omnivec.index.stores import open_store
    from omnivec.scoring import maxsim_scores

    root = Path(tempfile.mkdtemp(prefix=f"bench-{store_kind}-{storage}-", dir=workdir))
    out: dict[str, Any] = {"store": store_kind, "storage": storage, "n": corpus.n, "tokens": corpus.tokens}
    try:
        store = open_store(spec_of(store_kind, root), dim=DIM, multivector_dim=MDIM if corpus.tokens else None,
                           multivector_storage=storage)
        t = time.perf_counter()
        files = 0
        for path, fh, recs in corpus.files():
            store.commit_file(path, fh, recs)
            files += 1
        out["build_s"] = round(time.perf_counter() - t, 1)
        out["items_per_s"] = round(corpus.n / (time.perf_counter() - t))
        out["files"] = files
        if hasattr(store, "optimize"):
            t = time.perf_counter()
            store.optimize()
            out["optimize_s"] = round(time.perf_counter() - t, 1)
        assert store.count() == corpus.n, (store.count(), corpus.n)
        out["size_mb"] = round(store.size_bytes() / 1e6, 1)
        qd, qm = corpus.queries(nq)
        out["dense_top10"] = timed(lambda i: store.search_dense(qd[i], 10), nq)
        if corpus.tokens:
            def rerank(i: int) -> list[tuple[str, float]]:
                cands = store.search_dense(qd[i], 100)
                mvs = store.multivectors([r.id for r, _ in cands])
                scores = maxsim_scores([qm[i]], [mvs[r.id] for r, _ in cands])[0]
                return [(cands[j][0].id, float(scores[j])) for j in np.argsort(-scores)[:10]]

            out["rerank100_maxsim"] = timed(rerank, nq)
            if hasattr(store, "search_maxsim") and storage != "binary":
                out["native_maxsim"] = timed(lambda i: store.search_maxsim(qm[i], 10, 100, qd[i]), nq)
                ours = [x[0] for x in rerank(0)]
                native = [r.id for r, _ in store.search_maxsim(qm[0], 10, 100, qd[0])]
                out["native_matches_ours"] = ours == native
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def bench_index(n_files: int, workdir: Path) -> list[dict[str, Any]]:
    """End to end: real text files -> omnivec.Index.add_path (embedding dominates)."""
    try:
        from omnivec.index import Index
        import omnivec
        from omnivec.data.stdlib import stdlib_passages
    except Exception as e:   # the Index is optional for this benchmark
        print(f"\n(indexing throughput skipped: cannot import omnivec.index.Index: {e})")
        return []
    folder = Path(tempfile.mkdtemp(prefix="bench-docs-", dir=workdir))
    passages = stdlib_passages(n_files * 4)
    for f in range(n_files):
        (folder / f"doc{f:04d}.txt").write_text("\n\n".join(passages[f * 4:f * 4 + 4]), encoding="utf-8")
    model = omnivec.load(device="cpu")
    rows = []
    for kind in ("lance", "qdrant"):
        root = Path(tempfile.mkdtemp(prefix=f"bench-index-{kind}-", dir=workdir))
        try:
            with Index(spec_of(kind, root), model=model) as ix:
                summary = ix.add_path(folder, progress=False)
                items = ix.store.count()
                texts = [t for _, t in ix.store.iter_texts()]
            # baseline in the same run: the library embedding the very same chunks, nothing else
            start = time.perf_counter()
            model.encode(texts, task="retrieval.passage", progress=False)
            encode_s = time.perf_counter() - start
            rows.append({"store": kind, "files": n_files, "items": items, "seconds": round(summary.seconds, 1),
                         "files_per_s": round(n_files / summary.seconds, 1),
                         "items_per_s": round(items / summary.seconds, 1),
                         "encode_items_per_s": round(len(texts) / encode_s, 1),
                         "ratio_to_encode": round((items / summary.seconds) / (len(texts) / encode_s), 3)})
        finally:
            shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def fmt(lat: dict[str, float] | None) -> str:
    return f"{lat['p50_ms']} / {lat['p99_ms']}" if lat else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=32, help="mean tokens per item multi-vector (0: none)")
    ap.add_argument("--max-token-vectors", type=int, default=1_600_000,
                    help="cap on N x tokens (RAM/time); larger sizes get fewer tokens per item, printed")
    ap.add_argument("--items-per-file", type=int, default=20)
    ap.add_argument("--stores", default="lance,qdrant")
    ap.add_argument("--storages", default="float16,binary")
    ap.add_argument("--qdrant-max-items", type=int, default=20_000,
                    help="skip Qdrant local mode above this many items (pure Python: minutes and GBs of RAM)")
    ap.add_argument("--index-files", type=int, default=0,
                    help="also time omnivec.Index.add_path on this many text files (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", default=None, help="where stores are built (default: system temp)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# index_search: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"({args.threads} threads), dense {DIM}-d, multi-vector {MDIM}-d, {args.queries} queries, "
          f"{args.items_per_file} items per file")
    results: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        tokens = args.tokens
        if tokens and n * tokens > args.max_token_vectors:
            tokens = max(1, args.max_token_vectors // n)
            print(f"N={n}: {tokens} tokens per item instead of {args.tokens} (--max-token-vectors "
                  f"{args.max_token_vectors})")
        corpus = Corpus(n, tokens, args.items_per_file)
        for store_kind in args.stores.split(","):
            for storage in args.storages.split(","):
                if store_kind == "qdrant" and n > args.qdrant_max_items:
                    print(f"skipped: qdrant local, N={n}, {storage} (> --qdrant-max-items {args.qdrant_max_items})")
                    results.append({"store": store_kind, "storage": storage, "n": n, "skipped": True})
                    continue
                row = bench_one(store_kind, storage, corpus, args.queries, workdir)
                print(json.dumps(row), flush=True)
                results.append(row)
    index_rows = bench_index(args.index_files, workdir) if args.index_files else []

    print("\n| store | N | tokens/item | mv storage | build s (items/s) | optimize s | size MB "
          "| dense top-10 p50/p99 ms | top-100 + MaxSim p50/p99 ms | native MaxSim p50/p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.get("skipped"):
            print(f"| {r['store']} | {r['n']} | - | {r['storage']} | skipped | | | | | |")
            continue
        print(f"| {r['store']} | {r['n']} | {r['tokens']} | {r['storage']} | {r['build_s']} ({r['items_per_s']}) "
              f"| {r.get('optimize_s', '-')} | {r['size_mb']} | {fmt(r['dense_top10'])} "
              f"| {fmt(r.get('rerank100_maxsim'))} | {fmt(r.get('native_maxsim'))} |")
    if index_rows:
        print("\n| Index.add_path | files | items | seconds | files/s | items/s | encode-only items/s | ratio |"
              "\n|---|---|---|---|---|---|---|---|")
        for r in index_rows:
            print(f"| {r['store']} | {r['files']} | {r['items']} | {r['seconds']} | {r['files_per_s']} "
                  f"| {r['items_per_s']} | {r['encode_items_per_s']} | {r['ratio_to_encode']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"stores": results, "index": index_rows}, indent=1))


if __name__ == "__main__":
    main()
