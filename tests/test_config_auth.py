"""The [auth] section (proxy/config.py, proxy/config_auth.py): tables of tokens and
signing keys, secrets from the environment and files, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import AuthConfig, ConfigError, SigningKeyConfig, load_config
from proxy.rules.tokens import hash_secret

HASH = hash_secret("s3cret")
KEY = "0123456789abcdef0123456789abcdef"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> AuthConfig | None:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ or {}).auth


def error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_section_is_none_and_an_empty_one_is_closed(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None
    auth = load(tmp_path, "[auth]\n")
    assert auth == AuthConfig()
    assert not auth.open and auth.anonymous == () and auth.tokens == () and auth.signing_keys == {}
    # An environment override makes the section exist too: opening is on purpose.
    opened = load_config(None, {"STREAM_PROXY_AUTH_OPEN": "true"}).auth
    assert opened is not None and opened.open
    origins = load_config(None, {"STREAM_PROXY_AUTH_CORS_ORIGINS": "https://a.example, http://b:81"}).auth
    assert origins is not None and origins.cors_origins == ("https://a.example", "http://b:81")


def test_tokens_and_signing_keys_from_every_source(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    (tmp_path / "key").write_text(KEY + "\r\n")
    auth = load(
        tmp_path,
        f"""
[auth]
anonymous = ["read:public/"]
clock_skew = 5
[[auth.tokens]]
name = "hashed"
sha256 = "{HASH}"
grants = ["read,list:", "write:uploads/"]
[[auth.tokens]]
name = "env"
secret_env = "TOKEN_ENV"
[[auth.tokens]]
name = "file"
secret_file = "{tmp_path / "tok"}"
[auth.signing_keys.inline]
secret = "{KEY}"
[auth.signing_keys.env]
secret_env = "KEY_ENV"
[auth.signing_keys.file]
secret_file = "{tmp_path / "key"}"
""",
        {"TOKEN_ENV": "from-env", "KEY_ENV": KEY[::-1]},
    )
    assert auth is not None
    assert [t.name for t in auth.tokens] == ["hashed", "env", "file"]
    assert [t.sha256 for t in auth.tokens] == [HASH, hash_secret("from-env"), hash_secret("from-file")]
    assert auth.tokens[0].grants == ("read,list:", "write:uploads/")
    assert {k: v.secret for k, v in auth.signing_keys.items()} == {
        "inline": KEY,
        "env": KEY[::-1],
        "file": KEY,
    }
    assert auth.anonymous == ("read:public/",) and auth.clock_skew == 5
    # A signing secret never shows in a printed config.
    assert KEY not in repr(auth) and KEY[::-1] not in repr(auth)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[auth]\nanonymous = ["admin:"]', ["auth.anonymous", "admin"]),
        (f'[[auth.tokens]]\nname = "a"\nsha256 = "{HASH}"\ngrants = ["read"]', ["auth.tokens[0].grants"]),
        (f'[[auth.tokens]]\nname = "a b"\nsha256 = "{HASH}"', ["auth.tokens[0].name"]),
        (
            f'[[auth.tokens]]\nname = "a"\nsha256 = "{HASH}"\n[[auth.tokens]]\nname = "a"\nsha256 = "{HASH}"',
            ["auth.tokens[1].name", "two tokens"],
        ),
        ('[[auth.tokens]]\nname = "a"', ["auth.tokens[0]", "exactly one"]),
        (f'[[auth.tokens]]\nname = "a"\nsha256 = "{HASH}"\nsecret_env = "X"', ["exactly one"]),
        ('[[auth.tokens]]\nname = "a"\nsha256 = "abc"', ["auth.tokens[0].sha256"]),
        (f'[[auth.tokens]]\nname = "a"\nsha256 = "{HASH.upper()}"', ["auth.tokens[0].sha256"]),
        (f'[[auth.tokens]]\nname = "a"\nsha256 = "{HASH}"\nrole = "x"', ["auth.tokens[0].role", "unknown"]),
        ('[[auth.tokens]]\nname = "a"\nsecret_env = "UNSET_VAR"', ["auth.tokens[0].secret_env", "UNSET_VAR"]),
        ('[[auth.tokens]]\nname = "a"\nsecret_file = "/nonexistent/t"', ["auth.tokens[0].secret_file"]),
        ('[auth]\ntokens = "x"', ["auth.tokens", "array of tables"]),
        ('[auth.signing_keys.k1]\nsecret = "short"', ["auth.signing_keys.k1", "32 bytes"]),
        ('[auth.signing_keys."k 1"]\nsecret = "' + KEY + '"', ["auth.signing_keys", "k 1"]),
        ("[auth.signing_keys.k1]\n", ["auth.signing_keys.k1", "exactly one"]),
        ('[auth.signing_keys.k1]\nsecret_env = "SHORT"', ["auth.signing_keys.k1", "32 bytes"]),
        ('[auth]\nsigning_keys = ["x"]', ["auth.signing_keys", "table"]),
        ("[auth]\nclock_skew = -1", ["auth.clock_skew"]),
        ('[auth]\ncors_origins = ["https://a.example/"]', ["auth.cors_origins"]),
        ('[auth]\ncors_origins = ["*"]', ["auth.cors_origins"]),
        ('[auth]\nopen = "maybe"', ["auth.open"]),
    ],
)
def test_bad_auth_settings_are_one_line_naming_them(tmp_path: Path, text: str, words: list[str]) -> None:
    message = error(tmp_path, text, {"SHORT": "x" * 31})
    assert all(word in message for word in words), message


def test_tables_are_file_only(tmp_path: Path) -> None:
    # No environment variable is read for the tables: the file's tokens stand.
    auth = load_config(None, {"STREAM_PROXY_AUTH_TOKENS": "x", "STREAM_PROXY_AUTH_OPEN": "0"}).auth
    assert auth is not None and auth.tokens == ()
    assert SigningKeyConfig().secret == ""


def test_the_repository_config_documents_auth_without_setting_it() -> None:
    text = (Path(__file__).parents[1] / "config.toml").read_text()
    assert "# [auth]" in text and "# [[auth.tokens]]" in text and "# [auth.signing_keys.k1]" in text
    assert load_config(Path(__file__).parents[1] / "config.toml", {}).auth is None
