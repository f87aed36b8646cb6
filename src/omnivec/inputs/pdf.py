"""PDF inputs: :class:`PDF` renders pages to RGB images with pypdfium2 (no system Poppler).

pdfium is not thread-safe and the server decodes inputs from worker threads, so every pdfium
call in the process goes through this module, under one lock that never leaves it. Pages are
rendered one at a time (:meth:`PDF.iter_pages`), holding the lock only while a page is being
rendered, never while a page is handed to the caller. Pixel budgets are applied from page
sizes before any page is rendered: per page (the DPI is lowered to fit) and per document.
What the document's Flate streams inflate to is counted before pdfium opens it (``pdf_streams``).

For models that read text only (the default encoder), a page that carries enough text in its
text layer is embedded from that text instead of being rendered and read by OCR
(:func:`reads_text_layer`, ``PDF(text="auto")``): the layer is the page's exact text, free of
OCR's errors (ligatures, hyphens, small fonts), and reading it skips rendering altogether.
Scanned pages (no layer) are rendered and go through OCR, page by page.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image as PILImage

from .limits import DecodePlan, InputError, InputLimits
from .pdf_streams import check_inflated_size
from .sources import describe_source, source_bytes

__all__ = ["PDF", "PDFPage", "PDF_TEXT_MODES", "MIN_LAYER_CHARS_PER_SQ_INCH", "MAX_PAGE_TEXT_CHARS",
           "reads_text_layer"]

# How a text-only model reads a page: "auto" (its text layer when it holds enough text, else
# OCR of the rendered page), "layer" (always the layer, even an empty one), "ocr" (always OCR).
PDF_TEXT_MODES = ("auto", "layer", "ocr")
# "auto" takes the text layer when it holds at least this many non-space characters per square
# inch of page: 187 on a US-letter page (93.5 sq in), 194 on A4. A page of running text holds
# 25-45 per square inch, a scan 0, a page with only a header or page number well under 1, so
# the rule tells them apart with a wide margin; a title page with a few words goes to OCR,
# which reads the same words.
MIN_LAYER_CHARS_PER_SQ_INCH = 2.0
# At most this much of a page's text layer is read (a dense page holds 3,000-6,000 characters;
# every model here reads at most 8,192 tokens of it, most 512).
MAX_PAGE_TEXT_CHARS = 50_000


def reads_text_layer(mode: str, text: str, width_pt: float, height_pt: float) -> bool:
    """Whether a text-only model embeds this page's text layer (else OCR of its image)."""
    if mode == "layer":
        return True
    if mode == "ocr":
        return False
    area_sq_inch = max(width_pt * height_pt, 1.0) / (72.0 * 72.0)
    chars = sum(1 for c in text if not c.isspace())
    return chars / area_sq_inch >= MIN_LAYER_CHARS_PER_SQ_INCH

# pdfium is not thread-safe; the server decodes inputs from worker threads.
_PDFIUM_LOCK = threading.Lock()
# How long closing an abandoned document waits for the lock (see PDF.iter_pages).
_CLOSE_LOCK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PDFPage:
    """One rendered page of a :class:`PDF`.

    ``index`` is the 0-based page index in the document, ``image`` the page rendered to an RGB
    image (owned by the caller), or None for a page a text-only reader takes from its text
    layer (``iter_pages(text_pages=True)``, see :func:`reads_text_layer`); ``text`` the page's
    text layer when it was asked for or the page was read from it (else None): newlines
    normalised to ``\\n``, at most :data:`MAX_PAGE_TEXT_CHARS` characters, NUL
    characters dropped, stripped, and ``""`` for a page without a readable text layer (a scan,
    or a damaged text layer; the image still counts).
    """

    index: int
    image: PILImage.Image | None
    text: str | None = None


