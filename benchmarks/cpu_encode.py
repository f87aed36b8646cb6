"""CPU encode throughput: omnivec's default model vs sentence-transformers on the same weights.

Both run the materialised multilingual-e5-small (fp32) on the same >= 2,000 real passages (Python
standard-library docstrings, "passage: " prefix), in the same process, alternating A/B rounds so
drift hits both. Prints passages/s of each, the ratio, and the cosine between their vectors;
then the same for omnivec's int8 path (``precision="int8"``), and its bf16 path where the
CPU has native bf16; each quantised path is also compared with omnivec's fp32 (speed ratio,
min cosine). The CPU's flags (``omnivec.cpu_features``) are printed with the rows. omnivec uses its default CPU backend (ONNX
Runtime when available; ``--backend torch`` for the PyTorch path). No timed assertions.

fastembed (optional) runs beside them on the same weights: a plain ONNX export of the same
BertModel (``benchmarks/peer_servers.py``'s ``prepare_peer_model``: ``torch.onnx.export``, eager
attention, no offline fusion; fastembed's session applies ORT_ENABLE_ALL as it always does),
registered with ``TextEmbedding.add_custom_model(..., pooling=PoolingType.MEAN,
normalization=True, model_file="model.onnx")`` and loaded with ``specific_model_path=``; it gets
the same "passage: "-prefixed texts as sentence-transformers. fastembed lives in its own venv
(its pins, e.g. ``huggingface-hub<2``, are not omnivec's to carry) and runs in a worker
subprocess that this script drives round by round, so the A/B alternation covers it too::

    python3.11 -m venv /opt/peers/fastembed && /opt/peers/fastembed/bin/pip install fastembed   # 0.9.1 here

First a sweep over ``--fastembed-batch-sizes`` on every 4th passage (each size reported), then
its best batch size joins the rounds. Without ``--fastembed-python`` (and no fastembed in this
interpreter) it is skipped with a note.

Another model family joins the rounds with ``--model DIR`` (any directory ``omnivec.load``
takes, on its default CPU backend, with ``--model-task``), printed as passages/s beside
the default model and as a ratio to it. ``--random-v3 e5-small`` writes (once, under
``~/.cache/omnivec-bench``) a random jina-embeddings-v3 checkpoint at multilingual-e5-small's
size (12 layers, 384 wide, 12 heads, 1536 FFN, the same XLM-R vocabulary) and adds it: the
jina-v3 family's rotary + per-row LoRA path against the encoder family at equal size
(``full`` is v3's own size, 570M parameters: slow on two cores).

    python benchmarks/cpu_encode.py [--n 2000] [--rounds 3] [--threads 2]
                                    [--fastembed-python /opt/peers/fastembed/bin/python]
                                    [--model DIR | --random-v3 e5-small] [--model-task retrieval.passage]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


FASTEMBED_WORKER = r"""
import json, sys, time
import numpy as np
import fastembed, onnxruntime
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType
folder, model_file, threads, texts_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
texts = json.load(open(texts_file))
name = "omnivec-bench/multilingual-e5-small-local"
TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=True,
                               sources=ModelSource(hf=name), dim=384, model_file=model_file)
