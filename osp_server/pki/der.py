"""A strict, minimal DER reader and writer: single-byte tags, definite minimal lengths.

Enough to walk a certificate or a CSR by hand where the exact bytes matter: copying a
CSR's SubjectPublicKeyInfo verbatim (:mod:`osp_server.pki.csr`), assembling an MD5
certificate (:mod:`osp_server.pki.legacy`), checking the toolkit profile
(:mod:`osp_server.pki.profile`), framing a TEP request (:mod:`osp_server.enrollment.wire`)
and comparing public keys byte for byte in ``osp-enroll`` (:mod:`osp_server.client.enroll`).
Pure code, stdlib only, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "TLV",
    "DERError",
    "children",
    "encode_length",
    "encode_tlv",
    "read_single",
    "read_tlv",
]


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


def encode_bit_string(data: bytes) -> bytes:
    """A BIT STRING of whole octets (no unused bits), as signatures are."""
    return encode_tlv(0x03, b"\x00" + data)


def assemble_signed(to_be_signed: bytes, algorithm_identifier: bytes, signature: bytes) -> bytes:
    """``SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature }``: a certificate or a
    CRL around its to-be-signed bytes."""
    return encode_tlv(0x30, to_be_signed + algorithm_identifier + encode_bit_string(signature))
