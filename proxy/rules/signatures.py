"""Signed URLs (pure): one action on one key or key prefix until an expiry.

A signature is a token ``<payload>.<mac>``, both unpadded base64url. The payload is
canonical JSON (sorted keys, no spaces, ASCII) of what is granted: the signing key's
id, the action (``read`` or ``write``), the scope (``key`` or ``prefix``), the key or
prefix itself as decoded text, the expiry (Unix seconds) and, for uploads, optional
limits (``max_size`` in bytes, ``content_type``). The mac is HMAC-SHA256 under the
signing key named by the id, so keys can rotate: a new id signs new URLs while the
old one still verifies those already handed out.

The key is signed as text and compared with the request's decoded key, so two
spellings of one URL (``%41`` and ``A``) both verify and no spelling reaches
another key. A token is accepted only in its one canonical spelling (payload and
base64), so changing any character of it fails.

The token goes in the path, ``/s/<token>/files/<key>``, so that relative URLs in a
page or an HLS playlist keep it (players drop query strings on relative URIs); or
in the query, ``/files/<key>?sig=<token>``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote

from proxy.rules.grants import Action

SIGNED_PATH = "/s/"  # then the token, then the route: /s/<token>/files/<key>
QUERY_PARAMETER = "sig"
SIGNABLE = (Action.READ, Action.WRITE)
MAX_TOKEN_LENGTH = 4096  # a key is at most 1,024 bytes; bounds the work of parsing
_VERSION = 1
_CONTEXT = b"stream-proxy signed grant\n"  # so this MAC means nothing anywhere else
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_FIELDS = frozenset({"v", "id", "action", "scope", "target", "expires", "max_size", "content_type"})


class Verdict(Enum):
    OK = "ok"
    EXPIRED = "expired"
    BAD = "bad"


@dataclass(frozen=True)
class SignedGrant:
    """What a signature grants."""

    key_id: str
    action: Action
    target: str  # the key, or the prefix
    expires: int  # Unix seconds
    prefix: bool = False  # whether ``target`` is a prefix
    max_size: int | None = None  # uploads: the most bytes a body may hold
    content_type: str | None = None  # uploads: the media type (essence) it must have

    def covers(self, key: str) -> bool:
        return key.startswith(self.target) if self.prefix else key == self.target

    def covers_all_under(self, prefix: str) -> bool:
        """Whether every key starting with ``prefix`` is covered."""
        return self.prefix and prefix.startswith(self.target)


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    grant: SignedGrant | None = None  # set unless the token is malformed or forged


def is_key_id(text: str) -> bool:
    return _KEY_ID.fullmatch(text) is not None


def new_signing_secret() -> str:
    """A fresh signing key: 256 random bits as 64 hex characters."""
    return secrets.token_hex(32)


def sign(grant: SignedGrant, secret: bytes) -> str:
    """The token granting ``grant``, signed with ``secret`` (the key ``grant.key_id``)."""
    if not is_key_id(grant.key_id):
        raise ValueError(f"a signing key id is 1-64 of A-Z a-z 0-9 _ -, got {grant.key_id!r}")
    if grant.action not in SIGNABLE:
        raise ValueError(f"a signature grants read or write, not {grant.action}")
    payload = _payload(grant)
    return f"{_b64encode(payload)}.{_b64encode(_mac(secret, payload))}"


def verify(token: str, secrets: Mapping[str, bytes], *, now: float, skew: float = 0.0) -> Verification:
    """Whether ``token`` is a signature made with one of ``secrets`` (by key id) and
    not expired more than ``skew`` seconds ago. Forged, tampered with, malformed, or
    made with an unknown key: BAD. The mac is checked before the expiry, so an
    altered expiry is BAD, never EXPIRED."""
    parsed = _parse(token)
    if parsed is None:
        return Verification(Verdict.BAD)
    payload, mac, grant = parsed
    secret = secrets.get(grant.key_id)
    if secret is None or not hmac.compare_digest(mac, _mac(secret, payload)):
        return Verification(Verdict.BAD)
    if now > grant.expires + skew:
        return Verification(Verdict.EXPIRED, grant)
    return Verification(Verdict.OK, grant)


class Verifier:
    """``verify`` with the signing keys fixed, remembering the tokens it has verified.

    A token's payload (canonical JSON, re-encoded to check its spelling) and its mac
    cost tens of microseconds to check, and a player sends the same signed URL for
    every segment and range. So once a payload has verified, its grant and the text
    of its one correct mac are kept (the most recent ``size`` payloads): a later token
    with that payload is checked by comparing its mac text with the kept one, in
    constant time, and its expiry against ``now`` as always. Only tokens whose mac
    verified are kept, so forged ones cannot push real ones out. The answer is the
    one ``verify`` would give: the payload and the keys determine the correct mac.
    """

    def __init__(self, secrets: Mapping[str, bytes], *, size: int = 1024) -> None:
        self._secrets = dict(secrets)
        self._size = size
        self._verified: OrderedDict[str, tuple[bytes, SignedGrant]] = OrderedDict()

    def __len__(self) -> int:
        """How many verified payloads are kept."""
        return len(self._verified)

    def verify(self, token: str, *, now: float, skew: float = 0.0) -> Verification:
        payload_text, _, mac_text = token.partition(".")
        known = self._verified.get(payload_text)
        if known is None:
            checked = verify(token, self._secrets, now=now, skew=skew)
            if checked.verdict is not Verdict.BAD and checked.grant is not None:
                self._remember(payload_text, mac_text, checked.grant)
            return checked
        correct_mac, grant = known
        self._verified.move_to_end(payload_text)
        if not hmac.compare_digest(mac_text.encode("utf-8", "surrogatepass"), correct_mac):
            return Verification(Verdict.BAD)
        if now > grant.expires + skew:
            return Verification(Verdict.EXPIRED, grant)
        return Verification(Verdict.OK, grant)

    def _remember(self, payload_text: str, mac_text: str, grant: SignedGrant) -> None:
        self._verified[payload_text] = (mac_text.encode("ascii"), grant)
        if len(self._verified) > self._size:
            self._verified.popitem(last=False)


def signed_url(base: str, grant: SignedGrant, secret: bytes, *, in_query: bool = False) -> str:
    """A URL of the object (or, for a prefix, of the folder) that ``grant`` names, at
    the server ``base`` (``https://media.example``), carrying its signature.

    >>> g = SignedGrant("k1", Action.READ, "hls/movie/", expires=1900000000, prefix=True)
    >>> signed_url("https://media.example", g, b"0" * 32)  # doctest: +ELLIPSIS
    'https://media.example/s/...files/hls/movie/'

    The path form (default) suits players and pages that load relative URLs from it;
    ``in_query`` puts the token in ``?sig=`` instead. To create a tus upload with a
    ``write`` signature, use the same token with ``/uploads/`` in place of ``/files/...``.
    """
    token = sign(grant, secret)
    path = "/files/" + quote(grant.target, safe="/")
    root = base.rstrip("/")
    if in_query:
        return f"{root}{path}?{QUERY_PARAMETER}={token}"
    return f"{root}{SIGNED_PATH}{token}{path}"


def _payload(grant: SignedGrant) -> bytes:
    fields: dict[str, Any] = {
        "v": _VERSION,
        "id": grant.key_id,
        "action": grant.action.value,
        "scope": "prefix" if grant.prefix else "key",
        "target": grant.target,
        "expires": grant.expires,
    }
    if grant.max_size is not None:
        fields["max_size"] = grant.max_size
    if grant.content_type is not None:
        fields["content_type"] = grant.content_type
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + payload, "sha256").digest()


def _parse(token: str) -> tuple[bytes, bytes, SignedGrant] | None:
    """The payload, the mac and the grant of a token in its canonical spelling."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    payload_text, mac_text = token.split(".")
    payload, mac = _b64decode(payload_text), _b64decode(mac_text)
    if payload is None or mac is None or len(mac) != 32:
        return None
    try:
        fields = json.loads(payload)
    except ValueError:
        return None
    grant = _grant(fields)
    if grant is None or _payload(grant) != payload:
        return None
    return payload, mac, grant


def _grant(fields: Any) -> SignedGrant | None:
    if not isinstance(fields, dict) or not _FIELDS.issuperset(fields) or fields.get("v") != _VERSION:
        return None
    key_id, action, scope = fields.get("id"), fields.get("action"), fields.get("scope")
    target, expires = fields.get("target"), fields.get("expires")
    max_size, content_type = fields.get("max_size"), fields.get("content_type")
    if not (
        isinstance(expires, int)
        and isinstance(key_id, str)
        and action in {a.value for a in SIGNABLE}
        and scope in ("key", "prefix")
        and isinstance(target, str)
        and _is_int(expires)
        and (max_size is None or (_is_int(max_size) and max_size >= 0))
        and (content_type is None or isinstance(content_type, str))
    ):
        return None
    return SignedGrant(key_id, Action(action), target, expires, scope == "prefix", max_size, content_type)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Unpadded base64url in its one canonical spelling, else None (the decoder
    alone would skip stray characters and ignore the unused bits of the last one)."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None
