"""Which web pages may change what is stored (pure).

A form or script on any web site a user visits can send a POST, and with CORS
pre-flights other methods, to a server the user's browser can reach, this one on
127.0.0.1 included. Browsers say where such a request comes from: ``Origin`` on
every cross-origin request and on same-origin ones other than GET and HEAD, and
``Sec-Fetch-Site``. A request that changes state is refused when either shows a
page of another origin than the server's own or an allowed one. Requests without
them (curl, tus clients, other servers) come from no web page and pass.
"""

from __future__ import annotations

import re

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?", re.IGNORECASE
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def is_origin(text: str) -> bool:
    """Whether ``text`` is an origin as browsers serialise one: scheme://host[:port]."""
    return _ORIGIN.fullmatch(text) is not None


def same_origin(a: str, b: str) -> bool:
    """Whether two serialised origins name the same one (case and default port aside)."""
    return _normal(a) is not None and _normal(a) == _normal(b)


def _normal(origin: str) -> tuple[str, str, str] | None:
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    return scheme, match["host"].lower(), match["port"] or _DEFAULT_PORTS[scheme]


def write_allowed(
    method: str,
    origin: str | None,
    fetch_site: str | None,
    *,
    own_origin: str,
    allowed: tuple[str, ...] = (),
) -> bool:
    """Whether a request may change state, by the page it comes from, if any."""
    if method.upper() not in STATE_CHANGING:
        return True
    if origin is not None:
        return same_origin(origin, own_origin) or any(same_origin(origin, a) for a in allowed)
    return (fetch_site or "").strip().lower() != "cross-site"
