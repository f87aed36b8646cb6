"""``vdr-rendered``: a visual-document retrieval suite generated deterministically offline.

Why: no ViDoRe/Jina-VDR data is obtainable offline, so real text is drawn into page images and
queries are taken from what each page says. Four page kinds (72 pages, one query each):

- ``paragraph`` (24): a Python standard-library docstring under its qualified name; query = the
  docstring's first sentence.
- ``two-column`` (24): Django's human-translated UI strings in German, French and Spanish set in
  two columns; query = the English original of one string on the page (cross-lingual). No
  string is on two pages and no query repeats (the QA protocol deduplicates queries).
- ``table`` (12): Django's language table (code, English name, native name, script direction);
  query = "What is the native name of <language>?" for one row.
- ``chart`` (12): matplotlib bar charts of real counts (documented functions per stdlib module,
  translated Django strings per language); query = a question the chart answers.

Pages are 700x900 PNGs in DejaVu Sans (shipped with matplotlib), stored in the QA format
(query, image, image_filename, plus kind/language) as ``test.parquet`` under the cache folder.
"""
from __future__ import annotations

import io
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

VERSION = 3
STDLIB_PACKAGES = ("asyncio", "email", "http", "importlib", "json", "xml")
SIZE = (700, 900)
MARGIN = 48


def font_path(bold: bool = False) -> Path:
    """DejaVu Sans as matplotlib ships it (present wherever the suite can be generated)."""
    import matplotlib
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def _font(size: int, bold: bool = False) -> Any:
    from PIL import ImageFont
    return ImageFont.truetype(str(font_path(bold)), size)


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap measured in pixels."""
    lines: list[str] = []
    for para in text.split("\n"):
        words, line = para.split(), ""
        for w in words:
            trial = f"{line} {w}".strip()
            if font.getlength(trial) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = w
        lines.append(line)
    return lines


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _page() -> tuple[Any, Any]:
    from PIL import Image, ImageDraw
    im = Image.new("RGB", SIZE, "white")
    return im, ImageDraw.Draw(im)


def _text_page(title: str, body: str) -> tuple[bytes, str]:
    """The page's PNG and the text drawn on it (every drawer returns both)."""
    im, draw = _page()
    title_font, body_font = _font(26, bold=True), _font(18)
    drawn = []
    y = MARGIN
    for line in _wrap(title, title_font, SIZE[0] - 2 * MARGIN):
        draw.text((MARGIN, y), line, font=title_font, fill="black")
        drawn.append(line)
        y += 36
    y += 14
    for line in _wrap(body, body_font, SIZE[0] - 2 * MARGIN):
        if y > SIZE[1] - MARGIN - 24:
            break
        draw.text((MARGIN, y), line, font=body_font, fill=(20, 20, 20))
        drawn.append(line)
        y += 26
    return _png(im), "\n".join(drawn)


