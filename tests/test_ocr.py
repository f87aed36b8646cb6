"""OCR of rendered text and blank images."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("rapidocr_onnxruntime")
from omnivec.ocr import _reading_order, ocr_image  # noqa: E402

pytestmark = pytest.mark.slow  # RapidOCR on rendered and scanned pages


def _render(lines: list[str]) -> Image.Image:
    img = Image.new("RGB", (1000, 90 * len(lines) + 40), "white")
    try:
        font = ImageFont.load_default(size=52)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((30, 20 + 90 * i), line, fill="black", font=font)
    return img


def test_reads_lines_in_order():
    text = ocr_image(_render(["Invoice number 1234", "Total due 56 EUR"]))
    lines = text.lower().split("\n")
    assert len(lines) == 2, text
    assert "invoice" in lines[0] and "1234" in lines[0]
    assert "total" in lines[1] and "56" in lines[1]


def test_blank_and_tiny_images_give_empty_text():
    assert ocr_image(Image.new("RGB", (400, 300), "white")) == ""
    assert ocr_image(Image.new("L", (1, 1))) == ""


def test_grayscale_input():
    assert "hello" in ocr_image(_render(["hello there"]).convert("L")).lower()


def test_rejects_non_images():
    with pytest.raises(TypeError):
        ocr_image("not an image")  # type: ignore[arg-type]


def test_reading_order_groups_boxes_into_lines():
    boxes = [(50, 70, 200, "world"), (10, 30, 0, "title"), (52, 71, 0, "hello")]
    assert _reading_order(boxes) == ["title", "hello world"]


def test_scanned_page_from_scikit_image():
    data = pytest.importorskip("skimage.data")
    text = ocr_image(Image.fromarray(data.page()))
    lines = text.split("\n")
    assert len(lines) >= 6, text                       # 7 lines of text on the page
    assert lines[1] == "Let us first determine markers of the coins and the"
    assert "histogram" in text and "unambiguously" in text
