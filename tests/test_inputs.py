"""Tests for omnivec.inputs: every source kind, decoding rules, limits, PDFs and URL safety.

All fixtures are made in code; the only network use is a local http.server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.server
import io
import ipaddress
import pickle
import struct
import threading
import time
import zlib
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from omnivec.inputs import PDF, Image, InputError, InputLimits, PDFPage, composite_on_white, decode_base64_image, fetch_url, parse_inputs
from omnivec.inputs import fetch as F

LOCAL = InputLimits(allow_private_urls=True)
# Fuzzed TIFF/EXIF blocks make PIL warn; rejecting or decoding them is what is under test.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")


def png_bytes(img: PILImage.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def red(size=(8, 6)) -> PILImage.Image:
    return PILImage.new("RGB", size, (255, 0, 0))


# ------------------------------------------------------------------ sources


def test_every_source_kind_gives_same_rgb(tmp_path):
    data = png_bytes(red())
    p = tmp_path / "red.png"
    p.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    sources = [str(p), p, data, bytearray(data), red(), b64, "data:image/png;base64," + b64]
    for src in sources:
        im = Image(src).load()
        assert im.mode == "RGB" and im.size == (8, 6), src
        assert im.getpixel((0, 0)) == (255, 0, 0)


def test_base64_with_whitespace_and_urlsafe():
    data = png_bytes(red())
    b64 = base64.b64encode(data).decode()
    wrapped = "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))
    assert Image(wrapped).load().size == (8, 6)
    assert Image(base64.urlsafe_b64encode(data).decode()).load().size == (8, 6)


def test_decode_base64_image():
    data = png_bytes(red())
    b64 = base64.b64encode(data).decode()
    assert decode_base64_image(b64) == data
    assert decode_base64_image("data:image/png;base64," + b64) == data
    with pytest.raises(InputError, match="not an image"):
        decode_base64_image("data:text/plain;base64," + b64)
    with pytest.raises(InputError, match="base64"):
        decode_base64_image("not base64!")


def test_pil_source_not_mutated_and_non_rgb_modes():
    src = PILImage.new("L", (4, 4), 128)
    out = Image(src).load()
    assert out.mode == "RGB" and src.mode == "L" and out.getpixel((0, 0)) == (128, 128, 128)
    cmyk = PILImage.new("CMYK", (3, 3), (0, 0, 0, 0))
    assert Image(cmyk).load().getpixel((0, 0)) == (255, 255, 255)
    i16 = PILImage.new("I;16", (3, 3), 65535)
    assert Image(png_bytes(i16)).load().getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied():
    img = PILImage.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = Image(buf.getvalue()).load()
    assert out.size == (10, 20)
    r, g, b = out.getpixel((5, 2))  # the red half is now on top
    assert r > 200 and b < 60


def test_transparency_kept_as_rgba():
    """Parsing keeps alpha (RGBA, stored colours untouched); each model family decides."""
    rgba = PILImage.new("RGBA", (4, 4), (255, 0, 0, 0))  # transparent, stored colour red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    for src in (png_bytes(rgba), rgba):
        out = Image(src).load()
        assert out.mode == "RGBA" and out is not src
        assert out.getpixel((1, 1)) == (255, 0, 0, 0) and out.getpixel((0, 0)) == (0, 0, 255, 255)
        # jina-v4's reference drops alpha with a plain convert: the stored colour stays
        assert out.convert("RGB").getpixel((1, 1)) == (255, 0, 0)
    assert rgba.getpixel((1, 1)) == (255, 0, 0, 0)  # the caller's image is not touched
    [item], _ = parse_inputs([rgba])
    assert item.mode == "RGBA" and item.getpixel((1, 1)) == (255, 0, 0, 0)
    la = Image(PILImage.new("LA", (2, 2), (7, 0))).load()
    assert la.mode == "RGBA" and la.getpixel((0, 0)) == (7, 7, 7, 0)
    pal = PILImage.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.putpixel((1, 1), 1)
    out = Image(png_bytes(pal, transparency=0)).load()
    assert out.mode == "RGBA" and out.getpixel((0, 0))[3] == 0 and out.getpixel((1, 1)) == (255, 0, 0, 255)
    key = Image(png_bytes(red((3, 3)), transparency=(255, 0, 0))).load()  # RGB colour key
    assert key.mode == "RGBA" and key.getpixel((0, 0))[3] == 0
    pre = Image(PILImage.new("RGBA", (2, 2), (200, 100, 50, 128)).convert("RGBa")).load()
    assert pre.mode == "RGBA" and pre.getpixel((0, 0))[3] == 128


def test_opaque_alpha_and_unused_transparency_become_rgb():
    opaque = PILImage.new("RGBA", (3, 3), (10, 20, 30, 255))
    for src in (opaque, png_bytes(opaque)):
        out = Image(src).load()
        assert out.mode == "RGB" and out.getpixel((0, 0)) == (10, 20, 30)
    pal = PILImage.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    out = Image(png_bytes(pal, transparency=0)).load()  # the transparent entry is not used
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 0, 0)


def test_composite_on_white():
    rgba = PILImage.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black: text on nothing
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    out = composite_on_white(Image(rgba).load())
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)
    half = composite_on_white(PILImage.new("RGBA", (2, 2), (0, 0, 0, 128))).getpixel((0, 0))
    assert all(120 <= c <= 135 for c in half)
    assert composite_on_white(PILImage.new("LA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    pal = PILImage.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.info["transparency"] = 0
    assert composite_on_white(pal).getpixel((0, 0)) == (255, 255, 255)
    rgb = red()
    assert composite_on_white(rgb) is rgb  # nothing to do
    assert composite_on_white(PILImage.new("L", (2, 2), 9)).getpixel((0, 0)) == (9, 9, 9)
    assert composite_on_white(PILImage.new("I;16", (2, 2), 65535)).getpixel((0, 0)) == (255, 255, 255)


def test_ocr_reads_transparent_background_as_white(monkeypatch):
    from omnivec import ocr

    seen = []

    def engine(img, **kw):
        seen.append(img)
        return None, None

    monkeypatch.setattr(ocr, "_ENGINE", engine)
    rgba = PILImage.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((3, 3), (0, 0, 0, 255))
    assert ocr.ocr_image(rgba) == ""
    [img] = seen
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((3, 3)) == (0, 0, 0)


# ------------------------------------------------------------------ bad images


def test_corrupt_truncated_random_bytes_name_index():
    data = png_bytes(PILImage.effect_noise((64, 64), 50).convert("RGB"))
    cases = [b"hello world, not an image", data[: len(data) // 2], bytes(range(256)) * 4, b""]
    for bad in cases:
        with pytest.raises(InputError) as ei:
            parse_inputs(["text", Image(bad)])
        assert ei.value.index == 1
        assert str(ei.value).startswith("input 1: not a valid image")


def _bomb_png(w: int, h: int) -> bytes:
    """A real 1-bit PNG of w x h zeros, compressed row by row (never held decoded)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused():
    bomb = _bomb_png(20000, 20000)
    assert len(bomb) < 200_000
    with pytest.raises(InputError) as ei:
        parse_inputs([Image(bomb)])
    assert ei.value.index == 0 and "too large" in str(ei.value)
    # our own header check (below PIL's threshold)
    small = _bomb_png(100, 100)
    with pytest.raises(InputError, match="too large.*10000 pixels"):
        Image(small).load(InputLimits(max_image_pixels=9999))
    assert Image(small).load(InputLimits(max_image_pixels=10000)).size == (100, 100)
    with pytest.raises(InputError, match="too large"):
        Image(PILImage.new("L", (100, 100))).load(InputLimits(max_image_pixels=9999))


