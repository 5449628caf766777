"""TEP (TransNexus enrollment protocol) codec: request bodies in, response bodies out.

Pure bytes-to-values code, no Twisted. The rules are those of TEP.md §3 (requests) and
§4 (responses). The real client is the OSP Toolkit 4.33.1 ``enroll`` program; the
client-side helpers at the end of this module reproduce what it sends and how it reads
our answers, so that tests can check the server against the client's behaviour.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from osp_server.pki.der import DERError, read_single

__all__ = [
    "CONTENT_TYPE",
    "MAX_BODY_BYTES",
    "MAX_CSR_BYTES",
    "MAX_FIELDS",
    "MAX_ID_DIGITS",
    "MAX_NONCE_BYTES",
    "MAX_SECRET_CHARS",
    "CACertRequest",
    "EnrollmentRequest",
    "TepFormatError",
    "TepOperation",
    "TepStatus",
    "encode_fields",
    "parse_body",
    "parse_client_view",
    "parse_fields",
    "render_certificate",
    "render_status",
]

#: Cap on a request body, checked before any parsing (a 2048-bit CSR gives about 1 KB).
MAX_BODY_BYTES = 16 * 1024
#: Cap on the decoded CSR (DER).
MAX_CSR_BYTES = 8 * 1024
#: Cap on the number of ``name=value`` parts, known and unknown together.
MAX_FIELDS = 32
#: Nonce length limit: the client sends 16 bytes; the value is opaque to us.
MAX_NONCE_BYTES = 64
#: Length limit of the user name and of the password (the client itself allows 32).
MAX_SECRET_CHARS = 128
#: Length limit of the device and customer ids.
MAX_ID_DIGITS = 20

#: Content type of every TEP response (patent wording; the client ignores the value).
CONTENT_TYPE = b"text/html"


class TepStatus(enum.IntEnum):
    """The ``status=N`` values of TEP.md §5 (``enroll`` exits with N for N >= 2)."""

    ISSUED = 0
    PENDING = 1
    DENIED = 2  # unknown device or customer, or bad credentials: one code, no enumeration
    CSR_REFUSED = 3
    MALFORMED = 4
    THROTTLED = 5
    TEMPORARY_FAILURE = 6
    # 7 is deliberately absent: enroll uses exit 7 for its own "no status" failure.
    NO_REQUEST = 8
    NOT_DUE = 9  # a renewal before the renewal window (osp-server's own; not the toolkit's)

    @property
    def meaning(self) -> str:
        """A one-line human explanation, used by ``osp-enroll`` and in logs."""
        return _STATUS_MEANINGS[self]


_STATUS_MEANINGS: dict[TepStatus, str] = {
    TepStatus.ISSUED: "certificate issued",
    TepStatus.PENDING: "the certificate request is pending approval",
    TepStatus.DENIED: "denied: unknown device or customer, or wrong user name or password",
    TepStatus.CSR_REFUSED: "the certificate request (CSR) was refused by the server's policy",
    TepStatus.MALFORMED: "the server found the request malformed",
    TepStatus.THROTTLED: "throttled: too many failed attempts, try again later",
    TepStatus.TEMPORARY_FAILURE: "temporary server failure, nothing was issued; try again",
    TepStatus.NO_REQUEST: "retrieve: the server has no matching certificate request",
    TepStatus.NOT_DUE: "renewal refused: the certificate is not yet close enough to expiry",
}


class TepFormatError(ValueError):
    """A request body breaks the TEP syntax; the server answers ``status=4``.

    The message names the problem (field name, rule) but never echoes secret values.
    """


class TepOperation(enum.Enum):
    """The ``operation`` field. ``getocert`` (the patent's spelling) means GETCACERT."""

    GETCACERT = "getcacert"
    REQUEST = "request"
    RETRIEVE = "retrieve"

    @classmethod
    def from_wire(cls, value: bytes) -> TepOperation:
        """Map the decoded ``operation`` value to a member; raise TepFormatError if unknown."""
        try:
            return _OPERATIONS[value]
        except KeyError:
            raise TepFormatError("field 'operation' has an unknown value") from None


_OPERATIONS: dict[bytes, TepOperation] = {
    b"getcacert": TepOperation.GETCACERT,
    b"getocert": TepOperation.GETCACERT,
    b"request": TepOperation.REQUEST,
    b"retrieve": TepOperation.RETRIEVE,
}


@dataclass(frozen=True)
class CACertRequest:
    """``operation=getcacert``: asks for the CA certificate; carries nothing else."""

    operation: TepOperation = TepOperation.GETCACERT


@dataclass(frozen=True)
class EnrollmentRequest:
    """A parsed ``request`` or ``retrieve`` with every field validated syntactically.

    ``csr_der`` is only known to be one well-framed DER SEQUENCE; the CSR policy step
    parses it. ``ignored_fields`` lists unknown field names (for logging).

    ``renewal``: a ``request`` without ``username`` and ``password`` (both absent), which
    the device's current certificate, presented as the TLS client certificate,
    authenticates instead (TEP.md "Renewal over mutual TLS"); the two are then empty.
    """

    operation: TepOperation
    nonce: bytes
    username: str
    password: str = field(repr=False)
    device_id: str
    customer_id: str
    csr_der: bytes
    ignored_fields: tuple[str, ...] = ()
    renewal: bool = False


_ENROLL_FIELDS = ("operation", "nonce", "username", "password", "device", "customer", "request")
_CREDENTIAL_FIELDS = ("username", "password")
_KNOWN_FIELDS = frozenset(_ENROLL_FIELDS)

# A "%" not followed by two hex digits; unquote_to_bytes would pass it through silently.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_ID_DIGITS)
_PRINTABLE = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_SECRET_CHARS)
# Largest base64 text whose decoding can fit MAX_CSR_BYTES; checked before decoding.
_MAX_CSR_B64 = 4 * -(-MAX_CSR_BYTES // 3)


def _percent_decode(raw: bytes, what: str) -> bytes:
    """Decode %XX escapes to bytes; a raw ``+`` stays ``+`` (this is not a form body)."""
    if _BAD_ESCAPE.search(raw):
        raise TepFormatError(f"malformed percent escape in {what}")
    return urllib.parse.unquote_to_bytes(raw)


def _printable_name(name: bytes) -> str:
    """A log-safe rendering of an unknown field name."""
    text = name[:64].decode("ascii", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_fields(body: bytes) -> tuple[tuple[str, bytes], ...]:
    """Split a body into its ``(name, value)`` pairs, in order, values percent-decoded.

    Enforces the syntax shared by every operation: size cap, ``&``/``=`` structure,
    well-formed ``%XX`` escapes, no empty or repeated names. Names are returned as
    latin-1 text (an exact round trip of the decoded bytes). Raises TepFormatError only.
    """
    if not isinstance(body, bytes):
        raise TepFormatError("body must be bytes")
    if len(body) > MAX_BODY_BYTES:
        raise TepFormatError(f"body is larger than {MAX_BODY_BYTES} bytes")
    if not body:
        raise TepFormatError("body is empty")
    parts = body.split(b"&")
    if len(parts) > MAX_FIELDS:
        raise TepFormatError(f"too many fields (more than {MAX_FIELDS})")
    fields: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for position, part in enumerate(parts, start=1):
        raw_name, sep, raw_value = part.partition(b"=")
        if not sep:
            raise TepFormatError(f"field #{position} has no '='")
        name = _percent_decode(raw_name, f"the name of field #{position}")
        if not name:
            raise TepFormatError(f"field #{position} has an empty name")
        if name in seen:
            raise TepFormatError(f"field {_printable_name(name)!r} is repeated")
        seen.add(name)
        text_name = name.decode("latin-1")
        what = f"field {text_name!r}" if text_name in _KNOWN_FIELDS else f"field #{position}"
        fields.append((text_name, _percent_decode(raw_value, what)))
    return tuple(fields)


def _der_sequence_framed(data: bytes) -> bool:
    """True if ``data`` is exactly one definite-length DER SEQUENCE (cheap sanity check)."""
    try:
        read_single(data, 0x30)
    except DERError:
        return False
    return True


def _decode_csr(value: bytes) -> bytes:
    """Strict base64 (line breaks allowed, nothing else) to one DER SEQUENCE."""
    text = value.replace(b"\r", b"").replace(b"\n", b"")
    if not text:
        raise TepFormatError("field 'request' is empty")
    if len(text) > _MAX_CSR_B64:
        raise TepFormatError(f"field 'request' is larger than {MAX_CSR_BYTES} bytes")
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TepFormatError("field 'request' is not valid base64") from None
    if not der or len(der) > MAX_CSR_BYTES:
        raise TepFormatError(f"field 'request' must decode to 1-{MAX_CSR_BYTES} bytes")
    if not _der_sequence_framed(der):
        raise TepFormatError("field 'request' is not a single DER SEQUENCE (truncated?)")
    return der


def _ascii_field(values: dict[str, bytes], name: str, pattern: re.Pattern[bytes], rule: str) -> str:
    value = values[name]
    if not pattern.fullmatch(value):
        raise TepFormatError(f"field {name!r} must be {rule}")
    return value.decode("ascii")


def parse_body(body: bytes) -> CACertRequest | EnrollmentRequest:
    """Parse a raw TEP request body strictly (TEP.md §3).

    Raises TepFormatError, and only TepFormatError, for any malformed input: oversized
    or empty body, a part without ``=``, a malformed ``%`` escape, a missing or repeated
    field, an unknown operation, or a field value outside its rule.
    """
    values: dict[str, bytes] = {}
    ignored: list[str] = []
    for name, value in parse_fields(body):
        if name in _KNOWN_FIELDS:
            values[name] = value
        else:
            ignored.append(_printable_name(name.encode("latin-1")))
    if "operation" not in values:
        raise TepFormatError("field 'operation' is missing")
    operation = TepOperation.from_wire(values["operation"])
    if operation is TepOperation.GETCACERT:
        return CACertRequest(operation)
    renewal = operation is TepOperation.REQUEST and not any(
        name in values for name in _CREDENTIAL_FIELDS
    )
    missing = [
        name
        for name in _ENROLL_FIELDS
        if name not in values and not (renewal and name in _CREDENTIAL_FIELDS)
    ]
    if missing:
        raise TepFormatError("missing field(s): " + ", ".join(repr(n) for n in missing))
    nonce = values["nonce"]
    if not 1 <= len(nonce) <= MAX_NONCE_BYTES:
        raise TepFormatError(f"field 'nonce' must be 1-{MAX_NONCE_BYTES} bytes")
    printable = f"1-{MAX_SECRET_CHARS} printable ASCII characters"
    digits = f"1-{MAX_ID_DIGITS} ASCII digits"
    return EnrollmentRequest(
        operation=operation,
        nonce=nonce,
        username="" if renewal else _ascii_field(values, "username", _PRINTABLE, printable),
        password="" if renewal else _ascii_field(values, "password", _PRINTABLE, printable),
        device_id=_ascii_field(values, "device", _DIGITS, digits),
        customer_id=_ascii_field(values, "customer", _DIGITS, digits),
        csr_der=_decode_csr(values["request"]),
        ignored_fields=tuple(ignored),
        renewal=renewal,
    )


def render_certificate(der: bytes) -> bytes:
    """``status=0&certificate=<one-line base64>\\n`` for getcacert and issued answers.

    The trailing newline is mandatory: ``enroll`` always loses the last byte (§4.1).
    """
    if not der:
        raise ValueError("a certificate answer needs certificate bytes")
    return b"status=0&certificate=" + base64.b64encode(der) + b"\n"


def render_status(status: TepStatus) -> bytes:
    """``status=N\\n`` for pending and rejected answers (never 0: that needs a certificate)."""
    status = TepStatus(status)
    if status is TepStatus.ISSUED:
        raise ValueError("status 0 needs a certificate: use render_certificate()")
    return b"status=%d\n" % status.value


# --- client side: what enroll sends and how it reads our answers -----------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _percent_encode(data: bytes) -> bytes:
    return b"".join(bytes((b,)) if b in _UNRESERVED else b"%%%02X" % b for b in data)


def encode_fields(fields: Sequence[tuple[str, bytes]]) -> bytes:
    """Encode ``name=value&…`` as ``enroll`` does: every non-alphanumeric byte as ``%XX``."""
    return b"&".join(
        _percent_encode(name.encode("ascii")) + b"=" + _percent_encode(value)
        for name, value in fields
    )


_CLIENT_DELIMITERS = b"&\n "
_B64_SPACE = re.compile(rb"[ \t\r\n\v\f]")
_ALL_DIGITS = re.compile(rb"[0-9]+")


def _client_lookup(text: bytes, name: bytes) -> bytes | None:
    """enroll's field lookup: strstr hits, ``%*[^=]=%[^& ]``, accepted after a delimiter."""
    start = 0
    while (hit := text.find(name, start)) >= 0:
        start = hit + 1
        equals = text.find(b"=", hit)
        if equals < 0:
            continue  # sscanf finds no "=": no conversion
        end = equals + 1
        while end < len(text) and text[end] not in b"& ":
            end += 1
        value = text[equals + 1 : end]
        if not value:
            continue  # %[^& ] matched nothing: sscanf returns 0, a "false hit"
        if hit == 0 or text[hit - 1] in _CLIENT_DELIMITERS:
            return value
    return None


def _client_b64decode(value: bytes) -> bytes | None:
    # The toolkit decoder skips whitespace (src/ospb64.c); anything else must be base64.
    try:
        return base64.b64decode(_B64_SPACE.sub(b"", value), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def parse_client_view(body: bytes, *, operation: TepOperation) -> tuple[str | None, bytes | None]:
    """Read a response body the way ``enroll`` 4.33.1 does (TEP.md §4.1); a test oracle.

    The last byte is always dropped and the rest is a C string (cut at the first NUL).
    getcacert reads only ``certificate`` and ignores ``status``, so its status is None.
    request/retrieve read ``status`` and, only when it is ``"0"``, ``cert`` (which
    prefix-matches ``certificate=``). Returns (status text or None if missing or empty,
    decoded certificate DER or None if missing or not decodable). The status text is not
    checked for digits: enroll exits 254 when it is not all digits.
    """
    text = body[:-1].split(b"\x00", 1)[0]
    if operation is TepOperation.GETCACERT:
        value = _client_lookup(text, b"certificate")
        return None, (_client_b64decode(value) if value is not None else None)
    raw_status = _client_lookup(text, b"status")
    status = raw_status.decode("latin-1") if raw_status is not None else None
    # enroll checks that the status is all digits, then converts it ("00" is 0).
    if raw_status is None or not _ALL_DIGITS.fullmatch(raw_status) or raw_status.strip(b"0"):
        return status, None
    cert = _client_lookup(text, b"cert")
    return status, (_client_b64decode(cert) if cert is not None else None)
