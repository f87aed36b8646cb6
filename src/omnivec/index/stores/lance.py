"""LanceDB store: an embedded directory on disk, no server (the default backend).

Layout of the directory: ``items.lance`` (one row per :class:`Record`), ``files.lance`` (one
marker row per committed file) and ``omnivec-store.json`` (dims, multi-vector storage, free-form
meta). Dense search is an exact scan with LanceDB's ``dot`` distance, which LanceDB reports as
``1 - dot``; we turn it back into the dot product.
"""
from __future__ import annotations

import json
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ..store import MultivectorStorage
from ..types import Record
from .common import (check_config, dir_size, new_config, pack_signs, unpack_signs,
                      validate_commit)

CONFIG_FILE = "omnivec-store.json"
PAYLOAD = ["id", "path", "file_hash", "kind", "text", "page", "line_start", "line_end", "ordinal"]
_IN_CHUNK = 512   # values per "IN (...)" filter: keeps the SQL text small
# Each commit appends a fragment; compact after max(COMPACT_EVERY, rows / 200) commits. Compaction
# rewrites the table, so its interval grows with the table (a 100k-item build compacts ~10 times).
COMPACT_EVERY = 100


def sql_str(value: str) -> str:
    """A SQL string literal (DataFusion: quotes doubled, backslashes are literal)."""
    return "'" + value.replace("'", "''") + "'"


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def items_schema(dim: int, mdim: int | None, storage: str) -> pa.Schema:
    """Arrow schema of the items table for a given configuration."""
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("path", pa.string(), nullable=False),
              pa.field("file_hash", pa.string()), pa.field("kind", pa.string()), pa.field("text", pa.string()),
              pa.field("page", pa.int32()), pa.field("line_start", pa.int32()), pa.field("line_end", pa.int32()),
              pa.field("ordinal", pa.int32()), pa.field("dense", pa.list_(pa.float32(), dim))]
    if mdim is not None:
        if storage == "binary":
            fields += [pa.field("mbits", pa.binary()), pa.field("mtokens", pa.int32())]
        else:
            ftype = pa.float16() if storage == "float16" else pa.float32()
            fields.append(pa.field("multi", pa.list_(pa.list_(ftype, mdim))))
    return pa.schema(fields)


FILES_SCHEMA = pa.schema([pa.field("path", pa.string(), nullable=False), pa.field("hash", pa.string()),
                          pa.field("n_items", pa.int32())])


