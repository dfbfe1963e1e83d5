"""proxy.rules.forwarded: the client behind trusted proxies, from X-Forwarded-For
(read from the right), X-Forwarded-Proto and X-Forwarded-Host; hostile values are
ignored, never an error, and an untrusted peer's headers count for nothing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.forwarded import (
    MAX_HOPS,
    ClientView,
    Network,
    client_view,
    forwarded_host_value,
    forwarded_scheme,
    parse_networks,
)

LOCAL = parse_networks(["127.0.0.1"])
INTERNAL = parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("items", "count"),
    [(["10.0.0.0/8"], 1), (["127.0.0.1", "::1", " fd00::/8 "], 3), ([], 0), (["10.1.2.3/8"], 1)],
)
def test_parse_networks(items: list[str], count: int) -> None:
    assert len(parse_networks(items)) == count


@pytest.mark.parametrize("item", ["10.0.0.0/33", "nginx.local", "", "1.2.3.4/8/1", "10.0.0.0/-1", "::1/129"])
def test_parse_networks_refuses(item: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_networks([item])


@pytest.mark.parametrize(
    ("peer", "trusted", "forwarded_for", "client"),
    [
        ("127.0.0.1", LOCAL, "203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", LOCAL, None, "127.0.0.1"),
        ("127.0.0.1", LOCAL, "", "127.0.0.1"),
        # What the client wrote itself (left of what nginx appended) is never believed.
        ("127.0.0.1", LOCAL, "198.51.100.1, 203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", INTERNAL, "10.9.9.9, 203.0.113.5", "203.0.113.5"),
        # Trusted hops are skipped, right to left.
        ("127.0.0.1", INTERNAL, "203.0.113.5, 10.1.2.3", "203.0.113.5"),
        ("127.0.0.1", INTERNAL, "203.0.113.5,10.1.2.3,10.4.5.6", "203.0.113.5"),
        ("127.0.0.1", INTERNAL, "10.0.0.1, 10.0.0.2", "10.0.0.1"),  # all trusted: the first
        # A hop a trusted proxy should have written is garbage: what was believed so far.
        ("127.0.0.1", LOCAL, "garbage", "127.0.0.1"),
        ("127.0.0.1", LOCAL, "203.0.113.5, garbage", "127.0.0.1"),
        ("127.0.0.1", INTERNAL, "garbage, 10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", LOCAL, "203.0.113.5:4711", "127.0.0.1"),  # ports are not what nginx writes
        ("127.0.0.1", LOCAL, "unknown", "127.0.0.1"),
        ("127.0.0.1", LOCAL, " 203.0.113.5 ", "203.0.113.5"),
        ("127.0.0.1", LOCAL, "::ffff:203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", LOCAL, "2001:db8::1", "2001:db8::1"),
        # Zones are no part of what nginx writes (and Python takes any text in one).
        ("127.0.0.1", LOCAL, "::1%eth0", "127.0.0.1"),
        ("127.0.0.1", LOCAL, 'fe80::1%a b"c', "127.0.0.1"),
        # A peer's own zone is dropped (a link-local proxy), not a reason to distrust it.
        ("fe80::1%eth0", parse_networks(["fe80::/10"]), "203.0.113.5", "203.0.113.5"),
        ("::ffff:127.0.0.1", LOCAL, "203.0.113.5", "203.0.113.5"),  # a mapped peer is its IPv4
        ("fd00::1", INTERNAL, "2001:db8::7", "2001:db8::7"),
        # Hops beyond MAX_HOPS are not looked at, however many are trusted.
        ("127.0.0.1", INTERNAL, ", ".join(["203.0.113.5"] + ["10.0.0.1"] * (MAX_HOPS + 5)), "10.0.0.1"),
    ],
)
def test_client_address(
    peer: str, trusted: tuple[Network, ...], forwarded_for: str | None, client: str
) -> None:
    view = client_view(peer, trusted, forwarded_for, None, None)
    assert view == ClientView(client, None, None)


@pytest.mark.parametrize("peer", ["203.0.113.9", "10.0.0.1", "::1", "", None, "garbage", "127.0.0.2"])
def test_an_untrusted_peer_changes_nothing(peer: str | None) -> None:
    assert client_view(peer, LOCAL, "198.51.100.1", "https", "media.example") is None


def test_no_trusted_proxies_trusts_no_one() -> None:
    assert client_view("127.0.0.1", (), "198.51.100.1", "https", "media.example") is None


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("https", "https"),
        ("HTTP", "http"),
        (" https ", "https"),
        ("ftp", None),
        ("https, http", None),
        ("", None),
        ("javascript", None),
        ("https:", None),
        (None, None),
    ],
)
def test_forwarded_scheme(value: str | None, scheme: str | None) -> None:
    assert forwarded_scheme(value) == scheme


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("media.example", "media.example"),
        ("Media.Example:8443", "media.example:8443"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
        ("[::1]", "[::1]"),
        ("localhost", "localhost"),
        ("media.example.", "media.example."),
    ],
)
def test_forwarded_host(value: str, host: str) -> None:
    assert forwarded_host_value(value) == host


@pytest.mark.parametrize(
    "value",
    [
        "media.example/path",
        "user@media.example",
        "media example",
        "media.example:0",
        "media.example:65536",
        "media.example:99999",
        "media.example:",
        "[zz::1]",
        "[2001:db8::1",
        "2001:db8::1",
        "a.example, b.example",
        "media.example\r\nX-Injected: 1",
        "-bad.example",
        "bad-.example",
        "a..example",
        "x" * 300,
        ("a" * 63 + ".") * 5,
        "",
        "https://media.example",
        "media.example?x",
        "media.example#x",
        "méd.example",
    ],
)
def test_forwarded_host_refuses(value: str) -> None:
    assert forwarded_host_value(value) is None


def test_scheme_and_host_come_through_with_the_address() -> None:
    view = client_view("127.0.0.1", LOCAL, "203.0.113.5", "https", "media.example")
    assert view == ClientView("203.0.113.5", "https", "media.example")
    view = client_view("127.0.0.1", LOCAL, "203.0.113.5", "gopher", "media.example/evil")
    assert view == ClientView("203.0.113.5", None, None)


ADDRESSES = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
HOSTILE = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(ADDRESSES, st.text(max_size=20)), max_size=40).map(", ".join),
    st.just(", " * 5000),
)
PEERS = st.one_of(ADDRESSES, st.sampled_from(["127.0.0.1", "10.0.0.7"]))


def _as_client(text: str) -> str | None:
    """``text`` as the rules name an address (IPv4-mapped as IPv4), if it is one."""
    try:
        parsed = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
    return str(mapped or parsed)


@given(peer=PEERS, xff=HOSTILE, proto=HOSTILE, host=HOSTILE)
def test_hostile_values_never_raise_and_stay_within_the_rules(
    peer: str, xff: str, proto: str, host: str
) -> None:
    view = client_view(peer, INTERNAL, xff, proto, host)
    address = ipaddress.ip_address(_as_client(peer) or "")
    if not any(address.version == net.version and address in net for net in INTERNAL):
        assert view is None
        return
    assert view is not None
    # The address is the peer's or one that stands in the header: never made up.
    assert view.address in {_as_client(peer)} | {_as_client(hop) for hop in xff.split(",")}
    assert view.scheme in (None, "http", "https")
    if view.host is not None:
        assert view.host == host.strip().lower()
        assert not any(c in view.host for c in "/@?#, \t\r\n\\")


@given(left=HOSTILE, client=st.ip_addresses(v=4).filter(lambda a: not a.is_private))
def test_whatever_the_client_writes_the_address_nginx_appended_wins(
    left: str, client: ipaddress.IPv4Address
) -> None:
    # nginx's $proxy_add_x_forwarded_for: the client's header, then the address it saw.
    view = client_view("127.0.0.1", INTERNAL, f"{left}, {client}", None, None)
    assert view is not None and view.address == str(client)