def test_byte_limit():
    data = png_bytes(red())
    lim = InputLimits(max_image_bytes=len(data) - 1)
    for src in (data, base64.b64encode(data).decode()):
        with pytest.raises(InputError, match=f"larger than {len(data) - 1} bytes"):
            Image(src).load(lim)


def test_unreadable_string_sources(tmp_path):
    with pytest.raises(InputError, match="not a readable image source"):
        Image("cat.png").load()
    with pytest.raises(InputError, match="scheme 'file'"):
        Image("file:///etc/passwd").load()
    with pytest.raises(InputError, match="scheme 'ftp'"):
        Image("ftp://example.com/x.png").load()
    no_paths = InputLimits(allow_local_paths=False)
    with pytest.raises(InputError, match="local file paths are not allowed"):
        Image("/etc/passwd").load(no_paths)
    p = tmp_path / "x.png"
    p.write_bytes(png_bytes(red()))
    with pytest.raises(InputError, match="local file paths are not allowed"):
        Image(str(p)).load(no_paths)
    with pytest.raises(InputError, match="local file paths are not allowed"):
        Image(p).load(no_paths)
    with pytest.raises(InputError, match="not a valid image"):
        Image("/etc/passwd").load()  # readable when allowed, but not an image


def test_image_constructor_type_check():
    with pytest.raises(InputError, match="Image source must be"):
        Image(123)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
        st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b),
        st.binary(max_size=512).map(lambda b: b"GIF89a" + b),
        st.binary(max_size=512).map(lambda b: b"II*\x00" + b),
        st.binary(max_size=512).map(lambda b: b"BM" + b),
        st.binary(max_size=512).map(lambda b: b"RIFF\x00\x00\x00\x00WEBPVP8 " + b),
    )
)
def test_arbitrary_bytes_only_input_error(data):
    try:
        im = Image(data).load(InputLimits(max_image_pixels=1_000_000))
    except InputError:
        return
    assert im.mode in ("RGB", "RGBA")


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_mutated_png_only_input_error(pos, junk):
    data = bytearray(png_bytes(PILImage.effect_noise((16, 16), 40)))
    pos = min(pos, len(data) - 1)
    data[pos : pos + len(junk)] = junk
    try:
        Image(bytes(data)).load()
    except InputError:
        pass


