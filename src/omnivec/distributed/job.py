"""The ``omnivec embed-dataset`` job: plan units, skip what the output holds, stream the rest.

The driver stays light: it lists the input (file metadata, line offsets, or a folder scan
with hashes), reads which chunks the output already holds, and hands the missing units to a
pool of :class:`~omnivec.distributed.worker.UnitEmbedder` actors through Ray Data's streaming
executor (bounded memory: units are read and embedded as the actors are free, nothing is
collected). It draws the progress bar from the actors' status rows and, for single-writer
sinks, commits the records they send.
"""
from __future__ import annotations

import json
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from .cluster import connect
from .sinks import MANIFEST, ParquetSink, StoreSink, check_settings
from .units import Plan, Unit, plan
from .worker import EmbedSettings, UnitEmbedder, load_embedder

__all__ = ["JobSummary", "run_job", "is_store_output"]


@dataclass
class JobSummary:
    """What one run did (a rerun after a kill reports only its own work)."""

    output: str
    input_format: str
    units: int = 0                 # units in the input
    chunks_done_before: int = 0    # chunks the output already held (resumed)
    chunks: int = 0                # chunks committed by this run
    rows: int = 0                  # input rows (tables) or files (documents) processed
    items: int = 0                 # output rows written (a PDF gives one per page)
    tokens: int = 0
    removed: int = 0               # stale chunks dropped (their input changed or went away)
    failures: list[tuple[str, str]] = field(default_factory=list)   # (row id or path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)    # input files not read
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [list(x) for x in self.failures]
        d["skipped"] = [list(x) for x in self.skipped]
        d["rows_per_second"] = round(self.rows_per_second, 2)
        return d


def is_store_output(out: str) -> bool:
    """A ``qdrant://``-style spec or an existing LanceDB store folder (else: a Parquet folder)."""
    from pathlib import Path
    text = str(out)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        return scheme.startswith("qdrant") or scheme == "lancedb"
    return (Path(text) / "omnivec-store.json").is_file() or text.endswith((".lance", ".omnivec"))


def _store_spec(out: str) -> str:
    return out.split("://", 1)[1] if out.lower().startswith("lancedb://") else out


def _open_store_sink(out: str, settings: EmbedSettings, identity: dict[str, Any],
                     probe: Callable[[], dict[str, Any]], multivector_storage: str = "float16") -> StoreSink:
    """The store as an omnivec index: created with the index settings, or checked against them.

    An index built by ``omnivec index`` is taken over when it was built with the same model and
    settings (its commits are per file with the same ids, so both can keep it up to date).
    ``probe()`` gives the model's name and sizes; it is called only to create a store, so an
    existing one is checked before any cluster work."""
    from ..index.index import index_meta, model_ref
    from ..index.stores import open_store

    if settings.task != "retrieval.passage" or settings.dimensions is not None:
        raise ValueError("a store output is an index searched with retrieval.query: it takes "
                         "--task retrieval.passage and full-size vectors (use a Parquet output for others)")
    spec = _store_spec(out)
    try:
        store = open_store(spec, create=False)
    except FileNotFoundError:
        store = None
    if store is not None:
        try:
            found = store.get_meta()
            if "embed_job" not in found and found.get("model"):
                _check_index_settings(found, settings, identity, out)
                found["embed_job"] = identity
                store.set_meta(found)
            elif store.count() and "embed_job" not in found:
                raise ValueError(f"{out} is a vector store without index settings; write to a new store")
            check_settings(found.get("embed_job"), identity, out)
        except BaseException:
            store.close()
            raise
        return StoreSink(spec, store)
    model = probe()
    mdim = model["multivector_dim"] if settings.multivector else None
    store = open_store(spec, dim=model["dim"], multivector_dim=mdim, multivector_storage=multivector_storage,
                       create=True)
    meta = index_meta(model["model"], model_ref(settings.model) or model["model"], model["dim"], mdim,
                      multivector_storage, settings.chunk_tokens, settings.chunk_overlap, settings.pdf_text)
    meta["embed_job"] = identity
    store.set_meta(meta)
    return StoreSink(spec, store)


def _check_index_settings(meta: dict[str, Any], settings: EmbedSettings, identity: dict[str, Any], out: str) -> None:
    """An index of `omnivec index` joins a job only with its own model, chunking and PDF rule."""
    from ..index.index import model_ref
    from ..models.registry import DEFAULT_MODEL
    if identity["input_format"] != "documents":
        raise ValueError(f"{out} is an index of documents; a table goes into a store of its own")
    keys = ("multivector", "chunk_tokens", "chunk_overlap", "pdf_text")
    found = {"model_ref": meta.get("model_ref"), **{k: meta.get(k) for k in keys}}
    found["multivector"] = bool(found["multivector"])
    found["pdf_text"] = found["pdf_text"] or "ocr"          # indexes from before the setting
    wanted = {"model_ref": model_ref(settings.model) if settings.model else DEFAULT_MODEL,
              **{k: getattr(settings, k) for k in keys}}
    check_settings(found, wanted, out)


def _probe(ray: Any, settings: EmbedSettings, cpus: float, gpus: float) -> dict[str, Any]:
    """The model's name and sizes, from one task on a worker (the driver never loads the model)."""
    def describe() -> dict[str, Any]:
        m = load_embedder(settings, cpus)
        return {"model": m.info()["model"], "dim": m.dim, "multivector_dim": m.multivector_dim}
    return ray.get(ray.remote(num_cpus=cpus, num_gpus=gpus or None)(describe).remote())


