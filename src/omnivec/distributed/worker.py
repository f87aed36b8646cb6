"""The Ray actors: each loads the model once and embeds batches through :class:`~omnivec.Embedder`.

Why the Embedder and nothing else: the vectors of a distributed job must be the library's
vectors (the same prompts, token-budget batching, adapters, Matryoshka cut), so the actor is a
thin loop around ``Embedder.embed_skipping``; only reading the input and writing the output
are its own.

* :class:`RowEmbedder` (``embed_dataset``): a batch of table rows in, the same rows with
  vectors out; rows that cannot be embedded are dropped with a warning, or kept with an
  ``error`` and null vectors (``errors="keep"``).
* :class:`UnitEmbedder` (the ``embed-dataset`` job): a batch of work units in, one status
  row per committed chunk out; the actor commits to a sink that takes many writers itself,
  else it sends the chunk's records to the driver.
"""
from __future__ import annotations

import json
import logging
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa

from .rows import RowError, content_id, embed_rows, output_table, row_input
from .units import Unit, read_chunk

if TYPE_CHECKING:
    from ..embedder import Embedder

log = logging.getLogger("omnivec.distributed")

STATUS_SCHEMA = pa.schema([("key", pa.string()), ("version", pa.string()), ("rows", pa.int64()),
                           ("items", pa.int64()), ("tokens", pa.int64()), ("failures", pa.string()),
                           ("committed", pa.bool_()), ("payload", pa.binary())])


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides a job's vectors; a rerun must match the output's recorded settings."""

    model: str | None = None           # a name or directory (None: the embedded default)
    task: str = "retrieval.passage"
    multivector: bool = False
    dimensions: int | None = None
    text_field: str = "text"
    image_field: str | None = None
    id_field: str | None = None
    rows_per_unit: int = 1024
    chunk_tokens: int = 256            # documents: as `omnivec index`
    chunk_overlap: int = 32
    pdf_text: str = "auto"
    adapters: str | None = None        # a folder, "none", or None (those shipped with the model)
    precision: str | None = None
    device: str | None = None          # not part of the identity: any device gives the same vectors

    def identity(self) -> dict[str, Any]:
        """The settings recorded with an output (the device is left out)."""
        data = asdict(self)
        data.pop("device")
        return data


def load_embedder(settings: EmbedSettings, cpus: float | None = None) -> "Embedder":
    """The model as ``omnivec.load`` gives it (its own backend: ONNX on CPU, packed bf16 on GPU)."""
    import torch

    import omnivec
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))     # one actor per CPU share, not all cores each
    kwargs: dict[str, Any] = {}
    if settings.precision:
        kwargs["precision"] = settings.precision
    if settings.adapters is not None:
        kwargs["adapters"] = None if settings.adapters.lower() == "none" else settings.adapters
    return omnivec.load(settings.model, device=settings.device, **kwargs)


def _inputs(table: pa.Table, settings: EmbedSettings, errors: list[str | None]) -> list[Any]:
    """One input per row, None where the row is already known bad (``errors`` updated in place)."""
    out: list[Any] = []
    for i, row in enumerate(table.to_pylist()):
        if errors[i] is not None:
            out.append(None)
            continue
        try:
            out.append(row_input(row, settings.text_field, settings.image_field))
        except RowError as e:
            errors[i] = e.reason
            out.append(None)
    return out


def _embed_table(embedder: "Embedder", table: pa.Table, ids: list[str], errors: list[str | None],
                 settings: EmbedSettings) -> tuple[pa.Table, list[tuple[str, str]]]:
    """Vectors for a table of rows: the output table and the failed rows (id, reason)."""
    from ..inputs import PDF
    inputs = _inputs(table, settings, errors)
    embedded = embed_rows(embedder, inputs, settings.task, multivector=settings.multivector,
                          dimensions=settings.dimensions)
    for i, reason in embedded.failures.items():
        errors[i] = reason
    pdf_rows = {i for i, x in enumerate(inputs) if isinstance(x, PDF)}
    mdim = embedder.multivector_dim if settings.multivector else None
    out = output_table(table, ids, embedded, pdf_rows, settings.dimensions or embedder.dim, mdim)
    return out, [(ids[i], reason) for i, reason in enumerate(errors) if reason is not None]


class RowEmbedder:
    """``map_batches`` callable of :func:`omnivec.distributed.embed_dataset`."""

    def __init__(self, settings: EmbedSettings, errors: str = "skip", cpus: float | None = None) -> None:
        self.settings = settings
        self.errors = errors
        self.embedder = load_embedder(settings, cpus)

    def __call__(self, batch: pa.Table) -> pa.Table:
        s = self.settings
        if s.id_field is not None and s.id_field in batch.column_names:
            ids = [str(v) for v in batch.column(s.id_field).to_pylist()]
        else:
            ids = [content_id(r, s.text_field, s.image_field) for r in batch.to_pylist()]
        errors: list[str | None] = [None] * batch.num_rows
        out, failed = _embed_table(self.embedder, batch, ids, errors, s)
        for rid, reason in failed:
            log.warning("omnivec: row %s not embedded: %s", rid, reason)
        if self.errors == "keep":
            out = out.append_column("error", pa.nulls(out.num_rows, pa.string()))
            if failed:
                bad = [i for i, e in enumerate(errors) if e is not None]
                extra = batch.take(pa.array(bad, pa.int64()))
                extra = _failed_rows(extra, [ids[i] for i in bad], [errors[i] for i in bad], out.schema)
                out = pa.concat_tables([out, extra])
        return out


def _failed_rows(source: pa.Table, ids: list[str], reasons: list[str | None], schema: pa.Schema) -> pa.Table:
    """Rows that failed, in the output's schema: their source columns, null vectors, the reason."""
    columns = []
    for f in schema:
        if f.name == "id":
            columns.append(pa.array(ids, pa.string()))
        elif f.name == "error":
            columns.append(pa.array(reasons, pa.string()))
        elif f.name in source.column_names and f.name not in ("kind", "page", "tokens", "dense", "multivector"):
            columns.append(source.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(source.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


class UnitEmbedder:
    """``map_batches`` callable of the job: embeds units, commits chunks, reports status rows."""

    def __init__(self, settings: EmbedSettings, sink: dict[str, Any] | None, cpus: float | None = None,
                 files_per_call: int = 16) -> None:
        from .sinks import open_sink
        self.settings = settings
        self.embedder = load_embedder(settings, cpus)
        self.sink = open_sink(sink) if sink is not None else None   # None: the driver writes
        self.files_per_call = files_per_call
        self.mdim = self.embedder.multivector_dim if settings.multivector else None
        self.dim = settings.dimensions or self.embedder.dim

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        units = [Unit.from_row(r) for r in batch.to_pylist()]
        documents = [u for u in units if u.kind == "document"]
        for unit in units:
            if unit.kind != "document":
                for j in range(unit.chunks):
                    if j not in unit.skip:
                        yield self._table_chunk(unit, j)
        for start in range(0, len(documents), self.files_per_call):
            yield from self._documents(documents[start:start + self.files_per_call])

    # -- tables --------------------------------------------------------------------------------
    def _table_chunk(self, unit: Unit, j: int) -> pa.Table:
        s = self.settings
        table, ids, errors = read_chunk(unit, j, s.rows_per_unit, s.id_field)
        out, failed = _embed_table(self.embedder, table, ids, errors, s)
        return self._commit(unit.chunk_key(j), unit.version, out, failed, rows=table.num_rows,
                            tokens=sum(out.column("tokens").to_pylist()))

    # -- documents -----------------------------------------------------------------------------
    def _documents(self, units: list[Unit]) -> Iterator[pa.Table]:
        """Files read by the index's own ingestion, embedded in one call, committed one by one."""
        from ..index.builder import file_records, read_file_items
        from ..index.ingest import DEFAULT_LIMITS, IngestError, SourceFile

        s = self.settings
        files: list[tuple[Unit, list[Any]]] = []
        for unit in units:
            source = SourceFile(unit.rel, Path(unit.path), unit.file_kind, unit.language or None, unit.size)  # type: ignore[arg-type]
            try:
                items = read_file_items(source, self.embedder, chunk_tokens=s.chunk_tokens,
                                        chunk_overlap=s.chunk_overlap, limits=DEFAULT_LIMITS, pdf_text=s.pdf_text)
            except IngestError as e:
                yield self._commit(unit.key, unit.version, [], [(unit.rel, e.reason)], rows=1, tokens=0,
                                   commit=False)      # not committed: a rerun tries the file again
                continue
            files.append((unit, items))
        flat = [(f, i) for f, (_u, items) in enumerate(files) for i in range(len(items))]
        res, rejected = self.embedder.embed_skipping(
            [files[f][1][i].content for f, i in flat], s.task, dense=True,
            multivector=s.multivector, dimensions=s.dimensions, progress=False, limits=DEFAULT_LIMITS)
        bad = {flat[k][0]: reason for k, reason in rejected.items()}
        dense: list[list[Any]] = [[None] * len(items) for _u, items in files]
        multi: list[list[Any]] = [[None] * len(items) for _u, items in files]
        tokens = [0] * len(files)
        for row, origin in enumerate(res.origins):
            f, i = flat[origin]
            dense[f][i] = res.dense[row]
            tokens[f] += res.tokens[row]
            if s.multivector:
                multi[f][i] = res.multivector[row]
        for f, (unit, items) in enumerate(files):
            if f in bad:
                yield self._commit(unit.key, unit.version, [], [(unit.rel, f"cannot embed: {bad[f]}")],
                                   rows=1, tokens=0, commit=False)
                continue
            records = file_records(unit.rel, unit.version, items, dense[f], multi[f] if s.multivector else None)
            yield self._commit(unit.key, unit.version, records, [], rows=1, tokens=tokens[f])

    # -- output --------------------------------------------------------------------------------
    def _commit(self, key: str, version: str, output: pa.Table | list[Any], failed: list[tuple[str, str]], *,
                rows: int, tokens: int, commit: bool = True) -> pa.Table:
        """Commit a chunk here (a sink with many writers) or ship it to the driver; one status row."""
        payload = b""
        if commit:
            if self.sink is not None:
                self.sink.commit(key, version, output, failed, dim=self.dim, multivector_dim=self.mdim,
                                 text_field=self.settings.text_field)
            else:
                payload = pickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)
        items = output.num_rows if isinstance(output, pa.Table) else len(output)
        status = {"key": key, "version": version, "rows": rows, "items": items if commit else 0,
                  "tokens": tokens, "failures": json.dumps([list(f) for f in failed]), "committed": commit,
                  "payload": payload}
        return pa.Table.from_pylist([status], schema=STATUS_SCHEMA)
