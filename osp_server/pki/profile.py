"""The certificate profile the OSP Toolkit accepts, and the check against it.

The toolkit parses every certificate with its own ASN.1 decoder (TEP.md §6, OSP.md §5):

* only SEQUENCE, SET, BOOLEAN, NULL, INTEGER, OID, BIT STRING, OCTET STRING,
  PrintableString, T61String, IA5String, BMPString and UTCTime are understood
  (UTF8String → error 19020);
* dates are 13-character UTCTime, so everything must end before 2050.

This module holds those rules (validity capping, the allowed-tag check) and the CA
key type and signing profile names. The strict DER reader/writer it walks certificates
with lives in :mod:`osp_server.pki.der`; its names are re-exported here for the PKI
modules that import them from this one. Pure code, no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from osp_server.pki.der import (
    TLV,
    DERError,
    children,
    read_single,
)

__all__ = [
    "DEVICE_BACKDATE",
    "TOOLKIT_ALLOWED_TAGS",
    "UTCTIME_LIMIT",
    "KeyType",
    "Profile",
    "cap_not_after",
    "to_utc",
    "toolkit_compatibility_problems",
]

KeyType = Literal["rsa2048", "rsa3072", "rsa4096", "ec-p256"]
"""CA key types: RSA (any profile) or EC P-256 (secure profile only)."""

Profile = Literal["secure", "legacy"]
"""``secure``: SHA-256 everywhere. ``legacy``: MD5 CA self-signature and device
certificates, for the stock ``enroll`` 4.33.1 (TEP.md §10)."""

UTCTIME_LIMIT: Final = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
"""Latest instant a 13-character UTCTime can express (years 50-99 read as 19xx)."""

DEVICE_BACKDATE: Final = timedelta(hours=1)
"""notBefore is set this far in the past to absorb device clock skew (TEP.md §7)."""

# Universal tags the toolkit's decoder accepts (src/ospasn1.c:236-258).
TOOLKIT_ALLOWED_TAGS: Final = frozenset(
    {
        0x01,  # BOOLEAN
        0x02,  # INTEGER
        0x03,  # BIT STRING
        0x04,  # OCTET STRING
        0x05,  # NULL
        0x06,  # OBJECT IDENTIFIER
        0x13,  # PrintableString
        0x14,  # T61String
        0x16,  # IA5String
        0x17,  # UTCTime
        0x1E,  # BMPString
        0x30,  # SEQUENCE
        0x31,  # SET
    }
)

_TAG_NAMES: Final = {
    0x0C: "UTF8String",
    0x12: "NumericString",
    0x18: "GeneralizedTime",
    0x1A: "VisibleString",
    0x1C: "UniversalString",
}

# A certificate nests about 8 levels deep; anything far deeper is hostile.
_MAX_DEPTH: Final = 32


def to_utc(when: datetime) -> datetime:
    """Return *when* as an aware UTC datetime with whole seconds.

    A naive datetime is taken to be UTC already. Certificates carry whole seconds only.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).replace(microsecond=0)


def cap_not_after(*limits: datetime) -> datetime:
    """The earliest of *limits* and :data:`UTCTIME_LIMIT`, in UTC whole seconds."""
    return min([UTCTIME_LIMIT, *(to_utc(limit) for limit in limits)])


# ------------------------------------------------------------- toolkit check


def _walk(data: bytes, parent: TLV, depth: int, found: set[int]) -> None:
    if depth > _MAX_DEPTH:
        raise DERError("nesting too deep")
    for child in children(data, parent):
        if child.tag & 0xC0 == 0:  # universal class
            found.add(child.tag)
        if child.constructed:
            _walk(data, child, depth + 1, found)


def toolkit_compatibility_problems(certificate_der: bytes) -> tuple[str, ...]:
    """Why the OSP Toolkit's decoder would refuse this certificate (empty if it would not).

    Walks the certificate's structure (not inside extension OCTET STRINGs, which the
    toolkit leaves alone) and reports universal tags outside
    :data:`TOOLKIT_ALLOWED_TAGS`, e.g. UTF8String names or GeneralizedTime dates.
    """
    try:
        top = read_single(certificate_der, 0x30)
        found: set[int] = {top.tag}
        _walk(certificate_der, top, 1, found)
    except DERError as exc:
        return (f"not strict DER: {exc}",)
    problems = []
    for tag in sorted(found - TOOLKIT_ALLOWED_TAGS):
        name = _TAG_NAMES.get(tag, f"universal tag 0x{tag:02x}")
        problems.append(f"contains {name}, which the OSP Toolkit cannot decode")
    return tuple(problems)