# ------------------------------------------------------------------ parse_inputs


def test_parse_inputs_mixed_and_indices(tmp_path):
    pdf = _pdf_bytes(3)
    items, origin = parse_inputs(["a", Image(png_bytes(red())), PDF(pdf, dpi=36), red((2, 2)), "b"])
    assert origin == [0, 1, 2, 2, 2, 3, 4]
    assert items[0] == "a" and items[-1] == "b"
    assert all(isinstance(x, PILImage.Image) and x.mode == "RGB" for x in items[1:6])
    assert parse_inputs("just text") == (["just text"], [0])
    assert parse_inputs([]) == ([], [])


def test_parse_inputs_wrong_types():
    with pytest.raises(InputError) as ei:
        parse_inputs(["ok", 42])
    assert ei.value.index == 1 and "allowed: str" in str(ei.value)
    with pytest.raises(InputError, match="wrap"):
        parse_inputs([b"bytes"])
    with pytest.raises(InputError, match="ambiguous"):
        parse_inputs(b"bytes")
    with pytest.raises(InputError) as ei:
        parse_inputs(["a", ["nested"]])
    assert ei.value.index == 1
    with pytest.raises(InputError, match="input 0: text is not valid Unicode"):
        parse_inputs(["bad \ud800 surrogate"])


def test_input_error_shape():
    e = InputError(3, "image is truncated or corrupt (x)")
    assert str(e) == "input 3: image is truncated or corrupt (x)"
    assert isinstance(e, ValueError) and e.index == 3 and e.reason.startswith("image")
    assert str(InputError(None, "r")) == "r"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.index, e2.reason) == (3, e.reason)


def test_limits_frozen_and_validated():
    with pytest.raises(Exception):
        InputLimits().max_image_bytes = 1  # type: ignore[misc]
    with pytest.raises(ValueError):
        InputLimits(max_pdf_pages=0)
    assert replace(InputLimits(), allow_url_fetch=False).allow_url_fetch is False


