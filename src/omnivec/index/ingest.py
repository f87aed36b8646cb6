"""Find the files of a folder worth indexing and turn each one into embeddable :class:`Item` s.

Why here and not in the indexer: what counts as a document, how it is decoded and where it
is cut are decisions about files, not about vectors. Images and PDF pages go through the same
safe decoding and rendering as ``omnivec.Image``/``omnivec.PDF`` (limits, bomb checks, one
pdfium lock), so an indexed page looks exactly like a page embedded directly.
"""
from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..inputs import PDF, Image, InputError, InputLimits
from ..inputs.pdf import PDF_TEXT_MODES
from .chunking import chunk_code, chunk_text
from .types import Item

__all__ = ["IngestError", "SourceFile", "scan", "file_hash", "read_items", "iter_items", "DEFAULT_LIMITS"]

FileKind = Literal["text", "markdown", "code", "image", "pdf"]

_TEXT_EXT = {".txt", ".text", ".rst", ".log", ".csv", ".tsv"}
_MARKDOWN_EXT = {".md", ".markdown"}
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
_CODE_EXT = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "jsx", ".ts": "typescript", ".tsx": "tsx", ".go": "go", ".rs": "rust", ".java": "java",
    ".c": "c", ".h": "c", ".cpp": "cpp", ".hpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".rb": "ruby",
    ".sh": "shell", ".bash": "shell", ".php": "php", ".cs": "csharp", ".kt": "kotlin",
    ".swift": "swift", ".scala": "scala", ".sql": "sql", ".html": "html", ".htm": "html",
    ".css": "css", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
}
# Never documents: version control, dependency trees, caches, virtual environments.
_SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv"}
_SNIFF = 8192

# Folders hold bigger PDFs and longer manuals than one API request does. Pages are rendered
# one at a time here, so the per-document pixel budget only bounds the rendering work:
# 2.5 Gpx covers 1,000 A4/letter pages at 144 dpi.
DEFAULT_LIMITS = InputLimits(max_image_bytes=50 * 2**20, max_pdf_pages=1000, max_pdf_pixels=2_500_000_000)


class IngestError(Exception):
    """A file could not be turned into items; ``reason`` is short and meant for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceFile:
    """One file found by :func:`scan`; ``language`` is set for code only."""

    rel_path: str      # relative to the scanned root, '/'-separated
    abs_path: Path
    kind: FileKind
    language: str | None
    size: int


# --------------------------------------------------------------------------------------------
# scanning
# --------------------------------------------------------------------------------------------


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "cannot read: permission denied"
    if isinstance(e, FileNotFoundError):
        return "cannot read: file not found"
    return f"cannot read: {(e.strerror or str(e)).lower()}"


def _looks_like_text(path: Path) -> bool:
    """First 8 KB without NUL bytes that decode as UTF-8 (a cut multi-byte char is fine)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
        final = not f.read(1)
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=final)
    except UnicodeDecodeError:
        return False
    return True


def _classify(path: Path) -> tuple[FileKind, str | None] | None:
    ext = path.suffix.lower()
    if ext in _MARKDOWN_EXT:
        return "markdown", None
    if ext in _CODE_EXT:
        return "code", _CODE_EXT[ext]
    if ext in _TEXT_EXT:
        return "text", None
    if ext in _IMAGE_EXT:
        return "image", None
    if ext == ".pdf":
        return "pdf", None
    return ("text", None) if _looks_like_text(path) else None


def _is_skipped_dir(entry: os.DirEntry, include_hidden: bool) -> bool:
    name = entry.name
    return (name in _SKIP_DIRS or name.endswith(".omnivec")
            or (not include_hidden and name.startswith("."))
            or os.path.isfile(os.path.join(entry.path, "pyvenv.cfg")))  # a virtualenv by any name


def scan(
    root: Path, *, include_hidden: bool = False, max_file_bytes: int = 50 * 2**20
) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """List the indexable files under ``root`` (a folder or one file), in a stable order.

    Returns ``(files, skipped)`` where ``skipped`` holds ``(rel_path, reason)`` for files that
    were looked at and refused. Hidden entries, VCS/dependency/cache folders, virtualenvs and
    ``*.omnivec`` index folders are left out silently. Symlinks are followed only to files
    inside ``root``; linked folders are not entered (their targets are walked where they live).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    real_root = root.resolve()
    files: list[SourceFile] = []
    skipped: list[tuple[str, str]] = []

    def add(path: Path, rel: str) -> None:
        try:
            size = path.stat().st_size
            if size > max_file_bytes:
                skipped.append((rel, f"too large ({size} bytes > {max_file_bytes})"))
                return
            kind = _classify(path)
        except OSError as e:
            skipped.append((rel, _os_reason(e)))
            return
        if kind is None:
            skipped.append((rel, "unsupported file type"))
        else:
            files.append(SourceFile(rel, path, kind[0], kind[1], size))

    if not root.is_dir():
        add(real_root, root.name)
        return files, skipped

    def walk(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append((rel or ".", _os_reason(e)))
            return
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not target.exists():
                        skipped.append((sub, "broken symlink"))
                    elif not target.is_relative_to(real_root):
                        skipped.append((sub, "symlink points outside the folder"))
                    elif target.is_dir():
                        pass  # walked where it lives; following it could loop
                    elif include_hidden or not entry.name.startswith("."):
                        add(target, sub)
                elif entry.is_dir(follow_symlinks=False):
                    if not _is_skipped_dir(entry, include_hidden):
                        walk(entry.path, sub)
                elif entry.is_file(follow_symlinks=False):
                    if include_hidden or not entry.name.startswith("."):
                        add(Path(entry.path), sub)
            except OSError as e:
                skipped.append((sub, _os_reason(e)))

    walk(str(real_root), "")
    return files, skipped


def file_hash(path: Path) -> str:
    """sha256 hex digest of the file's bytes, read in blocks (what decides re-indexing)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path, cap: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read() if cap is None else f.read(cap + 1)
    except OSError as e:
        raise IngestError(_os_reason(e)) from None
    if cap is not None and len(data) > cap:
        raise IngestError(f"too large (more than {cap} bytes)")
    return data


