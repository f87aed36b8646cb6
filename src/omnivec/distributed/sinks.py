"""Where a job's vectors go: a Parquet folder, or an omnivec store (LanceDB, Qdrant).

Every sink keeps the same promise, the one resuming rests on: a chunk (see
:mod:`omnivec.distributed.units`) is either wholly in the output, under its key and the
version it was made from, or not at all; committing a chunk again replaces it. So a job
killed at any moment and run again writes only what is missing, and a chunk Ray ran twice
(a task retried after a node was lost) is still there once.

* :class:`ParquetSink`: one file per chunk, ``part-<sha256(key)>.parquet``, written under a
  temporary name and renamed when complete; its key, version and the chunk's failures are in
  the file's metadata. Actors write their own chunks (the folder must be one every node sees:
  a shared filesystem, or an object store URI pyarrow understands).
* :class:`StoreSink`: the store's own per-file commit (records first, marker last) with the
  chunk key as the file path, so the output is an omnivec index ``omnivec search`` opens.
  Actors commit to a Qdrant server themselves; LanceDB folders and Qdrant local mode have one
  writer, the driver, which the actors send their records to.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from ..index.types import Record
from .rows import dense_matrix, fixed_size_rows, multivector_list, token_rows

if TYPE_CHECKING:
    from ..index.stores import AnyStore

MANIFEST = "_omnivec_job.json"
FAILURES = "_failures.jsonl"
_META_KEY, _META_VERSION, _META_FAILURES = b"omnivec.chunk", b"omnivec.version", b"omnivec.failures"

Failures = Sequence[tuple[str, str]]      # (row id or document path, reason)


class SettingsMismatch(ValueError):
    """The output was written by a job with other settings (model, task, fields, chunking)."""


def check_settings(found: dict[str, Any] | None, wanted: dict[str, Any], where: str) -> None:
    """Refuse to mix two jobs' vectors in one output."""
    if found is None:
        return
    for key, value in wanted.items():
        if found.get(key) != value:
            raise SettingsMismatch(
                f"{where} was written with {key}={found.get(key)!r}, not {value!r}: its vectors would not "
                "match; rerun with the same settings, or write to a new output")


# --------------------------------------------------------------------------------------------
# records <-> tables (a document job may write Parquet, a table job a store)
# --------------------------------------------------------------------------------------------


def records_table(records: Sequence[Record], dim: int, multivector_dim: int | None) -> pa.Table:
    """Document records as Parquet columns (the payload search hits carry, then the vectors)."""
    def col(name: str, kind: pa.DataType) -> pa.Array:
        return pa.array([getattr(r, name) for r in records], kind)
    columns = {"id": col("id", pa.string()), "path": col("path", pa.string()),
               "file_hash": col("file_hash", pa.string()), "kind": col("kind", pa.string()),
               "page": col("page", pa.int32()), "line_start": col("line_start", pa.int32()),
               "line_end": col("line_end", pa.int32()), "ordinal": col("ordinal", pa.int32()),
               "text": col("text", pa.string()),
               "dense": fixed_size_rows(np.stack([r.dense for r in records]) if records
                                        else np.zeros((0, dim), np.float32), dim)}
    if multivector_dim is not None:
        columns["multivector"] = token_rows([r.multivector for r in records], multivector_dim)
    return pa.table(columns)


def table_records(table: pa.Table, key: str, version: str, text_field: str) -> list[Record]:
    """Table-job rows as store records: the chunk key is their "file", the text their payload."""
    dense = dense_matrix(table.column("dense"))
    multi = multivector_list(table.column("multivector")) if "multivector" in table.column_names else None
    texts = table.column(text_field).to_pylist() if text_field in table.column_names else [None] * table.num_rows
    return [Record(id=rid, path=key, file_hash=version, kind=kind, dense=dense[i],
                   multivector=None if multi is None else multi[i],
                   text=text if isinstance(text, str) else "", page=page, ordinal=i)
            for i, (rid, kind, page, text) in enumerate(zip(table.column("id").to_pylist(),
                                                              table.column("kind").to_pylist(),
                                                              table.column("page").to_pylist(), texts))]


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------