class PDF:
    """A PDF document; expands to one item per page: the rendered page image (pypdfium2, no
    system Poppler), or for a model that reads text only, per ``text``, the page's text layer.

    ``pages`` selects 0-based page indices (negative ones count from the end) in the given
    order; None means all pages. ``text`` (one of :data:`PDF_TEXT_MODES`) is how a model that
    reads text only takes each page: ``"auto"`` its text layer when it holds enough text, else
    OCR of the rendered page; ``"layer"`` always the layer; ``"ocr"`` always OCR. Models with
    native image input always embed the rendered page.
    """

    def __init__(
        self, source: str | bytes | os.PathLike, dpi: int = 144, pages: Sequence[int] | None = None,
        text: str = "auto",
    ) -> None:
        if not isinstance(source, (str, bytes, bytearray, memoryview, os.PathLike)):
            raise InputError(None, f"PDF source must be str, bytes or os.PathLike, not {type(source).__name__}")
        if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 1 <= dpi <= 2400:
            raise InputError(None, f"PDF dpi must be a number in [1, 2400], got {dpi!r}")
        if pages is not None:
            if isinstance(pages, (str, bytes)) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in pages
            ):
                raise InputError(None, "PDF pages must be a sequence of int page indices")
            pages = list(pages)
        if text not in PDF_TEXT_MODES:
            raise InputError(None, f"PDF text must be one of {', '.join(PDF_TEXT_MODES)}, got {text!r}")
        self.text = text
        self.source = source
        self.dpi = dpi
        self.pages = pages

    def __repr__(self) -> str:
        return f"PDF({describe_source(self.source)}, dpi={self.dpi}, pages={self.pages}, text={self.text!r})"

    # ---------------------------------------------------------------- public
    def page_count(self, limits: InputLimits = InputLimits()) -> int:
        """Number of pages in the document (not only the selected ones)."""
        data = self._read(limits)
        with _PDFIUM_LOCK:
            doc = _open_document(data)
            try:
                return len(doc)
            finally:
                doc.close()

    def iter_pages(self, limits: InputLimits = InputLimits(), *, text: bool = False,
                   text_pages: bool = False) -> Iterator[PDFPage]:
        """Yield the selected pages in order, each rendered only when it is asked for.

        Each page is rendered at ``dpi``, lowered for a page whose pixels would exceed
        ``limits.max_pdf_pixels_per_page`` (or ``max_image_pixels``, if lower); ``text=True``
        also reads each page's text layer (:attr:`PDFPage.text`). ``text_pages=True`` (a reader
        of text only) reads every layer and renders only the pages that ``self.text`` sends to
        OCR; the others come with ``image=None``. Nothing is read until the
        first page is asked for; then the document is opened and checked before any page is
        rendered: the selection (out-of-range pages, more than ``limits.max_pdf_pages``) and
        the pixels all pages would render to, from their sizes (``limits.max_pdf_pixels``).
        Anything wrong raises InputError (index None), possibly after earlier pages were yielded.

        The document stays open between pages and is closed when the iterator is exhausted,
        closed or garbage-collected. An abandoned iterator can be finalised by a thread that
        is itself inside pdfium; closing then waits at most 10 s for the pdfium lock and
        otherwise leaves the document to pypdfium2's own finaliser instead of deadlocking.
        """
        data = self._read(limits)  # outside the lock: a URL fetch must not block other PDFs
        yield from self._pages(data, limits, text, text_pages)

    def render(self, limits: InputLimits = InputLimits()) -> list[PILImage.Image]:
        """Render the selected pages to RGB images at ``dpi``, lowered per page to fit the limit."""
        return [page.image for page in self.iter_pages(limits)]

    def plan(self, limits: InputLimits = InputLimits(), *, text_pages: bool = False) -> DecodePlan:
        """The pixels rendering would produce (from page sizes, no page rendered) and a loader.

        Why: :func:`~omnivec.inputs.parse_inputs` adds up a request's pixels before decoding
        any input. The document is read once (a URL is fetched once) and opened again to render.
        ``text_pages=True`` (a model that reads text only): pages taken from their text layer
        load as that text (a str), the others as images; all count the pixels they would render.
        """
        data = self._read(limits)
        with _PDFIUM_LOCK:
            doc = _open_document(data)
            try:
                layout = self._layout(doc, limits, text_pages)
            finally:
                doc.close()

        def load() -> list[str | PILImage.Image]:
            pages = self._pages(data, limits, False, text_pages, layout)     # the layers read above
            return [page.text if page.image is None else page.image for page in pages]

        return DecodePlan(sum(p.pixels for p in layout), load)

    # ---------------------------------------------------------------- internals
    def _read(self, limits: InputLimits) -> bytes:
        data = source_bytes(self.source, limits, "pdf")
        if not data:
            raise InputError(None, "not a valid PDF (empty data)")
        check_inflated_size(data, limits.max_pdf_inflated_bytes)  # before pdfium inflates any stream
        return data

    def _selected(self, n: int, limits: InputLimits) -> list[int]:
        if self.pages is None:
            selected = list(range(n))
        else:
            selected = []
            for p in self.pages:
                if not -n <= p < n:
                    raise InputError(None, f"PDF page {p} is out of range (document has {n} pages)")
                selected.append(p % n)
        if len(selected) > limits.max_pdf_pages:
            raise InputError(None, f"PDF has too many pages: {len(selected)} > {limits.max_pdf_pages}")
        return selected

    def _pages(self, data: bytes, limits: InputLimits, text: bool, text_pages: bool = False,
               layout: list[_PagePlan] | None = None) -> Iterator[PDFPage]:
        """``layout``: one already made for this document (``plan``'s), else made here."""
        with _PDFIUM_LOCK:
            doc = _open_document(data)
        try:
            if layout is None:
                with _PDFIUM_LOCK:
                    layout = self._layout(doc, limits, text_pages)
            for page in layout:
                if page.layer is not None:                  # read from its text layer: no render
                    yield PDFPage(index=page.index, image=None, text=page.layer)
                    continue
                with _PDFIUM_LOCK:
                    image = _render_page(doc, page)
                    page_text = _page_text(doc, page.index) if text else None
                yield PDFPage(index=page.index, image=image, text=page_text)  # never yield holding the lock
        finally:
            if _PDFIUM_LOCK.acquire(timeout=_CLOSE_LOCK_TIMEOUT_S):
                try:
                    doc.close()
                finally:
                    _PDFIUM_LOCK.release()

    def _layout(self, doc, limits: InputLimits, text_pages: bool = False) -> list[_PagePlan]:  # lock held
        """Each selected page's render size, from page sizes alone, within both pixel budgets;
        with ``text_pages``, the pages a text-only reader takes from their text layer. Those
        render nothing but count the pixels they would render, so every pixel budget bounds a
        request (and the memory of reading it) exactly as before.

        Why before rendering: a 2 KB PDF can declare 16 pages of 14400 pt (and rendering them
        all took +2.6 GB), and loading a page already inflates its content streams.
        """
        try:
            n = len(doc)
        except Exception as e:
            raise InputError(None, f"not a valid PDF ({e})") from None
        if n == 0:
            raise InputError(None, "not a valid PDF (no pages)")
        per_page = min(limits.max_pdf_pixels_per_page, limits.max_image_pixels)
        layout = []
        for i in self._selected(n, limits):
            try:
                w_pt, h_pt = doc.get_page_size(i)
            except Exception as e:
                raise InputError(None, f"not a valid PDF (page {i}: {type(e).__name__}: {e})") from None
            plan = _fit_page(i, w_pt, h_pt, self.dpi / 72.0, per_page)
            if text_pages and self.text != "ocr":
                page_text = _page_text(doc, i)
                if reads_text_layer(self.text, page_text, w_pt, h_pt):
                    plan = dataclasses.replace(plan, layer=page_text)
            layout.append(plan)
        total = sum(p.pixels for p in layout)
        if total > limits.max_pdf_pixels:
            raise InputError(None, f"PDF would render to {total} pixels over {len(layout)} pages, more than "
                                   f"max_pdf_pixels={limits.max_pdf_pixels}; select fewer pages or a lower dpi")
        return layout


