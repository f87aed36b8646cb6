"""Command line: ``omnivec embed``, ``info``, ``serve``, ``eval``, ``index`` and ``search``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from omnivec.inputs.pdf import PDF_TEXT_MODES

app = typer.Typer(help="omnivec: universal embeddings (text, images, PDF pages, code).",
                  no_args_is_help=True, add_completion=False)
err = Console(stderr=True)


ADAPTERS_HELP = "Task adapters: a folder, 'none' for the bare backbone (default: those shipped for the model)."


PRECISION_HELP = ("Compute precision: fp32 (the default on the CPU), int8 (ONNX Runtime int8, encoders on the "
                  "CPU), bf16 (CPUs with native bf16, or GPUs). `omnivec info --precision P` says why.")
QUANTIZE_HELP = "Same as --precision int8 (the older spelling)."


def _precision(model: Optional[str], device: Optional[str], precision: Optional[str],
               quantize: bool = False) -> Optional[str]:
    """``--precision`` / ``--quantize`` checked up front (not after a server start): the precision
    to load with, or None for the model's default."""
    from omnivec.models.registry import detect_family, family, precision_plan, resolve_model_path
    from omnivec.precision import PrecisionError
    if precision is None and not quantize:
        return None
    try:
        entry = family(detect_family(resolve_model_path(model)))
        precision_plan(entry, device, None, precision, quantize)
    except PrecisionError as e:
        _fail(f"{'--quantize' if quantize and precision is None else '--precision'}: {e}")
    except (ValueError, RuntimeError) as e:     # RuntimeError: torch's word for a bad --device
        _fail(str(e))
    return "int8" if quantize else precision


def _load(model: Optional[str], device: Optional[str], precision: Optional[str] = None,
          adapters: Optional[str] = None, projector: bool = True):
    import omnivec
    kwargs: dict = {"precision": precision} if precision else {}
    if adapters is not None:
        kwargs["adapters"] = None if adapters.lower() == "none" else adapters
    if not projector:
        kwargs["projector"] = False
    start = time.perf_counter()
    with err.status(f"loading {model or omnivec.DEFAULT_MODEL} ..."):
        m = omnivec.load(model, device=device, **kwargs)
    err.print(f"[dim]loaded {m.info()['model']} on {m.info()['device']} in {time.perf_counter() - start:.1f}s[/dim]")
    return m


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(code=2)


def _check_raw_multivectors(model: Optional[str]) -> None:
    """Exit 2 unless the model's family can skip its multi-vector projector (``projector=False``)."""
    from omnivec.models.registry import detect_family, family, resolve_model_path
    try:
        entry = family(detect_family(resolve_model_path(model)))
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if not entry.raw_multivectors:
        _fail(f"--raw-multivectors: {entry.name} models have no raw token-state multi-vectors "
              "(their multi-vectors always go through the checkpoint's own projector); drop the flag")