def _todo(p: Plan, committed: dict[str, str]) -> tuple[list[Unit], int, int]:
    """Units with chunks still missing (``skip`` set to those present), rows left, chunks present."""
    todo, rows_left, present = [], 0, 0
    for unit in p.units:
        done = tuple(j for j, key in enumerate(unit.chunk_keys()) if committed.get(key) == unit.version)
        present += len(done)
        if len(done) < unit.chunks:
            todo.append(replace(unit, skip=done))
            rows_left += unit.rows - (unit.rows * len(done)) // unit.chunks if unit.rows else 1
    return todo, rows_left, present


class _Bar:
    """Rows (or files) done of the run's total, rows/s, items written, ETA; on stderr."""

    def __init__(self, total: int, unit: str, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.unit, self._bar, self._task = total, unit, None, None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TextColumn("{task.fields[rate]}"),
                                 TextColumn("{task.fields[items]} written"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task("job", total=self.total, rate="", items=0)
        return self

    def advance(self, rows: int, items: int) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._task, rows)
        task = self._bar.tasks[0]
        rate = f"{task.completed / task.elapsed:.1f} {self.unit}/s" if task.elapsed else ""
        self._bar.update(self._task, rate=rate, items=task.fields["items"] + items)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def run_job(input_path: str, out: str, settings: EmbedSettings, *, address: str | None = "auto",
            actors: int = 1, gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0,
            fmt: str = "auto", files_per_call: int = 16, progress: bool | None = None,
            on_progress: Callable[[JobSummary], None] | None = None, store_output: bool | None = None,
            multivector_storage: str = "float16") -> JobSummary:
    """Embed ``input_path`` into ``out`` on Ray; rerunning after a kill writes only what is missing.

    ``on_progress(summary)`` is called on the driver after each chunk's status arrives (the
    summary so far), for callers that track the job themselves. ``store_output``: True writes
    an omnivec store (``omnivec index --ray-address``), None decides by :func:`is_store_output`;
    ``multivector_storage`` applies to a store created by this run."""
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    start = time.perf_counter()
    local_out = None if "://" in str(out) else out
    p = plan(input_path, fmt=fmt, rows_per_unit=settings.rows_per_unit, exclude=local_out)
    if p.fmt != "documents" and settings.image_field is None and settings.text_field is None:
        raise ValueError("a table input needs --text-field or --image-field")
    identity = dict(settings.identity(), input_format=p.fmt)
    sink: ParquetSink | StoreSink
    if is_store_output(out) if store_output is None else store_output:
        sink = _open_store_sink(out, settings, identity,
                                lambda: _probe(connect(address), settings, cpus_per_actor, gpus_per_actor),
                                multivector_storage)
        ray = connect(address)
    else:
        sink = ParquetSink(out)
        found = sink.read_settings()
        if found is None and sink.holds_files():
            raise ValueError(f"{out} holds files but no {MANIFEST}: not an embed-dataset output; give a new "
                             "or empty folder")
        check_settings(found, identity, out)     # before any cluster work
        ray = connect(address)
        sink.write_settings(identity)
    summary = JobSummary(output=out, input_format=p.fmt, units=len(p.units), skipped=list(p.skipped))
    try:
        committed = sink.committed()
        planned = {key for u in p.units for key in u.chunk_keys()}
        stale = sorted(set(committed) - planned)
        sink.remove(stale)
        summary.removed = len(stale)
        todo, rows_left, summary.chunks_done_before = _todo(p, committed)
        if todo:
            _stream(ray, todo, sink, settings, summary, rows_left, set(committed), actors=actors, gpus=gpus_per_actor,
                    cpus=cpus_per_actor, files_per_call=files_per_call, progress=progress,
                    on_progress=on_progress, unit_name="files" if p.fmt == "documents" else "rows")
        sink.finish(summary.failures)
    finally:
        sink.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _stream(ray: Any, todo: list[Unit], sink: ParquetSink | StoreSink, settings: EmbedSettings,
            summary: JobSummary, rows_left: int, held: set[str], *, actors: int, gpus: float, cpus: float,
            files_per_call: int, progress: bool | None, on_progress: Callable[[JobSummary], None] | None,
            unit_name: str) -> None:
    import ray.data

    documents = todo[0].kind == "document"
    ds = ray.data.from_items([u.to_row() for u in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        UnitEmbedder, batch_size=files_per_call if documents else 1, batch_format="pyarrow",
        fn_constructor_kwargs={"settings": settings, "sink": sink.spec() if sink.runs_on_workers else None,
                               "cpus": cpus, "files_per_call": files_per_call},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None)
    with _Bar(rows_left, unit_name, progress) as bar:
        for status in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in status.to_pylist():
                if row["payload"]:
                    rows = pickle.loads(row["payload"])
                    sink.commit(row["key"], row["version"], rows, json.loads(row["failures"]),
                                dim=0, multivector_dim=None, text_field=settings.text_field)
                if not row["committed"] and row["key"] in held:
                    sink.remove([row["key"]])   # a file now unreadable: its old vectors no longer match it
                failed = [tuple(f) for f in json.loads(row["failures"])]
                summary.failures.extend(failed)
                summary.chunks += bool(row["committed"])
                summary.rows += row["rows"]
                summary.items += row["items"]
                summary.tokens += row["tokens"]
                bar.advance(row["rows"], row["items"])
                if on_progress is not None:
                    on_progress(summary)
