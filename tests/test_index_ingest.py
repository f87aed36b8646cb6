"""Ingestion for `omnivec index`: folder scanning, chunking and decoding of real files built here."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fpdf import FPDF
from PIL import Image as PILImage

from omnivec.index.chunking import Chunk, chunk_code, chunk_text
from omnivec.inputs import InputLimits
from omnivec.index.ingest import IngestError, SourceFile, file_hash, iter_items, read_items, scan


def wc(s: str) -> int:
    """A whitespace tokenizer: additive, so budgets can be checked exactly."""
    return len(s.split())


def body_of(chunk: Chunk) -> str:
    """Chunk text without its markdown heading-path line."""
    return chunk.text.split("\n", 1)[1] if chunk.text.startswith("# ") else chunk.text


def original(lines: list[str], c: Chunk) -> str:
    return "\n".join(lines[c.line_start - 1:c.line_end])


def src(path: Path, kind: str, language: str | None = None, rel: str | None = None) -> SourceFile:
    return SourceFile(rel or path.name, path, kind, language, path.stat().st_size)  # type: ignore[arg-type]


def para(tag: str, n_lines: int, words: int = 6) -> str:
    return "\n".join(" ".join(f"{tag}{i}w{j}" for j in range(words)) for i in range(n_lines))


MARKDOWN = "\n".join([
    "Preamble before any heading.",
    "",
    "# Refunds",
    "",
    para("ra", 5),
    "",
    para("rb", 4),
    "",
    "## Timing",
    "",
    para("ta", 6),
    "",
    para("tb", 6),
    "",
    "```python",
    "# a comment, not a heading",
    "",
    "x = 1",
    "```",
    "",
    "## Small",
    "Short text.",
    "### Tiny sub",
    "Also short.",
    "",
    "# Shipping",
    "",
    para("sa", 8),
    "",
])


# --------------------------------------------------------------------------------------------
# chunk_text
# --------------------------------------------------------------------------------------------


def test_markdown_chunks_budget_headings_overlap_and_spans(tmp_path: Path) -> None:
    f = tmp_path / "guide.md"
    f.write_text(MARKDOWN)
    lines = MARKDOWN.split("\n")
    items = read_items(src(f, "markdown"), count_tokens=wc, max_tokens=40, overlap=8)
    assert [it.ordinal for it in items] == list(range(len(items)))
    assert all(it.kind == "text" and it.content == it.text and it.path == "guide.md" for it in items)
    chunks = [Chunk(it.text, it.line_start, it.line_end) for it in items]

    for c in chunks:
        assert 0 < wc(c.text) <= 40, c
        assert body_of(c) == original(lines, c)  # spans map back to the file exactly

    assert chunks[0].text == "Preamble before any heading." and chunks[0].line_start == 1
    timing = [c for c in chunks if c.text.startswith("# Refunds > ## Timing\n")]
    shipping = [c for c in chunks if c.text.startswith("# Shipping\n")]
    refunds = [c for c in chunks if c.text.startswith("# Refunds\n")]
    assert len(timing) >= 2 and len(shipping) >= 2 and refunds
    # the fenced block is not a heading and stays in one chunk
    assert any("# a comment, not a heading" in c.text and "x = 1" in c.text for c in timing)
    # a small subtree is one chunk, its sub-heading kept verbatim
    small = [c for c in chunks if c.text.startswith("# Refunds > ## Small\n")]
    assert len(small) == 1 and "### Tiny sub\nAlso short." in small[0].text
    # chunks stay inside their top-level section
    ship_line = lines.index("# Shipping") + 1
    assert all(c.line_start > ship_line for c in shipping)
    assert all(c.line_end < ship_line for c in refunds + timing + small)
    # overlap: each next chunk of a section starts with the last line(s) of the previous one
    for group in (timing, shipping):
        for prev, nxt in zip(group, group[1:]):
            assert nxt.line_start <= prev.line_end
            assert body_of(nxt).split("\n")[0] in body_of(prev).split("\n")
            assert nxt.line_end > prev.line_end
    # every content line of the file is in some chunk
    covered = {n for c in chunks for n in range(c.line_start, c.line_end + 1)}
    headings = {i + 1 for i, x in enumerate(lines) if x.startswith("#") and not x.startswith("# a comment")}
    content = {i + 1 for i, x in enumerate(lines) if x.strip()} - headings
    assert content <= covered


def test_plain_text_long_line_split_by_sentences_and_words(tmp_path: Path) -> None:
    sentences = [f"Sentence {i} says " + " ".join(f"t{i}x{j}" for j in range(8)) + "." for i in range(12)]
    text = "Title line\n\n" + " ".join(sentences) + "\n\nlast " + "y " * 100
    f = tmp_path / "notes.txt"
    f.write_text(text)
    items = read_items(src(f, "text"), count_tokens=wc, max_tokens=30, overlap=0)
    lines = text.split("\n")
    for it in items:
        assert wc(it.text) <= 30
        assert it.text in original(lines, Chunk(it.text, it.line_start, it.line_end))
    # small units are packed: the title shares a chunk with the first sentences
    assert items[0].text.startswith("Title line\n\nSentence 0 says") and items[0].line_start == 1
    parts = []
    for it in (it for it in items if it.line_start <= 3 <= it.line_end):
        t = it.text.split("\n\n", 1)[1] if it.line_start < 3 else it.text
        parts.append(t.rsplit("\n\n", 1)[0] if it.line_end > 3 else t)
    assert len(parts) >= 4 and all(p.endswith(".") for p in parts)  # cut at sentence ends
    assert " ".join(parts) == lines[2]
    tail = [it for it in items if it.line_start == 5]
    assert len(tail) >= 3 and all(it.line_end == 5 for it in tail)  # a long word run is cut too


def test_chunk_text_edge_cases_and_linear_token_counting() -> None:
    assert chunk_text("", count_tokens=wc) == []
    assert chunk_text(" \n\n\t\n", count_tokens=wc, markdown=True) == []
    assert chunk_text("# Only a heading\n", count_tokens=wc, markdown=True) == [Chunk("# Only a heading", 1, 1)]
    crlf = chunk_text("a b\r\n\r\nc d\r\n", count_tokens=wc, max_tokens=2, overlap=0)
    assert crlf == [Chunk("a b", 1, 1), Chunk("c d", 3, 3)]

    calls: list[int] = []

    def counting(s: str) -> int:
        calls.append(len(s))
        return wc(s)

    doc = "\n\n".join(f"## S{k}\n\n" + para(f"p{k}", 3) for k in range(200))
    first = chunk_text(doc, count_tokens=counting, max_tokens=50, overlap=10, markdown=True)
    assert len(calls) < 6 * 200 and sum(calls) < 8 * len(doc)  # a few calls per unit, not n^2
    assert first == chunk_text(doc, count_tokens=wc, max_tokens=50, overlap=10, markdown=True)


def test_special_tokens_are_budgeted() -> None:
    """A tokenizer that adds [CLS]/[SEP] to every call still gets chunks within max_tokens."""
    def with_specials(s: str) -> int:
        return len(s.split()) + 2
    text = "\n".join(" ".join(f"w{i}_{j}" for j in range(5)) for i in range(40))
    chunks = chunk_text(text, count_tokens=with_specials, max_tokens=32, overlap=6)
    assert len(chunks) > 5 and all(with_specials(c.text) <= 32 for c in chunks)


# --------------------------------------------------------------------------------------------
# chunk_code
# --------------------------------------------------------------------------------------------

PYTHON = '''\
"""Module docstring."""
import os
import sys

LIMIT = 10


# Adds two numbers.
# (a leading comment block)
@functools.cache
@other.decorator(1)
def add(a, b):
    return a + b


class Store:
    """A store."""

    kind = "memory"

    def get(self, key):
        value = self.data.get(key)
        return value

    @property
    def size(self):
        return len(self.data)

    def put(self, key, value):
        self.data[key] = value
        self.count += 1


async def fetch(url):
    return await get(url)


if __name__ == "__main__":
    print(add(1, 2))
'''


def test_python_one_chunk_per_definition(tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text(PYTHON)
    lines = PYTHON.split("\n")
    items = read_items(src(f, "code", "python"), count_tokens=wc, max_tokens=200)
    assert all(it.kind == "code" for it in items)
    spans = [(it.line_start, it.line_end) for it in items]
    assert spans == [(1, 5), (8, 13), (16, 31), (34, 35), (38, 39)]
    for it in items:
        assert it.text == original(lines, Chunk(it.text, it.line_start, it.line_end))
    assert items[1].text.startswith("# Adds two numbers.") and "@other.decorator(1)" in items[1].text


def test_python_big_class_split_by_methods_and_syntax_error_fallback() -> None:
    lines = PYTHON.split("\n")
    chunks = chunk_code(PYTHON, language="python", count_tokens=wc, max_tokens=16)
    texts = [c.text for c in chunks]
    assert 'class Store:\n    """A store."""\n\n    kind = "memory"' in texts
    assert "    @property\n    def size(self):\n        return len(self.data)" in texts
    assert any(t.startswith("    def get(self, key):") for t in texts)
    for c in chunks:
        assert wc(c.text) <= 16 and c.text == original(lines, c)

    broken = "def ok():\n    return 1\n\ndef broken(:\n    pass\n" + "x = 1\n" * 30
    chunks = chunk_code(broken, language="python", count_tokens=wc, max_tokens=20, overlap_lines=2)
    blines = broken.split("\n")
    assert len(chunks) >= 2 and chunks[0].line_start == 1
    assert all(wc(c.text) <= 20 and c.text == original(blines, c) for c in chunks)
    covered = {n for c in chunks for n in range(c.line_start, c.line_end + 1)}
    assert {i + 1 for i, x in enumerate(blines) if x.strip()} <= covered


def test_javascript_chunks_by_lines_at_top_level_boundaries(tmp_path: Path) -> None:
    def fn(n: int) -> list[str]:
        return [f"function f{n}(a, b) {{", f"  const x = a + b + {n};", "  if (x > 3) {",
                "    return x * 2;", "  }", "  return x;", "}", ""]
    js = "\n".join(["import x from 'y';", "const K = 3;", ""] + [ln for i in range(8) for ln in fn(i)])
    f = tmp_path / "app.js"
    f.write_text(js)
    lines = js.split("\n")
    items = read_items(src(f, "code", "javascript"), count_tokens=wc, max_tokens=60)
    assert len(items) >= 3
    for it in items:
        assert wc(it.text) <= 60
        assert it.text == original(lines, Chunk(it.text, it.line_start, it.line_end))
        assert it.text.endswith("}")  # never cut inside a function when a boundary is near
    assert all(it.text.startswith("function") for it in items[1:])

    minified = "var a=" + "1+" * 400 + "1;"
    chunks = chunk_code(minified, language="javascript", count_tokens=lambda s: len(s) // 4, max_tokens=64)
    assert len(chunks) > 1 and "".join(c.text for c in chunks) == minified.replace(" ", "")
    assert all(len(c.text) // 4 <= 64 and c.line_start == c.line_end == 1 for c in chunks)


# --------------------------------------------------------------------------------------------
# images and PDFs
# --------------------------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[str]) -> None:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=14)
    for words in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text=words)
    pdf.output(str(path))


def test_images_and_truncated_png(tmp_path: Path) -> None:
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    PILImage.new("RGBA", (40, 30), (255, 0, 0, 128)).save(png)
    PILImage.new("RGB", (64, 48), (0, 128, 255)).save(jpg, quality=90)
    for path, size, mode in ((png, (40, 30), "RGBA"), (jpg, (64, 48), "RGB")):
        [item] = read_items(src(path, "image"), count_tokens=wc)
        assert item.kind == "image" and item.text == "" and item.page is None
        # decoded as omnivec.Image decodes: alpha is kept for the model family to handle
        assert isinstance(item.content, PILImage.Image) and item.content.mode == mode
        assert item.content.size == size
    bad = tmp_path / "cut.png"
    bad.write_bytes(png.read_bytes()[:60])
    with pytest.raises(IngestError, match="corrupt image"):
        read_items(src(bad, "image"), count_tokens=wc)
    # omnivec's limits apply: pixel count is checked from the header (decompression bombs)
    with pytest.raises(IngestError, match="too large"):
        read_items(src(jpg, "image"), count_tokens=wc, limits=InputLimits(max_image_pixels=1000))


def test_pdf_pages_text_layer_and_corrupt_pdf(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    make_pdf(path, ["Alpha apples page one", "Bravo bananas page two", "Charlie cherries page three"])
    items = read_items(src(path, "pdf"), count_tokens=wc)
    assert [it.page for it in items] == [1, 2, 3] and [it.ordinal for it in items] == [0, 1, 2]
    for it, word in zip(items, ("apples", "bananas", "cherries")):
        assert it.kind == "pdf-page" and word in it.text and it.text == it.text.strip()
        assert isinstance(it.content, PILImage.Image) and it.content.mode == "RGB"
        assert abs(it.content.size[0] - 595 * 2) <= 2  # A4 at omnivec.PDF's 144 dpi
    lazy = iter_items(src(path, "pdf"), count_tokens=wc)
    first = next(lazy)
    assert first.page == 1 and first.text == items[0].text
    lazy.close()  # abandoning the iterator closes the document
    small = read_items(src(path, "pdf"), count_tokens=wc, pdf_scale=0.5)
    assert abs(small[0].content.size[0] - 595 // 2) <= 2

    with pytest.raises(IngestError, match="too many pages"):
        read_items(src(path, "pdf"), count_tokens=wc, limits=InputLimits(max_pdf_pages=2))
    tiny = read_items(src(path, "pdf"), count_tokens=wc, limits=InputLimits(max_pdf_pixels_per_page=20_000))
    assert all(it.content.size[0] * it.content.size[1] <= 20_000 for it in tiny)
    assert [it.text for it in tiny] == [it.text for it in items]

    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n1 0 obj <<\ngarbage")
    with pytest.raises(IngestError, match="corrupt PDF"):
        read_items(src(bad, "pdf"), count_tokens=wc)
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match="corrupt PDF: empty data"):
        read_items(src(empty, "pdf"), count_tokens=wc)


def test_binary_and_invalid_text_are_refused(tmp_path: Path) -> None:
    b = tmp_path / "data.txt"
    b.write_bytes(b"abc\x00\x01\x02" * 10)
    with pytest.raises(IngestError, match="binary"):
        read_items(src(b, "text"), count_tokens=wc)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café naïve résumé ".encode("latin-1") * 3)  # a few bad bytes: kept
    [item] = read_items(src(latin, "text"), count_tokens=wc)
    assert "caf\ufffd" in item.text
    junk = tmp_path / "junk.txt"
    junk.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(IngestError, match="UTF-8"):
        read_items(src(junk, "text"), count_tokens=wc)


# --------------------------------------------------------------------------------------------
# scan and file_hash
# --------------------------------------------------------------------------------------------


def build_tree(root: Path) -> None:
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text("# Guide\n\nHello.\n")
    (root / "docs" / "sub" / "notes.txt").write_text("notes\n")
    (root / "docs" / "sub" / "Makefile").write_text("all:\n\techo hi\n")
    (root / "docs" / "sub" / "blob.dat").write_bytes(b"\x89\x00\xff" * 100)
    (root / "main.py").write_text("print(1)\n")
    (root / "Pic.PNG").write_bytes(b"not checked by scan")
    (root / "report.pdf").write_bytes(b"%PDF-1.4")
    (root / ".hidden.md").write_text("secret\n")
    for d in (".git", "node_modules", "__pycache__", "store.omnivec", "venv"):
        (root / d).mkdir()
        (root / d / "x.md").write_text("skip me\n")
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "big.txt").write_text("x" * 2000)


def test_scan_classifies_skips_and_is_deterministic(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    build_tree(root)
    outside = tmp_path / "outside.md"
    outside.write_text("outside\n")
    os.symlink(outside, root / "link_out.md")
    os.symlink(root / "main.py", root / "link_in.py")

    files, skipped = scan(root, max_file_bytes=1000)
    got = {f.rel_path: (f.kind, f.language) for f in files}
    assert got == {
        "Pic.PNG": ("image", None),
        "docs/guide.md": ("markdown", None),
        "docs/sub/Makefile": ("text", None),
        "docs/sub/notes.txt": ("text", None),
        "link_in.py": ("code", "python"),
        "main.py": ("code", "python"),
        "report.pdf": ("pdf", None),
    }
    reasons = dict(skipped)
    assert reasons["docs/sub/blob.dat"] == "unsupported file type"
    assert reasons["link_out.md"] == "symlink points outside the folder"
    assert reasons["big.txt"].startswith("too large")
    assert set(reasons) == {"docs/sub/blob.dat", "link_out.md", "big.txt"}
    for f in files:
        assert f.abs_path.is_file() and f.size == f.abs_path.stat().st_size
    assert scan(root, max_file_bytes=1000) == (files, skipped)  # same order every time
    assert [f.rel_path for f in files] == sorted(f.rel_path for f in files)

    with_hidden, _ = scan(root, include_hidden=True, max_file_bytes=1000)
    names = {f.rel_path for f in with_hidden}
    assert ".hidden.md" in names and not any(n.startswith((".git/", "store.omnivec/")) for n in names)

    single, none = scan(root / "docs" / "guide.md")
    assert [(f.rel_path, f.kind) for f in single] == [("guide.md", "markdown")] and none == []


def test_file_hash_stable_and_detects_changes(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello world\n" * 100_000)
    h = file_hash(f)
    assert h == file_hash(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    f.write_bytes(b"hello world\n" * 99_999 + b"hello World\n")
    assert file_hash(f) != h