@dataclass(frozen=True)
class _PagePlan:
    """How one page is rendered: the scale (pixels per point) and the bitmap size it gives;
    or, for a page a text-only reader takes from its text layer, that text (nothing rendered)."""

    index: int
    scale: float
    width: int
    height: int
    layer: str | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _fit_page(i: int, w_pt: float, h_pt: float, scale: float, budget: int) -> _PagePlan:
    """Render at ``scale``, lowered (aspect kept) when the page would exceed ``budget`` pixels."""
    if not (w_pt > 0 and h_pt > 0 and math.isfinite(w_pt * h_pt)):
        raise InputError(None, f"not a valid PDF (page {i} has size {w_pt}x{h_pt})")
    if math.ceil(w_pt * scale) * math.ceil(h_pt * scale) > budget:
        scale = math.sqrt(budget / (w_pt * h_pt))
        while scale > 0 and math.ceil(w_pt * scale) * math.ceil(h_pt * scale) > budget:
            scale *= 0.995
    w, h = math.ceil(w_pt * scale), math.ceil(h_pt * scale)   # pypdfium2's bitmap size
    if w < 1 or h < 1:
        raise InputError(None, f"PDF page {i} cannot be rendered within the pixel limit")
    return _PagePlan(i, scale, w, h)


def _render_page(doc, plan: _PagePlan) -> PILImage.Image:  # lock held
    page = None
    bitmap = None
    try:
        page = doc[plan.index]
        bitmap = page.render(scale=plan.scale)
        img = bitmap.to_pil()
        # Own the pixels before the pdfium bitmap is freed.
        return img.convert("RGB") if img.mode != "RGB" else img.copy()
    except InputError:
        raise
    except Exception as e:
        raise InputError(None, f"not a valid PDF (page {plan.index}: {type(e).__name__}: {e})") from None
    finally:
        if bitmap is not None:
            bitmap.close()
        if page is not None:
            page.close()


def _open_document(data: bytes):  # -> pypdfium2.PdfDocument; caller holds the pdfium lock
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except Exception as e:
        raise InputError(None, f"not a valid PDF ({e})") from None


def _page_text(doc, i: int) -> str:  # doc: pypdfium2.PdfDocument; caller holds the pdfium lock
    page = textpage = None
    try:
        page = doc[i]
        textpage = page.get_textpage()
        # a crafted page can draw one form millions of times: keep what a model could use
        text = textpage.get_text_range(0, min(textpage.count_chars(), MAX_PAGE_TEXT_CHARS))
    except Exception:
        return ""  # a page whose text layer cannot be read is still a page (its image counts)
    finally:
        if textpage is not None:
            textpage.close()
        if page is not None:
            page.close()
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "").strip()
