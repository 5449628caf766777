"""One-time secrets are stored as HMAC-SHA-256 under a random key: cheap to check,
one keyed hash for every answer (P9), and argon2id ones from earlier versions still
verify."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from osp_server import passwords


def test_round_trip_and_refusals() -> None:
    secret = passwords.generate_secret()
    stored = passwords.hash_one_time_secret(secret)
    scheme, key, mac = stored.split("$")
    assert scheme == "hmac-sha256" and len(key) == 22 and len(mac) == 43
    assert passwords.verify_one_time_secret(stored, secret)
    assert not passwords.verify_one_time_secret(stored, secret.lower() + "x")
    assert not passwords.verify_one_time_secret(stored, "")
    # Two hashes of one secret differ (a fresh key each time).
    assert passwords.hash_one_time_secret(secret) != stored


@pytest.mark.parametrize(
    "stored",
    [None, "", "hmac-sha256$", "hmac-sha256$!!$??", "sha1$abc$def", "hmac-sha256$QUJD"],
)
def test_nothing_or_garbage_stored_never_matches(stored: str | None) -> None:
    assert not passwords.verify_one_time_secret(stored, "anything")
    assert not passwords.verify_one_time_secret(stored, "")


def test_checks_compute_one_keyed_hash_and_no_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_new = hmac.new

    def counting_new(key: bytes, msg: bytes, digestmod: Any) -> hmac.HMAC:
        calls.append("hmac")
        return real_new(key, msg, digestmod)

    def no_argon2(*args: object, **kwargs: object) -> bool:
        raise AssertionError("argon2 used for a one-time secret")

    stored = passwords.hash_one_time_secret("Secret1234")
    monkeypatch.setattr(hmac, "new", counting_new)
    monkeypatch.setattr(passwords, "verify_secret", no_argon2)
    for value in (stored, None, "hmac-sha256$bad", "junk"):
        calls.clear()
        passwords.verify_one_time_secret(value, "Secret1234")
        assert calls == ["hmac"], value


def test_argon2_secrets_from_earlier_versions_still_verify() -> None:
    stored = passwords.hash_secret("OldSecret42")
    assert passwords.verify_one_time_secret(stored, "OldSecret42")
    assert not passwords.verify_one_time_secret(stored, "OldSecret43")


def test_secret_text_rules_are_the_password_rules() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        passwords.hash_one_time_secret("has space")
    with pytest.raises(ValueError, match="1 to"):
        passwords.hash_one_time_secret("")
