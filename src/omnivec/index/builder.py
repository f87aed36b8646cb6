"""Folder -> store synchronisation: the indexing half of :class:`~omnivec.index.Index`.

Why a module of its own: this is the part with the crash-safety and incremental rules, and it
reads better without search around it. The rules:

* a file is (re)embedded only when its sha256 differs from the committed one;
* items are embedded in calls that span files (the model's batch size), and every file whose
  items all have vectors is committed right after the call (``commit_files``/``commit_file``
  write the file marker last), so a killed run loses at most the files in flight;
* files that disappeared, or are now skipped, are deleted, as are partial records of files
  that are gone; a file that cannot be read, OCR'd or embedded is reported and never stops the run.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .progress import IndexProgress
from .types import Item, Record

if TYPE_CHECKING:
    from ..embedder import Embedder
    from .ingest import SourceFile

PASSAGE_TASK = "retrieval.passage"
# Embed this many images (OCR on text-only models, vision tower otherwise) per call at most:
# each costs far more than a text chunk, and files are committed between calls.
IMAGES_PER_CALL = 8


@dataclass
class IndexSummary:
    """What one :meth:`Index.add_path` run did."""

    files: int = 0                  # indexable files found under the root
    new: int = 0                    # not indexed before (files that then failed included)
    changed: int = 0                # indexed with another content hash
    unchanged: int = 0
    removed: int = 0                # files dropped from the index (deleted or now skipped)
    items: int = 0                  # items embedded in this run
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason): not indexable
    errors: list[tuple[str, str]] = field(default_factory=list)    # (path, reason): failed to read/embed
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [list(x) for x in self.skipped]
        d["errors"] = [list(x) for x in self.errors]
        return d


@dataclass
class _FileJob:
    """A file whose items are being embedded; committed once every item has its vectors."""

    path: str
    file_hash: str
    items: list[Item]
    dense: list[np.ndarray | None] = field(default_factory=list)
    multi: list[np.ndarray | None] = field(default_factory=list)
    failed: bool = False

    def __post_init__(self) -> None:
        self.dense = [None] * len(self.items)
        self.multi = [None] * len(self.items)

    @property
    def complete(self) -> bool:
        return all(d is not None for d in self.dense)


def record_id(path: str, ordinal: int) -> str:
    """Stable id of a file's ``ordinal``-th item (the same path and ordinal give the same id)."""
    return f"{hashlib.sha256(path.encode('utf-8')).hexdigest()[:16]}-{ordinal}"


def token_counter(embedder: "Embedder") -> Callable[[str], int]:
    """Counts tokens with the model's own tokenizer (the processor's), so chunks fit its window."""
    processor = embedder.model.processor
    return lambda text: len(processor.text_ids(text))


