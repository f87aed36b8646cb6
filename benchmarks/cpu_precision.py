"""Where the CPU's quantised paths stand: the hardware ceiling and every int8 recipe tried.

Part 1, the ceiling: one e5-small-sized matmul (1024 x 384 x 1536) in ONNX Runtime as fp32
``MatMul``, int8 ``MatMulInteger`` (u8 x s8 and u8 x u8), and torch fp32 vs bf16, each
best-of-repeats on the same threads. This says what any int8 or bf16 graph can gain on this
CPU before a single model runs (AVX2 without VNNI: int8 about fp32's rate; VNNI: ~4x).

Part 2, the recipes: the default model's fp32 ONNX graph (``omnivec.load()``'s, built by
``omnivec prepare``) quantised several ways, each timed on the same passages (stdlib
docstrings, "passage: " prefix, length-sorted batches of 16, as the library batches),
rounds alternated A/B, and compared with fp32 by the min cosine of the mean-pooled vectors:

- ``dyn7-downfp32``: what ``precision="int8"`` ships (dynamic, per-channel 7-bit weights,
  FFN down-projections fp32); ``dyn7-all``, ``dyn8-*``: the same with those choices undone;
- ``static7-*``: static QDQ, activations calibrated on other stdlib docstrings (a training
  split, never evaluation data);
- ``nbits8-b32``, ``nbits4-b32``: ORT ``MatMulNBits`` weights (block 32, int8 compute,
  ``accuracy_level=4``; needs the ``onnx-ir`` package), with and without ``QAttention``.

Every graph goes to a temporary folder. No timed assertions::

    python benchmarks/cpu_precision.py [--n 400] [--rounds 3] [--threads 2] [--recipes a,b] [--skip-gemm]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def session(model_or_file, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model_or_file if isinstance(model_or_file, (str, Path)) else model_or_file.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, opts, providers=["CPUExecutionProvider"])


def best_seconds(fn: Callable[[], object], repeats: int = 5, inner: int = 10) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def gemm_ceiling(threads: int) -> None:
    import torch
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 1024, 384, 1536
    flops = 2 * m * k * n
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)

    def graph(op: str, x_type: int, weight: np.ndarray, out_type: int):
        g = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", x_type, [m, k])],
                              [helper.make_tensor_value_info("y", out_type, None)],
                              [numpy_helper.from_array(weight, "w")])
        return session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), threads)

    fp32 = graph("MatMul", TensorProto.FLOAT, w, TensorProto.FLOAT)
    t_fp32 = best_seconds(lambda: fp32.run(None, {"x": x}))
    print(f"gemm {m}x{k}x{n}, {threads} threads:")
    print(f"  ORT fp32 MatMul          {flops / t_fp32 / 1e9:7.1f} GFLOP/s   1.00x")
    xq = rng.integers(0, 255, (m, k)).astype(np.uint8)
    for name, weight in (("u8 x s8", rng.integers(-64, 64, (k, n)).astype(np.int8)),
                         ("u8 x u8", rng.integers(0, 255, (k, n)).astype(np.uint8))):
        s = graph("MatMulInteger", TensorProto.UINT8, weight, TensorProto.INT32)
        t = best_seconds(lambda: s.run(None, {"x": xq}))
        print(f"  ORT int8 MatMulInteger {name} {flops / t / 1e9:7.1f} GOP/s     {t_fp32 / t:.2f}x")
    torch.set_num_threads(threads)
    a, b = torch.from_numpy(x), torch.from_numpy(w)
    t_torch = best_seconds(lambda: a @ b)
    ab, bb = a.bfloat16(), b.bfloat16()
    t_bf16 = best_seconds(lambda: ab @ bb, repeats=2, inner=2)
    print(f"  torch fp32 matmul        {flops / t_torch / 1e9:7.1f} GFLOP/s   1.00x")
    print(f"  torch bf16 matmul        {flops / t_bf16 / 1e9:7.1f} GFLOP/s   {t_torch / t_bf16:.2f}x")


def recipes(args, fp32_file: Path, model_dir: Path) -> None:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    from omnivec.data.stdlib import stdlib_passages
    from omnivec.models.encoder import load_tokenizer, pad_ids
    from omnivec.models.encoder_onnx import ffn_down_projections    # the shipped exclusion list

    tokenizer = load_tokenizer(model_dir)
    passages = stdlib_passages(max(args.n, 1000) + 200)
    measured = ["passage: " + p for p in passages[:args.n]]
    calibration = ["passage: " + p for p in passages[-128:]]     # disjoint from the measured ones

    def batches(texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        rows = sorted((e.ids[:512] for e in tokenizer.encode_batch(texts)), key=len)
        return [pad_ids(rows[i:i + 16], 1) for i in range(0, len(rows), 16)]

    timed, calib = batches(measured), batches(calibration)
    graph = onnx.load(str(fp32_file), load_external_data=False)
    with_types = any(i.name == "token_type_ids" for i in graph.graph.input)
    down = ffn_down_projections(graph)
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    out = Path(tempfile.mkdtemp(prefix="cpu-precision-"))

    def feeds(ids, mask):
        return {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": np.zeros_like(ids)} if with_types else {})}

    def dynamic(name, reduce_range, exclude, ops=None):
        f = out / f"{name}.onnx"
        quantize_dynamic(str(fp32_file), str(f), per_channel=True, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude, op_types_to_quantize=ops,
                         extra_options=extra, use_external_data_format=True)
        return f

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([feeds(i, m) for i, m in calib])

        def get_next(self):
            return next(self.items, None)

    def static(name, exclude):
        f = out / f"{name}.onnx"
        quantize_static(str(fp32_file), str(f), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude, extra_options=extra,
                        use_external_data_format=True)
        return f

    def nbits(name, bits, base=None):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        f = out / f"{name}.onnx"
        q = MatMulNBitsQuantizer(onnx.load(str(base or fp32_file)), bits=bits, block_size=32, is_symmetric=True,
                                 accuracy_level=4)
        q.process()
        q.model.save_model_to_file(str(f), use_external_data_format=True)
        return f

    makers = {"fp32": lambda: fp32_file,
              "dyn7-downfp32": lambda: dynamic("dyn7-downfp32", True, down),
              "dyn7-all": lambda: dynamic("dyn7-all", True, []),
              "dyn8-downfp32": lambda: dynamic("dyn8-downfp32", False, down),
              "dyn8-all": lambda: dynamic("dyn8-all", False, []),
              "static7-downfp32": lambda: static("static7-downfp32", down),
              "static7-all": lambda: static("static7-all", []),
              "nbits8-b32": lambda: nbits("nbits8-b32", 8),
              "qattn+nbits8-b32": lambda: nbits("qattn+nbits8-b32", 8, dynamic("qattn", True, [], ["Attention"])),
              "nbits4-b32": lambda: nbits("nbits4-b32", 4)}
    wanted = ["fp32"] + [r for r in (args.recipes.split(",") if args.recipes else makers) if r != "fp32"]
    sessions = {}
    for name in wanted:
        try:
            sessions[name] = session(makers[name](), args.threads)
        except Exception as e:  # noqa: BLE001 - a recipe this ORT cannot build is reported, the rest run
            print(f"  {name}: not built ({type(e).__name__}: {str(e)[:120]})")

    def run(s) -> np.ndarray:
        vecs = []
        for ids, mask in timed:
            hidden = s.run(None, feeds(ids, mask))[0]
            v = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return np.concatenate(vecs)

    for s in sessions.values():
        s.run(None, feeds(*timed[0]))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    vectors = {}
    for r in range(args.rounds):
        for name in (list(sessions) if r % 2 == 0 else list(reversed(sessions))):
            start = time.perf_counter()
            vectors[name] = run(sessions[name])
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fp32"])
    print(f"recipes on {len(measured)} passages ({sum(int(m.sum()) for _, m in timed)} tokens), "
          f"{args.rounds} rounds alternated, median; load average {os.getloadavg()[0]:.2f}")
    for name in sessions:
        t = statistics.median(times[name])
        c = (vectors[name] * vectors["fp32"]).sum(1)
        print(f"  {name:18s} {len(measured) / t:7.1f} passages/s  {base / t:5.2f}x  "
              f"min cos {c.min():.5f}  mean {c.mean():.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--recipes", default=None, help="comma-separated recipe names (default: all)")
    ap.add_argument("--skip-gemm", action="store_true")
    args = ap.parse_args()

    from omnivec.cpu_features import detect
    from omnivec.models.encoder_onnx import onnx_file
    from omnivec.models.registry import resolve_model_path

    print(f"CPU: {detect().summary()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    if not args.skip_gemm:
        gemm_ceiling(args.threads)
    model_dir = resolve_model_path(None)
    fp32_file = onnx_file(model_dir)
    if not fp32_file.is_file():
        raise SystemExit(f"{fp32_file} is missing: run `omnivec prepare` first")
    recipes(args, fp32_file, model_dir)


if __name__ == "__main__":
    main()