# ------------------------------------------------------------------ PDF


def _pdf_bytes(n: int, size=(200, 100)) -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]
    pages = [PILImage.new("RGB", size, colours[i % 4]) for i in range(n)]
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buf.getvalue()


def _dominant(img: PILImage.Image):
    return img.resize((1, 1)).getpixel((0, 0))


def test_pdf_pages_order_count_and_dpi(tmp_path):
    data = _pdf_bytes(3)
    pages = PDF(data, dpi=72).render()
    assert len(pages) == 3
    assert [p.size for p in pages] == [(200, 100)] * 3
    cols = [_dominant(p) for p in pages]
    assert cols[0][0] > 200 and cols[1][1] > 200 and cols[2][2] > 200
    assert PDF(data, dpi=144).render()[0].size == (400, 200)
    sel = PDF(data, dpi=36, pages=[2, 0, -2]).render()
    assert [max(range(3), key=lambda c: _dominant(p)[c]) for p in sel] == [2, 0, 1]
    assert PDF(data).page_count() == 3
    p = tmp_path / "d.pdf"
    p.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    for src in (str(p), p, b64, "data:application/pdf;base64," + b64):
        assert len(PDF(src, dpi=36).render()) == 3


def test_pdf_limits():
    data = _pdf_bytes(3)
    pages = PDF(data, dpi=144).render(InputLimits(max_pdf_pixels_per_page=10_000))
    w, h = pages[0].size
    assert w * h <= 10_000 and abs(w / h - 2) < 0.1 and w > 100
    with pytest.raises(InputError, match="too many pages"):
        PDF(data).render(InputLimits(max_pdf_pages=2))
    assert len(PDF(data, pages=[0]).render(InputLimits(max_pdf_pages=1))) == 1
    with pytest.raises(InputError, match="out of range"):
        PDF(data, pages=[3]).render()
    with pytest.raises(InputError, match="dpi"):
        PDF(data, dpi=0)


def test_malformed_pdf():
    for bad in (b"%PDF-1.4\nnot really a pdf", b"", b"hello", _pdf_bytes(1)[:60]):
        with pytest.raises(InputError) as ei:
            parse_inputs(["x", PDF(bad)])
        assert ei.value.index == 1 and "not a valid PDF" in str(ei.value)
    with pytest.raises(InputError, match="not a PDF"):
        PDF("data:image/png;base64," + base64.b64encode(b"x" * 8).decode()).render()


