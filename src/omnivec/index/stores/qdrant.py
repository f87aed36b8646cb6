"""Qdrant store: a server by URL, or qdrant-client's in-process local mode (a directory or memory).

One collection ``<name>`` holds the items: a named dense vector ``dense`` (dot product, vectors
are normalised) and, when the store has multi-vectors, a named multi-vector ``multi`` compared
with MAX_SIM (float16 or float32; no HNSW graph, it only reranks). Binary multi-vectors are
sign bits in the payload instead, since Qdrant has no bit datatype for raw vectors. A second
collection ``<name>__files`` holds the per-file markers plus one config point (dims, storage,
free-form meta). Point ids are UUIDs derived from :attr:`Record.id`, which the payload keeps.
"""
from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..store import MultivectorStorage
from ..types import Record
from .common import check_config, dir_size, new_config, pack_signs, unpack_signs, validate_commit

_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/omnivec/index")
CONFIG_ID = str(uuid.uuid5(_NS, "omnivec:store-config"))
BATCH = 256
BATCH_FLOATS = 1_000_000      # ~10-20 MB of JSON per upsert request
PAYLOAD = ["id", "path", "file_hash", "kind", "text", "page", "line_start", "line_end", "ordinal"]


def point_id(record_id: str) -> str:
    """Qdrant wants UUIDs or integers: a stable UUID per record id."""
    return str(uuid.uuid5(_NS, "item:" + record_id))


def marker_id(path: str) -> str:
    return str(uuid.uuid5(_NS, "file:" + path))


