"""The wire dialects of ``POST /v1/embeddings``, by the name :func:`protocol.detect_dialect` gives.

Each differs only in request parsing and response layout; the processing between is
:mod:`omnivec.server.pipeline`.
"""
from __future__ import annotations

from ..pipeline import Dialect
from . import jina, openai

DIALECTS: dict[str, Dialect] = {"jina": jina.DIALECT, "openai": openai.DIALECT}

__all__ = ["DIALECTS"]