class ParquetSink:
    """A folder (or object-store prefix) of one Parquet file per committed chunk."""

    runs_on_workers = True
    wants_records = False

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        self.uri = uri
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
        self.fs.create_dir(self.root, recursive=True)

    def spec(self) -> dict[str, Any]:
        """What an actor needs to open the same sink."""
        return {"kind": "parquet", "uri": self.uri if "://" in self.uri else self.root}

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def part_name(self, key: str) -> str:
        return f"part-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.parquet"

    # -- settings ------------------------------------------------------------------------------
    def read_settings(self) -> dict[str, Any] | None:
        import pyarrow.fs as pafs
        path = self._path(MANIFEST)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))

    def write_settings(self, settings: dict[str, Any]) -> None:
        self._write_atomic(MANIFEST, json.dumps(settings, indent=1, sort_keys=True).encode("utf-8"))

    def _write_atomic(self, name: str, data: bytes) -> None:
        tmp = self._path(f".tmp-{uuid.uuid4().hex}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self._path(name))

    # -- chunks --------------------------------------------------------------------------------
    def _parts(self) -> list[Any]:
        import pyarrow.fs as pafs
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return [i for i in infos if i.type == pafs.FileType.File]

    def holds_files(self) -> bool:
        """Anything in the folder at all (a folder that is not ours must not be written into)."""
        return bool(self._parts())

    def committed(self) -> dict[str, str]:
        """key -> version of every complete part; unfinished temporary files are removed."""
        import pyarrow.parquet as pq

        out: dict[str, str] = {}
        for info in self._parts():
            if info.base_name.startswith(".tmp-"):
                self.fs.delete_file(info.path)          # a write cut short: its chunk is redone
                continue
            if not (info.base_name.startswith("part-") and info.base_name.endswith(".parquet")):
                continue
            meta = pq.read_metadata(info.path, filesystem=self.fs).metadata or {}
            if _META_KEY in meta:
                out[meta[_META_KEY].decode("utf-8")] = meta[_META_VERSION].decode("utf-8")
        return out

    def failures(self) -> list[tuple[str, str]]:
        """Every committed chunk's failed rows (row id, reason)."""
        import pyarrow.parquet as pq
        out: list[tuple[str, str]] = []
        for info in self._parts():
            if info.base_name.startswith("part-"):
                meta = pq.read_metadata(info.path, filesystem=self.fs).metadata or {}
                out.extend(tuple(x) for x in json.loads(meta.get(_META_FAILURES, b"[]")))
        return out

    def remove(self, keys: Sequence[str]) -> None:
        """Drop committed chunks that are no longer part of the input."""
        for key in keys:
            self.fs.delete_file(self._path(self.part_name(key)))

    def commit(self, key: str, version: str, rows: pa.Table | Sequence[Record], failures: Failures, *,
               dim: int, multivector_dim: int | None, text_field: str) -> None:
        """Write the chunk's file completely, then give it its final name (replacing an older one)."""
        import pyarrow.parquet as pq

        table = rows if isinstance(rows, pa.Table) else records_table(rows, dim, multivector_dim)
        meta = dict(table.schema.metadata or {})
        meta.update({_META_KEY: key.encode("utf-8"), _META_VERSION: version.encode("utf-8"),
                     _META_FAILURES: json.dumps([list(f) for f in failures]).encode("utf-8")})
        table = table.replace_schema_metadata(meta)
        tmp = self._path(f".tmp-{uuid.uuid4().hex}.parquet")
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, self._path(self.part_name(key)))

    def finish(self, failures: Failures) -> None:
        """Write the output's failures to _failures.jsonl: rows of every committed chunk (this run's
        and earlier runs'), plus this run's documents that could not be read (never committed)."""
        merged = dict.fromkeys([tuple(f) for f in self.failures()] + [tuple(f) for f in failures])
        lines = "".join(json.dumps({"id": rid, "reason": reason}) + "\n" for rid, reason in merged)
        self._write_atomic(FAILURES, lines.encode("utf-8"))

    def close(self) -> None:
        """Nothing held open."""


# --------------------------------------------------------------------------------------------
# omnivec stores
# --------------------------------------------------------------------------------------------


def is_server_store(spec: str) -> bool:
    """A Qdrant server takes writes from every actor; other stores have a single writer."""
    return str(spec).split("://", 1)[0].lower() in ("qdrant", "qdrants") if "://" in str(spec) else False


class StoreSink:
    """An omnivec store (LanceDB folder, Qdrant) where each chunk is committed like an indexed file."""

    wants_records = True

    def __init__(self, spec: str, store: "AnyStore | None" = None) -> None:
        from ..index.stores import open_store

        self.spec_text = str(spec)
        self.runs_on_workers = is_server_store(self.spec_text)
        self.store = store if store is not None else open_store(self.spec_text, create=False)

    def spec(self) -> dict[str, Any]:
        return {"kind": "store", "uri": self.spec_text}

    def read_settings(self) -> dict[str, Any] | None:
        return self.store.get_meta().get("embed_job")

    def committed(self) -> dict[str, str]:
        return self.store.indexed_files()

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.store.delete_file(key)

    def commit(self, key: str, version: str, rows: pa.Table | Sequence[Record], failures: Failures, *,
               dim: int, multivector_dim: int | None, text_field: str) -> None:
        records = table_records(rows, key, version, text_field) if isinstance(rows, pa.Table) else list(rows)
        self.store.commit_files([(key, version, records)])

    def finish(self, failures: Failures) -> None:
        self.store.optimize()

    def close(self) -> None:
        self.store.close()


def open_sink(spec: dict[str, Any]) -> ParquetSink | StoreSink:
    """The sink :meth:`ParquetSink.spec` / :meth:`StoreSink.spec` describes (on an actor)."""
    if spec["kind"] == "parquet":
        return ParquetSink(spec["uri"])
    return StoreSink(spec["uri"])
