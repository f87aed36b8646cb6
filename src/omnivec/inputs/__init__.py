"""Input parsing, validation, safe URL fetching and PDF rasterising.

Every input a user can send (text, image path/bytes/base64/data URI/URL, PIL image, PDF) is
turned here into either a ``str`` or a PIL image (RGB, or RGBA when it has transparency: what
to do with alpha is each model family's decision). Bad input is normal input: anything wrong
with one input raises :class:`InputError` naming that input, never another exception, and
every resource limit lives in :class:`InputLimits`.

One job per module:

* ``limits``: :class:`InputLimits` and :class:`InputError`.
* ``fetch``: SSRF-safe http(s) fetching (:func:`fetch_url`).
* ``sources``: bytes, local paths, base64 and data URIs (:func:`decode_base64_image`).
* ``images``: :class:`Image`, safe decoding, pixel modes, :func:`composite_on_white`.
* ``pdf``: :class:`PDF` and :class:`PDFPage`; the only code that touches pdfium.
* ``pdf_streams``: counts what a PDF's Flate streams inflate to, before pdfium opens it.
* ``parse``: :func:`parse_inputs`.
* ``prefetch``: :func:`fetch_url_inputs` (a request's URLs fetched before preparation).
"""

from __future__ import annotations

from .fetch import fetch_url
from .images import Image, composite_on_white
from .limits import InputError, InputLimits
from .parse import InputItem, parse_inputs
from .pdf import PDF, PDFPage
from .prefetch import fetch_url_inputs, has_url_inputs
from .sources import decode_base64_image

__all__ = [
    "InputLimits",
    "InputError",
    "Image",
    "PDF",
    "PDFPage",
    "InputItem",
    "parse_inputs",
    "fetch_url",
    "decode_base64_image",
    "composite_on_white",
    "fetch_url_inputs",
    "has_url_inputs",
]
