"""Command line: ``omnivec embed`` and ``omnivec info`` (more commands join as they land)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="omnivec: universal embeddings (text, images, PDF pages, code).",
                  no_args_is_help=True, add_completion=False)
err = Console(stderr=True)


def _load(model: Optional[str], device: Optional[str], quantize: bool = False):
    import omnivec
    kwargs = {"quantize": True} if quantize else {}
    start = time.perf_counter()
    with err.status(f"loading {model or omnivec.DEFAULT_MODEL} ..."):
        m = omnivec.load(model, device=device, **kwargs)
    err.print(f"[dim]loaded {m.info()['model']} on {m.info()['device']} in {time.perf_counter() - start:.1f}s[/dim]")
    return m


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(code=2)


@app.command()
def embed(
    texts: List[str] = typer.Argument(None, help="Texts to embed."),
    file: List[Path] = typer.Option([], "--file", "-f", help="Text file: one input per line ('-' = stdin)."),
    image: List[str] = typer.Option([], "--image", help="Image path or URL (repeatable)."),
    pdf: List[Path] = typer.Option([], "--pdf", help="PDF file: one vector per page (repeatable)."),
    task: str = typer.Option("text-matching", "--task", "-t",
                             help="retrieval.query | retrieval.passage | text-matching | code.query | code.passage"),
    dimensions: Optional[int] = typer.Option(None, "--dimensions", "-d", help="Matryoshka size of dense vectors."),
    multivector: bool = typer.Option(False, "--multivector", help="Per-token multi-vectors instead of dense."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory (default: embedded)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: GPU if present)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write x.npy (dense), x.npz (multi) or x.jsonl."),
) -> None:
    """Embed texts, images and PDF pages; print a summary or write the vectors."""
    import omnivec
    inputs: list = list(texts or [])
    for f in file:
        lines = (sys.stdin.read() if str(f) == "-" else _read_text(f)).splitlines()
        inputs.extend(line for line in lines if line.strip())
    inputs.extend(omnivec.Image(i) for i in image)
    inputs.extend(omnivec.PDF(p) for p in pdf)
    if not inputs:
        _fail("nothing to embed: give texts, --file, --image or --pdf")
    m = _load(model, device)
    start = time.perf_counter()
    try:
        result = m.embed(inputs, task, dimensions=dimensions, dense=not multivector,
                         multivector=multivector, progress=len(inputs) > 64)
    except ValueError as e:
        _fail(str(e))
    took = time.perf_counter() - start
    labels = [_label(inputs[o]) for o in result.origins]
    vectors = result.multivector if multivector else list(result.dense)
    if out is not None:
        _write(out, vectors, labels, multivector)
        err.print(f"wrote {len(vectors)} {'multi-vectors' if multivector else 'vectors'} to {out}")
    else:
        table = Table("#", "input", "tokens", "shape", "first values")
        for i, (label, vec, tok) in enumerate(zip(labels, vectors, result.tokens)):
            flat = np.asarray(vec).reshape(-1)
            table.add_row(str(i), label[:50], str(tok), str(tuple(np.shape(vec))),
                          " ".join(f"{x:+.4f}" for x in flat[:4]) + " ...")
        Console().print(table)
    err.print(f"[dim]{len(vectors)} items, {sum(result.tokens)} tokens in {took:.2f}s[/dim]")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        _fail(f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        _fail(f"{path} is not UTF-8 text")
    return ""


def _label(item) -> str:
    return item if isinstance(item, str) else repr(item)


def _write(out: Path, vectors: list, labels: list[str], multivector: bool) -> None:
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        with out.open("w", encoding="utf-8") as fh:
            for i, (label, vec) in enumerate(zip(labels, vectors)):
                key = "embeddings" if multivector else "embedding"
                fh.write(json.dumps({"index": i, "input": label, key: np.asarray(vec).tolist()}) + "\n")
    elif suffix == ".npy" and not multivector:
        np.save(out, np.stack(vectors))
    elif suffix == ".npz":
        np.savez(out, *[np.asarray(v) for v in vectors])
    else:
        _fail(f"--out must end in .jsonl, .npz{'' if multivector else ' or .npy'} (got {out.name})")


@app.command()
def info(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the model, device, dimensions, tasks and adapters."""
    import omnivec
    from omnivec.tasks import API_TASKS
    m = _load(model, device)
    data = m.info()
    data["tasks"] = list(API_TASKS)
    data["omnivec"] = omnivec.__version__
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False)
    for key, value in data.items():
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    Console().print(table)
    if not m.model.supports_images:
        Console().print("[yellow]note:[/yellow] this model reads text only; images and PDF pages are "
                        "converted to text by OCR (rapidocr) and embedded as text.")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
