"""Where an image or PDF comes from: bytes, local paths, base64, data URIs and http(s) URLs.

:func:`source_bytes` turns any accepted source into encoded bytes under the byte limit; local
paths can be switched off (``InputLimits.allow_local_paths``), so a server request can never
read server files.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import urllib.parse

from PIL import Image as PILImage

from .fetch import fetch_url
from .limits import InputError, InputLimits

__all__ = ["source_bytes", "decode_base64_image", "describe_source", "is_url"]


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_WS_RE = re.compile(r"\s+")
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _too_big(max_bytes: int) -> InputError:
    return InputError(None, f"larger than {max_bytes} bytes")


def _b64decode_strict(s: str, max_bytes: int | None = None) -> bytes | None:
    """Strict base64 (standard or URL-safe alphabet, whitespace ignored); None if not base64."""
    s = _WS_RE.sub("", s)
    if not s or len(s) % 4:
        return None
    if max_bytes is not None and len(s) // 4 * 3 - s[-2:].count("=") > max_bytes:
        raise _too_big(max_bytes)
    try:
        raw = s.encode("ascii")
    except UnicodeEncodeError:
        return None
    if b"-" in raw or b"_" in raw:
        raw = raw.translate(_URLSAFE)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_data_uri(uri: str, max_bytes: int | None = None) -> tuple[str, bytes]:
    """Split ``data:[mediatype][;base64],payload`` into (media type, bytes)."""
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise InputError(None, "malformed data URI (no comma)")
    params = [p.strip() for p in header.split(";")]
    media_type = params[0].lower()
    if len(params) > 1 and params[-1].lower() == "base64":
        data = _b64decode_strict(payload, max_bytes)
        if data is None:
            raise InputError(None, "malformed data URI (invalid base64)")
    else:
        if max_bytes is not None and len(payload) > 3 * max_bytes:
            raise _too_big(max_bytes)
        data = urllib.parse.unquote_to_bytes(payload)
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_big(max_bytes)
    return media_type, data


def decode_base64_image(s: str) -> bytes:
    """Decode plain base64 or a ``data:image/...;base64,`` URI to bytes (the API's image form).

    Raises InputError for invalid base64 or a data URI whose media type is not an image.
    """
    if s[:5].lower() == "data:":
        media_type, data = _parse_data_uri(s)
        if media_type and not media_type.startswith("image/") and media_type != "application/octet-stream":
            raise InputError(None, f"data URI media type {media_type!r} is not an image")
        return data
    data = _b64decode_strict(s)
    if data is None:
        raise InputError(None, "not valid base64")
    return data


def _read_local(path: str | bytes, limits: InputLimits) -> bytes:
    """Read a regular local file with the byte cap (never a device or a directory)."""
    if not limits.allow_local_paths:
        raise InputError(None, "local file paths are not allowed here; send a URL, base64 or a data URI")
    try:
        if not os.path.isfile(path):
            raise InputError(None, f"no such file: {os.fsdecode(path)!r}")
        with open(path, "rb") as f:
            data = f.read(limits.max_image_bytes + 1)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(None, f"could not read file ({e})") from None
    if len(data) > limits.max_image_bytes:
        raise _too_big(limits.max_image_bytes)
    return data


def source_bytes(source: object, limits: InputLimits, kind: str) -> bytes:
    """Turn a str/bytes/path source into encoded bytes; ``kind`` is "image" or "pdf".

    A str is tried as, in order: a data URI, an http(s) URL (fetched with :func:`fetch_url`),
    an existing local file (only when ``limits.allow_local_paths``) and strict base64. Every
    failure, including a size over ``limits.max_image_bytes``, is an InputError (index None).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > limits.max_image_bytes:
            raise _too_big(limits.max_image_bytes)
        return data
    if isinstance(source, os.PathLike):
        return _read_local(os.fspath(source), limits)
    if not isinstance(source, str):
        raise InputError(None, f"unsupported {kind} source type {type(source).__name__}")
    s = source.strip()
    if s[:5].lower() == "data:":
        media_type, data = _parse_data_uri(s, limits.max_image_bytes)
        ok = (
            media_type.startswith("image/")
            if kind == "image"
            else media_type in ("application/pdf", "application/x-pdf")
        )
        if media_type and not ok and media_type != "application/octet-stream":
            raise InputError(None, f"data URI media type {media_type!r} is not {'an image' if kind == 'image' else 'a PDF'}")
        return data
    if _SCHEME_RE.match(s):
        scheme = s.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise InputError(None, f"URL scheme {scheme!r} is not allowed (only http and https)")
        return fetch_url(s, limits)
    if limits.allow_local_paths and len(s) < 4096 and "\0" not in s and os.path.isfile(s):
        return _read_local(s, limits)
    data = _b64decode_strict(s, limits.max_image_bytes)
    if data is not None:
        return data
    where = (
        "an existing file, an http(s) URL, a data URI or base64"
        if limits.allow_local_paths
        else "an http(s) URL, a data URI or base64 (local file paths are not allowed here)"
    )
    raise InputError(None, f"not a readable {kind} source: expected {where}")


def is_url(source: object) -> bool:
    """True when :func:`source_bytes` would fetch ``source`` over the network (an http(s) URL)."""
    if not isinstance(source, str):
        return False
    s = source.strip()
    return bool(_SCHEME_RE.match(s)) and s.split(":", 1)[0].lower() in ("http", "https")


def describe_source(source: object) -> str:
    """A short, safe description of a source for reprs (long strings cut, bytes counted)."""
    if isinstance(source, str):
        return repr(source if len(source) <= 60 else source[:57] + "...")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, PILImage.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    return repr(source)
