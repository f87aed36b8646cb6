"""OCR text of page images, cached on disk by the SHA-256 of the image bytes.

Why: OCR is the slowest step of a visual suite on a CPU (about a second a page) and its output
never changes for the same bytes, so baselines read it once per machine.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image as PILImage

from .datasets import PageImage


def _key(page: PageImage) -> str:
    return hashlib.sha256(page.data).hexdigest()


def ocr_texts(pages: Sequence[PageImage], cache_dir: Path | None,
              on_page: Callable[[], None] | None = None) -> list[str]:
    """OCR text for each page (``omnivec.ocr.ocr_image``, the same call the encoder family makes)."""
    from ..ocr import ocr_image
    cache: dict[str, str] = {}
    path = cache_dir / "ocr-cache.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        cache = json.loads(path.read_text(encoding="utf-8"))
    dirty = False
    out: list[str] = []
    for page in pages:
        key = _key(page)
        if key not in cache:
            with PILImage.open(io.BytesIO(page.data)) as im:
                cache[key] = ocr_image(im)
            dirty = True
        out.append(cache[key])
        if on_page is not None:
            on_page()
    if dirty and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    return out