@app.command()
def embed(
    texts: List[str] = typer.Argument(None, help="Texts to embed."),
    file: List[Path] = typer.Option([], "--file", "-f", help="Text file: one input per line ('-' = stdin)."),
    image: List[str] = typer.Option([], "--image", help="Image path or URL (repeatable)."),
    pdf: List[Path] = typer.Option([], "--pdf", help="PDF file: one vector per page (repeatable)."),
    pdf_text: str = typer.Option("auto", "--pdf-text",
                                 help="Text-only models: a PDF page's text layer where it holds enough text, else "
                                      "OCR (auto), always the layer (layer), or always OCR (ocr)."),
    task: str = typer.Option("text-matching", "--task", "-t",
                             help="retrieval.query | retrieval.passage | text-matching | code.query | code.passage"),
    dimensions: Optional[int] = typer.Option(None, "--dimensions", "-d", help="Matryoshka size of dense vectors."),
    multivector: bool = typer.Option(False, "--multivector", help="Per-token multi-vectors instead of dense."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory (default: embedded)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: GPU if present)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write x.npy (dense), x.npz (multi) or x.jsonl."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
) -> None:
    """Embed texts, images and PDF pages; print a summary or write the vectors."""
    import omnivec
    precision = _precision(model, device, precision)
    inputs: list = list(texts or [])
    for f in file:
        lines = (sys.stdin.read() if str(f) == "-" else _read_text(f)).splitlines()
        inputs.extend(line for line in lines if line.strip())
    inputs.extend(omnivec.Image(i) for i in image)
    if pdf_text not in PDF_TEXT_MODES:
        _fail(f"--pdf-text must be one of {', '.join(PDF_TEXT_MODES)}, got {pdf_text!r}")
    inputs.extend(omnivec.PDF(p, text=pdf_text) for p in pdf)
    if not inputs:
        _fail("nothing to embed: give texts, --file, --image or --pdf")
    try:
        m = _load(model, device, precision, adapters=adapters)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
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
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the model, device, precision (and why), dimensions, tasks and adapters."""
    import omnivec
    from omnivec.cpu_features import detect
    m = _load(model, device, _precision(model, device, precision))
    data = m.info()
    data["cpu"] = detect().summary()
    data["omnivec"] = omnivec.__version__
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False)
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    Console().print(table)
    if not m.model.capabilities.native_images:
        Console().print("[yellow]note:[/yellow] this model reads text only; images are converted to text by "
                        "OCR (rapidocr) and embedded as text; PDF pages are read from their text layer "
                        "where it holds enough text, else by OCR (omnivec.PDF(text=...), --pdf-text).")


@app.command()
def prepare(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory (default: embedded)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="Build the graphs of this precision (int8: also the fp32 ones "
                                                 "it is checked against). " + PRECISION_HELP),
    quantize: bool = typer.Option(False, "--quantize", help=QUANTIZE_HELP),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Build every cached artifact the model needs (ONNX graphs of each task) ahead of time.

    Exports run in child processes; afterwards `omnivec serve` is ready in seconds and no first
    request of a task pays for a build. `scripts/install.sh` runs it for the default model.
    """
    import time

    import omnivec
    started = time.perf_counter()
    kwargs: dict = {} if adapters is None else {"adapters": None if adapters.lower() == "none" else adapters}
    m = omnivec.load(model, device=device, precision=_precision(model, device, precision, quantize), **kwargs)
    m.model.load_all_tasks()
    tasks = m.info().get("tasks") or {}       # API task -> the adapter it runs
    err.print(f"[bold]omnivec[/bold] {m.info().get('model')} ready in {time.perf_counter() - started:.1f} s "
              f"(backend {m.info().get('backend', 'torch')}, precision {m.info()['precision']}; tasks: "
              f"{', '.join(f'{t} -> {a}' for t, a in tasks.items()) if isinstance(tasks, dict) else tasks})",
              soft_wrap=True)


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory (default: embedded)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 exposes it)."),
    port: int = typer.Option(8080, "--port", "-p"),
    api_key: List[str] = typer.Option([], "--api-key", help="Accepted Bearer key (repeatable; none = open)."),
    model_alias: List[str] = typer.Option([], "--model-alias",
                                          help="Extra accepted model names, e.g. jina-embeddings-v4 (repeatable)."),
    allow_url_fetch: bool = typer.Option(False, "--allow-url-fetch",
                                         help="Let inputs be http(s) URLs (private addresses stay refused)."),
    public_metrics: bool = typer.Option(False, "--public-metrics",
                                        help="With --api-key: leave /metrics, /docs and /openapi.json open."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: GPU if present)."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest accepted request body."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms",
                                      help="How long an idle server waits for more requests before a forward pass."),
    max_pending: int = typer.Option(8192, "--max-pending-items", help="Queued items before answering 503."),
    max_response_values: int = typer.Option(12_000_000, "--max-response-values",
                                             help="Numbers one response may carry (~20 bytes each as JSON); "
                                                  "larger requests get a 422 before any forward pass."),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format",
                                   help="text (uvicorn's lines) or json (one JSON object a request: id, dialect, "
                                        "status, items, tokens, seconds)."),
    drain_s: float = typer.Option(30.0, "--drain-s", help="On SIGTERM: how long requests in flight may finish."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    quantize: bool = typer.Option(False, "--quantize", help=QUANTIZE_HELP),
) -> None:
    """Serve the HTTP API (Jina- and OpenAI-compatible /v1/embeddings) with cross-request batching."""
    import omnivec
    from omnivec.server import ServerSettings, create_app
    from omnivec.server.http import serve_then_exit
    settings = ServerSettings(model_aliases=list(model_alias), api_keys=list(api_key),
                              allow_url_fetch=allow_url_fetch, public_metrics=public_metrics,
                              max_body_bytes=int(max_body_mb * 2**20),
                              max_wait_ms=max_wait_ms, max_pending_items=max_pending,
                              max_response_values=max_response_values, log_format=log_format,
                              drain_timeout_s=drain_s)
    if log_format not in ("text", "json"):
        _fail(f"--log-format must be text or json, not {log_format!r}")
    load_kwargs: dict = {} if adapters is None else {"adapters": None if adapters.lower() == "none" else adapters}
    load_kwargs["precision"] = _precision(model, device, precision, quantize)
    app_ = create_app(loader=lambda: omnivec.load(model, device=device, **load_kwargs), settings=settings)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    auth = ' -H "Authorization: Bearer $KEY"' if api_key else ""
    err.print(f"[bold]omnivec[/bold] serving {model or omnivec.DEFAULT_MODEL} on {url} "
              f"(ready when {url}/ready says so; docs at {url}/docs)", soft_wrap=True)
    err.print(f"try:  curl -s {url}/v1/embeddings -H 'Content-Type: application/json'{auth} "
              "-d '{\"model\": \"default\", \"input\": [\"hello world\"]}'", markup=False, highlight=False, soft_wrap=True)
    serve_then_exit(app_, settings, host=host, port=port, log_level=log_level)


