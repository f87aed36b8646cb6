"""Child-process entry point: ``python -m omnivec.models.onnx_build MODEL_DIR [--quantize]
[--adapters DIR --task NAME]`` builds one cached ONNX graph and exits (with the builder the
model's family declares in the registry).

Run by :func:`omnivec.models.encoder_onnx.build_in_child`, so the exporter's memory (several
copies of the weights) leaves with this process instead of staying with a server or a
user's program.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .registry import detect_family, family


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnivec.models.onnx_build")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--quantize", action="store_true", help="also build the int8 graph")
    parser.add_argument("--adapters", type=Path, help="task-adapter folder (with --task)")
    parser.add_argument("--task", help="the task whose adapter is merged into the weights")
    args = parser.parse_args(argv)
    if (args.task is None) != (args.adapters is None):
        parser.error("--task and --adapters go together")
    build_graph = family(detect_family(args.model_dir)).graph_builder()
    print(build_graph(args.model_dir, quantize=args.quantize, adapter_dir=args.adapters, task=args.task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
