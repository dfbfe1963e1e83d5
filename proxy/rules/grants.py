"""Grants: which actions a caller may take on which keys (pure).

A grant is a set of actions over a key prefix, written ``ACTIONS:PREFIX`` as on the
command line and in the config file: ``read,list:`` (read and list everything),
``write:uploads/``. The prefix is a plain string prefix, as in S3: ``uploads/``
covers ``uploads/a.mp4`` but not ``uploads2/a.mp4``, and ``uploads`` covers both;
the empty prefix covers every key.

- ``read``: GET and HEAD of an object.
- ``list``: the listing (GET /files), which shows only keys the caller may list.
- ``write``: PUT, POST, and tus creation and PATCH (and HEAD, to resume).
- ``delete``: DELETE of an object and tus termination.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from proxy.rules.keys import InvalidKey, validate_list_prefix


class Action(StrEnum):
    READ = "read"
    LIST = "list"
    WRITE = "write"
    DELETE = "delete"


class InvalidGrant(ValueError):
    """A grant's text is malformed; the message says why."""


@dataclass(frozen=True)
class Grant:
    actions: frozenset[Action]
    prefix: str = ""

    def allows(self, action: Action, key: str) -> bool:
        return action in self.actions and key.startswith(self.prefix)

    def __str__(self) -> str:
        ordered = [a.value for a in Action if a in self.actions]
        return f"{','.join(ordered)}:{self.prefix}"


def parse_grant(text: str) -> Grant:
    """``ACTIONS:PREFIX``: comma-separated actions, a colon, then the prefix (which
    may be empty, and may itself contain colons: only the first one splits)."""
    actions_text, colon, prefix = text.partition(":")
    if not colon:
        raise InvalidGrant(f"{text!r} is not ACTIONS:PREFIX (e.g. 'read,list:' or 'write:uploads/')")
    actions: set[Action] = set()
    for word in actions_text.split(","):
        try:
            actions.add(Action(word.strip().lower()))
        except ValueError:
            known = ", ".join(a.value for a in Action)
            raise InvalidGrant(f"{word.strip()!r} is no action; use {known}") from None
    try:
        validate_list_prefix(prefix)
    except InvalidKey as exc:
        raise InvalidGrant(f"prefix {prefix!r}: {exc}") from None
    return Grant(frozenset(actions), prefix)


def allows(grants: Iterable[Grant], action: Action, key: str) -> bool:
    """Whether some grant allows ``action`` on ``key``."""
    return any(g.allows(action, key) for g in grants)


def allows_all_under(grants: Iterable[Grant], action: Action, prefix: str) -> bool:
    """Whether ``action`` is allowed on every key that starts with ``prefix``."""
    return any(action in g.actions and prefix.startswith(g.prefix) for g in grants)


def allows_any(grants: Iterable[Grant], action: Action) -> bool:
    """Whether ``action`` is allowed on some key at all: a request that needs it can
    be refused before anything is read to find out which key it concerns."""
    return any(action in g.actions for g in grants)


def visible_prefixes(grants: Iterable[Grant], prefix: str) -> tuple[str, ...] | None:
    """What a listing of ``prefix`` may show: None for all of it; otherwise the
    prefixes (under ``prefix``, in key order, none inside another) whose keys it may
    show, and an empty tuple when it may show nothing."""
    listable = [g.prefix for g in grants if Action.LIST in g.actions]
    if any(prefix.startswith(p) for p in listable):
        return None
    inside = sorted({p for p in listable if p.startswith(prefix)})
    # A prefix inside another adds nothing; with those gone, the key ranges of the
    # rest are disjoint and follow each other in the order of their prefixes.
    return tuple(p for p in inside if not any(p != q and p.startswith(q) for q in inside))