def _columns_page(title: str, items: list[str]) -> tuple[bytes, str]:
    im, draw = _page()
    title_font, body_font = _font(24, bold=True), _font(17)
    draw.text((MARGIN, MARGIN), title, font=title_font, fill="black")
    col_w = (SIZE[0] - 2 * MARGIN - 30) // 2
    half = (len(items) + 1) // 2
    for c, chunk in enumerate((items[:half], items[half:])):
        x, y = MARGIN + c * (col_w + 30), MARGIN + 60
        for item in chunk:
            for line in _wrap(item, body_font, col_w):
                draw.text((x, y), line, font=body_font, fill=(20, 20, 20))
                y += 24
            y += 16
    draw.line((SIZE[0] // 2, MARGIN + 55, SIZE[0] // 2, SIZE[1] - MARGIN), fill=(160, 160, 160), width=1)
    return _png(im), "\n".join([title] + items)


def _table_page(title: str, header: list[str], rows: list[list[str]]) -> tuple[bytes, str]:
    im, draw = _page()
    title_font, font, bold = _font(24, bold=True), _font(17), _font(17, bold=True)
    draw.text((MARGIN, MARGIN), title, font=title_font, fill="black")
    widths = [90, 200, 200, 110]
    y = MARGIN + 70
    for r, row in enumerate([header] + rows):
        x = MARGIN
        for w, cell in zip(widths, row):
            draw.rectangle((x, y, x + w, y + 44), outline=(90, 90, 90), fill=(225, 232, 245) if r == 0 else None)
            draw.text((x + 8, y + 12), cell, font=bold if r == 0 else font, fill="black")
            x += w
        y += 44
    return _png(im), "\n".join([title] + [" ".join(row) for row in [header] + rows])


def _chart_page(title: str, labels: list[str], values: list[int], xlabel: str) -> tuple[bytes, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(SIZE[0] / 100, SIZE[1] / 100), dpi=100)
    ax.barh(labels[::-1], values[::-1], color="#4c72b0")
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v}", va="center", fontsize=11)
    ax.set_title("\n".join(textwrap.wrap(title, 44)), fontsize=15)
    ax.set_xlabel(xlabel, fontsize=12)
    ax.tick_params(labelsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue(), "\n".join([title] + [f"{label} {v}" for label, v in zip(labels, values)] + [xlabel])


def _drawn(page: tuple[bytes, str]) -> dict[str, Any]:
    png, text = page
    return {"image": png, "text": text}


# ------------------------------------------------------------------------------ content
_RENDERABLE = re.compile(r"^[\u0000-\u05ff]*$")                # Latin, Greek, Cyrillic, Armenian, Hebrew


def _first_sentence(doc: str) -> str:
    flat = " ".join(doc.split())
    m = re.match(r"(.+?[.!?])(\s|$)", flat)
    return (m.group(1) if m else flat)[:200]


def _paragraph_pages(n: int) -> Iterator[dict[str, Any]]:
    from ..data.stdlib import iter_code_pairs
    modules: set[str] = set()
    sentences: set[str] = set()
    for pair in iter_code_pairs():
        sentence = _first_sentence(pair.docstring)
        if pair.path in modules or sentence in sentences or not 250 <= len(pair.docstring) <= 1200 \
                or len(sentence.split()) < 6:
            continue
        modules.add(pair.path)
        sentences.add(sentence)
        name = pair.path[:-3].replace("/", ".").removesuffix(".__init__") + "." + pair.name
        yield {"query": sentence, "kind": "paragraph", "language": "en",
               **_drawn(_text_page(name, pair.docstring)), "source": name}
        if len(modules) == n:
            return


def _column_pages(languages: tuple[str, ...], per_lang: int, per_page: int = 10) -> Iterator[dict[str, Any]]:
    from ..data.django_strings import translations
    names = {"de": "Deutsch", "fr": "Français", "es": "Español"}
    used: set[str] = set()                              # an English id appears on one page only
    for lang in languages:
        pairs = [(e, t) for e, t in translations(lang).items()
                 if len(e.split()) >= 2 and len(t) <= 70 and _RENDERABLE.match(t) and "%" not in e]
        pairs = [(e, t) for e, t in pairs if e not in used][:per_lang * per_page]
        used.update(e for e, _ in pairs)
        for p in range(per_lang):
            chunk = pairs[p * per_page:(p + 1) * per_page]
            if len(chunk) < per_page:
                return
            english, _ = max(chunk, key=lambda et: (len(et[0]), et[0]))
            yield {"query": english, "kind": "two-column", "language": lang, "source": f"django.po {lang}",
                   **_drawn(_columns_page(f"Django — {names.get(lang, lang)} ({p + 1})", [t for _, t in chunk]))}


def _table_pages(n: int, per_page: int = 9) -> Iterator[dict[str, Any]]:
    from django.conf.locale import LANG_INFO
    rows = [[code, info["name"], info["name_local"] if _RENDERABLE.match(info["name_local"]) else "—",
             "right-to-left" if info["bidi"] else "left-to-right"]
            for code, info in sorted(LANG_INFO.items()) if "name" in info]
    for p in range(n):
        chunk = rows[p * per_page:(p + 1) * per_page]
        if not chunk:
            return
        asked = chunk[len(chunk) // 2]
        yield {"query": f"What is the native name of the {asked[1]} language?", "kind": "table",
               "language": "en", "source": "django LANG_INFO",
               **_drawn(_table_page(f"Languages {chunk[0][0]} – {chunk[-1][0]}",
                                    ["code", "English name", "native name", "direction"], chunk))}


def _chart_pages(n_stdlib: int, n_django: int) -> Iterator[dict[str, Any]]:
    from django.conf.locale import LANG_INFO

    from ..data.django_strings import django_root
    from ..data.stdlib import iter_code_pairs
    from ..data.stdlib import stdlib_root
    for pkg in STDLIB_PACKAGES[:n_stdlib]:
        counts = Counter(p.path for p in iter_code_pairs(stdlib_root() / pkg))
        mods = sorted(counts.items(), key=lambda pc: (-pc[1], pc[0]))[:10]
        labels = [p[:-3].replace("/", ".") for p, _ in mods]
        yield {"query": f"Which module of the Python {pkg} package has the most documented functions?",
               "kind": "chart", "language": "en", "source": f"stdlib {pkg}",
               **_drawn(_chart_page(f"Documented functions per module in the {pkg} package",
                                    labels, [c for _, c in mods], "documented functions"))}
    import polib
    core = django_root() / "conf" / "locale"
    langs = [c for c in sorted(LANG_INFO) if "name" in LANG_INFO[c] and (core / c / "LC_MESSAGES" / "django.po").is_file()]
    group = 8
    for g in range(n_django):
        chunk = langs[g * group:(g + 1) * group]
        if not chunk:
            return
        values = [sum(1 for e in polib.pofile(str(core / c / "LC_MESSAGES" / "django.po")) if e.translated())
                  for c in chunk]
        names = [LANG_INFO[c]["name"] for c in chunk]
        asked = names[len(names) // 2]
        yield {"query": f"How many core Django messages are translated into {asked}?", "kind": "chart",
               "language": "en", "source": "django catalogues",
               **_drawn(_chart_page(f"Translated core Django messages: {names[0]} to {names[-1]}",
                                    names, values, "translated messages (django/conf/locale)"))}


def iter_pages() -> Iterator[dict[str, Any]]:
    """Every page in suite order: ``query``, ``kind``, ``language``, ``source``, ``image`` (PNG
    bytes) and ``text``, the text drawn on the page (what a PDF of it would carry as its text
    layer: ``benchmarks/pdf_text_layer.py`` builds those PDFs). The suite file leaves ``text`` out."""
    for gen in (_paragraph_pages(24), _column_pages(("de", "fr", "es"), 8), _table_pages(12), _chart_pages(6, 6)):
        yield from gen


def generate(out_dir: Path, on_page: Callable[[], None] | None = None) -> Path:
    """Write ``test.parquet`` (QA format) under ``out_dir``; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows: list[dict[str, Any]] = []
    for row in iter_pages():
        del row["text"]
        row["image_filename"] = f"{len(rows):03d}-{row['kind']}.png"
        row["image"] = {"bytes": row["image"], "path": row["image_filename"]}
        rows.append(row)
        if on_page is not None:
            on_page()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "test.parquet"
    table = pa.Table.from_pylist(rows)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def suite_dir(cache_root: Path) -> Path:
    return cache_root / f"vdr-rendered-v{VERSION}"
