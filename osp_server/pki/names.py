"""Distinguished names the OSP Toolkit can read: every attribute a PrintableString.

``cryptography`` encodes CN, O and OU as UTF8String by default, which the toolkit's
ASN.1 decoder refuses (error 19020, TEP.md §6). Every name osp-server writes goes
through :func:`printable_name`, which forces PrintableString and refuses characters
PrintableString cannot hold, instead of silently choosing another string type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

__all__ = [
    "PRINTABLE_CHARACTERS",
    "InvalidNameError",
    "check_printable",
    "device_name",
    "printable_name",
]

PRINTABLE_CHARACTERS: Final = "A-Z a-z 0-9 space ' ( ) + , - . / : = ?"
"""Human-readable form of the PrintableString alphabet (X.680 §41.4)."""

_PRINTABLE_RE: Final = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")

# RFC 5280 upper bounds (ub-common-name, ub-organization-name, ...).
MAX_ATTRIBUTE_LENGTH: Final = 64


class InvalidNameError(ValueError):
    """A name value that cannot be written as a PrintableString attribute."""


def check_printable(value: str, field: str, *, max_length: int = MAX_ATTRIBUTE_LENGTH) -> str:
    """Return *value* if it fits a PrintableString attribute, else raise InvalidNameError.

    *field* names the value in the message (e.g. ``"device id"``). Leading or trailing
    spaces are refused too: they are invisible in most displays.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"{field} must be text, not {type(value).__name__}")
    if not value:
        raise InvalidNameError(f"{field} is empty")
    if len(value) > max_length:
        raise InvalidNameError(f"{field} is {len(value)} characters long (at most {max_length})")
    if _PRINTABLE_RE.fullmatch(value) is None:
        bad = sorted({ch for ch in value if _PRINTABLE_RE.fullmatch(ch) is None})
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise InvalidNameError(
            f"{field} {value!r} contains {shown}: only {PRINTABLE_CHARACTERS} are allowed "
            "(the OSP Toolkit reads names only as PrintableString)"
        )
    if value != value.strip(" "):
        raise InvalidNameError(f"{field} {value!r} has leading or trailing spaces")
    return value


def printable_name(attributes: Sequence[tuple[x509.ObjectIdentifier, str, str]]) -> x509.Name:
    """Build a Name, one attribute per RDN, in the given order (most significant first).

    Each item is ``(oid, value, field label)``; every value is checked with
    :func:`check_printable` and encoded as PrintableString. A countryName must be two
    upper-case letters.
    """
    if not attributes:
        raise InvalidNameError("a name needs at least one attribute")
    rdns = []
    for oid, value, field in attributes:
        if oid == NameOID.COUNTRY_NAME:
            if not isinstance(value, str) or _COUNTRY_RE.fullmatch(value) is None:
                raise InvalidNameError(f"{field} {value!r} must be two upper-case letters")
        else:
            check_printable(value, field)
        attribute = x509.NameAttribute(oid, value, _type=_ASN1Type.PrintableString)
        rdns.append(x509.RelativeDistinguishedName([attribute]))
    return x509.Name(rdns)


def device_name(customer_id: str, device_id: str, common_name: str | None) -> x509.Name:
    """The subject of a device certificate, built only from the device record.

    ``O=customer <customer_id>, OU=device <device_id>, CN=<common_name>`` in DER order
    (RFC 4514 prints it reversed: ``CN=...,OU=device 1000,O=customer 1000``). The CN
    defaults to ``device-<device_id>``. Nothing is taken from the CSR.
    """
    check_printable(customer_id, "customer id", max_length=MAX_ATTRIBUTE_LENGTH - 9)
    check_printable(device_id, "device id", max_length=MAX_ATTRIBUTE_LENGTH - 7)
    cn = common_name if common_name is not None else f"device-{device_id}"
    return printable_name(
        [
            (NameOID.ORGANIZATION_NAME, f"customer {customer_id}", "customer id"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, f"device {device_id}", "device id"),
            (NameOID.COMMON_NAME, cn, "device common name"),
        ]
    )
