"""Cross-lingual R@1 of `omnivec eval django-xlang*` runs, split into trained and held-out languages.

Usage: python scripts/xlang_r1.py BASE/results.json [TRAINED/results.json ...]
Trained languages are those the shipped text-matching adapter saw (omnivec.train.data); the
others in the suite were never used in training.
"""
from __future__ import annotations

import json
import sys

from omnivec.train.data import DJANGO_TRAIN_LANGUAGES


def summary(path: str) -> dict[str, dict[str, float]]:
    res = json.loads(open(path, encoding="utf-8").read())
    groups: dict[str, dict[str, list[float]]] = {}
    per_lang: dict[str, dict[str, list[float]]] = {}
    for ds in res["datasets"]:
        src, tgt = ds["name"].split("→")
        lang = tgt if src == "en" else src
        group = "trained" if lang in DJANGO_TRAIN_LANGUAGES else "held-out"
        for system, metrics in ds["systems"].items():
            if system.startswith("dense@") or system == "multivector":
                groups.setdefault(f"{group} {system}", {}).setdefault("R@1", []).append(metrics["R@1"])
                per_lang.setdefault(f"{lang} {system}", {}).setdefault("R@1", []).append(metrics["R@1"])
    out = {k: {"R@1": 100 * sum(v["R@1"]) / len(v["R@1"])} for k, v in groups.items()}
    out.update({k: {"R@1": 100 * sum(v["R@1"]) / len(v["R@1"])} for k, v in sorted(per_lang.items())})
    return out


def main() -> None:
    runs = [summary(p) for p in sys.argv[1:]]
    keys = list(runs[0])
    print("| group / language, system | " + " | ".join(sys.argv[1:]) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r.get(k, {}).get('R@1', float('nan')):.2f}" for r in runs) + " |")


if __name__ == "__main__":
    main()
