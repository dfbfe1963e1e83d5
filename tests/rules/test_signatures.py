"""Signed URLs (proxy/rules/signatures.py): tokens verify for exactly what was signed,
and no change to a token or to the URL's key gets past verification."""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import replace
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.grants import Action
from proxy.rules.signatures import (
    MAX_TOKEN_LENGTH,
    SignedGrant,
    Verdict,
    Verifier,
    is_key_id,
    new_signing_secret,
    sign,
    signed_url,
    verify,
)

SECRET = b"k" * 32
KEYS = {"k1": SECRET, "k2": b"z" * 40}
NOW = 1_800_000_000

_key_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"),
    min_size=1,
    max_size=40,
)
grants = st.builds(
    SignedGrant,
    key_id=st.sampled_from(["k1", "k2"]),
    action=st.sampled_from([Action.READ, Action.WRITE]),
    target=_key_text,
    expires=st.integers(0, 2**40),
    prefix=st.booleans(),
    max_size=st.none() | st.integers(0, 2**50),
    content_type=st.none() | st.sampled_from(["video/mp4", "image/png"]),
)


def _verify(token: str, now: float = NOW, skew: float = 0) -> Verdict:
    return verify(token, KEYS, now=now, skew=skew).verdict


@given(grants)
def test_verifies_as_exactly_what_was_signed(grant: SignedGrant) -> None:
    token = sign(grant, KEYS[grant.key_id])
    checked = verify(token, KEYS, now=grant.expires)
    assert checked.verdict is Verdict.OK
    assert checked.grant == grant


@given(grants, st.data())
def test_flipping_any_byte_of_a_token_fails(grant: SignedGrant, data: st.DataObject) -> None:
    token = sign(grant, KEYS[grant.key_id])
    position = data.draw(st.integers(0, len(token) - 1))
    mask = data.draw(st.integers(1, 127))
    flipped = token[:position] + chr(ord(token[position]) ^ mask) + token[position + 1 :]
    assert verify(flipped, KEYS, now=grant.expires).verdict is Verdict.BAD


@given(grants, grants)
def test_a_token_for_one_grant_is_no_token_for_another(made: SignedGrant, other: SignedGrant) -> None:
    """The payload of ``other`` under the mac of ``made``: a forgery, unless equal."""
    mac = sign(made, KEYS[made.key_id]).split(".")[1]
    forged = sign(other, KEYS[other.key_id]).split(".")[0] + "." + mac
    assert _verify(forged, now=min(made.expires, other.expires)) is (
        Verdict.OK if other == made else Verdict.BAD
    )


def test_expiry_and_skew() -> None:
    token = sign(SignedGrant("k1", Action.READ, "a", expires=NOW), SECRET)
    assert _verify(token, now=NOW) is Verdict.OK
    assert _verify(token, now=NOW + 0.5) is Verdict.EXPIRED
    assert _verify(token, now=NOW + 30, skew=30) is Verdict.OK
    assert _verify(token, now=NOW + 30.01, skew=30) is Verdict.EXPIRED
    # An expired token still says which key made it (for the log), and only after its mac passed.
    assert verify(token, KEYS, now=NOW + 99).grant is not None


def test_unknown_key_and_rotation() -> None:
    token = sign(SignedGrant("k2", Action.READ, "a", expires=NOW), KEYS["k2"])
    assert _verify(token) is Verdict.OK
    assert verify(token, {"k1": SECRET}, now=NOW).verdict is Verdict.BAD  # k2 retired
    # The same id with another secret: a forgery.
    assert verify(token, {"k2": SECRET}, now=NOW).verdict is Verdict.BAD


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload_token(fields: object, mac: bytes = b"\0" * 32) -> str:
    return _b64(json.dumps(fields).encode()) + "." + _b64(mac)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "a.b.c",
        "abc",
        "x" * (MAX_TOKEN_LENGTH + 1),
        _payload_token({"v": 1}),
        _payload_token([1, 2]),
        _payload_token({"v": 2, "id": "k1", "action": "read", "scope": "key", "target": "a", "expires": 1}),
        _payload_token({"v": 1, "id": "k1", "action": "delete", "scope": "key", "target": "a", "expires": 1}),
        _payload_token(
            {"v": 1, "id": "k1", "action": "read", "scope": "key", "target": "a", "expires": True}
        ),
        _payload_token({"v": 1, "id": "k1", "action": "read", "scope": "key", "target": "a", "expires": 1.5}),
        _payload_token({"v": 1, "id": "k1", "action": "read", "scope": "x", "target": "a", "expires": 1}),
        _payload_token(
            {"v": 1, "id": "k1", "action": "read", "scope": "key", "target": "a", "expires": 1, "extra": 1}
        ),
    ],
)
def test_malformed_tokens_are_bad(token: str) -> None:
    assert _verify(token) is Verdict.BAD


def test_a_valid_mac_over_a_non_canonical_payload_is_bad() -> None:
    """Only the canonical spelling verifies, even with the right mac for its bytes."""
    fields = {"action": "read", "expires": NOW, "id": "k1", "scope": "key", "target": "a", "v": 1}
    reordered = dict(reversed(fields.items()))
    spellings = {
        json.dumps(fields, separators=(",", ":")): Verdict.OK,  # the canonical one
        json.dumps(fields): Verdict.BAD,  # spaces
        json.dumps(reordered, separators=(",", ":")): Verdict.BAD,  # key order
        # The same target, escaped.
        json.dumps(fields, separators=(",", ":")).replace('"target":"a"', '"target":"\\u0061"'): Verdict.BAD,
    }
    for spelling, verdict in spellings.items():
        data = spelling.encode()
        mac = hmac.new(SECRET, b"stream-proxy signed grant\n" + data, "sha256").digest()
        assert _verify(_b64(data) + "." + _b64(mac)) is verdict, spelling


