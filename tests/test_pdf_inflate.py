"""pdf_streams.check_inflated_size: flate bombs are refused before pdfium opens the document.

The PDFs are built here, by hand (one page whose content stream is given) or with fpdf2; each
bomb test also opens the document through PDF/parse_inputs, so removing the hook fails it.
"""
from __future__ import annotations

import time
import tracemalloc
import zlib
from functools import lru_cache

import pytest

from omnivec.inputs import PDF, InputError, InputLimits, parse_inputs
from omnivec.inputs.pdf_streams import check_inflated_size

MiB = 2**20
LOW = InputLimits(max_pdf_inflated_bytes=8 * MiB)


def one_page_pdf(content: bytes, filters: str = "/FlateDecode", eol: bytes = b"\n") -> bytes:
    """A valid one-page PDF (xref offsets right) whose content stream body is ``content``."""
    filt = f"/Filter {filters}" if filters else ""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
        f"<< /Length {len(content)} {filt} >>\nstream".encode() + eol + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@lru_cache(maxsize=None)
def bomb_content(inflated: int) -> bytes:
    """Deflated content of ``inflated`` bytes: a line drawing, then spaces (a valid content stream)."""
    z = zlib.compressobj(9)
    parts = [z.compress(b"0 0 m 200 200 l S\n")]
    block = b" " * MiB
    for _ in range(inflated // MiB):
        parts.append(z.compress(block))
    parts.append(z.flush())
    return b"".join(parts)


def fpdf_document(pages: int) -> bytes:
    fpdf = pytest.importorskip("fpdf")
    doc = fpdf.FPDF()
    doc.set_font("helvetica", size=11)
    for p in range(pages):
        doc.add_page()
        for line in range(40):
            doc.cell(0, 6, f"page {p} line {line}: the quick brown fox jumps over the lazy dog",
                     new_x="LMARGIN", new_y="NEXT")
        doc.line(10, 280, 200, 280)
    return bytes(doc.output())


def traced(fn):
    """(result or raised exception, tracemalloc peak in bytes, seconds) of ``fn()``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - returned to the test to assert on
        result = e
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, peak, elapsed


# ------------------------------------------------------------------ bombs are refused
def test_flate_bomb_is_refused_early_with_constant_memory() -> None:
    content = bomb_content(64 * MiB)
    assert len(content) < 100_000
    data = one_page_pdf(content)
    result, peak, _ = traced(lambda: check_inflated_size(data, 8 * MiB))
    assert isinstance(result, InputError) and result.index is None
    assert "max_pdf_inflated_bytes=8388608" in result.reason and "raise the limit" in result.reason
    assert peak < 8 * MiB  # nothing inflated was kept (the bomb is 64 MiB)


def test_flate_bomb_is_refused_by_pdf_render_and_parse_inputs() -> None:
    data = one_page_pdf(bomb_content(64 * MiB))
    with pytest.raises(InputError, match="max_pdf_inflated_bytes") as e:
        PDF(data).render(LOW)
    assert e.value.index is None
    with pytest.raises(InputError, match="max_pdf_inflated_bytes") as e:
        parse_inputs(["a text", PDF(data)], LOW)
    assert e.value.index == 1
    with pytest.raises(InputError, match="max_pdf_inflated_bytes"):
        PDF(data).page_count(LOW)


def test_same_bomb_renders_under_a_higher_cap() -> None:
    """The refusal above is the cap's doing: the document itself is a valid one-page PDF."""
    data = one_page_pdf(bomb_content(16 * MiB))
    with pytest.raises(InputError, match="max_pdf_inflated_bytes"):
        PDF(data, dpi=36).render(LOW)
    [img] = PDF(data, dpi=36).render(InputLimits(max_pdf_inflated_bytes=64 * MiB))
    assert img.size == (100, 100)


def test_double_flate_bomb_is_refused() -> None:
    inner = bomb_content(64 * MiB)
    outer = zlib.compress(inner, 9)
    data = one_page_pdf(outer, filters="[/FlateDecode /FlateDecode]")
    # The outer layer alone inflates to under 100 KB: only the inner layer passes the cap.
    assert len(zlib.decompress(outer)) < 100_000
    result, peak, _ = traced(lambda: check_inflated_size(data, 8 * MiB))
    assert isinstance(result, InputError) and "max_pdf_inflated_bytes" in result.reason
    assert peak < 8 * MiB
    with pytest.raises(InputError, match="max_pdf_inflated_bytes"):
        PDF(data).render(LOW)


def test_triple_flate_is_counted_through_every_layer() -> None:
    payload = b"0 0 m 200 200 l S\n" + b" " * (3 * MiB)
    body = zlib.compress(zlib.compress(zlib.compress(payload, 9), 9), 9)
    total = check_inflated_size(one_page_pdf(body, "[/FlateDecode /FlateDecode /FlateDecode]"), 64 * MiB)
    assert total >= len(payload)
    assert total < len(payload) + 200_000  # the outer layers are small


def test_total_over_many_streams_counts() -> None:
    """Each stream is under the cap; together they are not."""
    doc = bytearray(one_page_pdf(zlib.compress(b"0 0 m 1 1 l S\n")))
    for i in range(6):
        body = zlib.compress(b" " * (2 * MiB))
        doc += f"{10 + i} 0 obj\n<< /Length {len(body)} /Filter /FlateDecode >>\nstream\n".encode()
        doc += body + b"\nendstream\nendobj\n"
    assert check_inflated_size(bytes(doc), 16 * MiB) >= 12 * MiB
    with pytest.raises(InputError, match="max_pdf_inflated_bytes=10485760"):
        check_inflated_size(bytes(doc), 10 * MiB)


@pytest.mark.parametrize("eol", [b"\r\n", b"\r", b" % junk before the line ends\n"])
def test_body_start_follows_pdfium(eol: bytes) -> None:
    """pdfium starts a body on the next line, however `stream` is followed (CR alone, junk)."""
    data = one_page_pdf(bomb_content(16 * MiB), eol=eol)
    with pytest.raises(InputError, match="max_pdf_inflated_bytes"):
        check_inflated_size(data, 8 * MiB)


# ------------------------------------------------------------------ normal documents pass
def test_normal_flate_pdf_under_the_cap_renders() -> None:
    data = fpdf_document(20)
    assert b"/FlateDecode" in data
    total = check_inflated_size(data, LOW.max_pdf_inflated_bytes)
    assert total > 20 * 40 * 40  # every page's text was counted
    pages = PDF(data, dpi=36).render(LOW)
    assert len(pages) == 20


def test_exact_count_and_cap_boundary() -> None:
    payload = b"0 0 m 200 200 l S\n" * 10_000
    data = one_page_pdf(zlib.compress(payload))
    assert check_inflated_size(data, len(payload)) == len(payload)  # at the cap: allowed
    with pytest.raises(InputError, match=f"max_pdf_inflated_bytes={len(payload) - 1}"):
        check_inflated_size(data, len(payload) - 1)


def test_pdf_without_compressed_streams_passes() -> None:
    data = one_page_pdf(b"0 0 m 200 200 l S\n" * 1000, filters="")
    assert check_inflated_size(data, 1) == 0
    [img] = PDF(data, dpi=36).render(InputLimits(max_pdf_inflated_bytes=1))
    assert img.size == (100, 100)


def test_blank_pypdfium2_document_passes() -> None:
    pdfium = pytest.importorskip("pypdfium2")
    import io
    doc = pdfium.PdfDocument.new()
    doc.new_page(200, 200)
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    [img] = PDF(buf.getvalue(), dpi=36).render(InputLimits(max_pdf_inflated_bytes=1))
    assert img.size == (100, 100)


@pytest.mark.parametrize("body", [
    b"",
    b"x",                                            # a lone zlib-looking byte
    b"x\x9c",                                        # a header and nothing else
    b"x\x9c\xff\xff\xff\xff garbage",                # a header, then not deflate
    b"x\xbb" + b"\x00" * 100,                        # FDICT set: zlib would need a dictionary
    zlib.compress(b" " * (4 * MiB))[:-200],          # truncated
    bytes(range(256)) * 40,                          # binary, not zlib
    b"stream\nstream\r\nendstream\nstream",          # keywords inside a body
])
def test_garbage_after_stream_is_not_an_error_of_the_check(body: bytes) -> None:
    data = one_page_pdf(body)
    assert check_inflated_size(data, 8 * MiB) < 8 * MiB
    try:
        PDF(data, dpi=36).render(LOW)  # pdfium may or may not render it...
    except InputError as e:           # ...but only ever refuses it as an InputError
        assert "max_pdf_inflated_bytes" not in e.reason


def test_truncated_bomb_counts_what_inflated_so_far() -> None:
    """pdfium keeps what a corrupt stream inflated before the error, so that counts."""
    content = bomb_content(32 * MiB)
    data = one_page_pdf(content[: len(content) // 2] + b"\xff" * 64)
    with pytest.raises(InputError, match="max_pdf_inflated_bytes"):
        check_inflated_size(data, 8 * MiB)


def test_overlapping_zlib_bodies_are_refused_not_rescanned() -> None:
    """Stored zlib blocks hiding `stream` lines inside each other make every body span the file."""
    unit = b"stream\n"
    # Each body is zlib whose first stored block holds the next `stream` line, and so on:
    # built backwards so each level's bytes are the next level's stored payload.
    tail = b""
    for _ in range(600):
        inner = unit + tail
        tail = b"x\x01" + _stored(inner)
    data = b"%PDF-1.4\n" + unit + tail
    with pytest.raises(InputError) as e:
        check_inflated_size(data, 2**40)
    assert "overlap" in e.value.reason


def _stored(payload: bytes) -> bytes:
    """A zlib body (after the header) of stored deflate blocks holding ``payload``."""
    out = bytearray()
    for i in range(0, max(len(payload), 1), 65535):
        part = payload[i:i + 65535]
        final = i + 65535 >= len(payload)
        out += bytes([1 if final else 0]) + len(part).to_bytes(2, "little")
        out += (len(part) ^ 0xFFFF).to_bytes(2, "little") + part
    return bytes(out) + zlib.adler32(payload).to_bytes(4, "big")


def test_scan_is_linear_on_keyword_spam() -> None:
    """Many `stream` keywords stay fast: one long line, and a zlib-looking body on every line."""
    t0 = time.perf_counter()
    assert check_inflated_size(b"stream " * 1_000_000, 8 * MiB) == 0
    with pytest.raises(InputError, match="overlap"):  # each failed body costs 1 KiB of the budget
        check_inflated_size(b"stream\nx\x9c" * 300_000, 8 * MiB)
    assert time.perf_counter() - t0 < 5
