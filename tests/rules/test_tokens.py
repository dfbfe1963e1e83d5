"""Bearer tokens (proxy/rules/tokens.py): known by their hash, found by the secret."""

from __future__ import annotations

from proxy.rules.tokens import TokenTable, hash_secret, is_secret_hash, is_token_name, new_secret


def test_token_hash_and_names() -> None:
    secret = new_secret()
    assert len(secret) >= 43 and secret != new_secret()
    digest = hash_secret(secret)
    assert is_secret_hash(digest) and not is_secret_hash(digest.upper()) and not is_secret_hash(digest[:-1])
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert is_token_name("uploader-1.a_b") and not is_token_name("a b") and not is_token_name("x\n")


def test_token_table_finds_by_secret_only() -> None:
    table = TokenTable([(hash_secret("s1"), "one"), (hash_secret("s2"), "two")])
    assert table.find("s1") == "one" and table.find("s2") == "two"
    assert table.find(hash_secret("s1")) is None  # the hash itself is no credential
    assert table.find("") is None and table.find("s3") is None
    assert table.find("\udcff") is None  # a lone surrogate cannot break the lookup
    assert TokenTable([]).find("s1") is None
