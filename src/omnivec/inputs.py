"""Input parsing, validation, safe URL fetching and PDF rasterising.

Every input a user can send (text, image path/bytes/base64/data URI/URL, PIL image, PDF) is
turned here into either a ``str`` or an RGB ``PIL.Image.Image``. Bad input is normal input:
anything wrong with one input raises :class:`InputError` naming that input, never another
exception, and every resource limit lives in :class:`InputLimits`.

Safety rules (why they exist):

* URL fetches only speak http/https, resolve the host once, refuse private, loopback,
  link-local, multicast, reserved and cloud-metadata addresses (SSRF), connect to the address
  that was vetted (so DNS rebinding between check and connect is impossible), re-check every
  redirect hop, stop at a hard deadline and stop reading past the byte limit. Proxy
  environment variables are deliberately ignored (a proxy would hide the real destination).
* Image sizes are checked from the header before pixels are decoded (decompression bombs).
* Only common raster formats are decoded (no EPS/Ghostscript or exotic plugins).
* Local paths can be switched off, so a server request can never read server files.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import io
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from PIL import Image as PILImage
from PIL import ImageOps

__all__ = [
    "InputLimits",
    "InputError",
    "Image",
    "PDF",
    "parse_inputs",
    "fetch_url",
    "decode_base64_image",
]


# --------------------------------------------------------------------------------------------
# limits and errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputLimits:
    """Explicit resource limits for one request's inputs (frozen: shared defaults stay safe)."""

    max_image_bytes: int = 32 * 2**20  # encoded bytes of one image/PDF
    max_image_pixels: int = 64_000_000  # decoded W*H, checked from the header before decoding
    max_pdf_pages: int = 256
    max_pdf_pixels_per_page: int = 40_000_000  # dpi is lowered for a page that would exceed it
    allow_url_fetch: bool = True  # the server passes False unless --allow-url-fetch
    allow_private_urls: bool = False  # private/loopback/link-local/metadata refused unless True
    url_timeout_s: float = 10.0  # hard deadline for a whole fetch, redirects included
    max_redirects: int = 5
    allow_local_paths: bool = True  # the server sets False: no request may read server files

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "max_pdf_pages", "max_pdf_pixels_per_page"):
            if getattr(self, name) < 1:
                raise ValueError(f"InputLimits.{name} must be >= 1")
        if self.max_redirects < 0:
            raise ValueError("InputLimits.max_redirects must be >= 0")
        if not self.url_timeout_s > 0:
            raise ValueError("InputLimits.url_timeout_s must be > 0")


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


