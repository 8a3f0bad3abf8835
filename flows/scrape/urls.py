"""The address policy for URLs a page chose (:mod:`flows.scrape.fetch` fetches through it): only
``http``/``https``, at most ``MAX_URL`` characters, an IDN host in punycode and the path and query
percent-encoded as a browser sends them (:func:`normalise_url`); the host resolved once and every
address public unless allow-listed (:func:`check_url`), the checked address returned for the
connection (no second DNS answer between the check and the connect). The resolver is injectable,
so the policy is tested without sending traffic anywhere."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit

from flows.core.errors import ReasonError

REASONS = ("bad_scheme", "bad_url", "dns_error", "refused_address", "robots_disallowed", "too_large",
           "empty", "not_media", "timeout", "connect_error", "too_many_redirects",
           "internal_error")  # + http_<code>
MAX_URL = 8192  # characters; longer "URLs" (a 70 KB data blob in src) are bad_url, not a request
# what percent-encoding leaves alone in a path or query: RFC 3986's reserved and unreserved sets, and %
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"

Resolver = Callable[[str, int], list[str]]


class FetchError(ReasonError):
    """A URL that could not be fetched; ``reason`` is one of :data:`REASONS` or ``http_<code>``."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``ip``) and what to call it (``host``, for Host and SNI)."""
    url: str
    scheme: str
    host: str
    port: int
    ip: str



def system_resolver(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to (IPv4 and IPv6), via the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def address_refused(ip: str) -> bool:
    """True for any address that is not plain public unicast (IPv4-mapped IPv6 unwrapped first)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified or not addr.is_global)


def allow_listed(host: str, ip: str, allow_hosts) -> bool:
    """``allow_hosts`` entries match a host name exactly, a domain suffix (``.example.org``), an
    address, or a network (``10.0.0.0/8``)."""
    for entry in allow_hosts:
        entry = entry.strip().lower()
        if entry == host or (entry.startswith(".") and host.endswith(entry)):
            return True
        try:
            if ipaddress.ip_address(ip.split("%", 1)[0]) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue  # a host-name entry
    return False


def normalise_url(url: str) -> str:
    """``url`` in the form that goes on the wire: an IDN host in punycode, raw control, space and
    non-ASCII characters of the path and query percent-encoded (what a browser sends). FetchError
    bad_url for what cannot be one (too long, a host that is not a valid name, a bad port)."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise FetchError("bad_url", f"longer than {MAX_URL} characters" if isinstance(url, str) else "not text")
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname or "", parts.port
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise FetchError("bad_url", f"{type(exc).__name__}: {exc}"[:300]) from None
    if any(ord(c) < 0x21 or ord(c) == 0x7f or c in "/\\" for c in ascii_host):
        raise FetchError("bad_url", f"bad host {host!r}"[:300])
    netloc = parts.netloc
    if ascii_host != host or not netloc.isascii():
        userinfo = netloc.rpartition("@")[0]
        name = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        netloc = (f"{quote(userinfo, safe=':%')}@" if userinfo else "") + name + (f":{port}" if port else "")
    path, query = (quote(x, safe=_URL_SAFE) for x in (parts.path, parts.query))
    return urlunsplit((parts.scheme, netloc, path, query, ""))  # the fragment never goes on the wire


def check_url(url: str, resolver: Resolver, allow_hosts=(), allow_private: bool = False) -> Target:
    """Scheme, host and address policy for one URL; raises FetchError before any connection.
    ``Target.url`` is the URL as it goes on the wire (:func:`normalise_url`)."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        normalise_url(url)  # raises bad_url
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise FetchError("bad_url", str(exc)) from None
    if scheme not in ("http", "https"):
        raise FetchError("bad_scheme", f"{scheme or 'no'} scheme: only http and https")
    url = normalise_url(url)
    parts = urlsplit(url)
    host, port = (parts.hostname or "").lower(), parts.port
    if not host:
        raise FetchError("bad_url", "no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        ips = [str(ipaddress.ip_address(host))]  # an address literal needs no resolver
    except ValueError:
        ips = None
    try:
        ips = ips or resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise FetchError("dns_error", f"{host}: {exc}") from None
    if not ips:
        raise FetchError("dns_error", f"{host}: no address")
    for ip in ips:  # every answer must pass: one refused answer could be the one connected to
        try:
            refused = address_refused(ip)
        except ValueError:
            raise FetchError("dns_error", f"{host}: bad address {ip!r}") from None
        if refused and not allow_private and not allow_listed(host, ip, allow_hosts):
            raise FetchError("refused_address", f"{host} resolves to {ip}")
    return Target(url, scheme, host, port, ips[0])
