""":func:`parse_inputs`: validate a request's inputs and load them into texts and images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Union

from PIL import Image as PILImage

from .images import Image
from .limits import DecodePlan, InputError, InputLimits
from .pdf import PDF

__all__ = ["parse_inputs", "InputItem"]

InputItem = Union[str, Image, PDF, PILImage.Image]
_ALLOWED_TYPES = "str (text), omnivec.Image, omnivec.PDF or PIL.Image.Image"


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(None, f"text is not valid Unicode (lone surrogate at position {e.start})") from None


def parse_inputs(
    inputs: InputItem | Sequence[InputItem], limits: InputLimits = InputLimits(),
    on_planned: Callable[[int], None] | None = None, *, text_pages: bool = False,
) -> tuple[list[str | PILImage.Image], list[int]]:
    """Validate and load inputs into items (str or PIL image) plus each item's input index.

    Images come out as RGB, or RGBA when they have transparency (see :meth:`Image.load`);
    PDF pages as RGB. A single str is one input; a PDF expands to one item per page, all with
    the PDF's index. Any rejected input raises InputError naming its index, so callers can
    report the field. Every input is read and sized first (image headers, PDF page sizes)
    and nothing is decoded when their pixels add up to more than
    ``limits.max_request_pixels`` (InputError without an index: the request as a whole).
    ``on_planned(pixels)``, when given, is called with that total after sizing and before any
    decoding: the server reserves the pixels against its global budget there (it may raise).
    ``text_pages=True`` (the model reads text only): a PDF page that its ``PDF(text=...)`` rule
    sends to the text layer comes out as that text (a str) and is never rendered.
    """
    if isinstance(inputs, (str, Image, PDF, PILImage.Image)):
        seq: Sequence[object] = [inputs]
    elif isinstance(inputs, (bytes, bytearray, memoryview)):
        raise InputError(
            0, f"raw bytes are ambiguous; wrap them in omnivec.Image(...) or omnivec.PDF(...) (allowed: {_ALLOWED_TYPES})"
        )
    elif isinstance(inputs, Sequence):
        seq = inputs
    else:
        raise InputError(None, f"inputs must be one input or a list of them ({_ALLOWED_TYPES}), not {type(inputs).__name__}")
    plans = []
    for i, x in enumerate(seq):  # read, check and size every input; decode none yet
        try:
            plans.append(_plan(x, limits, text_pages))
        except InputError as e:
            raise e.with_index(i) from e.__cause__
    planned = sum(p.pixels for p in plans)
    _check_request_pixels(planned, limits)
    if on_planned is not None:
        on_planned(planned)
    items: list[str | PILImage.Image] = []
    origin: list[int] = []
    decoded = 0
    for i, plan in enumerate(plans):
        try:
            loaded = plan.load()
        except InputError as e:
            raise e.with_index(i) from e.__cause__
        decoded += sum(x.size[0] * x.size[1] for x in loaded if isinstance(x, PILImage.Image))
        _check_request_pixels(decoded, limits)  # a format may settle its size only when decoding
        items.extend(loaded)
        origin.extend([i] * len(loaded))
    return items, origin


def _plan(x: object, limits: InputLimits, text_pages: bool = False) -> DecodePlan:
    """One input checked and sized (pixels from headers and page sizes), not decoded."""
    if isinstance(x, str):
        _check_text(x)
        return DecodePlan(0, lambda: [x])
    if isinstance(x, PDF):
        return x.plan(limits, text_pages=text_pages)
    if isinstance(x, Image):
        return x.plan(limits)
    if isinstance(x, PILImage.Image):
        return Image(x).plan(limits)
    hint = " (wrap bytes or paths in omnivec.Image(...) or omnivec.PDF(...))" if isinstance(
        x, (bytes, bytearray, memoryview, os.PathLike)
    ) else ""
    raise InputError(None, f"unsupported input type {type(x).__name__}; allowed: {_ALLOWED_TYPES}{hint}")


def _check_request_pixels(total: int, limits: InputLimits) -> None:
    if total > limits.max_request_pixels:
        raise InputError(
            None,
            f"the inputs would decode to {total} pixels (images and PDF pages, width x height), more than "
            f"max_request_pixels={limits.max_request_pixels}; send fewer or smaller images, "
            "fewer PDF pages or a lower PDF dpi",
        )