class QdrantStore:
    """Items and markers in two Qdrant collections; works against a server or local mode alike."""

    native_maxsim = True      # float32/float16: two-stage MaxSim query inside Qdrant

    def __init__(self, client: Any, collection: str, *, local_path: str | Path | None = None,
                 is_local: bool = False, dim: int | None = None, multivector_dim: int | None = None,
                 multivector_storage: MultivectorStorage | None = None, create: bool = True) -> None:
        from qdrant_client import models

        self._m = models
        self.client = client
        self.collection = collection
        self.files_collection = collection + "__files"
        self._local_path = Path(local_path) if local_path is not None else None
        self._is_local = is_local
        self._stored: set[str] | None = None     # see _known_stored
        where = f"qdrant collection {collection!r}"
        config = self._read_config()
        if config is not None:
            check_config(config, where, dim=dim, multivector_dim=multivector_dim,
                         multivector_storage=multivector_storage)
            self._config = config
        else:
            leftovers = [c for c in (collection, self.files_collection) if client.collection_exists(c)]
            if any(client.count(c, exact=True).count for c in leftovers):
                raise ValueError(f"{where} exists but has no omnivec config point: not an omnivec store")
            if not create:
                raise FileNotFoundError(f"no omnivec store in {where}")
            for c in leftovers:                  # empty: a creation cut short, start it again
                client.delete_collection(c)
            self._config = new_config(dim, multivector_dim, multivector_storage, where)
            self._config["meta"] = {}
            self._create_collections()
            self._write_config()                 # last: its presence means the store is complete
        self.dim: int = self._config["dim"]
        self.multivector_dim: int | None = self._config["multivector_dim"]
        self.multivector_storage: str = self._config["multivector_storage"]
        self._native_multi = self.multivector_dim is not None and self.multivector_storage != "binary"

    # -- setup and config ---------------------------------------------------------------------
    def _create_collections(self) -> None:
        m = self._m
        cfg = self._config
        vectors = {"dense": m.VectorParams(size=cfg["dim"], distance=m.Distance.DOT)}
        if cfg["multivector_dim"] is not None and cfg["multivector_storage"] != "binary":
            vectors["multi"] = m.VectorParams(
                size=cfg["multivector_dim"], distance=m.Distance.DOT,
                datatype=m.Datatype.FLOAT16 if cfg["multivector_storage"] == "float16" else m.Datatype.FLOAT32,
                multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
                hnsw_config=m.HnswConfigDiff(m=0))     # rerank only: no graph to build
        self.client.create_collection(self.collection, vectors_config=vectors)
        self.client.create_collection(self.files_collection,
                                      vectors_config={"unused": m.VectorParams(size=1, distance=m.Distance.DOT)})
        if not self._is_local:   # local mode ignores payload indexes (and warns)
            for name in (self.collection, self.files_collection):
                self.client.create_payload_index(name, "path", field_schema=m.PayloadSchemaType.KEYWORD)

    def _read_config(self) -> dict[str, Any] | None:
        if not self.client.collection_exists(self.files_collection):
            return None
        found = self.client.retrieve(self.files_collection, [CONFIG_ID], with_payload=True)
        if not found:
            return None
        return json.loads(found[0].payload["omnivec_config"])

    def _write_config(self) -> None:
        point = self._m.PointStruct(id=CONFIG_ID, vector={"unused": [1.0]},
                                    payload={"omnivec_config": json.dumps(self._config, ensure_ascii=False)})
        self.client.upsert(self.files_collection, [point], wait=True)

    def get_meta(self) -> dict[str, Any]:
        """Free-form settings the Index keeps with the store (model, tasks, chunking)."""
        return json.loads(json.dumps(self._config.get("meta", {})))

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the free-form meta (one point upsert, so it is all-or-nothing)."""
        self._config["meta"] = json.loads(json.dumps(meta))
        self._write_config()

    # -- writing -------------------------------------------------------------------------------
    def _point(self, r: Record) -> Any:
        vector: dict[str, Any] = {"dense": np.asarray(r.dense, dtype=np.float32).tolist()}
        payload: dict[str, Any] = {"id": r.id, "path": r.path, "file_hash": r.file_hash, "kind": r.kind,
                                   "text": r.text, "page": r.page, "line_start": r.line_start,
                                   "line_end": r.line_end, "ordinal": r.ordinal}
        if r.multivector is not None:
            mv = np.asarray(r.multivector, dtype=np.float32)
            if self._native_multi:
                if mv.shape[0] > 0:           # Qdrant rejects an empty multi-vector: leave it out
                    vector["multi"] = mv.tolist()
            else:
                payload["mbits"] = base64.b64encode(pack_signs(mv)).decode("ascii")
                payload["mtokens"] = int(mv.shape[0])
        return self._m.PointStruct(id=point_id(r.id), vector=vector, payload=payload)

    def _known_stored(self) -> set[str] | None:
        """Local mode only: paths holding records, read once then kept up to date.

        Local mode evaluates a delete filter in Python over every point, which made a build
        quadratic; its folder lock guarantees we are the only writer, so a cache is exact.
        A server filters through the payload index and may have other writers: no cache."""
        if not self._is_local:
            return None
        if self._stored is None:
            self._stored = self.stored_paths()
        return self._stored

    def _write_items(self, records: Sequence[Record]) -> None:
        """Upsert records without touching markers (the middle step of a commit).

        Batches hold at most BATCH points and about BATCH_FLOATS numbers, so a few long
        multi-vectors (PDF pages) do not make one request larger than the server accepts."""
        batch: list[Any] = []
        floats = 0
        for r in records:
            size = self.dim + (int(np.size(r.multivector)) if r.multivector is not None else 0)
            if batch and (len(batch) >= BATCH or floats + size > BATCH_FLOATS):
                self.client.upsert(self.collection, batch, wait=True)
                batch, floats = [], 0
            batch.append(self._point(r))
            floats += size
        if batch:
            self.client.upsert(self.collection, batch, wait=True)
        if self._stored is not None:
            self._stored.update(r.path for r in records)

    def _path_filter(self, paths: Sequence[str]) -> Any:
        m = self._m
        return m.Filter(must=[m.FieldCondition(key="path", match=m.MatchAny(any=list(paths)))])

    def commit_files(self, files: Sequence[tuple[str, str, Sequence[Record]]]) -> None:
        """Commit several files (path, hash, records): drop their markers, replace their records,
        write the markers last. A crash in between leaves the paths un-indexed, never half-indexed."""
        m = self._m
        paths = validate_commit(files, self.dim, self.multivector_dim)
        if not paths:
            return
        self.client.delete(self.files_collection, m.PointIdsList(points=[marker_id(p) for p in paths]), wait=True)
        stored = self._known_stored()
        held = [p for p in paths if stored is None or p in stored]
        if held:
            self.client.delete(self.collection, m.FilterSelector(filter=self._path_filter(held)), wait=True)
        self._write_items([r for _p, _h, recs in files for r in recs])
        markers = [m.PointStruct(id=marker_id(p), vector={"unused": [1.0]},
                                 payload={"path": p, "hash": h, "n_items": len(recs)}) for p, h, recs in files]
        for start in range(0, len(markers), BATCH):
            self.client.upsert(self.files_collection, markers[start:start + BATCH], wait=True)

    def commit_file(self, path: str, file_hash: str, records: Sequence[Record]) -> None:
        """Replace everything stored for ``path`` and mark it indexed (marker written last)."""
        self.commit_files([(path, file_hash, records)])

    def delete_file(self, path: str) -> None:
        """Marker first, then records: a crash never leaves a marker without its records."""
        m = self._m
        self.client.delete(self.files_collection, m.PointIdsList(points=[marker_id(path)]), wait=True)
        self.client.delete(self.collection, m.FilterSelector(filter=self._path_filter([path])), wait=True)
        if self._stored is not None:
            self._stored.discard(path)

    # -- reading ------------------------------------------------------------------------------
    def _scroll(self, collection: str, payload: list[str]) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self.client.scroll(collection, limit=1024, offset=offset, with_payload=payload,
                                                with_vectors=False)
            yield from points
            if offset is None:
                return

    def indexed_files(self) -> dict[str, str]:
        return {p.payload["path"]: p.payload["hash"] for p in self._scroll(self.files_collection, ["path", "hash"])
                if "path" in (p.payload or {})}

    def stored_paths(self) -> set[str]:
        return {p.payload["path"] for p in self._scroll(self.collection, ["path"])}

    def _record(self, point: Any) -> Record:
        p = point.payload
        vec = point.vector["dense"] if isinstance(point.vector, dict) else point.vector
        return Record(id=p["id"], path=p["path"], file_hash=p["file_hash"], kind=p["kind"],
                      dense=np.asarray(vec, dtype=np.float32), text=p.get("text") or "", page=p.get("page"),
                      line_start=p.get("line_start"), line_end=p.get("line_end"), ordinal=p.get("ordinal") or 0)

    def search_dense(self, query: np.ndarray, k: int) -> list[tuple[Record, float]]:
        """Top-``k`` by dot product (Qdrant's DOT score is the dot product itself)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query has dim {q.shape[0]}, store dim is {self.dim}")
        if k <= 0:
            return []
        res = self.client.query_points(self.collection, query=q.tolist(), using="dense", limit=k,
                                       with_payload=PAYLOAD, with_vectors=["dense"])
        return [(self._record(p), float(p.score)) for p in res.points]

    def optimize(self) -> None:
        """Qdrant optimises its segments itself."""

    def search_maxsim(self, query_tokens: np.ndarray, k: int, prefetch: int,
                      dense_query: np.ndarray) -> list[tuple[Record, float]]:
        """Dense top-``prefetch``, reranked by MaxSim, best ``k``.

        float32/float16 storage runs it in Qdrant as one two-stage query (prefetch on ``dense``,
        then MAX_SIM on ``multi``); binary storage reranks here with the +-1/sqrt(mdim) rows."""
        if self.multivector_dim is None:
            raise ValueError(f"qdrant collection {self.collection!r} holds no multi-vectors")
        qt = np.asarray(query_tokens, dtype=np.float32)
        if qt.ndim != 2 or qt.shape[1] != self.multivector_dim:
            raise ValueError(f"query tokens have shape {qt.shape}, expected (tokens, {self.multivector_dim})")
        dq = np.asarray(dense_query, dtype=np.float32).reshape(-1)
        if self._native_multi:
            m = self._m
            res = self.client.query_points(
                self.collection, prefetch=m.Prefetch(query=dq.tolist(), using="dense", limit=prefetch),
                query=qt.tolist(), using="multi", limit=k, with_payload=PAYLOAD, with_vectors=["dense"])
            return [(self._record(p), float(p.score)) for p in res.points]
        from ...scoring import maxsim_scores

        cands = [r for r, _s in self.search_dense(dq, prefetch)]
        mvs = self.multivectors([r.id for r in cands])
        scores = maxsim_scores([qt], [mvs[r.id] for r in cands])[0] if cands else np.zeros(0)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(cands[i], float(scores[i])) for i in order]

    def _retrieve(self, ids: Sequence[str], payload: list[str], vectors: bool | list[str]) -> Iterator[Any]:
        """Points of ``ids`` (duplicates dropped, unknown ids skipped), fetched in batches."""
        uniq = list(dict.fromkeys(ids))
        for start in range(0, len(uniq), BATCH * 4):
            yield from self.client.retrieve(self.collection, [point_id(i) for i in uniq[start:start + BATCH * 4]],
                                            with_payload=payload, with_vectors=vectors)

    def get(self, ids: Sequence[str]) -> dict[str, Record]:
        records = (self._record(p) for p in self._retrieve(ids, PAYLOAD, ["dense"]))
        return {r.id: r for r in records}

    def multivectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """float32 (tokens, mdim) per id; (0, mdim) for a record stored without one; unknown ids omitted."""
        mdim = self.multivector_dim
        if mdim is None:
            raise ValueError(f"qdrant collection {self.collection!r} holds no multi-vectors")
        out: dict[str, np.ndarray] = {}
        payload = ["id"] if self._native_multi else ["id", "mbits", "mtokens"]
        vectors: bool | list[str] = ["multi"] if self._native_multi else False
        for p in self._retrieve(ids, payload, vectors):
            rid = p.payload["id"]
            if self._native_multi:
                rows = (p.vector or {}).get("multi") if isinstance(p.vector, dict) else None
                out[rid] = (np.asarray(rows, dtype=np.float32).reshape(-1, mdim) if rows
                            else np.zeros((0, mdim), np.float32))
            elif p.payload.get("mbits") is not None:
                out[rid] = unpack_signs(base64.b64decode(p.payload["mbits"]), p.payload["mtokens"], mdim)
            else:
                out[rid] = np.zeros((0, mdim), np.float32)
        return out

    def iter_texts(self) -> Iterator[tuple[str, str]]:
        """(id, text) of committed records only: rows whose path and hash match a marker."""
        committed = self.indexed_files()
        for p in self._scroll(self.collection, ["id", "text", "path", "file_hash"]):
            if committed.get(p.payload["path"]) == p.payload["file_hash"]:
                yield p.payload["id"], p.payload.get("text") or ""

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def size_bytes(self) -> int:
        """Local mode: bytes of the two collections' folders; a server: 0 (unknown from here)."""
        if self._local_path is None:
            return 0
        base = self._local_path / "collection"
        return dir_size(str(base / self.collection)) + dir_size(str(base / self.files_collection))

    def close(self) -> None:
        self.client.close()
