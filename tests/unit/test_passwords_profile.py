"""The server hashes with RFC 9106's low-memory argon2id profile unless the operator
picks the OWASP minimum (tests use cheaper parameters through a fixture; this checks
what production uses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type, extract_parameters

from osp_server import passwords
from osp_server.config import ConfigError, parse_config
from tests.conftest import PRODUCTION_PROFILES


def test_production_profiles_are_argon2id_with_the_published_parameters() -> None:
    low_memory = PRODUCTION_PROFILES["rfc9106-low-memory"]
    owasp = PRODUCTION_PROFILES["owasp-minimum"]
    assert low_memory.type is owasp.type is Type.ID
    assert (low_memory.time_cost, low_memory.memory_cost, low_memory.parallelism) == (
        3,
        64 * 1024,
        4,
    )
    assert (owasp.time_cost, owasp.memory_cost, owasp.parallelism) == (2, 19 * 1024, 1)
    assert passwords.DEFAULT_PROFILE == "rfc9106-low-memory"


def test_test_hashes_still_go_through_the_same_functions() -> None:
    stored = passwords.hash_secret("secret")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_secret(stored, "secret")
    assert not passwords.verify_secret(stored, "wrong")
    assert not passwords.verify_secret(None, "secret")


def test_profile_picks_new_hashes_and_the_dummy_but_old_hashes_still_verify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two distinct small parameter sets stand in for the real ones.
    monkeypatch.setattr(
        passwords,
        "PROFILES",
        {
            "rfc9106-low-memory": PasswordHasher(time_cost=2, memory_cost=2048, parallelism=2),
            "owasp-minimum": PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
        },
    )
    passwords._dummy_hash.cache_clear()
    old = passwords.hash_secret("secret", "rfc9106-low-memory")
    new = passwords.hash_secret("secret", "owasp-minimum")
    assert extract_parameters(old).memory_cost == 2048
    assert extract_parameters(new).memory_cost == 1024
    # A hash records its parameters: switching the profile never locks a device out.
    assert passwords.verify_secret(old, "secret", "owasp-minimum")
    assert passwords.verify_secret(new, "secret", "rfc9106-low-memory")
    # Unknown users cost what a hash of the active profile costs (P9).
    assert not passwords.verify_secret(None, "secret", "owasp-minimum")
    assert extract_parameters(passwords._dummy_hash("owasp-minimum")).memory_cost == 1024
    passwords._dummy_hash.cache_clear()


def test_config_names_the_profile(tmp_path: Path) -> None:
    default = parse_config({}, source="<test>", base=tmp_path)
    assert default.enrollment.password_hashing == "rfc9106-low-memory"
    chosen = parse_config(
        {"enrollment": {"password_hashing": "owasp-minimum"}}, source="<t>", base=tmp_path
    )
    assert chosen.enrollment.password_hashing == "owasp-minimum"
    with pytest.raises(ConfigError, match="password_hashing"):
        parse_config({"enrollment": {"password_hashing": "md5"}}, source="<t>", base=tmp_path)
