"""Fetch a request's URL inputs up front, so that waiting on the network is its own step.

Why: the server prepares inputs (decode, render, tokenise) on a small shared pool. When URL
fetches ran inside preparation, a few slow URLs held every preparation thread and an
unrelated one-text request waited behind them (28 s instead of 0.02 s). The server runs
:func:`fetch_url_inputs` on a separate bounded pool, with one deadline for all of a
request's URLs, and hands preparation inputs that no longer touch the network.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .fetch import fetch_url
from .images import Image
from .limits import InputError, InputLimits
from .pdf import PDF
from .sources import is_url

__all__ = ["has_url_inputs", "fetch_url_inputs"]


def has_url_inputs(inputs: Sequence[Any]) -> bool:
    """True when any input is an :class:`Image` or :class:`PDF` given by an http(s) URL."""
    return any(isinstance(x, (Image, PDF)) and is_url(x.source) for x in inputs)


def fetch_url_inputs(inputs: Sequence[Any], limits: InputLimits, deadline: float | None = None) -> list[Any]:
    """The inputs with every URL source replaced by its fetched bytes (other inputs as given).

    All fetches together stop at ``deadline`` (``time.monotonic()``; default: now plus
    ``limits.url_request_timeout_s``), each also at ``limits.url_timeout_s``. Fetches run one
    after another, so one request holds one fetch thread. A failure raises InputError naming
    the input.
    """
    if deadline is None:
        deadline = time.monotonic() + limits.url_request_timeout_s
    out: list[Any] = []
    for i, x in enumerate(inputs):
        if not (isinstance(x, (Image, PDF)) and is_url(x.source)):
            out.append(x)
            continue
        try:
            data = fetch_url(x.source.strip(), limits, deadline=deadline)
        except InputError as e:
            raise e.with_index(i) from e.__cause__
        out.append(Image(data) if isinstance(x, Image) else PDF(data, dpi=x.dpi, pages=x.pages, text=x.text))
    return out
