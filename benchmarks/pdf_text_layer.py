"""PDF pages on a text-only model: the page's text layer vs OCR of the rendered page (issue 21).

Part 1, quality: ``vdr-rendered`` turned into one PDF with a text layer. Each of its 72 pages
(700x900) becomes a 700x900 pt PDF page: the suite's PNG drawn full-page, plus the text drawn
on it as an invisible text layer (how born-digital or OCR-sandwich PDFs carry text;
``omnivec.eval.vdr_rendered.iter_pages`` gives the text). The default model then embeds the
pages three ways, and the suite's queries rank them (nDCG@5, one relevant page per query):

- ``layer``: ``omnivec.PDF(text="layer")``, the text layer;
- ``ocr``: ``omnivec.PDF(text="ocr", dpi=72)``, OCR of the rendered page, at the suite's
  own 700x900 pixels (so it equals ``omnivec eval vdr-rendered``'s image->model path);
- ``auto``: the default rule (the layer where it holds >= 2 characters per square inch);

and BM25 ranks the layer text and the OCR text.

Part 2, speed: pages/s of ``encode([PDF])`` with ``text="layer"`` vs ``text="ocr"`` (render +
OCR + embed), rounds alternated, on that PDF and on real PDFs given with ``--pdf`` (e.g. the
manuals Debian ships: /usr/share/doc/libtasn1-doc/libtasn1.pdf,
/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf), where ``auto``'s choice per page is
reported too. No timed assertions::

    python benchmarks/pdf_text_layer.py [--rounds 2] [--pdf FILE ...] [--skip-quality]
"""
from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

def build_pdf(pages: list[dict], out: Path) -> None:
    """One PDF page per suite page: its PNG full-page under an invisible layer of its text."""
    from fpdf import FPDF
    from fpdf.enums import TextMode

    from omnivec.eval.vdr_rendered import font_path

    pdf = FPDF(unit="pt", format=(700, 900))
    pdf.set_auto_page_break(False)
    pdf.add_font("dejavu", fname=str(font_path()))
    for page in pages:
        pdf.add_page()
        pdf.image(io.BytesIO(page["image"]), x=0, y=0, w=700, h=900)
        pdf.set_font("dejavu", size=9)
        pdf.text_mode = TextMode.INVISIBLE
        pdf.set_xy(48, 48)
        pdf.multi_cell(604, 11, text=page["text"])
        pdf.text_mode = TextMode.FILL
    pdf.output(str(out))


def ndcg_at_5(scores: np.ndarray) -> float:
    """Query i's relevant page is page i (one per query)."""
    total = 0.0
    for i, row in enumerate(scores):
        rank = int((row > row[i]).sum()) + 1
        total += 1.0 / math.log2(rank + 1) if rank <= 5 else 0.0
    return 100.0 * total / len(scores)


def quality(model, pdf_path: Path, pages: list[dict]) -> None:
    import omnivec
    from omnivec.eval.bm25 import bm25_rank
    from omnivec.ocr import ocr_image

    queries = [p["query"] for p in pages]
    q = model.encode(queries, task="retrieval.query")
    print(f"quality: {len(pages)} pages of vdr-rendered as one PDF with a text layer; nDCG@5")
    for mode, dpi in (("layer", 144), ("ocr", 72), ("auto", 72)):
        d = model.encode([omnivec.PDF(pdf_path, text=mode, dpi=dpi)], task="retrieval.passage")
        print(f"  dense, {mode:5s}: {ndcg_at_5(q @ d.T):6.2f}")
    layer = [page.text or "" for page in omnivec.PDF(pdf_path).iter_pages(text=True, text_pages=True)]
    ocr = [ocr_image(page.image) for page in omnivec.PDF(pdf_path, dpi=72).iter_pages()]
    for name, docs in (("layer", layer), ("ocr", ocr)):
        ranked = bm25_rank(queries, docs, depth=len(docs))
        gains = [1.0 / math.log2(list(row).index(i) + 2) if i in list(row)[:5] else 0.0
                 for i, row in enumerate(ranked)]
        print(f"  BM25,  {name:5s}: {100.0 * sum(gains) / len(gains):6.2f}")
    kinds = sorted({p["kind"] for p in pages})
    for kind in kinds:
        idx = [i for i, p in enumerate(pages) if p["kind"] == kind]
        sub = {}
        for mode, dpi in (("layer", 144), ("ocr", 72)):
            d = model.encode([omnivec.PDF(pdf_path, text=mode, dpi=dpi, pages=idx)], task="retrieval.passage")
            sub[mode] = ndcg_at_5(q[idx] @ d.T)
        print(f"    {kind:10s} ({len(idx)} pages): dense layer {sub['layer']:6.2f}, ocr {sub['ocr']:6.2f}")


def speed(model, files: list[Path], rounds: int) -> None:
    import omnivec

    print(f"speed: pages/s of encode([PDF]), {rounds} rounds alternated (median); load {os.getloadavg()[0]:.2f}")
    for path in files:
        auto = list(omnivec.PDF(path).iter_pages(text_pages=True))
        from_layer = sum(1 for p in auto if p.image is None)
        times: dict[str, list[float]] = {"layer": [], "ocr": []}
        for r in range(rounds):
            for mode in (("layer", "ocr") if r % 2 == 0 else ("ocr", "layer")):
                start = time.perf_counter()
                vecs = model.encode([omnivec.PDF(path, text=mode)], task="retrieval.passage")
                times[mode].append(time.perf_counter() - start)
        n = len(vecs)
        rate = {m: n / statistics.median(t) for m, t in times.items()}
        print(f"  {path.name}: {n} pages, auto takes {from_layer} from the layer; "
              f"layer {rate['layer']:.2f} pages/s, ocr {rate['ocr']:.2f} pages/s "
              f"({rate['layer'] / rate['ocr']:.1f}x); runs layer {[round(t, 1) for t in times['layer']]}, "
              f"ocr {[round(t, 1) for t in times['ocr']]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pdf", type=Path, action="append", default=[], help="a real PDF to time (repeatable)")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()

    import omnivec
    from omnivec.cpu_features import detect
    from omnivec.eval.vdr_rendered import iter_pages

    print(f"CPU: {detect().summary()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    model = omnivec.load(device="cpu")
    pages = list(iter_pages())
    with tempfile.TemporaryDirectory(prefix="pdf-text-layer-") as tmp:
        pdf_path = Path(tmp) / "vdr-rendered.pdf"
        build_pdf(pages, pdf_path)
        if not args.skip_quality:
            quality(model, pdf_path, pages)
        speed(model, [pdf_path] + args.pdf, args.rounds)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
