"""Resource limits for one request's inputs, and the one error every rejected input raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["InputLimits", "InputError", "DecodePlan"]


@dataclass(frozen=True)
class InputLimits:
    """Explicit resource limits for one request's inputs (frozen: shared defaults stay safe)."""

    max_image_bytes: int = 32 * 2**20  # encoded bytes of one image/PDF
    max_image_pixels: int = 64_000_000  # decoded W*H, checked from the header before decoding
    max_pdf_pages: int = 256
    max_pdf_pixels_per_page: int = 40_000_000  # dpi is lowered for a page that would exceed it
    # Decoded pixels are ~3-4 bytes each and a request's images are held together until they
    # are prepared, so both totals are checked from headers/page sizes before decoding:
    # 200 Mpx ~ 100 letter pages at 144 dpi (~0.6 GB as RGB); 256 Mpx ~ four 8000x8000 images.
    max_pdf_pixels: int = 200_000_000  # all rendered pages of one PDF
    max_request_pixels: int = 256_000_000  # all images and PDF pages of one parse_inputs call
    allow_url_fetch: bool = True  # the server passes False unless --allow-url-fetch
    allow_private_urls: bool = False  # private/loopback/link-local/metadata refused unless True
    url_timeout_s: float = 10.0  # hard deadline for a whole fetch, redirects included
    url_request_timeout_s: float = 15.0  # all URL fetches of one request together
    # Bytes a PDF's compressed streams inflate to, counted (without keeping them) before pdfium
    # opens the document: pdfium inflates a content stream whole (a 1 MB flate bomb of 1 GiB
    # took +1.37 GB). 512 MiB still passes ~20 pages of 600-dpi losslessly compressed scans.
    max_pdf_inflated_bytes: int = 512 * 2**20
    max_redirects: int = 5
    allow_local_paths: bool = True  # the server sets False: no request may read server files

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "max_pdf_pages", "max_pdf_pixels_per_page",
                     "max_pdf_pixels", "max_request_pixels", "max_pdf_inflated_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"InputLimits.{name} must be >= 1")
        if self.max_redirects < 0:
            raise ValueError("InputLimits.max_redirects must be >= 0")
        for name in ("url_timeout_s", "url_request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"InputLimits.{name} must be > 0")


class InputError(ValueError):
    """One input was rejected; ``index`` says which (None when not known yet), ``reason`` why.

    It subclasses ValueError so generic callers can treat it as a bad argument, and the server
    can turn it into a 4xx naming the offending field.
    """

    def __init__(self, index: int | None, reason: str) -> None:
        super().__init__(index, reason)
        self.index = index
        self.reason = reason

    def __str__(self) -> str:
        return self.reason if self.index is None else f"input {self.index}: {self.reason}"

    def with_index(self, index: int) -> InputError:
        """Return the same error attached to input ``index`` (inner loaders do not know it)."""
        err = InputError(index, self.reason)
        err.__cause__ = self.__cause__
        return err


@dataclass(frozen=True)
class DecodePlan:
    """An input checked and sized but not decoded yet: its pixels (width x height, summed over
    PDF pages) and ``load()``, which decodes it into a list of items. Why: a request's pixels
    are added up before any input is decoded."""

    pixels: int
    load: Callable[[], list[Any]]
