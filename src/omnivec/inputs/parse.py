""":func:`parse_inputs`: validate a request's inputs and load them into texts and images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

from PIL import Image as PILImage

from .images import Image
from .limits import InputError, InputLimits
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
    inputs: InputItem | Sequence[InputItem], limits: InputLimits = InputLimits()
) -> tuple[list[str | PILImage.Image], list[int]]:
    """Validate and load inputs into items (str or PIL image) plus each item's input index.

    Images come out as RGB, or RGBA when they have transparency (see :meth:`Image.load`);
    PDF pages as RGB. A single str is one input; a PDF expands to one item per page, all with
    the PDF's index. Any rejected input raises InputError naming its index, so callers can
    report the field.
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
    items: list[str | PILImage.Image] = []
    origin: list[int] = []
    for i, x in enumerate(seq):
        try:
            if isinstance(x, str):
                _check_text(x)
                items.append(x)
                origin.append(i)
            elif isinstance(x, Image):
                items.append(x.load(limits))
                origin.append(i)
            elif isinstance(x, PILImage.Image):
                items.append(Image(x).load(limits))
                origin.append(i)
            elif isinstance(x, PDF):
                pages = x.render(limits)
                items.extend(pages)
                origin.extend([i] * len(pages))
            else:
                hint = " (wrap bytes or paths in omnivec.Image(...) or omnivec.PDF(...))" if isinstance(
                    x, (bytes, bytearray, memoryview, os.PathLike)
                ) else ""
                raise InputError(None, f"unsupported input type {type(x).__name__}; allowed: {_ALLOWED_TYPES}{hint}")
        except InputError as e:
            raise e.with_index(i) from e.__cause__
    return items, origin
