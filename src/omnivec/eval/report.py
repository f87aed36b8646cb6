"""Writes an evaluation's ``results.json``, ``report.md`` and PNG plots.

Why a fixed layout: the numbers in docs/EVAL.md are pasted from these files, and a second run
must be comparable line by line (timings are kept apart from the scores).
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

REPORT_METRICS = ("nDCG@5", "nDCG@10", "R@1", "R@10", "MRR@10", "MAP@10")


def machine() -> dict[str, Any]:
    """Where the numbers came from (CPU count, torch threads, accelerator)."""
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarize(datasets: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Macro average over datasets of every metric, for systems present in all of them."""
    systems = [s for s in datasets[0]["systems"] if all(s in d["systems"] for d in datasets)] if datasets else []
    out: dict[str, dict[str, float]] = {}
    for s in systems:
        metrics = datasets[0]["systems"][s]
        out[s] = {m: sum(d["systems"][s][m] for d in datasets) / len(datasets) for m in metrics}
    return out


def _fmt(x: float) -> str:
    return f"{100 * x:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The human report: context, the macro summary, then one row per dataset."""
    headline = results["headline"]
    metrics = [m for m in REPORT_METRICS if m in next(iter(results["summary"].values()), {})]
    model = results["model"]
    lines = [f"# omnivec eval: {results['suite']}", "",
             f"- model: `{model.get('model')}` ({model.get('family', '?')}, {model.get('dim')}-d, "
             f"device {model.get('device')}){'; images read by OCR then embedded as text' if results.get('ocr_model') else ''}",
             f"- task adapters: {', '.join(model.get('adapters') or []) or 'none (bare backbone)'}"
             + (f" from `{model['adapter_dir']}`" if model.get("adapter_dir") else ""),
             f"- suite size: {len(results['datasets'])} dataset(s), {results['n_queries']} queries, "
             f"{results['n_docs']} documents", f"- headline metric: {headline} (scores x100)",
             f"- time: {results['time_s']:.1f} s", f"- machine: {results['machine']['cpu']}, "
             f"{results['machine']['cpus']} CPUs, torch {results['machine']['torch']} "
             f"({results['machine']['torch_threads']} threads)"
             + (f", GPU {results['machine']['gpu']}" if "gpu" in results["machine"] else ""),
             f"- command: `{results['command']}`"]
    lines += [f"- {n}" for n in results.get("notes", [])]
    lines += ["", "## Summary (macro average over datasets)", "",
              "| system | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for system, row in results["summary"].items():
        lines.append(f"| {system} | " + " | ".join(_fmt(row[m]) for m in metrics) + " |")
    systems = list(results["summary"])
    lines += ["", f"## Per dataset ({headline})", "",
              "| dataset | queries | docs | " + " | ".join(systems) + " |", "|---" * (len(systems) + 3) + "|"]
    for d in results["datasets"]:
        lines.append(f"| {d['name']} | {d['n_queries']} | {d['n_docs']} | "
                     + " | ".join(_fmt(d["systems"][s][headline]) for s in systems) + " |")
    modes = sorted({d.get("multivector_mode") for d in results["datasets"] if d.get("multivector_mode")})
    if modes:
        lines += ["", f"Multi-vector ranking: MaxSim, {', '.join(modes)}."]
    lines += ["", "Plots: `dimensions.png` (headline vs Matryoshka size), `systems.png` (per dataset)."]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Headline score vs dimension, and every system per dataset (dense vs multi-vector)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    headline, summary = results["headline"], results["summary"]
    written = []
    dims = sorted((int(s.rsplit("@", 1)[1]), s) for s in summary
                  if "@" in s and s.split("@")[0] in ("dense", "image→model"))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if dims:
        ax.plot([d for d, _ in dims], [100 * summary[s][headline] for _, s in dims], "o-", label="dense (Matryoshka)")
    for i, s in enumerate(s for s in summary if s not in dict((v, k) for k, v in dims)):
        ax.axhline(100 * summary[s][headline], ls="--", color=f"C{i + 1}", label=s)
    ax.set_xlabel("dimensions")
    ax.set_ylabel(f"{headline} x100")
    ax.set_title(f"{results['suite']}: {headline} vs dimension")
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "dimensions.png"))
    names = [d["name"] for d in results["datasets"]]
    systems = list(summary)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) * max(1, len(systems)) / 2), 4), dpi=100)
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        ax.bar([j + i * width for j in range(len(names))],
               [100 * d["systems"][s][headline] for d in results["datasets"]], width, label=s)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{headline} x100")
    ax.set_title(f"{results['suite']}: dense vs multi-vector vs baselines")
    ax.legend(fontsize=7)
    written.append(_save(fig, out / "systems.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write without a timestamped Software tag (byte-stable PNGs), close."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """results.json + report.md + plots under ``out``; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "report.md").write_text(markdown(results), encoding="utf-8")
    return [out / "results.json", out / "report.md"] + plots(results, out)
