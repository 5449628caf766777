"""Device credentials: argon2id hashes and one-time secrets.

Hashing is deliberately slow: callers on the reactor run these functions in a
thread pool.  Unknown users are checked against a dummy hash so that they cost
the same as known ones (SECURITY.md P9).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
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
    _check_secret_text(secret)
    return PROFILES[profile].hash(secret)


def _check_secret_text(secret: str) -> None:
    if not secret or len(secret) > MAX_SECRET_CHARS:
        raise ValueError(f"a password must be 1 to {MAX_SECRET_CHARS} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in secret):
        raise ValueError(
            "a password must be printable ASCII without spaces (the OSP Toolkit sends ASCII)"
        )


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


SECRET_SCHEME = "hmac-sha256"
"""How one-time secrets are stored: ``hmac-sha256$<key>$<mac>`` (base64, no padding)."""

_DUMMY_SECRET_KEY = secrets.token_bytes(16)


def hash_one_time_secret(secret: str) -> str:
    """The stored form of a one-time secret: HMAC-SHA-256 under a random 128-bit key.

    One-time secrets are generated here (:func:`generate_secret`, about 117 bits), so
    unlike a person's password they need no deliberately slow hash: a keyed hash makes
    checking one cost microseconds instead of a second argon2id run per enrollment.
    """
    _check_secret_text(secret)
    key = secrets.token_bytes(16)
    mac = hmac.new(key, secret.encode("ascii"), hashlib.sha256).digest()
    return f"{SECRET_SCHEME}${_b64(key)}${_b64(mac)}"


def verify_one_time_secret(stored: str | None, candidate: str) -> bool:
    """True when ``candidate`` is the secret ``stored`` was made from.

    Every call computes exactly one HMAC-SHA-256, also with nothing stored or a stored
    value it cannot read, so the answer takes the same time (SECURITY.md P9).  A secret
    stored as argon2id by an earlier version is still checked with argon2id (secrets
    expire within days, so this path ends by itself).
    """
    if stored is not None and stored.startswith("$argon2"):
        return verify_secret(stored, candidate)
    key, expected = _DUMMY_SECRET_KEY, b""
    if stored is not None:
        scheme, _, rest = stored.partition("$")
        key_text, _, mac_text = rest.partition("$")
        try:
            if scheme == SECRET_SCHEME:
                key, expected = _unb64(key_text), _unb64(mac_text)
        except ValueError:
            key, expected = _DUMMY_SECRET_KEY, b""
    mac = hmac.new(key, candidate.encode("utf-8", "replace"), hashlib.sha256).digest()
    return hmac.compare_digest(mac, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None


def generate_secret() -> str:
    """A one-time enrollment secret: 20 random characters the toolkit accepts (alphanumeric)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))
