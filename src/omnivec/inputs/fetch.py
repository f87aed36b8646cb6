"""SSRF-safe fetching of http(s) URLs (:func:`fetch_url`).

Why each rule exists: fetches only speak http/https, resolve the host once, refuse private,
loopback, link-local, multicast, reserved and cloud-metadata addresses (SSRF), connect to the
address that was vetted (so DNS rebinding between check and connect is impossible), re-check
every redirect hop, stop at a hard deadline and stop reading past the byte limit. Proxy
environment variables are deliberately ignored (a proxy would hide the real destination).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Union

from .limits import InputError, InputLimits

__all__ = ["fetch_url"]

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


def fetch_url(url: str, limits: InputLimits, *, deadline: float | None = None) -> bytes:
    """Fetch an http(s) URL safely (SSRF-vetted, pinned IP, capped size, hard deadline).

    Redirects are followed by hand so each hop is vetted again. The fetch stops after
    ``limits.url_timeout_s``, or at ``deadline`` (a ``time.monotonic()`` value: the server's
    per-request deadline for all of a request's URLs) if that comes first. Raises InputError
    (index None) for anything that goes wrong, including ``allow_url_fetch=False``.
    """
    if not limits.allow_url_fetch:
        raise InputError(
            None,
            "URL fetching is disabled (allow_url_fetch is off; the server enables it with "
            "--allow-url-fetch); send the image as base64 or a data URI instead",
        )
    own = time.monotonic() + limits.url_timeout_s
    if deadline is not None and deadline < own:
        timed_out = (f"URL fetch stopped: this request's URL inputs took longer than "
                     f"url_request_timeout_s={limits.url_request_timeout_s:g} s together")
    else:
        deadline = own
        timed_out = f"URL fetch timed out after {limits.url_timeout_s:g} s"
    tls = _tls_context()
    current = url
    for _hop in range(limits.max_redirects + 1):
        scheme, host, port, target = _split_http_url(current)
        addrs = _resolve_vetted(host, port, limits)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InputError(None, timed_out)
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
                    raise InputError(None, timed_out) from None
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
