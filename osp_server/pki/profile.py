"""The certificate profile the OSP Toolkit accepts, and the small DER tools that check it.

The toolkit parses every certificate with its own ASN.1 decoder (TEP.md §6, OSP.md §5):

* only SEQUENCE, SET, BOOLEAN, NULL, INTEGER, OID, BIT STRING, OCTET STRING,
  PrintableString, T61String, IA5String, BMPString and UTCTime are understood
  (UTF8String → error 19020);
* dates are 13-character UTCTime, so everything must end before 2050.

This module holds those rules (validity capping, the allowed-tag check) and a strict,
minimal DER reader/writer used by :mod:`osp_server.pki.csr` (to copy the CSR's
SubjectPublicKeyInfo verbatim) and :mod:`osp_server.pki.legacy` (to assemble an MD5
certificate from its to-be-signed bytes). Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

__all__ = [
    "DEVICE_BACKDATE",
    "TLV",
    "TOOLKIT_ALLOWED_TAGS",
    "UTCTIME_LIMIT",
    "DERError",
    "KeyType",
    "Profile",
    "cap_not_after",
    "children",
    "encode_length",
    "encode_tlv",
    "read_single",
    "read_tlv",
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


# --------------------------------------------------------------------------- DER


class DERError(ValueError):
    """The bytes are not the strict DER this module accepts (message says where)."""


@dataclass(frozen=True)
class TLV:
    """One DER element inside a buffer: ``data[start:end]`` is the whole element,
    ``data[content_start:end]`` its contents."""

    tag: int
    start: int
    content_start: int
    end: int

    @property
    def constructed(self) -> bool:
        """True for SEQUENCE, SET and constructed context-specific tags."""
        return bool(self.tag & 0x20)


def read_tlv(data: bytes, offset: int = 0, limit: int | None = None) -> TLV:
    """Read the element starting at *offset*, which must end at or before *limit*.

    Strict DER only: single-byte tags, definite minimal lengths. Raises
    :class:`DERError` on anything else, including truncation.
    """
    end_limit = len(data) if limit is None else limit
    if offset + 2 > end_limit:
        raise DERError(f"truncated element at offset {offset}")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DERError(f"multi-byte tag at offset {offset}")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DERError(f"indefinite length at offset {offset}")
    else:
        count = first & 0x7F
        if count > 4:
            raise DERError(f"length of {count} octets at offset {offset}")
        if pos + count > end_limit:
            raise DERError(f"truncated length at offset {offset}")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise DERError(f"non-minimal length at offset {offset}")
        pos += count
    if pos + length > end_limit:
        raise DERError(f"element at offset {offset} overruns its container")
    return TLV(tag=tag, start=offset, content_start=pos, end=pos + length)


def read_single(data: bytes, tag: int) -> TLV:
    """Parse *data* as exactly one element with *tag* and nothing after it."""
    tlv = read_tlv(data, 0)
    if tlv.tag != tag:
        raise DERError(f"expected tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
    if tlv.end != len(data):
        raise DERError(f"{len(data) - tlv.end} trailing bytes after the element")
    return tlv


def children(data: bytes, parent: TLV) -> Iterator[TLV]:
    """Yield the elements inside a constructed *parent*, which they must fill exactly."""
    if not parent.constructed:
        raise DERError(f"element at offset {parent.start} is not constructed")
    pos = parent.content_start
    while pos < parent.end:
        child = read_tlv(data, pos, parent.end)
        yield child
        pos = child.end


def encode_length(length: int) -> bytes:
    """DER definite length octets for *length* (minimal form)."""
    if length < 0:
        raise ValueError("negative length")
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > 4:
        raise ValueError("length too large")
    return bytes([0x80 | len(body)]) + body


def encode_tlv(tag: int, content: bytes) -> bytes:
    """Encode one element with a single-byte *tag*."""
    if not 0 <= tag <= 0xFF or tag & 0x1F == 0x1F:
        raise ValueError(f"unsupported tag {tag!r}")
    return bytes([tag]) + encode_length(len(content)) + content


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