class LanceStore:
    """Records and file markers in two LanceDB tables inside one directory."""

    native_maxsim = False     # MaxSim reranks in the Index over dense candidates

    def __init__(self, directory: str | Path, *, dim: int | None = None, multivector_dim: int | None = None,
                 multivector_storage: MultivectorStorage | None = None, create: bool = True) -> None:
        import lancedb

        self.directory = Path(directory)
        cfg_path = self.directory / CONFIG_FILE
        where = str(self.directory)
        if cfg_path.exists():
            self._config = json.loads(cfg_path.read_text(encoding="utf-8"))
            check_config(self._config, where, dim=dim, multivector_dim=multivector_dim,
                         multivector_storage=multivector_storage)
        else:
            if not create:
                raise FileNotFoundError(f"no omnivec store at {where} (missing {CONFIG_FILE})")
            if (self.directory / "items.lance").exists() and self._holds_rows():
                raise ValueError(f"{where} holds LanceDB tables but no {CONFIG_FILE}: not an omnivec store")
            self._config = new_config(dim, multivector_dim, multivector_storage, where)
            self._config["meta"] = {}
        self.dim: int = self._config["dim"]
        self.multivector_dim: int | None = self._config["multivector_dim"]
        self.multivector_storage: str = self._config["multivector_storage"]
        self._schema = items_schema(self.dim, self.multivector_dim, self.multivector_storage)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(self.directory))
        if not cfg_path.exists():                # leftovers of a creation cut short (checked empty above)
            for name in ("items", "files"):
                if (self.directory / f"{name}.lance").exists():
                    self._db.drop_table(name)
        self._items = self._db.create_table("items", schema=self._schema, exist_ok=True)
        self._files = self._db.create_table("files", schema=FILES_SCHEMA, exist_ok=True)
        self._marked: set[str] | None = None     # caches, see _known_paths (one writer per store)
        self._stored: set[str] | None = None
        self._commits = 0                        # since the last compaction
        self._rows_at_compaction = 0
        if not cfg_path.exists():           # written last: a directory with the json is a complete store
            self._write_config()

    def _holds_rows(self) -> bool:
        """Tables without a config are either a creation cut short (empty: reuse) or foreign data."""
        import lancedb

        db = lancedb.connect(str(self.directory))
        try:
            return any(db.open_table(name).count_rows() > 0 for name in ("items", "files")
                       if (self.directory / f"{name}.lance").exists())
        except Exception:       # unreadable tables: certainly not ours to overwrite
            return True

    # -- configuration and meta -------------------------------------------------------------
    def _write_config(self) -> None:
        tmp = self.directory / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(self._config, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.directory / CONFIG_FILE)

    def get_meta(self) -> dict[str, Any]:
        """Free-form settings the Index keeps with the store (model, tasks, chunking)."""
        return json.loads(json.dumps(self._config.get("meta", {})))

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the free-form meta (atomic file replace)."""
        self._config["meta"] = json.loads(json.dumps(meta))
        self._write_config()

    # -- writing -------------------------------------------------------------------------------
    def _to_arrow(self, records: Sequence[Record]) -> pa.Table:
        n = len(records)
        cols: dict[str, Any] = {
            "id": [r.id for r in records], "path": [r.path for r in records],
            "file_hash": [r.file_hash for r in records], "kind": [r.kind for r in records],
            "text": [r.text for r in records], "page": [r.page for r in records],
            "line_start": [r.line_start for r in records], "line_end": [r.line_end for r in records],
            "ordinal": [r.ordinal for r in records],
        }
        dense = np.stack([np.asarray(r.dense, dtype=np.float32) for r in records]) if n else \
            np.zeros((0, self.dim), np.float32)
        cols["dense"] = pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), self.dim)
        mdim = self.multivector_dim
        if mdim is not None:
            present = [r.multivector is not None for r in records]
            mvs = [np.asarray(r.multivector, dtype=np.float32) if r.multivector is not None
                   else np.zeros((0, mdim), np.float32) for r in records]
            if self.multivector_storage == "binary":
                cols["mbits"] = [pack_signs(m) if p else None for m, p in zip(mvs, present)]
                cols["mtokens"] = [m.shape[0] if p else None for m, p in zip(mvs, present)]
            else:
                np_type = np.float16 if self.multivector_storage == "float16" else np.float32
                flat = np.concatenate(mvs).astype(np_type) if n else np.zeros((0, mdim), np_type)
                tokens = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), mdim)
                offsets = pa.array(np.concatenate([[0], np.cumsum([m.shape[0] for m in mvs])]).astype(np.int32))
                mask = pa.array([not p for p in present], type=pa.bool_())
                cols["multi"] = pa.ListArray.from_arrays(offsets, tokens, mask=mask)
        return pa.table(cols, schema=self._schema)

    def _known_paths(self) -> tuple[set[str], set[str]]:
        """Marked and stored paths, read once then kept up to date by this writer.

        Lets a commit skip the delete of a path the store does not hold (most commits of a
        first build): each LanceDB delete scans every fragment, which made builds quadratic."""
        if self._marked is None or self._stored is None:
            self._marked = set(self.indexed_files())
            self._stored = self.stored_paths()
        return self._marked, self._stored

    def _write_items(self, records: Sequence[Record]) -> None:
        """Append records without touching markers (the middle step of a commit)."""
        if records:
            self._items.add(self._to_arrow(records))
            if self._stored is not None:
                self._stored.update(r.path for r in records)

    def _compact(self) -> None:
        """Merge the one-fragment-per-commit files so appends and deletes stay cheap; old
        versions are kept (a reader may use them) until :meth:`optimize`."""
        for table in (self._items, self._files):
            table.optimize()
        self._commits = 0
        self._rows_at_compaction = self._items.count_rows()

    def search_maxsim(self, query_tokens: np.ndarray, k: int, prefetch: int,
                      dense_query: np.ndarray) -> list[tuple[Record, float]]:
        raise NotImplementedError("LanceStore has no native MaxSim (native_maxsim is False)")

    def commit_files(self, files: Sequence[tuple[str, str, Sequence[Record]]]) -> None:
        """Commit several files at once (path, hash, records): same order rule, one write per step.

        Markers of the batch are dropped first and re-added last, so a crash anywhere in between
        leaves these paths un-indexed, never indexed with partial records."""
        paths = validate_commit(files, self.dim, self.multivector_dim)
        if not paths:
            return
        marked, stored = self._known_paths()
        for chunk in _chunks([p for p in paths if p in marked]):
            self._files.delete(_in("path", chunk))
        marked.difference_update(paths)
        for chunk in _chunks([p for p in paths if p in stored]):
            self._items.delete(_in("path", chunk))
        self._write_items([r for _p, _h, recs in files for r in recs])
        self._files.add(pa.table({"path": paths, "hash": [h for _p, h, _r in files],
                                  "n_items": [len(r) for _p, _h, r in files]}, schema=FILES_SCHEMA))
        marked.update(paths)
        self._commits += 1
        if self._commits >= max(COMPACT_EVERY, self._rows_at_compaction // 200):
            self._compact()

    def commit_file(self, path: str, file_hash: str, records: Sequence[Record]) -> None:
        """Replace everything stored for ``path`` and mark it indexed (marker written last)."""
        self.commit_files([(path, file_hash, records)])

    def delete_file(self, path: str) -> None:
        """Drop the marker first, then the records, so a crash never leaves a marker without records."""
        self._files.delete(f"path = {sql_str(path)}")
        self._items.delete(f"path = {sql_str(path)}")
        if self._marked is not None and self._stored is not None:
            self._marked.discard(path)
            self._stored.discard(path)

    # -- reading ------------------------------------------------------------------------------
    def _query(self, where: str | None, columns: list[str]) -> pa.Table:
        q = self._items.search()
        if where is not None:
            q = q.where(where)
        return q.select(columns).limit(None).to_arrow()

    def indexed_files(self) -> dict[str, str]:
        t = self._files.search().select(["path", "hash"]).limit(None).to_arrow()
        return dict(zip(t["path"].to_pylist(), t["hash"].to_pylist()))

    def stored_paths(self) -> set[str]:
        return set(self._query(None, ["path"])["path"].to_pylist())

    def _records(self, t: pa.Table, scores: bool = False) -> list[Record]:
        dense = t["dense"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        dense = dense.astype(np.float32, copy=False).reshape(-1, self.dim)
        cols = {c: t[c].to_pylist() for c in PAYLOAD}
        return [Record(id=cols["id"][i], path=cols["path"][i], file_hash=cols["file_hash"][i],
                       kind=cols["kind"][i], dense=dense[i].copy(), text=cols["text"][i] or "",
                       page=cols["page"][i], line_start=cols["line_start"][i], line_end=cols["line_end"][i],
                       ordinal=cols["ordinal"][i] or 0) for i in range(t.num_rows)]

    def search_dense(self, query: np.ndarray, k: int) -> list[tuple[Record, float]]:
        """Exact top-``k`` by dot product; the score is the dot product itself (1 - LanceDB's distance)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dim {q.shape[0]}, store dim is {self.dim}")
        if k <= 0:
            return []
        t = (self._items.search(q, vector_column_name="dense").distance_type("dot")
             .select(PAYLOAD + ["dense", "_distance"]).limit(k).to_arrow())
        dots = 1.0 - t["_distance"].to_numpy(zero_copy_only=False)
        return list(zip(self._records(t), (float(s) for s in dots)))

    def get(self, ids: Sequence[str]) -> dict[str, Record]:
        out: dict[str, Record] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            for r in self._records(self._query(_in("id", chunk), PAYLOAD + ["dense"])):
                out[r.id] = r
        return out

    def multivectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """float32 (tokens, mdim) per id; (0, mdim) for a record stored without one; unknown ids omitted."""
        mdim = self.multivector_dim
        if mdim is None:
            raise ValueError(f"store {self.directory} holds no multi-vectors (built with multivector_dim=None)")
        out: dict[str, np.ndarray] = {}
        binary = self.multivector_storage == "binary"
        cols = ["id", "mbits", "mtokens"] if binary else ["id", "multi"]
        for chunk in _chunks(list(dict.fromkeys(ids))):
            t = self._query(_in("id", chunk), cols)
            row_ids = t["id"].to_pylist()
            if binary:
                for rid, buf, n in zip(row_ids, t["mbits"].to_pylist(), t["mtokens"].to_pylist()):
                    out[rid] = unpack_signs(buf, n, mdim) if buf is not None else np.zeros((0, mdim), np.float32)
                continue
            multi = t["multi"].combine_chunks()
            lengths = multi.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            flat = multi.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, mdim)
            for rid, part in zip(row_ids, np.split(flat, np.cumsum(lengths)[:-1])):
                out[rid] = part
        return out

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        """(id, text) of committed records only: rows whose path and hash match a marker."""
        committed = self.indexed_files()
        t = self._query(None, ["id", "text", "path", "file_hash"])
        for rid, text, path, fh in zip(t["id"].to_pylist(), t["text"].to_pylist(), t["path"].to_pylist(),
                                       t["file_hash"].to_pylist()):
            if committed.get(path) == fh:
                yield rid, text or ""

    def count(self) -> int:
        return self._items.count_rows()

    def size_bytes(self) -> int:
        """Bytes of the directory, old versions included until :meth:`optimize` prunes them."""
        return dir_size(str(self.directory))

    def optimize(self, keep_versions_for: timedelta = timedelta(0)) -> None:
        """Compact the small fragments each commit leaves and drop superseded versions (reclaims disk).

        The default keeps no old version: right for one writer and no concurrent readers (the
        index command); pass a longer ``keep_versions_for`` when a searcher may be reading."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
            for table in (self._items, self._files):
                table.optimize(cleanup_older_than=keep_versions_for)

    def close(self) -> None:
        """LanceDB holds no locks or open handles worth closing; drop references."""
        self._items = self._files = self._db = None  # type: ignore[assignment]