model = TextEmbedding(name, specific_model_path=folder, threads=threads, providers=["CPUExecutionProvider"])
list(model.embed(texts[:64], batch_size=32))   # warm-up
print(json.dumps({"fastembed": fastembed.__version__, "onnxruntime": onnxruntime.__version__}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    chunk = texts[cmd["start"]:cmd["stop"]:cmd["step"]]
    t0 = time.perf_counter()
    vecs = np.stack(list(model.embed(chunk, batch_size=cmd["batch"])))
    seconds = time.perf_counter() - t0
    np.save(cmd["out"], vecs)
    print(json.dumps({"seconds": seconds, "n": len(chunk)}), flush=True)
"""


class FastembedWorker:
    """fastembed in a subprocess (its own venv): load once, then encode on command."""

    def __init__(self, python: str, folder: Path, threads: int, texts: list[str]):
        self.tmp = tempfile.TemporaryDirectory(prefix="cpu-encode-fastembed-")
        texts_file = Path(self.tmp.name) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([python, "-c", FASTEMBED_WORKER, str(folder), "model.onnx", str(threads),
                                      str(texts_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fastembed worker ({python}) exited with {self.proc.wait()}")
        self.versions = json.loads(line)
        self.calls = 0

    def encode(self, batch: int, start: int = 0, stop: int | None = None, step: int = 1) -> tuple[float, np.ndarray]:
        out = Path(self.tmp.name) / f"vecs{self.calls}.npy"
        self.calls += 1
        self.proc.stdin.write(json.dumps({"batch": batch, "start": start, "stop": stop, "step": step,
                                          "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fastembed worker exited with {self.proc.wait()}")
        reply = json.loads(line)
        vecs = np.load(out)
        out.unlink()
        return reply["seconds"], vecs

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.tmp.cleanup()


def start_fastembed(args, prefixed: list[str]) -> tuple[FastembedWorker | None, str]:
    """The worker, or None and why it was skipped."""
    python = args.fastembed_python
    if python is None:
        if importlib.util.find_spec("fastembed") is None:
            return None, ("fastembed skipped: not importable here and no --fastembed-python given "
                          "(python3.11 -m venv /opt/peers/fastembed && /opt/peers/fastembed/bin/pip install fastembed)")
        python = sys.executable
    elif not (Path(python).is_file() and os.access(python, os.X_OK)):
        return None, f"fastembed skipped: {python} is not an executable file"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_servers import prepare_peer_model
    folder = prepare_peer_model()
    try:
        return FastembedWorker(python, folder, args.threads, prefixed), f"fastembed via {python}, model {folder}"
    except Exception as e:  # noqa: BLE001 - reported, the rest still runs
        return None, f"fastembed skipped: its worker failed to start ({e})"


V3_SIZES = {"e5-small": dict(hidden=384, layers=12, heads=12, intermediate=1536),
            "full": dict(hidden=1024, layers=24, heads=16, intermediate=4096)}


def random_v3_dir(size: str) -> Path:
    """A random jina-embeddings-v3 checkpoint of ``size`` in the official layout (built once)."""
    from omnivec.testing import jina_v3_config_dict, make_random_jina_v3

    root = Path(os.environ.get("OMNIVEC_BENCH_CACHE", "~/.cache/omnivec-bench")).expanduser()
    folder = root / f"random-jina-v3-{size}"
    if not (folder / "config.json").is_file():
        print(f"writing a random jina-v3 checkpoint ({size}) to {folder} ...", flush=True)
        # std 0.02 as a trained model's init, so activations stay in a realistic range
        make_random_jina_v3(folder, jina_v3_config_dict(**V3_SIZES[size]), weight_std=0.02, lora_std=0.02)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backend", choices=["onnx", "torch"], default=None,
                    help="omnivec backend (default: the model's choice, onnx on the CPU)")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers batch size")
    ap.add_argument("--fastembed-python", default=None,
                    help="python of a venv with fastembed (default: this one, when it can import fastembed)")
    ap.add_argument("--fastembed-batch-sizes", default="16,32,64,256",
                    help="fastembed batch sizes swept (every 4th passage); the best joins the rounds")
    ap.add_argument("--model", default=None, help="another model directory to time beside the default")
    ap.add_argument("--model-task", default="retrieval.passage", help="task the --model runs")
    ap.add_argument("--random-v3", choices=["e5-small", "full"], default=None,
                    help="time a random jina-v3 checkpoint of this size (built once) as --model")
    ap.add_argument("--skip-peers", action="store_true",
                    help="skip sentence-transformers' rounds and fastembed (time omnivec's models only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.random_v3:
        args.model = str(random_v3_dir(args.random_v3))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    import omnivec
    from omnivec.data.stdlib import stdlib_passages
    from omnivec.models.registry import resolve_model_path
    from sentence_transformers import SentenceTransformer, models

    passages = stdlib_passages(args.n)
    path = str(resolve_model_path(None))
    ours = omnivec.load(device="cpu", backend=args.backend)
    ours_q = omnivec.load(device="cpu", precision="int8", backend=args.backend)
    from omnivec.cpu_features import detect
    features = detect()
    # bf16 only where the CPU multiplies it natively (elsewhere omnivec refuses it: emulated)
    ours_bf16 = omnivec.load(device="cpu", precision="bf16") if features.bf16 else None
    if not args.skip_peers:
        word = models.Transformer(path, max_seq_length=512)
        st = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean"),
                                          models.Normalize()], device="cpu")
    prefixed = ["passage: " + p for p in passages]
    other = omnivec.load(args.model, device="cpu") if args.model else None
    other_name = f"omnivec:{Path(args.model).name}" if args.model else None

    def run_ours():
        return ours.encode(passages, task="retrieval.passage", progress=False)

    def run_ours_q():
        return ours_q.encode(passages, task="retrieval.passage", progress=False)

    def run_st():
        return st.encode(prefixed, batch_size=args.st_batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)

    runners = {"omnivec": run_ours, "sentence-transformers": run_st, "omnivec-int8": run_ours_q}
    if ours_bf16 is not None:
        ours_bf16.encode(passages[:64], task="retrieval.passage")
        runners["omnivec-bf16"] = lambda: ours_bf16.encode(passages, task="retrieval.passage", progress=False)
    if args.skip_peers:
        del runners["sentence-transformers"]
    # warm-up (allocator, thread pools, lazy init)
    ours.encode(passages[:64], task="retrieval.passage")
    ours_q.encode(passages[:64], task="retrieval.passage")
    if not args.skip_peers:
        st.encode(prefixed[:64], batch_size=args.st_batch_size)
    if other is not None:
        other.encode(passages[:64], task=args.model_task)
        runners[other_name] = lambda: other.encode(passages, task=args.model_task, progress=False)

    fe, fe_note = (None, "fastembed skipped (--skip-peers)") if args.skip_peers else start_fastembed(args, prefixed)
    fe_sweep: dict[int, float] = {}
    fe_name = None
    if fe is not None:
        sweep = [int(b) for b in args.fastembed_batch_sizes.split(",") if b]
        for b in sweep:        # every 4th passage: the same length mix as the whole set
            seconds, vecs = fe.encode(b, step=4)
            fe_sweep[b] = len(vecs) / seconds
        best = max(fe_sweep, key=fe_sweep.get)
        fe_name = f"fastembed-b{best}"
        fe_times: list[float] = []

        def run_fe():
            seconds, vecs = fe.encode(best)
            fe_times.append(seconds)    # the worker's own clock: no IPC in it
            return vecs

        runners[fe_name] = run_fe

    times: dict[str, list[float]] = {k: [] for k in runners}
    vectors: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            start = time.perf_counter()
            vectors[name] = np.asarray(runners[name]())
            times[name].append(time.perf_counter() - start)
    if fe is not None:
        times[fe_name] = fe_times
        fe.close()

    rate = {k: len(passages) / statistics.median(v) for k, v in times.items()}
    cos = lambda a, b: float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {args.threads}; CPU: {features.summary()}")
    print(f"passages: {len(passages)} stdlib docstrings, median {statistics.median(len(p) for p in passages)} chars; "
          f"rounds: {args.rounds} (A/B alternated, median)")
    print(f"omnivec backend: {ours.info()['backend']}, int8 path: {ours_q.info()['backend']} "
          f"{ours_q.info()['quantization']}; load average: {os.getloadavg()[0]:.2f}")
    for name in runners:
        print(f"  {name:24s} {rate[name]:8.1f} passages/s   (runs: {', '.join(f'{t:.1f}s' for t in times[name])})")
    for name in ("omnivec-int8", "omnivec-bf16"):
        if name in rate:
            print(f"ratio {name} / omnivec (fp32): {rate[name] / rate['omnivec']:.2f}x  "
                  f"min cos {cos(vectors[name], vectors['omnivec']):.6f}")
    if ours_bf16 is None:
        print(f"note: bf16 skipped: this CPU ({features.summary()}) has no native bf16")
    if other is not None:
        info = other.info()
        print(f"ratio {other_name} ({info['family']}, {info.get('backend', 'torch')}, task {args.model_task}) / "
              f"omnivec ({ours.info()['family']}): {rate[other_name] / rate['omnivec']:.2f}x")
    if not args.skip_peers:
        base = rate["sentence-transformers"]
        print(f"ratio omnivec / sentence-transformers:      {rate['omnivec'] / base:.2f}x  "
              f"min cos {cos(vectors['omnivec'], vectors['sentence-transformers']):.6f}")
        print(f"ratio omnivec-int8 / sentence-transformers: {rate['omnivec-int8'] / base:.2f}x  "
              f"min cos {cos(vectors['omnivec-int8'], vectors['sentence-transformers']):.6f}")
    if fe is None:
        print(f"note: {fe_note}")
    else:
        print(f"fastembed {fe.versions['fastembed']} (onnxruntime {fe.versions['onnxruntime']}), {fe_note}")
        print("  fastembed batch sweep (every 4th passage, one pass each): "
              + ", ".join(f"b{b} {r:.1f}/s" for b, r in fe_sweep.items()))
        print(f"ratio omnivec / {fe_name}:{' ' * max(1, 22 - len(fe_name))}{rate['omnivec'] / rate[fe_name]:.2f}x  "
              f"min cos {cos(vectors['omnivec'], vectors[fe_name]):.6f}")
        print(f"ratio omnivec-int8 / {fe_name}:{' ' * max(1, 17 - len(fe_name))}{rate['omnivec-int8'] / rate[fe_name]:.2f}x  "
              f"min cos {cos(vectors['omnivec-int8'], vectors[fe_name]):.6f}")
        print(f"min cos {fe_name} / sentence-transformers: {cos(vectors[fe_name], vectors['sentence-transformers']):.6f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
