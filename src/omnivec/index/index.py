"""``Index``: a folder mirrored into a vector store, searchable by meaning, words, or both.

>>> ix = omnivec.Index("./docs.omnivec", model=omnivec.load())   # doctest: +SKIP
>>> ix.add_path("./docs")                                          # doctest: +SKIP
>>> ix.search("how are refunds handled?", k=5)                     # doctest: +SKIP

What an index is (the rules this module keeps):

* **One model per store.** The model's name and dimensions are written into the store's meta
  when it is created; reopening with another model is an error (the vectors would not be
  comparable). Reopening with ``model=None`` loads the recorded model.
* **One task rule.** Every item (text, code, image, PDF page) is embedded with
  ``retrieval.passage`` and every query with ``retrieval.query``, whatever the corpus holds.
  Code is *not* embedded with ``code.passage``: on jina-embeddings-v4 that selects another LoRA
  adapter, whose vectors do not share a space with ``retrieval.query`` ones, and one ranking
  needs one space. (On the default e5 model both tasks are the same "passage: " prompt.)
* **Paths are relative to the folder given to** :meth:`Index.add_path` ('/'-separated), and
  hits report them that way. An index mirrors that one folder: after ``add_path(root)`` the
  index holds exactly the indexable files under ``root``; anything else it held is removed.
* **Crash safety and incremental updates**: see :mod:`omnivec.index.builder`.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..inputs.pdf import PDF_TEXT_MODES
from .builder import PASSAGE_TASK, FolderSync, IndexSummary
from .lexical import CachedBM25, rrf
from .snippets import make_snippet
from .types import Hit, Record

if TYPE_CHECKING:
    from ..embedder import Embedder

QUERY_TASK = "retrieval.query"
META_VERSION = 1

Rerank = Literal["none", "maxsim"]


class IndexMismatchError(ValueError):
    """The store was built with another model or settings than the ones asked for."""


def model_ref(model: Any) -> str | None:
    """How to load ``model`` again later: a built-in name, a hub id, or an absolute directory."""
    if model is None:
        return None
    path = Path(os.path.expanduser(str(model)))
    return str(path.resolve()) if path.is_dir() else str(model)


def index_meta(model: str, model_ref: str | None, dim: int, multivector_dim: int | None, storage: str,
               chunk_tokens: int, chunk_overlap: int, pdf_text: str) -> dict[str, Any]:
    """The settings an index store records at creation (what :class:`Index` reopens it with).

    Public so that a store filled by another writer (``omnivec embed-dataset``) is an index
    ``omnivec search`` opens like any other."""
    return {"omnivec_index": META_VERSION, "model": model, "model_ref": model_ref or model, "dim": dim,
            "multivector": multivector_dim is not None, "multivector_dim": multivector_dim,
            "multivector_storage": storage if multivector_dim is not None else None,
            "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap, "pdf_text": pdf_text,
            "query_task": QUERY_TASK, "passage_task": PASSAGE_TASK, "root": None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class Index:
    """A searchable index of a folder, kept in a LanceDB directory or a Qdrant collection.

    ``store``: a directory (LanceDB, created when missing), ``qdrant://host:6333/collection``,
    ``qdrant+local:///dir/collection`` or ``qdrant+memory:///collection``.
    ``model``: an :class:`~omnivec.Embedder`, a model name/directory, or None (the model the
    store was built with; the embedded default for a new store).
    ``multivector``, ``multivector_storage``, ``chunk_tokens``, ``chunk_overlap``: fixed when
    the store is created; None means "as stored" (defaults: False, float16, 256, 32). Asking an
    existing store for different values raises :class:`IndexMismatchError`.
    ``pdf_text`` (fixed at creation too; default ``auto``): how a text-only model reads PDF
    pages, ``omnivec.PDF(text=...)``'s rule (``auto``: a page's text layer when it holds
    enough text, else OCR; ``layer``; ``ocr``). Indexes built before this setting are ``ocr``.
    Models with native images always embed the page image.
    ``create=False`` raises FileNotFoundError instead of creating a missing store.
    """

    def __init__(self, store: str | Path = "./docs.omnivec", model: "Embedder | str | None" = None, *,
                 multivector: bool | None = None, multivector_storage: str | None = None,
                 chunk_tokens: int | None = None, chunk_overlap: int | None = None,
                 pdf_text: str | None = None, limits: Any = None, device: str | None = None,
                 create: bool = True) -> None:
        from .stores import open_store

        if pdf_text is not None and pdf_text not in PDF_TEXT_MODES:
            raise ValueError(f"pdf_text must be one of {', '.join(PDF_TEXT_MODES)}, got {pdf_text!r}")
        self.spec = str(store)
        self.limits = limits
        self._bm25 = CachedBM25()
        try:
            st = open_store(self.spec, create=False)
        except FileNotFoundError:
            st = None
        try:
            meta = st.get_meta() if st is not None else {}
            if st is not None and not meta.get("model"):
                if st.count():
                    raise IndexMismatchError(f"{self.spec} is a vector store without index settings "
                                             "(not written by omnivec.Index); use a new store")
                st.close()
                st = None     # an empty store left by an interrupted creation: start afresh
            if st is None:
                if not create:
                    raise FileNotFoundError(f"no index at {self.spec}: build one with `omnivec index PATH "
                                            f"--store {self.spec}` or Index(...).add_path(PATH)")
                self.model = self._resolve_model(model, None, device)
                meta = self._new_meta(model, bool(multivector), multivector_storage or "float16",
                                      256 if chunk_tokens is None else chunk_tokens,
                                      32 if chunk_overlap is None else chunk_overlap, pdf_text or "auto")
                st = open_store(self.spec, dim=self.model.dim,
                                multivector_dim=self.model.multivector_dim if multivector else None,
                                multivector_storage=meta["multivector_storage"] or "float16", create=True)
                st.set_meta(meta)
            else:
                meta.setdefault("pdf_text", "ocr")    # indexes from before the setting OCRed every page
                self._check_settings(meta, multivector, multivector_storage, chunk_tokens, chunk_overlap, pdf_text)
                self.model = self._resolve_model(model, meta, device)
                self._check_model(meta)
        except BaseException:
            if st is not None:
                st.close()
            raise
        self.store = st
        self.meta = meta
        self.multivector: bool = bool(meta["multivector"])
        self.chunk_tokens: int = int(meta["chunk_tokens"])
        self.chunk_overlap: int = int(meta["chunk_overlap"])
        self.pdf_text: str = str(meta["pdf_text"])

    # ------------------------------------------------------------------ opening
    def _new_meta(self, model_arg: Any, multivector: bool, storage: str, chunk_tokens: int,
                  chunk_overlap: int, pdf_text: str) -> dict[str, Any]:
        if chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be >= 16, got {chunk_tokens}")
        if not 0 <= chunk_overlap < chunk_tokens:
            raise ValueError(f"chunk_overlap must be in [0, chunk_tokens), got {chunk_overlap}")
        info = self.model.info()
        ref = model_ref(model_arg) if isinstance(model_arg, (str, os.PathLike)) else info["model"]
        return index_meta(info["model"], ref, self.model.dim, self.model.multivector_dim if multivector else None,
                          storage, chunk_tokens, chunk_overlap, pdf_text)

    def _check_settings(self, meta: dict[str, Any], multivector: bool | None, storage: str | None,
                        chunk_tokens: int | None, chunk_overlap: int | None, pdf_text: str | None) -> None:
        asked = {"multivector": multivector, "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap,
                 "pdf_text": pdf_text,
                 "multivector_storage": storage if meta.get("multivector") or multivector else None}
        for key, want in asked.items():
            if want is not None and meta.get(key) != want:
                raise IndexMismatchError(
                    f"the index at {self.spec} was built with {key}={meta.get(key)!r}, not {want!r}; "
                    "omit the option to use the index as built, or index into a new store")

    @staticmethod
    def _resolve_model(model: Any, meta: dict[str, Any] | None, device: str | None) -> "Embedder":
        from ..embedder import Embedder
        if isinstance(model, Embedder):
            return model
        import omnivec
        if model is None and meta is not None:
            ref = meta.get("model_ref") or meta.get("model")
            try:
                return omnivec.load(ref, device=device)
            except (ValueError, OSError) as e:
                raise IndexMismatchError(f"cannot load the model this index was built with ({ref!r}): {e}; "
                                         "pass model= explicitly (the same model)") from e
        return omnivec.load(model, device=device)

    def _check_model(self, meta: dict[str, Any]) -> None:
        info = self.model.info()
        want = (meta.get("model"), meta.get("dim"))
        got = (info["model"], self.model.dim)
        mdim_ok = not meta.get("multivector") or meta.get("multivector_dim") == self.model.multivector_dim
        if want != got or not mdim_ok:
            raise IndexMismatchError(
                f"the index at {self.spec} was built with model {want[0]!r} (dim {want[1]}), but "
                f"{got[0]!r} (dim {got[1]}) was given: vectors of different models are not comparable. "
                "Use the same model (or model=None to load it), or index into a new store")

    # ------------------------------------------------------------------ indexing
    def add_path(self, root: str | Path, *, progress: bool | None = None) -> IndexSummary:
        """Make the index mirror the folder ``root``: embed new and changed files, drop removed ones.

        Unchanged files (same sha256) are not read again. Unreadable or corrupt files land in
        ``errors`` and never stop the run. ``progress=None`` shows a bar only on a terminal.
        """
        root_path = Path(root).expanduser().resolve()
        if not root_path.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        if self.meta.get("root") != str(root_path):
            self.meta["root"] = str(root_path)
            self.store.set_meta(self.meta)
        sync = FolderSync(self.store, self.model, multivector=self.multivector, chunk_tokens=self.chunk_tokens,
                          chunk_overlap=self.chunk_overlap, limits=self.limits, pdf_text=self.pdf_text)
        try:
            return sync.run(root_path, progress)
        finally:
            self._bm25.clear()

    def remove_path(self, path: str | Path) -> int:
        """Drop a file, or every file under a folder, from the index; returns how many files.

        ``path`` is relative to the indexed root (as hits report it), or an absolute path inside it.
        """
        text = str(path)
        root = self.meta.get("root")
        if os.path.isabs(text) and root:
            try:
                text = os.path.relpath(text, root)
            except ValueError:
                return 0
        rel = text.replace(os.sep, "/").strip("/")
        while rel.startswith("./"):
            rel = rel[2:]
        if rel.startswith(".."):
            return 0
        known = set(self.store.indexed_files()) | self.store.stored_paths()
        targets = sorted(p for p in known if rel in ("", ".") or p == rel or p.startswith(rel + "/"))
        for p in targets:
            self.store.delete_file(p)
        self._bm25.clear()
        return len(targets)

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int = 10, *, rerank: Rerank | None = None, hybrid: bool = False,
               candidates: int = 100) -> list[Hit]:
        """The ``k`` best items for ``query``, best first.

        Dense top-k by default. ``rerank="maxsim"`` (the default on a multi-vector index) takes
        the dense top-``candidates`` and reorders them by MaxSim with the query's token vectors
        (inside Qdrant when the store can). ``hybrid=True`` fuses that ranking with BM25 over the
        items' text by reciprocal rank fusion (k=60). Hits of files whose indexing was cut short
        (no commit marker) are never returned.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if k < 1 or candidates < 1:
            raise ValueError(f"k and candidates must be >= 1, got k={k}, candidates={candidates}")
        mode = rerank or ("maxsim" if self.multivector else "none")
        if mode not in ("none", "maxsim"):
            raise ValueError(f"rerank must be 'none' or 'maxsim', got {rerank!r}")
        if mode == "maxsim" and not self.multivector:
            raise ValueError("rerank='maxsim' needs multi-vectors: this index was built without them "
                             "(rebuild it with multivector=True / --multivector)")
        committed = self.store.indexed_files()
        if not committed:
            return []
        res = self.model.embed([query], QUERY_TASK, dense=True, multivector=mode == "maxsim", progress=False)
        q_dense = res.dense[0]
        depth = max(k, candidates) if hybrid else k
        if mode == "maxsim":
            ranked = self._maxsim(q_dense, res.multivector[0], depth, max(candidates, depth))
        else:
            ranked = [(r, {"dense": s}) for r, s in self.store.search_dense(q_dense, depth)]
        ranked = [(r, s) for r, s in ranked if committed.get(r.path) == r.file_hash]
        if not hybrid:
            return [self._hit(r, s, s.get("maxsim", s.get("dense", 0.0)), query) for r, s in ranked[:k]]
        return self._fuse(query, ranked, committed, k, candidates)

    def _maxsim(self, q_dense: np.ndarray, q_multi: np.ndarray, k: int,
                candidates: int) -> list[tuple[Record, dict[str, float]]]:
        """Two-stage: dense top-``candidates``, reordered by MaxSim (the store's own when it has one)."""
        if self.store.native_maxsim:
            pairs = self.store.search_maxsim(q_multi, k, candidates, q_dense)
            return [(r, {**({"dense": float(np.dot(r.dense, q_dense))} if r.dense is not None else {}),
                         "maxsim": s}) for r, s in pairs]
        from ..scoring import maxsim_scores
        cands = self.store.search_dense(q_dense, candidates)
        if not cands:
            return []
        mvs = self.store.multivectors([r.id for r, _ in cands])
        mdim = self.model.multivector_dim
        scores = maxsim_scores([q_multi], [mvs.get(r.id, np.zeros((0, mdim), np.float32)) for r, _ in cands])[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return [(cands[i][0], {"dense": cands[i][1], "maxsim": float(scores[i])}) for i in order]

    def _fuse(self, query: str, ranked: list[tuple[Record, dict[str, float]]], committed: dict[str, str],
              k: int, candidates: int) -> list[Hit]:
        """Reciprocal rank fusion of the vector ranking and BM25."""
        signature = frozenset(committed.items())
        bm25 = self._bm25.get(signature, self.store.iter_texts).search(query, candidates)
        records = {r.id: r for r, _ in ranked}
        scores = {r.id: dict(s) for r, s in ranked}
        for item_id, s in bm25:
            scores.setdefault(item_id, {})["bm25"] = s
        fused = rrf([[r.id for r, _ in ranked], [i for i, _ in bm25]])[:k]
        missing = [i for i, _ in fused if i not in records]
        if missing:
            records.update(self.store.get(missing))
        hits = []
        for item_id, score in fused:
            r = records.get(item_id)
            if r is None or committed.get(r.path) != r.file_hash:
                continue
            scores[item_id]["rrf"] = score
            hits.append(self._hit(r, scores[item_id], score, query))
        return hits

    @staticmethod
    def _hit(r: Record, scores: dict[str, float], score: float, query: str) -> Hit:
        return Hit(path=r.path, score=float(score), kind=r.kind, snippet=make_snippet(r.text, query),
                   page=r.page, line_start=r.line_start, line_end=r.line_end, id=r.id,
                   scores={key: float(v) for key, v in scores.items()})

    # ------------------------------------------------------------------ housekeeping
    def stats(self) -> dict[str, Any]:
        """Files, items, bytes on disk and the settings the index was built with."""
        return {"store": self.spec, "root": self.meta.get("root"), "files": len(self.store.indexed_files()),
                "items": self.store.count(), "size_bytes": self.store.size_bytes(),
                "model": self.meta.get("model"), "dim": self.meta.get("dim"),
                "multivector": self.multivector, "multivector_storage": self.meta.get("multivector_storage"),
                "chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap, "pdf_text": self.pdf_text}

    def close(self) -> None:
        """Release the store (Qdrant local mode holds a folder lock until then)."""
        if getattr(self, "store", None) is not None:
            self.store.close()
            self.store = None  # type: ignore[assignment]

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Index({self.spec!r}, model={self.meta.get('model')!r}, "
                f"multivector={self.multivector})")