# --------------------------------------------------------------------------------------------
# address vetting and URL fetching
# --------------------------------------------------------------------------------------------

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Cloud metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS task metadata, Alibaba).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _is_forbidden_address(ip: str | _IPAddress) -> bool:
    """True for any address a fetch must not reach unless private URLs are allowed.

    Refuses private, loopback, link-local, multicast, reserved, unspecified, shared (CGNAT) and
    metadata addresses, including IPv4 addresses embedded in IPv6 (mapped, 6to4, NAT64) so the
    check cannot be sidestepped by spelling the same host differently.
    """
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return True  # not an address we understand: refuse
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and _is_forbidden_address(embedded):
            return True
        ip = ipaddress.IPv6Address(int(ip))  # drop any scope id for the set lookup
    return (
        ip in _METADATA_ADDRESSES
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


_Addr = tuple[int, tuple]  # (socket family, sockaddr)


def _resolve_vetted(host: str, port: int, limits: InputLimits) -> list[_Addr]:
    """Resolve ``host`` once and return addresses to connect to; refuse forbidden ones.

    If any resolved address is forbidden the whole host is refused: a name that points at an
    internal address is suspicious, and picking "the other one" would be a lottery.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError) as e:
        raise InputError(None, f"could not resolve host {host!r} ({e})") from None
    addrs: list[_Addr] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        if not limits.allow_private_urls and _is_forbidden_address(str(sockaddr[0])):
            raise InputError(
                None,
                f"URL host {host!r} resolves to a private or reserved address ({sockaddr[0]}); "
                "refused (allow_private_urls is off)",
            )
        addrs.append((family, sockaddr))
    if not addrs:
        raise InputError(None, f"could not resolve host {host!r} (no usable address)")
    return addrs


def _connect_any(addrs: list[_Addr], timeout: float | None) -> socket.socket:
    """Connect to the first reachable pre-vetted address (never re-resolving the name)."""
    last: OSError | None = None
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise last if last is not None else OSError("no address to connect to")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP connection whose socket goes to a vetted IP while Host stays the URL's name."""

    def __init__(self, host: str, port: int, addrs: list[_Addr], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addrs = addrs

    def connect(self) -> None:
        self.sock = _connect_any(self._addrs, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a vetted IP with SNI and certificate checks done against the URL's name."""

    def __init__(
        self, host: str, port: int, addrs: list[_Addr], timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._addrs = addrs
        self._tls = context

    def connect(self) -> None:
        sock = _connect_any(self._addrs, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


_REDIRECTS = {301, 302, 303, 307, 308}
# Quote only what cannot go on a request line (space, controls, non-ASCII); keep the rest as sent.
_PATH_SAFE = "".join(chr(c) for c in range(33, 127))


def _split_http_url(url: str) -> tuple[str, str, int, str]:
    """Validate an http(s) URL and return (scheme, host, port, request target)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InputError(None, f"malformed URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(None, f"URL scheme {scheme or '(none)'!r} is not allowed (only http and https)")
    host = parts.hostname
    if not host:
        raise InputError(None, "malformed URL (no host)")
    if port is None:
        port = 443 if scheme == "https" else 80
    target = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE)
    return scheme, host, port, target


def _tls_context() -> ssl.SSLContext:
    """System-trusted TLS context with hostname checks (a seam for tests with a private CA)."""
    return ssl.create_default_context()


def fetch_url(url: str, limits: InputLimits) -> bytes:
    """Fetch an http(s) URL safely (SSRF-vetted, pinned IP, capped size, hard deadline).

    Redirects are followed by hand so each hop is vetted again. Raises InputError (index None)
    for anything that goes wrong, including ``allow_url_fetch=False``.
    """
    if not limits.allow_url_fetch:
        raise InputError(
            None,
            "URL fetching is disabled (allow_url_fetch is off; the server enables it with "
            "--allow-url-fetch); send the image as base64 or a data URI instead",
        )
    deadline = time.monotonic() + limits.url_timeout_s
    tls = _tls_context()
    current = url
    for _hop in range(limits.max_redirects + 1):
        scheme, host, port, target = _split_http_url(current)
        addrs = _resolve_vetted(host, port, limits)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InputError(None, f"URL fetch timed out after {limits.url_timeout_s:g} s")
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = _PinnedHTTPSConnection(host, port, addrs, remaining, tls)
        else:
            conn = _PinnedHTTPConnection(host, port, addrs, remaining)
        # A watchdog enforces the deadline even against a server that drips bytes slowly.
        timer = threading.Timer(remaining, _abort_connection, args=(conn,))
        timer.daemon = True
        timer.start()
        try:
            try:
                conn.request(
                    "GET",
                    target,
                    headers={
                        "User-Agent": "omnivec",
                        "Accept": "image/*, application/pdf;q=0.9, */*;q=0.5",
                        "Accept-Encoding": "identity",
                    },
                )
                resp = conn.getresponse()
                if resp.status in _REDIRECTS:
                    location = resp.getheader("Location")
                    if not location:
                        raise InputError(None, f"URL redirect ({resp.status}) without a Location")
                    current = urllib.parse.urljoin(current, location.strip())
                    continue
                if not 200 <= resp.status < 300:
                    raise InputError(None, f"URL fetch failed: HTTP {resp.status} {resp.reason}")
                return _read_capped(resp, limits.max_image_bytes)
            except InputError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as e:
                if time.monotonic() >= deadline:
                    raise InputError(None, f"URL fetch timed out after {limits.url_timeout_s:g} s") from None
                raise InputError(None, f"could not fetch URL ({type(e).__name__}: {e})") from None
        finally:
            timer.cancel()
            conn.close()
    raise InputError(None, f"too many redirects (more than {limits.max_redirects})")


def _abort_connection(conn: http.client.HTTPConnection) -> None:
    """Deadline reached: shut the socket so any blocked read returns at once."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_capped(resp: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """Read a response body, refusing as soon as it is known to exceed ``max_bytes``."""
    length = resp.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise InputError(None, f"URL content is larger than {max_bytes} bytes")
    buf = bytearray()
    while True:
        chunk = resp.read1(min(1 << 16, max_bytes + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
        if len(buf) > max_bytes:
            raise InputError(None, f"URL content is larger than {max_bytes} bytes")
    if length is not None and length.strip().isdigit() and len(buf) < int(length):
        raise InputError(None, "URL content ended early (connection closed or timed out)")
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# source resolution: str / bytes / path -> encoded bytes
# --------------------------------------------------------------------------------------------

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


def _source_bytes(source: object, limits: InputLimits, kind: str) -> bytes:
    """Turn a str/bytes/path source into encoded bytes; ``kind`` is "image" or "pdf"."""
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


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------

# Common raster formats only: no EPS (Ghostscript subprocess) and no exotic plugins.
_ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "JPEG2000", "AVIF", "PPM", "QOI")


def _open_formats() -> list[str]:
    PILImage.init()
    return [f for f in _ALLOWED_FORMATS if f in PILImage.OPEN]


def _check_pixels(size: tuple[int, int], limits: InputLimits) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InputError(None, f"not a valid image (empty size {w}x{h})")
    if w * h > limits.max_image_pixels:
        raise InputError(
            None, f"image is too large: {w}x{h} = {w * h} pixels > {limits.max_image_pixels}"
        )


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    """RGB with alpha composited onto white (what jina-v4 does) and high-bit modes scaled."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif im.mode != "F" and arr.size and arr.max() > 255:
            arr = arr / 257.0
        arr = np.nan_to_num(arr, nan=0.0).clip(0, 255).astype(np.uint8)
        return PILImage.fromarray(arr, mode="L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or bool(
        getattr(im, "has_transparency_data", "transparency" in im.info)
        if im.mode in ("P", "L", "RGB", "1")
        else False
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return im.convert("RGB")


def _finish(im: PILImage.Image, limits: InputLimits) -> PILImage.Image:
    """Decode pixels, apply EXIF orientation, convert to RGB; every failure is an InputError."""
    try:
        im.load()
    except PILImage.DecompressionBombError as e:
        raise InputError(None, f"image is too large ({e})") from None
    except Exception as e:  # PIL raises many types for damaged data; all mean the same here
        raise InputError(None, f"not a valid image (truncated or corrupt: {type(e).__name__}: {e})") from None
    _check_pixels(im.size, limits)  # some formats pick their final size at load time
    try:
        rotated = ImageOps.exif_transpose(im)
        if rotated is not None:
            im = rotated
    except Exception:
        pass  # a damaged EXIF block should not lose an otherwise good image
    try:
        return _to_rgb(im)
    except Exception as e:
        raise InputError(None, f"not a valid image (cannot convert mode {im.mode} to RGB: {e})") from None


def _decode_image_bytes(data: bytes, limits: InputLimits) -> PILImage.Image:
    """Decode encoded image bytes with a header-level pixel check before any pixel work."""
    if not data:
        raise InputError(None, "not a valid image (empty data)")
    try:
        im = PILImage.open(io.BytesIO(data), formats=_open_formats())
    except PILImage.DecompressionBombError as e:
        raise InputError(None, f"image is too large ({e})") from None
    except PILImage.UnidentifiedImageError:
        raise InputError(None, "not a valid image (unrecognised or unsupported format)") from None
    except Exception as e:
        raise InputError(None, f"not a valid image ({type(e).__name__}: {e})") from None
    try:
        _check_pixels(im.size, limits)
        return _finish(im, limits)
    finally:
        im.close()


def _describe(source: object) -> str:
    if isinstance(source, str):
        return repr(source if len(source) <= 60 else source[:57] + "...")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, PILImage.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    return repr(source)


class Image:
    """An image input: path, bytes, PIL image, base64 string, data URI or http(s) URL.

    Wrapping marks a value as an image (a bare str is text); nothing is read until
    :meth:`load`, so the limits of the caller (library or server) decide what is allowed.
    """

    def __init__(self, source: str | bytes | os.PathLike | PILImage.Image) -> None:
        if not isinstance(source, (str, bytes, bytearray, memoryview, os.PathLike, PILImage.Image)):
            raise InputError(
                None,
                f"Image source must be str, bytes, os.PathLike or PIL.Image.Image, not {type(source).__name__}",
            )
        self.source = source

    def __repr__(self) -> str:
        return f"Image({_describe(self.source)})"

    def load(self, limits: InputLimits = InputLimits()) -> PILImage.Image:
        """Return the image as RGB (alpha on white, EXIF orientation applied); InputError if bad."""
        if isinstance(self.source, PILImage.Image):
            try:
                size = self.source.size
            except Exception as e:
                raise InputError(None, f"not a valid image ({e})") from None
            _check_pixels(size, limits)
            return _finish(self.source, limits)
        return _decode_image_bytes(_source_bytes(self.source, limits, "image"), limits)


# --------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------

# pdfium is not thread-safe; the server decodes inputs from worker threads.
_PDFIUM_LOCK = threading.Lock()


class PDF:
    """A PDF document; expands to one image per page (pypdfium2, no system Poppler).

    ``pages`` selects 0-based page indices (negative ones count from the end) in the given
    order; None means all pages.
    """

    def __init__(
        self, source: str | bytes | os.PathLike, dpi: int = 144, pages: Sequence[int] | None = None
    ) -> None:
        if not isinstance(source, (str, bytes, bytearray, memoryview, os.PathLike)):
            raise InputError(None, f"PDF source must be str, bytes or os.PathLike, not {type(source).__name__}")
        if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 1 <= dpi <= 2400:
            raise InputError(None, f"PDF dpi must be a number in [1, 2400], got {dpi!r}")
        if pages is not None:
            if isinstance(pages, (str, bytes)) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in pages
            ):
                raise InputError(None, "PDF pages must be a sequence of int page indices")
            pages = list(pages)
        self.source = source
        self.dpi = dpi
        self.pages = pages

    def __repr__(self) -> str:
        return f"PDF({_describe(self.source)}, dpi={self.dpi}, pages={self.pages})"

    def _open(self, limits: InputLimits):  # -> pypdfium2.PdfDocument
        import pypdfium2 as pdfium

        data = _source_bytes(self.source, limits, "pdf")
        if not data:
            raise InputError(None, "not a valid PDF (empty data)")
        try:
            return pdfium.PdfDocument(data)
        except Exception as e:
            raise InputError(None, f"not a valid PDF ({e})") from None

    def _selected(self, n: int, limits: InputLimits) -> list[int]:
        if self.pages is None:
            selected = list(range(n))
        else:
            selected = []
            for p in self.pages:
                if not -n <= p < n:
                    raise InputError(None, f"PDF page {p} is out of range (document has {n} pages)")
                selected.append(p % n)
        if len(selected) > limits.max_pdf_pages:
            raise InputError(None, f"PDF has too many pages: {len(selected)} > {limits.max_pdf_pages}")
        return selected

    def page_count(self, limits: InputLimits = InputLimits()) -> int:
        """Number of pages in the document (not only the selected ones)."""
        with _PDFIUM_LOCK:
            doc = self._open(limits)
            try:
                return len(doc)
            finally:
                doc.close()

    def render(self, limits: InputLimits = InputLimits()) -> list[PILImage.Image]:
        """Render the selected pages to RGB images at ``dpi``, lowered per page to fit the limit."""
        with _PDFIUM_LOCK:
            doc = self._open(limits)
            try:
                try:
                    n = len(doc)
                except Exception as e:
                    raise InputError(None, f"not a valid PDF ({e})") from None
                if n == 0:
                    raise InputError(None, "not a valid PDF (no pages)")
                return [self._render_page(doc, i, limits) for i in self._selected(n, limits)]
            finally:
                doc.close()

    def _render_page(self, doc, i: int, limits: InputLimits) -> PILImage.Image:
        page = None
        bitmap = None
        try:
            page = doc[i]
            w_pt, h_pt = page.get_size()
            if not (w_pt > 0 and h_pt > 0 and math.isfinite(w_pt * h_pt)):
                raise InputError(None, f"not a valid PDF (page {i} has size {w_pt}x{h_pt})")
            scale = self.dpi / 72.0
            budget = limits.max_pdf_pixels_per_page
            if math.ceil(w_pt * scale) * math.ceil(h_pt * scale) > budget:
                scale = math.sqrt(budget / (w_pt * h_pt))
                while scale > 0 and math.ceil(w_pt * scale) * math.ceil(h_pt * scale) > budget:
                    scale *= 0.995
            if math.ceil(w_pt * scale) < 1 or math.ceil(h_pt * scale) < 1:
                raise InputError(None, f"PDF page {i} cannot be rendered within the pixel limit")
            bitmap = page.render(scale=scale)
            img = bitmap.to_pil()
            # Own the pixels before the pdfium bitmap is freed.
            return img.convert("RGB") if img.mode != "RGB" else img.copy()
        except InputError:
            raise
        except Exception as e:
            raise InputError(None, f"not a valid PDF (page {i}: {type(e).__name__}: {e})") from None
        finally:
            if bitmap is not None:
                bitmap.close()
            if page is not None:
                page.close()


# --------------------------------------------------------------------------------------------
# parse_inputs
# --------------------------------------------------------------------------------------------

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
    """Validate and load inputs into items (str or RGB PIL image) plus each item's input index.

    A single str is one input; a PDF expands to one item per page, all with the PDF's index.
    Any rejected input raises InputError naming its index, so callers can report the field.
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