class FolderSync:
    """One synchronisation run of a folder into a store with one embedder and fixed settings."""

    def __init__(self, store: Any, model: "Embedder", *, multivector: bool, chunk_tokens: int,
                 chunk_overlap: int, limits: Any = None, pdf_text: str = "auto") -> None:
        """``pdf_text``: how a text-only model reads PDF pages (``omnivec.PDF(text=...)``)."""
        self.store = store
        self.pdf_text = pdf_text
        self.model = model
        self.multivector = multivector
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.limits = limits

    def run(self, root: Path, progress: bool | None = None) -> IndexSummary:
        """Make the store hold exactly the indexable files of ``root`` (an existing folder)."""
        from .ingest import file_hash, scan

        start = time.perf_counter()
        files, skipped = scan(root)
        summary = IndexSummary(files=len(files), skipped=[(str(p), str(r)) for p, r in skipped])
        indexed = self.store.indexed_files()
        stored = self.store.stored_paths()
        todo: list[tuple[SourceFile, str]] = []
        for source in files:
            try:
                digest = file_hash(source.abs_path)
            except OSError as e:
                summary.errors.append((source.rel_path, f"unreadable: {e.strerror or e}"))
                if source.rel_path in indexed:
                    self.store.delete_file(source.rel_path)
                continue
            old = indexed.get(source.rel_path)
            if old == digest:
                summary.unchanged += 1
                continue
            if old is None:
                summary.new += 1
            else:
                summary.changed += 1
            todo.append((source, digest))
        # Files gone from the folder (or now skipped), and partial records of files that are gone.
        present = {s.rel_path for s in files}
        for path in sorted((set(indexed) | stored) - present):
            self.store.delete_file(path)
            summary.removed += path in indexed
        with IndexProgress(len(todo), progress) as bar:
            self._embed_files(todo, indexed, summary, bar)
        if todo or summary.removed:
            self.store.optimize()           # LanceDB: compact the many small commits
        summary.seconds = time.perf_counter() - start
        return summary

    def _embed_files(self, todo: Sequence[tuple["SourceFile", str]], indexed: dict[str, str],
                     summary: IndexSummary, bar: IndexProgress) -> None:
        """Read files in order, embed their items in calls spanning files, commit each finished file."""
        from .ingest import IngestError

        per_call = max(1, int(self.model.max_batch_rows))
        pending: list[_FileJob] = []
        buffer: list[tuple[_FileJob, int]] = []

        def fail(path: str, reason: str) -> None:
            summary.errors.append((path, reason))
            if path in indexed:          # the stored version no longer matches the file
                self.store.delete_file(path)
            bar.files_done()

        for source, digest in todo:
            try:
                items = read_file_items(source, self.model, chunk_tokens=self.chunk_tokens,
                                        chunk_overlap=self.chunk_overlap, limits=self.limits,
                                        pdf_text=self.pdf_text)
            except IngestError as e:
                fail(source.rel_path, e.reason)
                continue
            job = _FileJob(source.rel_path, digest, list(items))
            pending.append(job)
            buffer.extend((job, i) for i in range(len(job.items)))
            images = sum(1 for j, i in buffer if not isinstance(j.items[i].content, str))
            if len(buffer) >= per_call or images >= IMAGES_PER_CALL:
                self._embed_buffer(buffer, fail, summary, bar)
                pending = self._commit_ready(pending, bar)
        self._embed_buffer(buffer, fail, summary, bar)
        self._commit_ready(pending, bar)

    def _embed_buffer(self, buffer: list[tuple[_FileJob, int]], fail: Callable[[str, str], None],
                      summary: IndexSummary, bar: IndexProgress) -> None:
        """Embed every buffered item in one call; a file whose input is rejected fails alone."""
        if not buffer:
            return
        contents = [job.items[i].content for job, i in buffer]
        res, rejected = self.model.embed_skipping(
            contents, PASSAGE_TASK, dense=True, multivector=self.multivector, progress=False,
            limits=self.limits if _is_input_limits(self.limits) else None)
        for index, reason in sorted(rejected.items()):
            bad = buffer[index][0]
            if not bad.failed:
                bad.failed = True
                fail(bad.path, f"cannot embed: {reason}")
        for row, origin in enumerate(res.origins):
            job, i = buffer[origin]
            job.dense[i] = res.dense[row]
            if self.multivector:
                job.multi[i] = res.multivector[row]
        embedded = sum(1 for origin in res.origins if not buffer[origin][0].failed)
        summary.items += embedded
        bar.items_embedded(embedded)
        buffer.clear()

    def _commit_ready(self, pending: list[_FileJob], bar: IndexProgress) -> list[_FileJob]:
        """Commit every fully embedded file (one store call); returns the files still in flight."""
        ready = [j for j in pending if not j.failed and j.complete]
        if ready:
            batch = [(j.path, j.file_hash, self._records(j)) for j in ready]
            self.store.commit_files(batch)
            bar.files_done(len(ready))
        return [j for j in pending if not j.failed and not j.complete]

    def _records(self, job: _FileJob) -> list[Record]:
        return file_records(job.path, job.file_hash, job.items, job.dense, job.multi if self.multivector else None)


def file_records(path: str, file_hash: str, items: Sequence[Item], dense: Sequence[np.ndarray],
                 multi: Sequence[np.ndarray] | None) -> list[Record]:
    """A file's items and their vectors as the records a store commits (ids from path + ordinal)."""
    return [Record(id=record_id(path, i), path=path, file_hash=file_hash, kind=item.kind,
                   dense=np.asarray(dense[i], dtype=np.float32),
                   multivector=None if multi is None else multi[i], text=item.text or "",
                   page=item.page, line_start=item.line_start, line_end=item.line_end, ordinal=i)
            for i, item in enumerate(items)]


def read_file_items(source: "SourceFile", model: "Embedder", *, chunk_tokens: int, chunk_overlap: int,
                    limits: Any = None, pdf_text: str = "auto") -> list[Item]:
    """One file's items as the index embeds them (OCR text for images on text-only models).

    Raises :class:`~omnivec.index.ingest.IngestError` with a reason for people when the file
    cannot be read, decoded or OCR'd; a missing OCR install is raised as ImportError (a setup
    problem, not this file's).
    """
    from .ingest import IngestError, read_items

    reads_images = model.model.capabilities.native_images
    try:
        items = read_items(source, count_tokens=token_counter(model), max_tokens=chunk_tokens,
                           overlap=chunk_overlap, limits=limits, pdf_text=None if reads_images else pdf_text)
    except OSError as e:
        raise IngestError(f"unreadable: {e.strerror or e}") from None
    if not reads_images:
        try:
            _ocr_to_text(items)
        except ImportError:
            raise
        except Exception as e:   # noqa: BLE001 - one odd image must not stop the run
            raise IngestError(f"OCR failed: {type(e).__name__}: {e}") from None
    return items


def _ocr_to_text(items: Sequence[Item]) -> None:
    """Replace image contents by their OCR text, what a text-only model would embed anyway.

    Doing it here instead of inside the model gives the same vectors and keeps the text for
    BM25 and snippets.

    The text also becomes the item's ``text`` (lexical search, snippets) unless the item has
    one already (a PDF page's text layer reads better than OCR output).
    """
    from ..ocr import ocr_image
    for item in items:
        if not isinstance(item.content, str):
            item.content = ocr_image(item.content)
            if not item.text:
                item.text = item.content


def _is_input_limits(limits: Any) -> bool:
    from ..inputs import InputLimits
    return isinstance(limits, InputLimits)
