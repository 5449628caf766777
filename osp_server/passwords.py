"""Device credentials: argon2id hashes and one-time secrets.

Hashing is deliberately slow: callers on the reactor run these functions in a
thread pool.  Unknown users are checked against a dummy hash so that they cost
the same as known ones (SECURITY.md P9).
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's RFC 9106 "low memory" profile: argon2id, t=3, m=64 MiB, p=4.
_HASHER = PasswordHasher()
MAX_SECRET_CHARS = 128


def hash_secret(secret: str) -> str:
    """The argon2id hash of a password or one-time secret."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"a password must be 1 to {MAX_SECRET_CHARS} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in secret):
        raise ValueError(
            "a password must be printable ASCII without spaces (the OSP Toolkit sends ASCII)"
        )
    return _HASHER.hash(secret)


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: every importer (osp-admin too) would pay
    # argon2's 64 MiB and its CPU time otherwise.
    return _HASHER.hash(secrets.token_urlsafe(24))


def verify_secret(stored_hash: str | None, candidate: str) -> bool:
    """True when ``candidate`` matches; with no stored hash, spend the same time and fail."""
    try:
        if stored_hash is None:
            _HASHER.verify(_dummy_hash(), candidate)
            return False
        return _HASHER.verify(stored_hash, candidate)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def generate_secret() -> str:
    """A one-time enrollment secret: 20 random characters the toolkit accepts (alphanumeric)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))
