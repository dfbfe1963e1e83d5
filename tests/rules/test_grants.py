"""Grants (proxy/rules/grants.py): parsing, what they allow, what a listing shows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.grants import (
    Action,
    Grant,
    InvalidGrant,
    allows,
    allows_all_under,
    allows_any,
    parse_grant,
    visible_prefixes,
)

R, L, W, D = Action.READ, Action.LIST, Action.WRITE, Action.DELETE


@pytest.mark.parametrize(
    ("text", "actions", "prefix"),
    [
        ("read,list:", {R, L}, ""),
        ("write:uploads/", {W}, "uploads/"),
        ("delete:a", {D}, "a"),
        (" READ , Write :x/", {R, W}, "x/"),  # case and spaces around actions
        ("read:a:b/", {R}, "a:b/"),  # only the first colon splits
        ("read,read:", {R}, ""),
        ("read,list,write,delete:vidéos/", {R, L, W, D}, "vidéos/"),
    ],
)
def test_parse_grant(text: str, actions: set[Action], prefix: str) -> None:
    grant = parse_grant(text)
    assert grant == Grant(frozenset(actions), prefix)
    # What the CLI prints back parses to the same grant.
    assert parse_grant(str(grant)) == grant


@pytest.mark.parametrize(
    "text",
    ["read", "", ":", ":a/", "read,:a/", "admin:", "read;list:", "read:/abs", "read:a/../", "read:a\x00"],
)
def test_malformed_grants(text: str) -> None:
    with pytest.raises(InvalidGrant):
        parse_grant(text)


def test_reserved_prefix_is_no_grant() -> None:
    with pytest.raises(InvalidGrant):
        parse_grant("read:.stream-proxy/")


def test_allows_by_action_and_string_prefix() -> None:
    grants = [parse_grant("read,list:public/"), parse_grant("write:uploads")]
    assert allows(grants, R, "public/a.mp4")
    assert not allows(grants, R, "publicity/a.mp4")
    assert not allows(grants, W, "public/a.mp4")
    # A prefix without a trailing slash is a plain string prefix, as in S3.
    assert allows(grants, W, "uploads/a") and allows(grants, W, "uploads2/a")
    assert not allows(grants, D, "uploads/a")
    assert not allows([], R, "a")
    assert allows([parse_grant("delete:")], D, "anything/at/all")


def test_allows_all_under_needs_a_grant_prefix_of_the_folder() -> None:
    grants = [parse_grant("write:up/")]
    assert allows_all_under(grants, W, "up/")
    assert allows_all_under(grants, W, "up/deeper/")
    assert not allows_all_under(grants, W, "")
    assert not allows_all_under(grants, W, "u")
    assert not allows_all_under([parse_grant("write:up/a")], W, "up/")
    assert allows_any(grants, W) and not allows_any(grants, R)


@pytest.mark.parametrize(
    ("grants", "prefix", "visible"),
    [
        (["list:"], "", None),
        (["list:"], "a/b", None),
        (["list:a/"], "a/b/", None),
        (["list:a/"], "", ("a/",)),
        (["list:a/", "list:c/"], "", ("a/", "c/")),
        (["list:c/", "list:a/", "list:a/x/"], "", ("a/", "c/")),  # one inside another adds nothing
        (["list:a/", "list:c/"], "a", ("a/",)),
        (["list:a/"], "b/", ()),
        (["read,write,delete:"], "", ()),  # no list grant at all
        (["list:ab", "list:a"], "", ("a",)),
    ],
)
def test_visible_prefixes(grants: list[str], prefix: str, visible: tuple[str, ...] | None) -> None:
    assert visible_prefixes([parse_grant(g) for g in grants], prefix) == visible


_segment = st.text(alphabet="ab/", min_size=0, max_size=6)


@given(st.lists(_segment, max_size=4), _segment, st.lists(_segment, max_size=8))
def test_visible_prefixes_show_exactly_the_listable_keys(
    grant_prefixes: list[str], prefix: str, keys: list[str]
) -> None:
    """Whatever the grants, the keys a listing shows (all keys under ``prefix`` when
    None, else those under one of the visible prefixes) are exactly the keys under
    ``prefix`` that some list grant covers; and the visible prefixes are disjoint."""
    grants = [Grant(frozenset({L}), p) for p in grant_prefixes]
    visible = visible_prefixes(grants, prefix)
    for key in keys:
        shown = key.startswith(prefix) if visible is None else any(key.startswith(v) for v in visible)
        assert shown == (key.startswith(prefix) and allows(grants, L, key))
    if visible:
        assert list(visible) == sorted(visible)
        assert not any(a != b and b.startswith(a) for a in visible for b in visible)