def _decode_text(data: bytes) -> str:
    """UTF-8 (BOM dropped); a few bad bytes become U+FFFD, mostly-bad data is refused."""
    if b"\0" in data[:_SNIFF]:
        raise IngestError("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
    if text.count("\ufffd") > max(16, len(text) // 5):
        raise IngestError("not valid UTF-8 text")
    return text


def _input_error(e: InputError) -> IngestError:
    """Re-word omnivec's input errors for files ("not a valid PDF (x)" -> "corrupt PDF: x")."""
    reason = e.reason
    for what in ("PDF", "image"):
        head = f"not a valid {what} ("
        if reason.startswith(head) and reason.endswith(")"):
            return IngestError(f"corrupt {what}: {reason[len(head):-1]}")
    return IngestError(reason)


def _pdf_items(source: SourceFile, limits: InputLimits, pdf_scale: float | None,
               pdf_text: str | None) -> Iterator[Item]:
    """One item per page, rendered and read one page at a time (the document stays open).

    ``pdf_text`` (a text-only model): the ``PDF(text=...)`` rule; a page it takes from the text
    layer is never rendered and its content is that text. None: every page is rendered.
    """
    data = _read_bytes(source.abs_path, limits.max_image_bytes)
    scale = {} if pdf_scale is None else {"dpi": pdf_scale * 72.0}     # else omnivec.PDF's default
    pdf = PDF(data, text=pdf_text or "ocr", **scale)
    pages = pdf.iter_pages(limits, text=True, text_pages=pdf_text is not None)
    try:
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except InputError as e:
                raise _input_error(e) from None
            content = page.text if page.image is None else page.image   # the layer's text, or the page image
            yield Item(path=source.rel_path, kind="pdf-page", content=content, text=page.text or "",
                       page=page.index + 1, ordinal=page.index)
    finally:
        pages.close()  # abandoning this iterator closes the document at once


def iter_items(
    source: SourceFile,
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int = 256,
    overlap: int = 32,
    limits: InputLimits | None = None,
    pdf_scale: float | None = None,
    pdf_text: str | None = None,
) -> Iterator[Item]:
    """Like :func:`read_items`, but yields items as they are made (PDF pages one at a time)."""
    limits = DEFAULT_LIMITS if limits is None else limits
    if pdf_scale is not None and not 1 / 72 <= pdf_scale <= 2400 / 72:
        raise ValueError(f"pdf_scale must be in [1/72, 2400/72] (a dpi of 1..2400), got {pdf_scale!r}")
    if pdf_text is not None and pdf_text not in PDF_TEXT_MODES:
        raise ValueError(f"pdf_text must be one of {', '.join(PDF_TEXT_MODES)} or None, got {pdf_text!r}")
    if source.kind == "pdf":
        yield from _pdf_items(source, limits, pdf_scale, pdf_text)
        return
    if source.kind == "image":
        data = _read_bytes(source.abs_path, limits.max_image_bytes)
        try:
            image = Image(data).load(limits)
        except InputError as e:
            raise _input_error(e) from None
        yield Item(path=source.rel_path, kind="image", content=image, text="")
        return
    text = _decode_text(_read_bytes(source.abs_path))
    if source.kind == "code":
        chunks = chunk_code(text, language=source.language or "", count_tokens=count_tokens,
                            max_tokens=max_tokens)
    else:
        chunks = chunk_text(text, count_tokens=count_tokens, max_tokens=max_tokens, overlap=overlap,
                            markdown=source.kind == "markdown")
    kind = "code" if source.kind == "code" else "text"
    for i, c in enumerate(chunks):
        yield Item(path=source.rel_path, kind=kind, content=c.text, text=c.text,
                   line_start=c.line_start, line_end=c.line_end, ordinal=i)


def read_items(
    source: SourceFile,
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int = 256,
    overlap: int = 32,
    limits: InputLimits | None = None,
    pdf_scale: float | None = None,
    pdf_text: str | None = None,
) -> list[Item]:
    """Turn one file into items: text/code chunks, one image, or one rendered page per PDF page.

    ``limits`` default to :data:`DEFAULT_LIMITS`; ``pdf_scale`` (pixels per PDF point) defaults
    to the scale ``omnivec.PDF`` embeds with (144 dpi). ``pdf_text``: None renders every PDF
    page (models with native images); ``auto``/``layer``/``ocr`` is the ``omnivec.PDF(text=...)``
    rule of a text-only model (a page read from its layer has that text as content). Raises
    :class:`IngestError` for files that cannot be read or decoded (corrupt, truncated, binary,
    too large).
    """
    return list(iter_items(source, count_tokens=count_tokens, max_tokens=max_tokens, overlap=overlap,
                           limits=limits, pdf_scale=pdf_scale, pdf_text=pdf_text))