def test_covers() -> None:
    key = SignedGrant("k1", Action.READ, "a/b.mp4", expires=NOW)
    assert key.covers("a/b.mp4") and not key.covers("a/b.mp4x") and not key.covers("a/")
    assert not key.covers_all_under("a/b.mp4")
    prefix = replace(key, target="hls/", prefix=True)
    assert prefix.covers("hls/seg1.ts") and not prefix.covers("hls") and not prefix.covers("hlsx/a")
    assert prefix.covers_all_under("hls/") and prefix.covers_all_under("hls/x/")
    assert not prefix.covers_all_under("")


def test_sign_refuses_what_it_cannot_grant() -> None:
    with pytest.raises(ValueError):
        sign(SignedGrant("k 1", Action.READ, "a", expires=NOW), SECRET)
    with pytest.raises(ValueError):
        sign(SignedGrant("k1", Action.DELETE, "a", expires=NOW), SECRET)
    assert is_key_id("k1") and not is_key_id("") and not is_key_id("a" * 65)
    assert len(new_signing_secret()) == 64


def _token_and_key(url: str) -> tuple[str, str]:
    """What the server reads off a path-form URL: the token segment and the decoded key."""
    path = urlsplit(url).path
    assert path.startswith("/s/")
    token, _, rest = path[3:].partition("/")
    assert rest.startswith("files/")
    return token, unquote(rest[len("files/") :])


@given(grants, st.data())
def test_flipping_any_byte_of_a_signed_urls_path_fails(grant: SignedGrant, data: st.DataObject) -> None:
    """Changing any byte of ``/s/<token>/files/<key>`` (to another ASCII byte) gives a
    URL that does not verify for the key it names, unless it still names the very key
    and token signed (a percent escape in lower case names the same key)."""
    grant = replace(grant, prefix=False)
    url = signed_url("http://h", grant, KEYS[grant.key_id])
    start = len("http://h")
    position = data.draw(st.integers(start, len(url) - 1))
    mask = data.draw(st.integers(1, 127))
    flipped_char = chr(ord(url[position]) ^ mask)
    flipped = url[:position] + flipped_char + url[position + 1 :]
    try:
        token, key = _token_and_key(flipped)
    except AssertionError:
        return  # no longer a signed object URL: no route serves it as one
    checked = verify(token, KEYS, now=grant.expires)
    ok = checked.verdict is Verdict.OK and checked.grant is not None and checked.grant.covers(key)
    assert ok == (token == _token_and_key(url)[0] and key == grant.target)


def test_signed_url_forms() -> None:
    grant = SignedGrant("k1", Action.READ, "vidéos/a b?.mp4", expires=NOW)
    path_form = signed_url("https://media.example/", grant, SECRET)
    token, key = _token_and_key(path_form)
    assert key == grant.target and verify(token, KEYS, now=NOW).grant == grant
    assert "/files/vid%C3%A9os/a%20b%3F.mp4" in path_form
    query_form = signed_url("https://media.example", grant, SECRET, in_query=True)
    assert query_form == f"https://media.example/files/vid%C3%A9os/a%20b%3F.mp4?sig={token}"


def _flip(token: str, position: int, mask: int) -> str:
    return token[:position] + chr(ord(token[position]) ^ mask) + token[position + 1 :]


@given(grants, st.data())
def test_a_verifier_answers_as_verify_before_and_after_remembering(
    grant: SignedGrant, data: st.DataObject
) -> None:
    """The same verdict and grant as verify(), for the token and for any flip of it, the
    first time and once its payload is remembered; a remembered payload's expiry is
    still checked against the clock."""
    verifier = Verifier(KEYS, size=4)
    token = sign(grant, KEYS[grant.key_id])
    flipped = _flip(token, data.draw(st.integers(0, len(token) - 1)), data.draw(st.integers(1, 127)))
    for _ in range(2):
        for candidate in (flipped, token):
            for now, skew in ((grant.expires, 0), (grant.expires + 31, 30), (grant.expires + 31, 0)):
                assert verifier.verify(candidate, now=now, skew=skew) == verify(
                    candidate, KEYS, now=now, skew=skew
                ), (candidate, now, skew)
    assert len(verifier) == 1  # the token; its flip never verified


def test_a_verifier_keeps_only_the_latest_verified_payloads() -> None:
    verifier = Verifier(KEYS, size=2)
    tokens = [sign(SignedGrant("k1", Action.READ, f"key{i}", expires=NOW), SECRET) for i in range(3)]
    forged = [_flip(t, len(t) - 2, 1) for t in tokens]
    for token in tokens + forged:
        verifier.verify(token, now=NOW)
    assert len(verifier) == 2  # forged tokens are not kept; the oldest real one went
    for token, forgery in zip(tokens, forged, strict=True):
        assert verifier.verify(token, now=NOW).verdict is Verdict.OK
        assert verifier.verify(forgery, now=NOW).verdict is Verdict.BAD
        assert verifier.verify(token, now=NOW + 1).verdict is Verdict.EXPIRED
    # A rotated-out key: a new verifier without it refuses what the old one kept.
    assert Verifier({"k2": KEYS["k2"]}).verify(tokens[0], now=NOW).verdict is Verdict.BAD
