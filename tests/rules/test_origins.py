"""Which pages may change what is stored (proxy/rules/origins.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.origins import STATE_CHANGING, is_origin, same_origin, write_allowed

OWN = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "text",
    [
        "http://a.example",
        "https://a.example:8443",
        "http://127.0.0.1:8080",
        "http://[::1]:9000",
        "HTTP://A.EXAMPLE",
    ],
)
def test_origins(text: str) -> None:
    assert is_origin(text)


@pytest.mark.parametrize(
    "text", ["", "null", "a.example", "http://", "http://a/", "http://a/b", "ftp://a", "http://a:x", "*"]
)
def test_not_origins(text: str) -> None:
    assert not is_origin(text)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://A.example", "http://a.example", True),
        ("http://a.example:80", "http://a.example", True),
        ("https://a.example:443", "https://a.example", True),
        ("http://a.example", "https://a.example", False),
        ("http://a.example:8080", "http://a.example", False),
        ("http://a.example", "http://b.example", False),
        ("null", "null", False),
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same


@pytest.mark.parametrize("method", sorted(STATE_CHANGING))
def test_writes_from_other_sites_are_refused(method: str) -> None:
    assert not write_allowed(method, "http://evil.example", None, own_origin=OWN)
    assert not write_allowed(method, "null", None, own_origin=OWN)
    assert not write_allowed(method, None, "cross-site", own_origin=OWN)
    assert not write_allowed(method, "http://127.0.0.1:8081", "same-site", own_origin=OWN)


@pytest.mark.parametrize("method", sorted(STATE_CHANGING))
def test_writes_from_the_own_or_an_allowed_origin_or_no_page_pass(method: str) -> None:
    assert write_allowed(method, OWN, "same-origin", own_origin=OWN)
    allowed = ("https://app.example",)
    assert write_allowed(method, "https://app.example", "cross-site", own_origin=OWN, allowed=allowed)
    assert write_allowed(method, None, None, own_origin=OWN)
    assert write_allowed(method, None, "none", own_origin=OWN)


@given(
    st.sampled_from(["GET", "HEAD", "OPTIONS"]),
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_reads_are_never_refused(method: str, origin: str | None, site: str | None) -> None:
    assert write_allowed(method, origin, site, own_origin=OWN)
