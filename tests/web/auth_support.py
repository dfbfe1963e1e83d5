"""What the access control tests share: a config with tokens of every kind and a
signing key, credentials as request pieces, and snapshots of what is stored.

Tokens: ``full`` may do everything; ``reader`` may read and list everything;
``writer`` may only write; ``narrow`` may do everything, but only under ``other/``;
``deleter`` may only delete.
Anonymous callers may read ``public/``. tus uploads are named
``videos/{id}/{filename}``, so that grants on ``videos/`` cover them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.config import AuthConfig, Config, SigningKeyConfig, TokenConfig
from proxy.rules.grants import Action
from proxy.rules.signatures import SignedGrant, sign
from proxy.rules.tokens import hash_secret
from tests.conftest import StoreView

GRANTS = {
    "full": "read,list,write,delete:",
    "reader": "read,list:",
    "writer": "write:",
    "narrow": "read,list,write,delete:other/",
    "deleter": "delete:",
}
SECRETS = {name: f"secret-of-{name}-0123456789abcdef" for name in GRANTS}
SIGNING_SECRET = "signing-secret-k1-0123456789abcdef"
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


def auth_config(base: Config, **auth: Any) -> Config:
    tokens = tuple(
        TokenConfig(name=name, sha256=hash_secret(SECRETS[name]), grants=(grant,))
        for name, grant in GRANTS.items()
    )
    defaults: dict[str, Any] = {
        "anonymous": ("read:public/",),
        "tokens": tokens,
        "signing_keys": {"k1": SigningKeyConfig(secret=SIGNING_SECRET)},
    }
    settings = AuthConfig(**{**defaults, **auth})
    return replace(base, auth=settings, tus=replace(base.tus, key_template="videos/{id}/{filename}"))


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


def token_for(
    action: Action, target: str, *, prefix: bool = False, expires_in: int = 600, **limits: Any
) -> str:
    grant = SignedGrant("k1", action, target, int(time.time()) + expires_in, prefix, **limits)
    return sign(grant, SIGNING_SECRET.encode())


def tampered(token: str) -> str:
    """The token with one character of its mac changed."""
    last = token[-2]
    return token[:-2] + ("A" if last != "A" else "B") + token[-1]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass(frozen=True)
class Credential:
    """How a request carries its credentials: headers, or a signature in its path."""

    headers: dict[str, str] = field(default_factory=dict)
    signature: str | None = None

    def path(self, path: str) -> str:
        return path if self.signature is None else f"/s/{self.signature}{path}"


# Credential kinds, as the table lists them. Each is made for a route from
# (the action a signature for the route would grant, the key or prefix it names).
Kind = Callable[[Action, str, bool], Credential]
KINDS: dict[str, Kind] = {
    "none": lambda a, t, p: Credential(),
    "unknown token": lambda a, t, p: Credential({"Authorization": "Bearer not-a-token-we-know"}),
    "no grant": lambda a, t, p: Credential(bearer("writer" if a is Action.READ else "reader")),
    "other prefix": lambda a, t, p: Credential(bearer("narrow")),
    "token": lambda a, t, p: Credential(bearer("full")),
    "signed": lambda a, t, p: Credential(signature=token_for(a, t, prefix=p)),
    "expired": lambda a, t, p: Credential(signature=token_for(a, t, prefix=p, expires_in=-120)),
    "tampered": lambda a, t, p: Credential(signature=tampered(token_for(a, t, prefix=p))),
    "other key": lambda a, t, p: Credential(signature=token_for(a, "videos/else.mp4")),
    "prefix outside": lambda a, t, p: Credential(signature=token_for(a, "elsewhere/", prefix=True)),
    "read signed": lambda a, t, p: Credential(signature=token_for(Action.READ, t, prefix=p)),
}


def outcome(status: int, body: Any) -> str:
    """``"201"``, or ``"403 forbidden"`` for an error (the status alone for HEAD)."""
    if status < 400 or not isinstance(body, dict):
        return str(status)
    return f"{status} {body.get('error')}"


async def answer(response: Any) -> str:
    body = None
    if response.content_type == "application/json":
        body = await response.json()
    if response.status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="stream-proxy"')
    return outcome(response.status, body)


def snapshot(view: StoreView) -> tuple[dict[str, bytes], list[str]]:
    """Every object with its bytes, and the uploads and temporary files in progress."""
    keys = view.keys()
    return {key: view.get(key) for key in keys}, view.leftovers()