def _text_pdf(texts: list[str], size=(200, 100)) -> bytes:
    """A PDF whose pages carry a real text layer (page size in points)."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=size)
    pdf.set_font("Helvetica", size=12)
    for words in texts:
        pdf.add_page()
        pdf.multi_cell(0, 14, text=words)
    return bytes(pdf.output())


@pytest.fixture
def pdfium_calls(monkeypatch):
    """Count page renders and document closes (pypdfium2's public API) to observe laziness."""
    import pypdfium2 as pdfium

    calls = {"render": 0, "close": 0}
    real_render, real_close = pdfium.PdfPage.render, pdfium.PdfDocument.close

    def render(self, *a, **kw):
        calls["render"] += 1
        return real_render(self, *a, **kw)

    def close(self, *a, **kw):
        calls["close"] += 1
        return real_close(self, *a, **kw)

    monkeypatch.setattr(pdfium.PdfPage, "render", render)
    monkeypatch.setattr(pdfium.PdfDocument, "close", close)
    return calls


def test_pdf_iter_pages_lazy_in_order_with_text_layer(pdfium_calls):
    data = _text_pdf(["alpha apples", "bravo bananas", "charlie cherries"])
    it = PDF(data, dpi=72, pages=[2, 0, -2]).iter_pages(text=True)
    assert pdfium_calls == {"render": 0, "close": 0}  # nothing read before the first page
    first = next(it)
    assert isinstance(first, PDFPage) and pdfium_calls["render"] == 1
    assert first.index == 2 and "cherries" in first.text and first.text == first.text.strip()
    assert first.image.mode == "RGB" and first.image.size == (200, 100)
    # Between pages the pdfium lock is free: another thread can use pdfium meanwhile.
    counted = []
    t = threading.Thread(target=lambda: counted.append(PDF(data).page_count()), daemon=True)
    t.start()
    t.join(10)
    assert counted == [3]
    rest = list(it)
    assert [p.index for p in rest] == [0, 1] and pdfium_calls["render"] == 3
    assert "apples" in rest[0].text and "bananas" in rest[1].text
    assert pdfium_calls["close"] == 2  # page_count's document and this one, closed when done
    # text is read only when asked for; render() is the images of iter_pages()
    plain = list(PDF(data, dpi=36).iter_pages())
    assert [p.text for p in plain] == [None, None, None] and plain[0].image.size == (100, 50)
    assert [im.tobytes() for im in PDF(data, dpi=36).render()] == [p.image.tobytes() for p in plain]


def test_pdf_iter_pages_abandoned_closes_and_limits(pdfium_calls):
    data = _text_pdf(["one", "two", "three"])
    it = PDF(data).iter_pages()
    next(it)
    it.close()
    assert pdfium_calls == {"render": 1, "close": 1}
    # selection and page-count limits are checked before any page is rendered
    with pytest.raises(InputError, match="too many pages: 3 > 2"):
        next(PDF(data).iter_pages(InputLimits(max_pdf_pages=2)))
    with pytest.raises(InputError, match="page 3 is out of range"):
        next(PDF(data, pages=[3]).iter_pages())
    assert pdfium_calls["render"] == 1 and pdfium_calls["close"] == 3
    pages = list(PDF(data, dpi=144).iter_pages(InputLimits(max_pdf_pixels_per_page=5_000)))
    assert len(pages) == 3
    for p in pages:
        w, h = p.image.size
        assert w * h <= 5_000 and abs(w / h - 2) < 0.1
    it = PDF(b"%PDF-1.4\nnot really a pdf").iter_pages()  # lazy: the error comes with a page
    with pytest.raises(InputError, match="not a valid PDF"):
        next(it)
    assert [p.text for p in PDF(_pdf_bytes(1)).iter_pages(text=True)] == [""]  # no text layer


def _huge_blank_pdf(pages: int, side_pt: float = 14400) -> bytes:
    """The issue's PDF: a few KB declaring ``pages`` blank pages of ``side_pt`` points square."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=(side_pt, side_pt))
    for _ in range(pages):
        pdf.add_page()
    return bytes(pdf.output())


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_pdf_document_pixel_budget_refuses_before_rendering(pdfium_calls):
    """16 blank 14400-pt pages (+2.6 GB, 26 s before): refused from page sizes, nothing rendered."""
    data = _huge_blank_pdf(16)
    assert len(data) < 10_000
    rss, t = _peak_rss_mb(), time.perf_counter()
    for call in (lambda: PDF(data).render(), lambda: next(PDF(data).iter_pages()),
                 lambda: PDF(data).plan(), lambda: parse_inputs(["text", PDF(data)])):
        with pytest.raises(InputError, match=r"max_pdf_pixels=200000000; select fewer pages or a lower dpi"):
            call()
    assert time.perf_counter() - t < 2.0 and _peak_rss_mb() - rss < 50
    assert pdfium_calls["render"] == 0
    # the budget counts pages after the per-page DPI cap: 16 x 40 Mpx here
    with pytest.raises(InputError, match="would render to 6336"):
        PDF(data).render(InputLimits(max_pdf_pixels=600_000_000))
    one = InputLimits(max_pdf_pixels_per_page=1_000_000, max_pdf_pixels=16_000_000)
    assert [im.size for im in PDF(data).render(one)] == [(1000, 1000)] * 16
    with pytest.raises(InputError, match="max_pdf_pixels=15999999"):
        PDF(data).render(replace(one, max_pdf_pixels=15_999_999))
    with pytest.raises(ValueError):
        InputLimits(max_pdf_pixels=0)


def test_pdf_huge_page_rendered_at_a_dpi_that_fits_the_image_budget():
    """A page larger than max_image_pixels at the asked dpi is rendered smaller, not refused."""
    data = _huge_blank_pdf(2)                  # 28800 x 28800 px at 144 dpi: 829 Mpx a page
    limits = InputLimits(max_image_pixels=2_000_000)
    rss, t = _peak_rss_mb(), time.perf_counter()
    pages = PDF(data, dpi=144).render(limits)
    assert time.perf_counter() - t < 2.0 and _peak_rss_mb() - rss < 100
    for im in pages:
        w, h = im.size
        assert w * h <= 2_000_000 and w == h and w > 1400  # aspect kept, close to the budget
    plan = PDF(data, dpi=144).plan(limits)     # sized from page sizes: what rendering gives
    assert plan.pixels == sum(im.size[0] * im.size[1] for im in pages)
    assert [im.size for im in plan.load()] == [im.size for im in pages]


def test_request_pixel_budget_checked_before_decoding(monkeypatch, pdfium_calls):
    """Images and PDF pages of one request are summed from headers/page sizes before decoding."""
    from omnivec.inputs import images as images_module

    decoded = []
    real_finish = images_module._finish
    monkeypatch.setattr(images_module, "_finish", lambda im, limits: decoded.append(im.size) or real_finish(im, limits))
    img = _bomb_png(1000, 1000)                # 1 Mpx each, a few KB encoded
    pdf = _pdf_bytes(2)                        # 2 pages of 200 x 100 at 72 dpi
    limits = InputLimits(max_request_pixels=3_000_000)
    items, origin = parse_inputs([Image(img), "t", PDF(pdf, dpi=72), Image(img), red((100, 100))], limits)
    assert origin == [0, 1, 2, 2, 3, 4] and len(decoded) == 3 and pdfium_calls["render"] == 2
    decoded.clear()
    with pytest.raises(InputError) as ei:
        parse_inputs([Image(img), "t", PDF(pdf, dpi=72), Image(img), Image(img)], limits)
    assert ei.value.index is None
    assert str(ei.value).startswith("the inputs would decode to 3040000 pixels") and "max_request_pixels=3000000" in str(ei.value)
    assert decoded == [] and pdfium_calls["render"] == 2   # nothing decoded, no page rendered
    with pytest.raises(InputError, match="max_request_pixels"):
        parse_inputs([red((2000, 1000)), red((1000, 1001))], InputLimits(max_request_pixels=3_000_000))
    # the request: eight 8000 x 8000 images (+3.8 GB before), refused at the default budget
    big = _bomb_png(8000, 8000)
    rss, t = _peak_rss_mb(), time.perf_counter()
    with pytest.raises(InputError, match="512000000 pixels.*max_request_pixels=256000000"):
        parse_inputs([Image(big)] * 8)
    assert time.perf_counter() - t < 2.0 and _peak_rss_mb() - rss < 50 and decoded == []


# ------------------------------------------------------------------ URL safety


@pytest.mark.parametrize(
    "ip,forbidden",
    [
        ("10.0.0.1", True),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fd00:ec2::254", True),
        ("192.168.1.1", True),
        ("172.16.0.1", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::ffff:127.0.0.1", True),
        ("64:ff9b::a00:1", True),
        ("2002:a00:1::", True),
        ("fe80::1%eth0", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_forbidden_addresses(ip, forbidden):
    assert F._is_forbidden_address(ip) is forbidden
    assert F._is_forbidden_address(ipaddress.ip_address(ip.split("%")[0])) is forbidden


IMG = png_bytes(red())


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):  # keep test output quiet
        pass

    def do_GET(self):
        path = self.path
        if path == "/img.png":
            self._send(IMG)
        elif path == "/big":
            self._send(b"x" * 5000)
        elif path == "/big-nolength":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)
        elif path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/slow":
            time.sleep(1.5)
            self._send(IMG)
        elif path == "/host":
            self._send(self.headers.get("Host", "").encode())
        else:
            self.send_error(404)

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_loopback_refused_by_default_and_allowed_when_asked(server):
    with pytest.raises(InputError) as ei:
        parse_inputs([Image(server + "/img.png")])
    assert ei.value.index == 0 and "private or reserved" in str(ei.value)
    with pytest.raises(InputError, match="private"):
        Image(server.replace("127.0.0.1", "localhost") + "/img.png").load()
    im = Image(server + "/img.png").load(LOCAL)
    assert im.size == (8, 6) and im.getpixel((0, 0)) == (255, 0, 0)
    port = server.rsplit(":", 1)[1]
    assert fetch_url(server + "/host", LOCAL) == f"127.0.0.1:{port}".encode()


def test_url_fetch_disabled(server):
    lim = InputLimits(allow_url_fetch=False, allow_private_urls=True)
    with pytest.raises(InputError, match="URL fetching is disabled"):
        Image(server + "/img.png").load(lim)
    with pytest.raises(InputError, match="URL fetching is disabled"):
        fetch_url("https://example.com/x.png", lim)


def test_redirects(server, monkeypatch):
    assert fetch_url(server + "/redirect?to=/img.png", LOCAL) == IMG
    with pytest.raises(InputError, match="too many redirects"):
        fetch_url(server + "/loop", LOCAL)
    with pytest.raises(InputError, match="too many redirects"):
        fetch_url(server + "/redirect?to=/img.png", replace(LOCAL, max_redirects=0))
    with pytest.raises(InputError, match="scheme 'file'"):
        fetch_url(server + "/redirect?to=file:///etc/passwd", LOCAL)
    # Pretend 127.0.0.1 is a public server; its redirect to a private address must be refused
    # (before any connection to 10.0.0.1 is attempted).
    real = F._is_forbidden_address
    monkeypatch.setattr(F, "_is_forbidden_address", lambda ip: str(ip) != "127.0.0.1" and real(ip))
    assert fetch_url(server + "/img.png", InputLimits()) == IMG
    for target in ("http://10.0.0.1:9/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/"):
        with pytest.raises(InputError, match="private or reserved"):
            fetch_url(server + "/redirect?to=" + target, InputLimits())


def test_size_cap_and_errors_over_http(server):
    lim = replace(LOCAL, max_image_bytes=1000)
    for path in ("/big", "/big-nolength"):
        with pytest.raises(InputError, match="larger than 1000 bytes"):
            fetch_url(server + path, lim)
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(server + "/missing", LOCAL)
    t = time.monotonic()
    with pytest.raises(InputError, match="timed out"):
        fetch_url(server + "/slow", replace(LOCAL, url_timeout_s=0.3))
    assert time.monotonic() - t < 1.2
    with pytest.raises(InputError, match="malformed URL"):
        fetch_url("http://[::1/x.png", LOCAL)
    with pytest.raises(InputError, match="malformed URL"):
        fetch_url("http://127.0.0.1:99999/x.png", LOCAL)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
    )
    if r.returncode:
        pytest.skip("could not make a test certificate")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    srv.socket = sctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], cert
    srv.shutdown()
    srv.server_close()


def test_https_pinned_ip_keeps_sni_and_hostname_check(tls_server, monkeypatch):
    import ssl

    port, cert = tls_server
    # Untrusted self-signed certificate: refused as an InputError.
    with pytest.raises(InputError, match="could not fetch URL"):
        fetch_url(f"https://localhost:{port}/img.png", replace(LOCAL, url_timeout_s=3))
    ctx = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(F, "_tls_context", lambda: ctx)
    # Connected to the vetted IP, yet the certificate is checked against the URL's host name.
    assert fetch_url(f"https://localhost:{port}/img.png", LOCAL) == IMG
    assert fetch_url(f"https://localhost:{port}/host", LOCAL) == f"localhost:{port}".encode()
    with pytest.raises(InputError, match="could not fetch URL"):
        fetch_url(f"https://127.0.0.1:{port}/img.png", replace(LOCAL, url_timeout_s=3))
