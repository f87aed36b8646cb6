"""PDF pages on text-only models: the text layer where a page has one, OCR for scans (issue 21)."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFilter, ImageFont

import omnivec
from omnivec.inputs import InputError, InputLimits
from omnivec.inputs.pdf import MIN_LAYER_CHARS_PER_SQ_INCH, reads_text_layer
from omnivec.models.base import PrepareOptions
from omnivec.tasks import TaskSpec

fpdf = pytest.importorskip("fpdf")
PASSAGE = TaskSpec("retrieval", "passage")


def _font_file() -> str:
    from omnivec.eval.vdr_rendered import font_path
    return str(font_path())


def _real_texts() -> list[str]:
    """Four multi-paragraph docstrings of different standard-library modules."""
    import argparse
    import csv
    import json
    import sqlite3
    return [textwrap.dedent(m.__doc__ or "").strip()[:1400] for m in (json, csv, sqlite3, argparse)]


def _scan(text: str) -> bytes:
    """A page image of ``text`` as a scanner gives it: grey, slightly blurred, a little noise."""
    image = PILImage.new("L", (1224, 1584), 250)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(_font_file(), 26)
    y = 90
    for para in text.split("\n"):
        for line in textwrap.wrap(para, 78) or [""]:
            draw.text((90, y), line, font=font, fill=30)
            y += 36
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.int16)
    noisy = noisy + np.random.default_rng(0).integers(-12, 12, noisy.shape)
    out = io.BytesIO()
    PILImage.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def mixed_pdf(tmp_path_factory) -> tuple[Path, list[str]]:
    """Pages 0, 1, 3: text set in the PDF (a text layer); page 2: a scanned image, no layer."""
    texts = _real_texts()
    pdf = fpdf.FPDF(unit="pt", format=(612, 792))
    pdf.add_font("dejavu", fname=_font_file())
    pdf.set_font("dejavu", size=11)
    for i, text in enumerate(texts):
        pdf.add_page()
        if i == 2:
            pdf.image(io.BytesIO(_scan(text)), x=0, y=0, w=612, h=792)
        else:
            pdf.multi_cell(0, 14, text=text)
    path = tmp_path_factory.mktemp("pdfs") / "mixed.pdf"
    pdf.output(str(path))
    return path, texts


def test_the_rule_counts_characters_per_page_area():
    letter = (612.0, 792.0)                                       # 93.5 square inches
    assert MIN_LAYER_CHARS_PER_SQ_INCH == 2.0
    assert reads_text_layer("auto", "x" * 200, *letter)           # a sparse page still has text
    assert not reads_text_layer("auto", "x" * 150, *letter)       # a title or a running header
    assert not reads_text_layer("auto", "  \n 12 \n ", *letter)   # a page number: whitespace not counted
    assert reads_text_layer("layer", "", *letter) and not reads_text_layer("ocr", "x" * 5000, *letter)


def test_text_pages_are_read_from_the_layer_and_the_scan_by_ocr(mixed_pdf):
    path, texts = mixed_pdf
    pages = list(omnivec.PDF(path).iter_pages(text=True, text_pages=True))
    assert [p.image is None for p in pages] == [True, True, False, True]     # the scan alone is rendered
    assert "JSON" in pages[0].text and pages[2].text == ""
    ocr_pages = list(omnivec.PDF(path, text="ocr").iter_pages(text_pages=True))
    assert all(p.image is not None for p in ocr_pages)
    assert all(p.image is None for p in omnivec.PDF(path, text="layer").iter_pages(text_pages=True))
    assert all(p.image is not None for p in omnivec.PDF(path).iter_pages())     # readers of images


def test_queries_find_text_pages_and_the_scanned_page_at_top_1(default_model, mixed_pdf, monkeypatch):
    import omnivec.ocr as ocr

    path, texts = mixed_pdf
    calls = []
    real = ocr.ocr_image
    monkeypatch.setattr(ocr, "ocr_image", lambda image: calls.append(image.size) or real(image))
    items, _ = default_model.prepare_inputs([omnivec.PDF(path)], [PASSAGE], PrepareOptions())
    assert [p.kind for p in items] == ["text", "text", "image", "text"]
    pages = default_model.encode([omnivec.PDF(path)], task="retrieval.passage")
    assert len(calls) == 2 and pages.shape[0] == 4                # the scan only, in both calls
    queries = [" ".join(t.split()[:14]) for t in texts]           # each page's opening words
    q = default_model.encode(queries, task="retrieval.query")
    assert list((q @ pages.T).argmax(1)) == [0, 1, 2, 3]
    layer_page = default_model.encode([texts[0]], task="retrieval.passage")[0]
    assert float(pages[0] @ layer_page) > 0.97                    # the layer is the page's own text


def test_modes_and_bad_modes(default_model, mixed_pdf):
    path, _ = mixed_pdf
    kinds = lambda pdf: [p.kind for p in default_model.prepare_inputs([pdf], [PASSAGE], PrepareOptions())[0]]
    assert kinds(omnivec.PDF(path, text="ocr")) == ["image"] * 4
    assert kinds(omnivec.PDF(path, text="layer")) == ["text"] * 4
    with pytest.raises(InputError, match="PDF text must be one of auto, layer, ocr"):
        omnivec.PDF(path, text="both")


def test_text_pages_still_count_their_pixels(default_model, mixed_pdf):
    """Layer pages are not rendered, but they count the pixels they would render: every pixel
    budget (and so the work a request may cause) bounds a PDF exactly as before."""
    path, _ = mixed_pdf
    limits = InputLimits()
    assert (omnivec.PDF(path).plan(limits, text_pages=True).pixels
            == omnivec.PDF(path, text="ocr").plan(limits, text_pages=True).pixels == 4 * 1224 * 1584)
    one_page = InputLimits(max_pdf_pixels=1224 * 1584 + 10)        # one page at 144 dpi
    for mode in ("auto", "ocr"):
        with pytest.raises(InputError, match="max_pdf_pixels"):
            default_model.embed([omnivec.PDF(path, text=mode)], "retrieval.passage", limits=one_page)


def test_a_huge_text_layer_is_read_only_up_to_the_cap(tmp_path):
    from omnivec.inputs.pdf import MAX_PAGE_TEXT_CHARS

    pdf = fpdf.FPDF(unit="pt", format=(612, 792))
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=1)
    pdf.add_page()
    words = " ".join(f"w{i}" for i in range(20000))                  # ~129,000 characters, one page
    pdf.multi_cell(612, 1, text=words)
    path = tmp_path / "dense.pdf"
    pdf.output(str(path))
    [page] = omnivec.PDF(path).iter_pages(text=True, text_pages=True)
    assert page.image is None and 0 < len(page.text) <= MAX_PAGE_TEXT_CHARS


def test_models_with_native_images_embed_every_page_image(tmp_path, mixed_pdf):
    from omnivec.testing import make_tiny_jina_v4

    path, _ = mixed_pdf
    v4 = omnivec.load(make_tiny_jina_v4(tmp_path / "v4"), device="cpu")
    items, _ = v4.prepare_inputs([omnivec.PDF(path)], [PASSAGE], PrepareOptions())
    assert [p.kind for p in items] == ["image"] * 4


def test_index_embeds_layers_and_ocrs_only_the_scan(default_model, mixed_pdf, tmp_path, monkeypatch):
    import shutil

    import omnivec.ocr as ocr
    from omnivec.index import Index, IndexMismatchError

    path, texts = mixed_pdf
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(path, docs / "manual.pdf")
    calls = []
    real = ocr.ocr_image
    monkeypatch.setattr(ocr, "ocr_image", lambda image: calls.append(image.size) or real(image))
    store = tmp_path / "ix.omnivec"
    with Index(store, default_model) as ix:
        summary = ix.add_path(docs)
        assert summary.items == 4 and not summary.errors and len(calls) == 1
        assert ix.stats()["pdf_text"] == "auto"
        for page, text in enumerate(texts, start=1):
            [hit] = ix.search(" ".join(text.split()[:14]), k=1)
            assert (hit.path, hit.page) == ("manual.pdf", page)
    with pytest.raises(IndexMismatchError, match="pdf_text='auto'"):
        Index(store, default_model, pdf_text="ocr")


def test_the_server_applies_the_same_rule(default_model, mixed_pdf):
    """A Jina ``{"pdf": ...}`` input on the default model: text pages from their layer, the scan
    through OCR, exactly the library's vectors."""
    import base64

    import httpx
    from _server_util import LiveServer

    from omnivec.server import ServerSettings, create_app

    path, _ = mixed_pdf
    data = base64.b64encode(path.read_bytes()).decode()
    with LiveServer(create_app(default_model, ServerSettings())) as live:
        r = httpx.post(live.url + "/v1/embeddings", timeout=120,
                       json={"model": "default", "task": "retrieval.passage", "truncate": True,
                             "input": [{"pdf": data}]})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    want = default_model.encode([omnivec.PDF(path)], task="retrieval.passage")
    np.testing.assert_allclose(got, want, atol=2e-5)
