"""The request body as JSON: only with a JSON media type, and never nested deeper than a bound.

Why a content-type check: a browser may POST ``text/plain`` (or no type) cross-origin without a
CORS preflight, so a server that reads any body as JSON can be driven by any web page its user
visits. Why a depth bound: ``json.loads`` recurses per level (``[[[[...`` raised RecursionError,
a 500), and no valid request is deeper than 4 levels (``{"input": [[ids]]}``).
"""
from __future__ import annotations

import json
import re
from typing import Any

from . import errors

_JSON_MEDIA = re.compile(r"application/(?:[\w.!#$&^-]+\+)?json", re.IGNORECASE)


def require_json_content_type(content_type: str | None) -> None:
    """415 unless the media type is ``application/json`` or ``application/*+json`` (parameters allowed)."""
    media = (content_type or "").split(";", 1)[0].strip()
    if not _JSON_MEDIA.fullmatch(media):
        raise errors.unsupported_media_type(content_type)


def parse(raw: bytes, max_depth: int) -> Any:
    """The parsed body; 400 for malformed JSON or nesting deeper than ``max_depth`` containers."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise errors.malformed_json(f"nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.malformed_json(str(e)) from None
    # The depth is at most the number of openers: the walk runs only for bodies with many of them.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(body, max_depth):
        raise errors.malformed_json(f"nested deeper than {max_depth} levels")
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative (no recursion) walk over the containers only."""
    stack = [(value, 1)] if isinstance(value, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return False