@app.command("eval")
def eval_(
    suite: str = typer.Argument(..., help="humaneval | humaneval-nl | django-xlang | django-xlang-heldout | "
                                          "vdr-rendered | a BEIR or QA dataset path."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory (default: embedded)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Override tasks: retrieval | code | text-matching."),
    multivector: bool = typer.Option(False, "--multivector", help="Also rank with multi-vector MaxSim."),
    dimensions: Optional[str] = typer.Option(None, "--dimensions", "-d", help="Matryoshka sizes, e.g. 128,256,384."),
    baseline: List[str] = typer.Option([], "--baseline", "-b", help="bm25 | ocr-text | none (default: the suite's)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Subsample each dataset to N queries (fixed seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --limit."),
    out: Path = typer.Option(Path("eval-out"), "--out", "-o", help="Folder for report.md, results.json, plots."),
    device: Optional[str] = typer.Option(None, "--device"),
    adapters: Optional[str] = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    raw_multivectors: bool = typer.Option(False, "--raw-multivectors",
                                          help="With --multivector: raw token states (e.g. 384-d) instead of the "
                                               "trained multi-vector projector (omnivec.load(projector=False); encoders)."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print results.json to stdout."),
) -> None:
    """Evaluate retrieval (nDCG, recall, MRR, MAP) on a built-in suite or a dataset on disk."""
    from omnivec.eval import EvalSettings, load_suite, run_suite
    from omnivec.eval.report import write
    try:
        loaded = load_suite(suite)
    except (OSError, ValueError, ImportError) as e:
        _fail(f"cannot load suite {suite!r}: {e}")
    tasks = {"retrieval": ("retrieval.query", "retrieval.passage"), "code": ("code.query", "code.passage"),
             "text-matching": ("text-matching", "text-matching")}
    if task is not None and task not in tasks:
        _fail(f"--task must be one of {', '.join(tasks)}")
    try:
        dims = [int(x) for x in dimensions.split(",")] if dimensions else None
    except ValueError:
        _fail(f"--dimensions must be comma-separated integers, got {dimensions!r}")
    baselines = [b for x in baseline for b in x.split(",") if b and b != "none"] if baseline else list(loaded.baselines)
    if raw_multivectors:
        if not multivector:
            _fail("--raw-multivectors changes the multi-vectors only: add --multivector")
        _check_raw_multivectors(model)
    try:
        m = _load(model, device, _precision(model, device, precision), adapters=adapters,
                  projector=not raw_multivectors)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    for d in dims or []:
        if not 1 <= d <= m.dim:
            _fail(f"--dimensions: {d} is outside 1..{m.dim}")
    q_task, p_task = tasks[task] if task else (None, None)
    settings = EvalSettings(dimensions=dims, multivector=multivector, baselines=baselines,
                            query_task=q_task, passage_task=p_task)
    results = run_suite(m, loaded, settings, limit=limit, seed=seed)
    paths = write(results, out)
    if as_json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        Console().print((out / "report.md").read_text(encoding="utf-8"))
    err.print(f"[dim]wrote {', '.join(str(p) for p in paths)}[/dim]")


# ----------------------------------------------------------------------------- index / search
# One rule for both commands: the store is --store, else $OMNIVEC_STORE, else ./omnivec-index in
# the current directory (scans skip *.omnivec folders, so it may sit inside the indexed folder), so `omnivec index docs` followed by `omnivec search "..."` just works.
DEFAULT_STORE = "index.omnivec"
_RAY_HELP_SHORT = "auto, ray://host:10001, or local."
_RAY_HELP = "Ray cluster: auto (the cluster this machine is in), ray://host:10001, or local (start one here)."
_STORE_HELP = ("LanceDB directory, qdrant://host:6333/collection, qdrant+local:///dir/collection "
               "(default: $OMNIVEC_STORE, else ./index.omnivec in the current directory).")


def _open_index(store: str, model: Optional[str], device: Optional[str], create: bool, **settings):
    """Open the index or exit 2 with a message that says what to do."""
    from omnivec.index import Index, IndexMismatchError
    try:
        with err.status(f"opening index {store} ..."):
            return Index(store, model, device=device, create=create, **settings)
    except FileNotFoundError as e:
        _fail(str(e))
    except IndexMismatchError as e:
        _fail(str(e))
    except ValueError as e:
        _fail(f"cannot open store {store}: {e}")
    except Exception as e:  # qdrant-client wraps connection failures in its own types
        if str(store).lower().startswith(("qdrant://", "qdrants://")):
            _fail(f"cannot reach Qdrant for {store} ({type(e).__name__}: {e}); is the server running?")
        _fail(f"cannot open store {store}: {type(e).__name__}: {e}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("index")
def index_(
    path: Path = typer.Argument(..., help="Folder to index (paths are stored relative to it)."),
    store: str = typer.Option(DEFAULT_STORE, "--store", "-s", envvar="OMNIVEC_STORE", help=_STORE_HELP),
    multivector: bool = typer.Option(False, "--multivector",
                                     help="Also store per-token multi-vectors (MaxSim rerank); fixed at creation."),
    multivector_storage: Optional[str] = typer.Option(None, "--multivector-storage",
                                                      help="float16 (default) | binary | float32."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Model name or directory (default: the index's, else embedded)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: GPU if present)."),
    chunk_tokens: Optional[int] = typer.Option(None, "--chunk-tokens", help="Tokens per text chunk (default 256)."),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap", help="Overlap between chunks (default 32)."),
    pdf_text: Optional[str] = typer.Option(None, "--pdf-text",
                                           help="Text-only models: read PDF pages from their text layer (auto: "
                                                "where it holds enough text, else OCR; default), layer, or ocr. "
                                                "Fixed at creation."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress bar (default: on a terminal only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Embed on a Ray cluster instead of this process: " + _RAY_HELP_SHORT),
    actors: int = typer.Option(1, "--actors", help="With --ray-address: model replicas."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="With --ray-address: GPUs per actor."),
) -> None:
    """Index a folder: embed new and changed files, drop deleted ones (re-runs are incremental)."""
    if not path.is_dir():
        _fail(f"{path} is not a directory")
    if multivector_storage is not None and multivector_storage not in ("float16", "binary", "float32"):
        _fail(f"--multivector-storage must be float16, binary or float32, got {multivector_storage!r}")
    if pdf_text is not None and pdf_text not in PDF_TEXT_MODES:
        _fail(f"--pdf-text must be one of {', '.join(PDF_TEXT_MODES)}, got {pdf_text!r}")
    if ray_address is not None:
        _index_on_ray(path, store, ray_address, actors, gpus_per_actor, model, device, multivector,
                      multivector_storage, chunk_tokens, chunk_overlap, pdf_text, progress, as_json)
        return
    ix = _open_index(store, model, device, True, multivector=multivector or None,
                     multivector_storage=multivector_storage, chunk_tokens=chunk_tokens,
                     chunk_overlap=chunk_overlap, pdf_text=pdf_text)
    with ix:
        summary = ix.add_path(path, progress=progress)
        stats = ix.stats()
    if as_json:
        print(json.dumps({"summary": summary.to_dict(), "index": stats}, indent=2, ensure_ascii=False))
        return
    table = Table(show_header=False, title=f"index {store}", title_justify="left")
    rows = [("files", f"{summary.files} ({summary.new} new, {summary.changed} changed, "
                      f"{summary.unchanged} unchanged, {summary.removed} removed)"),
            ("items embedded", str(summary.items)),
            ("skipped", str(len(summary.skipped))), ("errors", str(len(summary.errors))),
            ("index", f"{stats['files']} files, {stats['items']} items, {_size(stats['size_bytes'])}"),
            ("model", f"{stats['model']}" + (f" + multi-vectors ({stats['multivector_storage']})"
                                              if stats["multivector"] else "")),
            ("time", f"{summary.seconds:.1f}s")]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    _print_listings("path", (("errors", summary.errors), ("skipped", summary.skipped)))


@app.command("embed-dataset")
def embed_dataset(
    input_path: Path = typer.Argument(..., metavar="INPUT",
                                      help="A Parquet/JSONL file or folder of them, or a folder of documents."),
    out: str = typer.Option(..., "--out", "-o",
                            help="A Parquet folder (or s3://... prefix), a LanceDB store (lancedb://DIR, DIR.omnivec "
                                 "or an existing store), or qdrant://host:6333/collection."),
    ray_address: str = typer.Option("auto", "--ray-address", help=_RAY_HELP),
    actors: int = typer.Option(1, "--actors", help="Model replicas (each loads the model once)."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="GPUs per actor (fractions share a GPU)."),
    cpus_per_actor: float = typer.Option(1.0, "--cpus-per-actor", help="CPUs per actor (also its thread count)."),
    task: str = typer.Option("retrieval.passage", "--task", "-t", help="Task of every row."),
    multivector: bool = typer.Option(False, "--multivector", help="Also write per-token multi-vectors."),
    dimensions: Optional[int] = typer.Option(None, "--dimensions", "-d", help="Matryoshka size of the dense vectors."),
    text_field: str = typer.Option("text", "--text-field", help="Tables: the column holding the text."),
    image_field: Optional[str] = typer.Option(None, "--image-field",
                                              help="Tables: a column of image or PDF bytes, or paths (used where not null)."),
    id_field: Optional[str] = typer.Option(None, "--id-field",
                                           help="Tables: the row id column (default: <file>:<row number>)."),
    input_format: str = typer.Option("auto", "--format", help="auto | parquet | jsonl | documents."),
    rows_per_unit: int = typer.Option(1024, "--rows-per-unit", help="Rows per commit (the resume granularity)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or directory (default: embedded)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help=ADAPTERS_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="Device on each actor (default: GPU if it has one)."),
    pdf_text: str = typer.Option("auto", "--pdf-text", help="Documents, text-only models: auto | layer | ocr."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress bar (default: on a terminal only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Embed a dataset or a folder of documents on Ray; a rerun writes only what is missing."""
    from omnivec.distributed import EmbedSettings, run_job
    from omnivec.distributed.sinks import SettingsMismatch
    from omnivec.distributed.units import INPUT_FORMATS
    from omnivec.tasks import resolve_tasks

    if input_format not in INPUT_FORMATS:
        _fail(f"--format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    if pdf_text not in PDF_TEXT_MODES:
        _fail(f"--pdf-text must be one of {', '.join(PDF_TEXT_MODES)}, got {pdf_text!r}")
    if actors < 1 or rows_per_unit < 1 or cpus_per_actor <= 0 or gpus_per_actor < 0:
        _fail("--actors and --rows-per-unit must be >= 1, --cpus-per-actor > 0, --gpus-per-actor >= 0")
    if dimensions is not None and dimensions < 1:
        _fail("--dimensions must be >= 1")
    try:
        resolve_tasks(task, 1, None)
    except ValueError as e:
        _fail(f"--task: {e}")
    if not input_path.exists():
        _fail(f"no such file or folder: {input_path}")
    settings = EmbedSettings(model=model, task=task, multivector=multivector, dimensions=dimensions,
                             text_field=text_field, image_field=image_field, id_field=id_field,
                             rows_per_unit=rows_per_unit, pdf_text=pdf_text, adapters=adapters,
                             precision=_precision(model, None, precision), device=device)
    try:
        summary = run_job(str(input_path), out, settings, address=ray_address, actors=actors,
                          gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, fmt=input_format,
                          progress=progress)
    except ImportError as e:
        _fail(str(e))
    except (SettingsMismatch, ValueError, FileNotFoundError, KeyError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
        return
    _print_job(summary, f"embed-dataset -> {out}")


def _print_job(summary, title: str) -> None:
    table = Table(show_header=False, title=title, title_justify="left")
    unit = "files" if summary.input_format == "documents" else "rows"
    for key, value in (("input", f"{summary.input_format}, {summary.units} units"),
                       ("resumed", f"{summary.chunks_done_before} chunks already in the output"),
                       ("this run", f"{summary.rows} {unit} -> {summary.items} vectors written, "
                                    f"{summary.chunks} chunks committed, {summary.tokens} tokens"),
                       ("failures", str(len(summary.failures))), ("skipped files", str(len(summary.skipped))),
                       ("removed stale chunks", str(summary.removed)),
                       ("time", f"{summary.seconds:.1f}s ({summary.rows_per_second:.1f} {unit}/s)")):
        table.add_row(key, value)
    Console().print(table)
    _print_listings("id / path", (("failures", summary.failures), ("skipped", summary.skipped)))


def _print_listings(what: str, sections) -> None:
    """(title, [(name, reason)]) tables, the first 50 rows of each."""
    for title, entries in sections:
        if entries:
            listing = Table(what, "reason", title=title, title_justify="left")
            for p, reason in entries[:50]:
                listing.add_row(str(p), str(reason))
            Console().print(listing)
            if len(entries) > 50:
                Console().print(f"... and {len(entries) - 50} more {title}")


def _index_on_ray(path: Path, store: str, ray_address: str, actors: int, gpus_per_actor: float,
                  model: Optional[str], device: Optional[str], multivector: bool,
                  multivector_storage: Optional[str], chunk_tokens: Optional[int], chunk_overlap: Optional[int],
                  pdf_text: Optional[str], progress: Optional[bool], as_json: bool) -> None:
    """`omnivec index --ray-address`: the same files, ids and per-file commits, embedded by Ray actors."""
    from omnivec.distributed import EmbedSettings, run_job
    from omnivec.distributed.sinks import SettingsMismatch
    from omnivec.index.stores import open_store

    try:
        existing = open_store(store, create=False)
        meta = existing.get_meta()
        existing.close()
    except FileNotFoundError:
        meta = {}
    if actors < 1 or gpus_per_actor < 0:
        _fail("--actors must be >= 1 and --gpus-per-actor >= 0")
    settings = EmbedSettings(
        model=model or meta.get("model_ref"), multivector=bool(multivector or meta.get("multivector")),
        chunk_tokens=chunk_tokens or meta.get("chunk_tokens") or 256,
        chunk_overlap=chunk_overlap if chunk_overlap is not None else meta.get("chunk_overlap", 32),
        pdf_text=pdf_text or meta.get("pdf_text") or ("ocr" if meta else "auto"), device=device)
    try:
        summary = run_job(str(path), store, settings, address=ray_address, actors=actors,
                          gpus_per_actor=gpus_per_actor, fmt="documents", progress=progress, store_output=True,
                          multivector_storage=multivector_storage or "float16")
    except ImportError as e:
        _fail(str(e))
    except (SettingsMismatch, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps({"summary": summary.to_dict()}, indent=2, ensure_ascii=False))
        return
    _print_job(summary, f"index {store} (on Ray)")


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for, in plain words."),
    store: str = typer.Option(DEFAULT_STORE, "--store", "-s", envvar="OMNIVEC_STORE", help=_STORE_HELP),
    k: int = typer.Option(10, "-k", "--top-k", help="How many hits."),
    multivector: Optional[bool] = typer.Option(None, "--multivector/--no-multivector",
                                               help="MaxSim rerank of the dense candidates (default: on for "
                                                    "an index built with --multivector)."),
    hybrid: bool = typer.Option(False, "--hybrid", help="Fuse with BM25 by reciprocal rank fusion."),
    candidates: int = typer.Option(100, "--candidates", help="Dense candidates for rerank / fusion."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the one the index was built with)."),
    device: Optional[str] = typer.Option(None, "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as a JSON list on stdout."),
) -> None:
    """Search an index built by `omnivec index`."""
    if k < 1 or candidates < 1:
        _fail("-k and --candidates must be >= 1")
    ix = _open_index(store, model, device, False)
    with ix:
        rerank = None if multivector is None else ("maxsim" if multivector else "none")
        try:
            hits = ix.search(query, k, rerank=rerank, hybrid=hybrid, candidates=candidates)
        except ValueError as e:
            _fail(str(e))
        if not hits and ix.stats()["files"] == 0:
            _fail(f"the index at {store} is empty: run `omnivec index PATH --store {store}` first")
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
        return
    table = Table("#", "score", "path", "where", "snippet")
    for rank, h in enumerate(hits, start=1):
        where = (f"page {h.page}" if h.page is not None else
                 f"lines {h.line_start}-{h.line_end}" if h.line_start is not None else "")
        table.add_row(str(rank), f"{h.score:.4f}", h.path, where, h.snippet or f"[{h.kind}]")
    Console().print(table)


@app.command()
def train(
    task: str = typer.Argument(..., help="Adapter to train: code | retrieval | text-matching."),
    data: str = typer.Option(..., "--data", help="JSONL ({query, positive, negatives?} or {text1, text2, score}) "
                                               "or a builder: stdlib-code | django-parallel."),
    out: Path = typer.Option(Path("adapters"), "--out", "-o", help="Adapter folder (other tasks in it are kept)."),
    base: Optional[str] = typer.Option(None, "--base", help="Backbone: the embedded default model (default), an "
                                       "encoder directory or a jina-embeddings-v4 checkpoint directory."),
    loss: str = typer.Option("joint", "--loss", help="joint (dense + MaxSim InfoNCE + KL) | infonce | cosent."),
    epochs: float = typer.Option(1.0, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimiser steps."),
    batch_size: int = typer.Option(32, "--batch-size", help="Pairs per step (in-batch negatives)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch",
                                              help="Cached-gradient chunk size: big batches on small memory."),
    lr: float = typer.Option(5e-4, "--lr"),
    rank: int = typer.Option(8, "--rank", help="LoRA rank of new adapters (encoders; jina-v4 trains its own LoRA)."),
    alpha: float = typer.Option(16.0, "--alpha", help="LoRA alpha of new adapters (encoders)."),
    temperature: float = typer.Option(0.05, "--temperature", help="InfoNCE temperature (paper: 0.02 for code)."),
    matryoshka: Optional[str] = typer.Option(None, "--matryoshka", help="Dims summed in the loss, e.g. 384,256,128,64."),
    multivector_dim: int = typer.Option(128, "--multivector-dim", help="Projector output size (encoders)."),
    train_projector: Optional[bool] = typer.Option(None, "--train-projector/--freeze-projector",
                                                   help="Default: train it when the folder has none yet."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Hold-out of the training data for checkpoints "
                                       "(0: no hold-out, the last step is kept)."),
    eval_every: int = typer.Option(50, "--eval-every"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train one task adapter (LoRA) and the multi-vector projector on a frozen backbone; resumable."""
    from omnivec.train import TrainConfig, Trainer
    try:
        dims = tuple(int(x) for x in matryoshka.split(",")) if matryoshka else None
    except ValueError:
        _fail(f"--matryoshka must be comma-separated integers, got {matryoshka!r}")
    cfg = TrainConfig(task=task, data=data, out=str(out), base=base, loss=loss, epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, micro_batch=micro_batch, lr=lr, rank=rank, alpha=alpha,
                      temperature=temperature, matryoshka_dims=dims, multivector_dim=multivector_dim,
                      train_projector=train_projector, val_fraction=val_fraction, eval_every=eval_every,
                      save_every=eval_every, seed=seed)
    try:
        result = Trainer(cfg, log=lambda m: err.print(f"[dim]{m}[/dim]")).run()
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(str(e))
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_val.items())
    err.print(f"trained [bold]{task}[/bold] in {result.seconds:.0f}s ({result.steps} steps); "
              f"best validation at step {result.best_step}: {best}")
    err.print(f"adapters in {result.out}: load with omnivec.load(adapters={str(result.out)!r})")


@app.command("train-projector")
def train_projector_cmd(
    out: Path = typer.Option(Path("adapters"), "--out", "-o",
                             help="Adapter folder: its adapters route each source; the projector is written there."),
    source: Optional[List[str]] = typer.Option(
        None, "--source", help="DATA:TASK, repeatable (default: stdlib-code:code, django-parallel:text-matching, "
                               "stdlib-code:retrieval). DATA is a JSONL of pairs or a builder."),
    base: Optional[str] = typer.Option(None, "--base", help="Backbone (default: the embedded default model)."),
    dim: int = typer.Option(128, "--dim", help="Multi-vector size per token."),
    epochs: int = typer.Option(2, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size", help="Pairs per step (in-batch negatives)."),
    lr: float = typer.Option(1e-3, "--lr"),
    temperature: float = typer.Option(0.02, "--temperature"),
    w_distill: float = typer.Option(1.0, "--w-distill", help="Weight of KL towards the raw token states' MaxSim."),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="Cap training pairs per source."),
    val_fraction: float = typer.Option(0.03, "--val-fraction", help="Hold-out of each source (as in train)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Distil a small multi-vector projector from full token states (backbone and adapters frozen)."""
    from omnivec.train import ProjectorConfig, ProjectorTrainer
    kw: dict[str, Any] = {"sources": tuple(source)} if source else {}
    cfg = ProjectorConfig(out=str(out), base=base, dim=dim, epochs=epochs, batch_size=batch_size, lr=lr,
                          temperature=temperature, w_distill=w_distill, max_pairs=max_pairs,
                          val_fraction=val_fraction, seed=seed, **kw)
    try:
        result = ProjectorTrainer(cfg, log=lambda m: err.print(f"[dim]{m}[/dim]")).run()
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(str(e))
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best_val.items())
    err.print(f"trained a {dim}-d projector in {result.seconds:.0f}s; kept epoch {result.best_epoch}: {best}")
    err.print(f"projector in {result.out}: load with omnivec.load(adapters={str(result.out)!r})")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
