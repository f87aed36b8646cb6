"""Padding-free ("packed") rows on the CPU ONNX graph vs the padded batches omnivec runs.

The experiment behind the server's 4 x 8 ceiling (benchmarks/RESULTS.md): several sequences
share one row of the fused graph, each with its own position ids and a block-diagonal 3-D
attention mask (ORT's ``EmbedLayerNormalization`` takes ``position_ids``; its ``Attention``
takes a (rows, width, width) mask), so the pad tokens between short texts disappear and
fewer, fuller calls are made. The script builds that graph from the default model's cached
float graph in a temporary folder, checks that packed rows give the padded graph's states
(max |diff|), then times ``encode``-sized groups of the server benchmark's texts: the padded
overhead-aware plan (what omnivec runs) against packed rows of a few widths. Texts/s, medians
over alternating rounds; no timed assertions.

    python benchmarks/onnx_packed_rows.py [--sizes 512,32] [--seconds 4] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_load import corpus  # noqa: E402


def packed_graph(src: Path, out: Path) -> None:
    """``src`` with two more inputs: ``position_ids`` (rows, width) and ``attention_mask_3d``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    emb = next(n for n in graph.node if n.op_type == "EmbedLayerNormalization")
    graph.input.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["rows", "width"]))
    graph.input.append(helper.make_tensor_value_info("attention_mask_3d", TensorProto.INT32,
                                                     ["rows", "width", "width"]))
    graph.node.insert(0, helper.make_node("Cast", ["position_ids"], ["position_ids_int32"], to=TensorProto.INT32))
    while len(emb.input) < 9:
        emb.input.append("")
    emb.input[8] = "position_ids_int32"
    for node in graph.node:
        if node.op_type == "Attention":
            node.input[3] = "attention_mask_3d"
    onnx.save(model, str(out))


def session(file: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")   # as omnivec's backbone
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])


def run_padded(sess, batch: list[list[int]]) -> np.ndarray:
    from omnivec.models.encoder import pad_ids

    ids, mask = pad_ids(batch, 0)
    return sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]


def pack(batch: list[list[int]], min_width: int) -> tuple[int, list[list[int]]]:
    """First-fit decreasing of sequence indices into rows of ``max(min_width, longest)`` tokens."""
    width = max(min_width, max(len(s) for s in batch))
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(batch)), key=lambda i: -len(batch[i])):
        for r, used in enumerate(fill):
            if used + len(batch[i]) <= width:
                rows[r].append(i)
                fill[r] += len(batch[i])
                break
        else:
            rows.append([i])
            fill.append(len(batch[i]))
    return max(fill), rows


def run_packed(sess, batch: list[list[int]], min_width: int) -> list[np.ndarray]:
    width, rows = pack(batch, min_width)
    shape = (len(rows), width)
    ids, pos, mask = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    mask3 = np.zeros(shape + (width,), np.int32)
    spans = {}
    for r, members in enumerate(rows):
        o = 0
        for i in members:
            n = len(batch[i])
            ids[r, o:o + n], pos[r, o:o + n], mask[r, o:o + n] = batch[i], np.arange(n), 1
            mask3[r, o:o + n, o:o + n] = 1
            spans[i] = (r, o, n)
            o += n
        mask3[r, o:, o:] = 1          # pad tokens see each other: no all-masked softmax rows
    hidden = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
                             "position_ids": pos, "attention_mask_3d": mask3})[0]
    return [hidden[r, o:o + n] for r, o, n in (spans[i] for i in range(len(batch)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,32", help="texts per encode-sized group")
    ap.add_argument("--seconds", type=float, default=4.0, help="per setup, size and round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import omnivec
    from omnivec.batching import plan_batches
    from omnivec.models.base import PrepareOptions
    from omnivec.tasks import resolve_task

    model = omnivec.load().model
    src = Path(model.backbone.file)
    task = resolve_task("retrieval.query")     # the bare graph's rows ("query: " prompt)
    seqs = [model.prepare(t, task, PrepareOptions()).input_ids for t in corpus(2048)]
    with tempfile.TemporaryDirectory() as tmp:
        packed_file = Path(tmp) / "packed.onnx"
        packed_graph(src, packed_file)
        padded, packed = session(src), session(packed_file)
        probe = seqs[:24]
        ref = [run_padded(padded, [s])[0] for s in probe]
        got = run_packed(packed, probe, 128)
        max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))

        def padded_plan(group):
            for b in plan_batches([len(s) for s in group], max_tokens=model.batch_tokens,
                                  max_rows=model.max_batch_rows, overhead_tokens=model.batch_overhead_tokens):
                run_padded(padded, [group[i] for i in b])

        def packed_plan(width: int, budget: int):
            def run(group):
                for b in plan_batches([len(s) for s in group], max_tokens=budget, max_rows=10**6, padded=False):
                    run_packed(packed, [group[i] for i in b], width)
            return run

        setups = {"padded plan (omnivec)": padded_plan}
        for width in (0, 128):
            for budget in (1024, 2048):
                setups[f"packed rows >= {width or 'longest'} tokens, {budget} per call"] = packed_plan(width, budget)
        rng = np.random.default_rng(0)
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for size in (int(s) for s in args.sizes.split(",")):
                for name, fn in setups.items():
                    n, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < args.seconds:
                        start = int(rng.integers(0, len(seqs) - size))
                        fn(seqs[start:start + size])
                        n += size
                    rates.setdefault(f"{name} x{size}", []).append(n / (time.perf_counter() - t0))
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "model": model.name,
        "packed_vs_padded_max_abs_diff": max_diff,
        "mean_tokens": round(float(np.mean([len(s) for s in seqs])), 1),
        "texts_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
