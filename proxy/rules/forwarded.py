"""What a request's client is when it came through trusted reverse proxies (nginx):
pure functions over the peer's address, the trusted networks and the values of
``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Forwarded-Host``.

Anyone can send those headers, so they count only when the peer is trusted, and
``X-Forwarded-For`` is read from the right: each proxy appends the address it was
connected from, so an entry is believed only if the hop to its right is a trusted
proxy; the first address that is not trusted is the client. Entries further left were
written by the client and are never looked at. A value that is not what a proxy
writes (garbage, a list where one value belongs, a scheme other than http/https, a
host with a path, user info or a control character) is ignored, never an error: the
request goes on with what the connection itself says.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Hops of X-Forwarded-For looked at: real chains are a few proxies long, and a header
# of thousands of entries must not cost thousands of parses.
MAX_HOPS = 16
# A host name is at most 253 characters; with ":65535" and brackets, this is ample.
MAX_HOST = 270
SCHEMES = ("http", "https")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(
    rf"(?:(?P<name>{_LABEL}(?:\.{_LABEL})*\.?)|\[(?P<ipv6>[0-9a-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ClientView:
    """The client as the nearest trusted proxy saw it; None: the connection's own."""

    address: str
    scheme: str | None = None
    host: str | None = None


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``127.0.0.1``, ``::1`` and the like; ValueError names a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (CIDR)") from None
    return tuple(networks)


def parse_address(text: str, *, zone: bool = False) -> Address | None:
    """An IP address as a proxy writes it (IPv4-mapped IPv6 as IPv4); None otherwise.
    A zone (``fe80::1%eth0``) is dropped when ``zone`` allows one (a peer's address
    may have it), else refused: Python takes any text there, spaces and quotes too."""
    text = text.strip()
    if zone:
        text = text.split("%", 1)[0]
    if not text or len(text) > 64 or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Address | None, trusted: tuple[Network, ...]) -> bool:
    # The version is compared first: ipaddress would match an IPv4 address's number
    # against an IPv6 network.
    return address is not None and any(address.version == n.version and address in n for n in trusted)


def client_view(
    peer: str | None,
    trusted: tuple[Network, ...],
    forwarded_for: str | None,
    forwarded_proto: str | None,
    forwarded_host: str | None,
) -> ClientView | None:
    """The client behind ``peer``, or None when ``peer`` is not a trusted proxy (then
    the headers are someone's claims and nothing changes)."""
    peer_address = parse_address(peer or "", zone=True)
    if not is_trusted(peer_address, trusted):
        return None
    assert peer_address is not None
    return ClientView(
        address=str(_client_address(peer_address, trusted, forwarded_for or "")),
        scheme=forwarded_scheme(forwarded_proto),
        host=forwarded_host_value(forwarded_host),
    )


def _client_address(peer: Address, trusted: tuple[Network, ...], forwarded_for: str) -> Address:
    """The first address from the right of ``forwarded_for`` that is not trusted; the
    last one believed when the chain breaks (garbage) or runs out of hops."""
    client = peer
    # Only the tail that can be believed is split: never the whole of a huge header.
    hops = forwarded_for.rsplit(",", MAX_HOPS)[-MAX_HOPS:]
    for hop in reversed(hops):
        if not is_trusted(client, trusted):
            break
        address = parse_address(hop)
        if address is None:
            break  # a trusted proxy wrote no address here: nothing further left is known
        client = address
    return client


def forwarded_scheme(value: str | None) -> str | None:
    """``http`` or ``https``, as one value; anything else is ignored."""
    if value is None:
        return None
    scheme = value.strip().lower()
    return scheme if scheme in SCHEMES else None


def forwarded_host_value(value: str | None) -> str | None:
    """A ``host[:port]`` (a DNS name, an IPv4 address or a bracketed IPv6 one) as one
    value, lower-cased; anything else (a list, a path, user info, spaces) is ignored."""
    if value is None:
        return None
    host = value.strip()
    if not host or len(host) > MAX_HOST:
        return None
    match = _HOST.fullmatch(host)
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
    elif len(match["name"]) > 253:
        return None
    if match["port"] is not None and not 0 < int(match["port"]) <= 65535:
        return None
    return host.lower()
