"""Copy an `omnivec train` output folder into the package as the default model's shipped adapters.

Usage: python scripts/ship_adapters.py TRAINED_DIR [--dest src/omnivec/assets/adapters/multilingual-e5-small]
LoRA and projector weights are stored as float16 (half the bytes; LoRA deltas are small, the
vectors move by < 1e-3 cosine), checkpoints are left out, the training record is kept.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

FILES = ("adapter_model.safetensors", "multivector_projector.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trained", type=Path)
    ap.add_argument("--dest", type=Path,
                    default=Path(__file__).resolve().parent.parent / "src/omnivec/assets/adapters/multilingual-e5-small")
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src = args.trained / name
        if src.is_file():
            state = {k: v.half().contiguous() for k, v in load_file(str(src)).items()}
            save_file(state, str(args.dest / name), metadata={"format": "pt"})
    shutil.copy(args.trained / "adapter_config.json", args.dest / "adapter_config.json")
    meta = json.loads((args.trained / "omnivec-adapters.json").read_text())
    for task in meta.get("tasks", {}).values():
        task.pop("history", None)      # per-step curves stay in docs/TRAINING.md, not in the package
    meta.get("projector", {}).pop("history", None)
    (args.dest / "omnivec-adapters.json").write_text(json.dumps(meta, indent=2))
    total = sum(f.stat().st_size for f in args.dest.iterdir())
    print(f"shipped {sorted(p.name for p in args.dest.iterdir())} to {args.dest} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
