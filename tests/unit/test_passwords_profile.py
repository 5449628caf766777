"""The server hashes with RFC 9106's low-memory argon2id profile (tests use cheaper
parameters through a fixture; this checks what production uses)."""

from __future__ import annotations

from argon2 import Type

from osp_server import passwords
from tests.conftest import PRODUCTION_HASHER


def test_production_hasher_is_argon2id_low_memory_profile() -> None:
    assert PRODUCTION_HASHER.type is Type.ID
    assert (PRODUCTION_HASHER.time_cost, PRODUCTION_HASHER.memory_cost) == (3, 64 * 1024)
    assert PRODUCTION_HASHER.parallelism == 4


def test_test_hashes_still_go_through_the_same_functions() -> None:
    stored = passwords.hash_secret("secret")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_secret(stored, "secret")
    assert not passwords.verify_secret(stored, "wrong")
    assert not passwords.verify_secret(None, "secret")
