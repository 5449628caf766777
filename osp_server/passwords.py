"""Device credentials: argon2id hashes and one-time secrets.

Hashing is deliberately slow: callers on the reactor run these functions in a
thread pool.  Unknown users are checked against a dummy hash so that they cost
the same as known ones (SECURITY.md P9).
"""

from __future__ import annotations

import functools
import secrets
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PasswordProfile = Literal["rfc9106-low-memory", "owasp-minimum"]
"""Named argon2id parameter sets ([enrollment] password_hashing)."""

PROFILES: dict[str, PasswordHasher] = {
    # RFC 9106's second recommended option (argon2-cffi's default): t=3, m=64 MiB, p=4.
    "rfc9106-low-memory": PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4),
    # OWASP Password Storage Cheat Sheet's argon2id minimum: t=2, m=19 MiB, p=1; about a
    # quarter of the CPU per check, for small machines that enroll many devices at once.
    "owasp-minimum": PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),
}
DEFAULT_PROFILE: PasswordProfile = "rfc9106-low-memory"
MAX_SECRET_CHARS = 128


def hash_secret(secret: str, profile: PasswordProfile = DEFAULT_PROFILE) -> str:
    """The argon2id hash of a password or one-time secret, with ``profile``'s
    parameters (which the hash records: a later check needs no profile)."""
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"a password must be 1 to {MAX_SECRET_CHARS} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in secret):
        raise ValueError(
            "a password must be printable ASCII without spaces (the OSP Toolkit sends ASCII)"
        )
    return PROFILES[profile].hash(secret)


@functools.cache
def _dummy_hash(profile: PasswordProfile) -> str:
    # Made on first use, not at import: every importer (osp-admin too) would pay
    # argon2's 64 MiB and its CPU time otherwise.
    return PROFILES[profile].hash(secrets.token_urlsafe(24))


def verify_secret(
    stored_hash: str | None, candidate: str, profile: PasswordProfile = DEFAULT_PROFILE
) -> bool:
    """True when ``candidate`` matches; with no stored hash, spend the same time as a
    ``profile`` hash would, and fail."""
    hasher = PROFILES[profile]
    try:
        if stored_hash is None:
            hasher.verify(_dummy_hash(profile), candidate)
            return False
        return hasher.verify(stored_hash, candidate)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def generate_secret() -> str:
    """A one-time enrollment secret: 20 random characters the toolkit accepts (alphanumeric)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))
