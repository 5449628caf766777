"""OSP authorisation tokens: unsigned XML, unsigned ASCII and signed PKCS#7 (OSP.md §4).

A token is handed to the originating device inside ``Destination/Token`` and forwarded
to the terminating device, which validates it locally with the OSP Toolkit. The toolkit
picks the format from the first raw bytes: ``<?xml`` (XML), ``V=1\\n`` (ASCII), anything
else is DER PKCS#7 SignedData with the XML or ASCII token embedded.

Everything here is pure: no I/O, no reactor. Every value that goes into a token is
validated against what the toolkit's fixed-size buffers and parsers accept, and any
problem is reported as :class:`TokenError`.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

__all__ = [
    "MAX_ASCII_TOKEN_BYTES",
    "MAX_TOKEN_BYTES",
    "SIGNALING_PROTOCOLS",
    "TokenClaims",
    "TokenError",
    "TokenFactory",
    "TokenFormat",
    "TokenSigner",
    "build_ascii_token",
    "build_xml_token",
]

TokenFormat = Literal["signed", "xml", "ascii"]
SignedContent = Literal["xml", "ascii"]

# Base64 of the raw token must stay below the devices' 4096-byte element/token buffers.
MAX_TOKEN_BYTES: Final = 3000
# The terminating device copies an ASCII token (also one taken out of a signed token)
# into a 1000-byte stack buffer and NUL-terminates it (osptransapi.c, AsciiTokenMsg).
MAX_ASCII_TOKEN_BYTES: Final = 999
# Each ASCII line is read with sscanf("%s") into a 200-byte buffer (osptokeninfo.c).
_MAX_ASCII_LINE: Final = 199
# Toolkit buffer sizes (ospmsg.h, ospcallid.h), minus the terminating NUL.
_MAX_NUMBER_LEN: Final = 131
_MAX_SIGNAL_ADDRESS_LEN: Final = 261
_MAX_NETWORK_ID_LEN: Final = 127
_MAX_CALL_ID_BYTES: Final = 256
# A numeric field above 2**31-1 is read by atoi() on the device.
_MAX_INT32: Final = 2**31 - 1
# TransactionId is a uint64 on the device; OSP.md §3.2 asks for values below 2**63.
_MAX_TRANSACTION_ID: Final = 2**63 - 1

# The device treats a token call id equal to these bytes as "no call id to compare".
UNDEFINED_CALL_ID: Final = b"UNDEFINED"

SIGNALING_PROTOCOLS: Final = frozenset(
    {"sip", "h323-Q931", "h323-LRQ", "iax", "fax-T37", "fax-T38", "skype", "smpp", "xmpp", "sms"}
)

# Numbers as signalled: digits and the dial-string symbols; letters, '.', '-' and '_'
# are tolerated for technology prefixes. Nothing that XML or the ASCII parser treats
# specially (whitespace, control characters, & < > " ').
_NUMBER_RE: Final = re.compile(r"[0-9A-Za-z+*#._-]+")
# "[a.b.c.d]:port", "[v6]:port" or "host[:port]".
_SIGNAL_ADDRESS_RE: Final = re.compile(r"[0-9A-Za-z.:_\[\]-]+")
# Printable ASCII except space and the XML-special characters.
_TOKEN_TEXT_RE: Final = re.compile(r"[!#-%(-;=?-~]+")

_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


class TokenError(ValueError):
    """A token cannot be built: a claim is malformed or the result is too large."""


@dataclass(frozen=True)
class TokenClaims:
    """What one Destination's token asserts (OSP.md §4, TokenInfo children).

    ``calling``/``called`` are the numbers as signalled to the next hop (after any
    translation): the terminating device compares them as exact strings. ``call_id``
    is the raw call id; ``None`` means the token says ``UNDEFINED`` and the device
    skips the call-id comparison. Times must be timezone-aware. ``amount`` x
    ``increment`` seconds is the call time limit (unit is always ``s``).
    """

    calling: str
    called: str
    call_id: bytes | None
    valid_after: datetime
    valid_until: datetime
    transaction_id: int
    amount: int
    increment: int = 1
    destination_network_id: str | None = None
    signal_address: str | None = None
    protocol: str | None = None


@dataclass(frozen=True)
class _Fields:
    """Claims checked and rendered as the exact text that goes into a token."""

    calling: str
    called: str
    call_id_b64: str
    valid_after: str
    valid_until: str
    transaction_id: str
    amount: str
    increment: str
    time_limit: str
    network_id: str | None
    signal_address: str | None
    protocol: str | None


def _check_text(name: str, value: object, pattern: re.Pattern[str], max_len: int) -> str:
    if not isinstance(value, str):
        raise TokenError(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise TokenError(f"{name} is empty")
    if len(value) > max_len:
        raise TokenError(f"{name} is {len(value)} characters long (at most {max_len})")
    if pattern.fullmatch(value) is None:
        raise TokenError(f"{name} contains characters not allowed in a token: {value[:40]!r}")
    return value


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass; True as an amount is a caller bug, not a value.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenError(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise TokenError(f"{name} {value} is outside {low}..{high}")
    return value


def _format_time(name: str, value: object) -> tuple[datetime, str]:
    if not isinstance(value, datetime):
        raise TokenError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise TokenError(f"{name} must be timezone-aware (UTC)")
    utc = value.astimezone(UTC)
    if not 1970 <= utc.year <= 9999:
        raise TokenError(f"{name} year {utc.year} is outside 1970..9999")
    # The device parses exactly YYYY-MM-DDThh:mm:ssZ: fractions are dropped, not rounded.
    return utc.replace(microsecond=0), utc.strftime(_TIME_FORMAT)


def _check_claims(claims: TokenClaims) -> _Fields:
    if not isinstance(claims, TokenClaims):
        raise TokenError(f"claims must be TokenClaims, not {type(claims).__name__}")
    calling = _check_text("calling number", claims.calling, _NUMBER_RE, _MAX_NUMBER_LEN)
    called = _check_text("called number", claims.called, _NUMBER_RE, _MAX_NUMBER_LEN)

    call_id = claims.call_id
    if call_id is None:
        call_id = UNDEFINED_CALL_ID
    elif not isinstance(call_id, bytes):
        raise TokenError(f"call id must be bytes or None, not {type(call_id).__name__}")
    elif not call_id:
        raise TokenError("call id is empty (use None for UNDEFINED)")
    elif len(call_id) > _MAX_CALL_ID_BYTES:
        raise TokenError(f"call id is {len(call_id)} bytes long (at most {_MAX_CALL_ID_BYTES})")

    after, after_text = _format_time("valid_after", claims.valid_after)
    until, until_text = _format_time("valid_until", claims.valid_until)
    if until < after:
        raise TokenError("valid_until is before valid_after")

    # 0 is "no transaction id" to the device (OSPPTokenInfoSetTrxId ignores it).
    transaction_id = _check_int("transaction id", claims.transaction_id, 1, _MAX_TRANSACTION_ID)
    amount = _check_int("amount", claims.amount, 0, _MAX_INT32)
    increment = _check_int("increment", claims.increment, 1, _MAX_INT32)
    time_limit = amount * increment
    if time_limit > _MAX_INT32:
        raise TokenError(f"amount x increment = {time_limit} s exceeds {_MAX_INT32}")

    network_id = None
    if claims.destination_network_id is not None:
        network_id = _check_text(
            "destination network id",
            claims.destination_network_id,
            _TOKEN_TEXT_RE,
            _MAX_NETWORK_ID_LEN,
        )
    signal_address = None
    if claims.signal_address is not None:
        signal_address = _check_text(
            "signal address", claims.signal_address, _SIGNAL_ADDRESS_RE, _MAX_SIGNAL_ADDRESS_LEN
        )
    protocol = None
    if claims.protocol is not None:
        if claims.protocol not in SIGNALING_PROTOCOLS:
            raise TokenError(f"unknown signaling protocol {str(claims.protocol)[:40]!r}")
        protocol = claims.protocol

    return _Fields(
        calling=calling,
        called=called,
        call_id_b64=base64.b64encode(call_id).decode("ascii"),
        valid_after=after_text,
        valid_until=until_text,
        transaction_id=str(transaction_id),
        amount=str(amount),
        increment=str(increment),
        time_limit=str(time_limit),
        network_id=network_id,
        signal_address=signal_address,
        protocol=protocol,
    )


def _check_size(kind: str, token: bytes, limit: int = MAX_TOKEN_BYTES) -> bytes:
    if len(token) > limit:
        raise TokenError(f"{kind} token is {len(token)} bytes (at most {limit})")
    return token


def build_xml_token(claims: TokenClaims) -> bytes:
    """Return an unsigned XML token: ``<?xml version="1.0"?>`` and a ``TokenInfo`` root.

    The element names, order and attributes follow the validated vector
    ``tokens/token-unsigned.xml``; the root is never wrapped in ``Message``. Values
    are validated so that nothing needs escaping and no leaf carries whitespace.
    """
    f = _check_claims(claims)
    lines = [
        '<?xml version="1.0"?>',
        '<TokenInfo critical="True">',
        f'<SourceInfo type="e164">{f.calling}</SourceInfo>',
        f'<DestinationInfo type="e164">{f.called}</DestinationInfo>',
        f'<CallId encoding="base64" critical="False">{f.call_id_b64}</CallId>',
        f"<ValidAfter>{f.valid_after}</ValidAfter>",
        f"<ValidUntil>{f.valid_until}</ValidUntil>",
        f"<TransactionId>{f.transaction_id}</TransactionId>",
        f"<UsageDetail><Amount>{f.amount}</Amount><Increment>{f.increment}</Increment>"
        "<Unit>s</Unit></UsageDetail>",
    ]
    # The device reads DestinationAlternate "network" as the network id and any other
    # type as the look-ahead signalling address; `type` must be the first attribute.
    if f.signal_address is not None:
        lines.append(
            f'<DestinationAlternate type="transport">{f.signal_address}</DestinationAlternate>'
        )
    if f.network_id is not None:
        lines.append(f'<DestinationAlternate type="network">{f.network_id}</DestinationAlternate>')
    if f.protocol is not None:
        lines.append(f"<SignalingProtocol>{f.protocol}</SignalingProtocol>")
    lines.append("</TokenInfo>")
    return _check_size("XML", "\n".join(lines).encode("ascii"))


def build_ascii_token(claims: TokenClaims, *, random: int | None = None) -> bytes:
    """Return an unsigned ASCII token: ``V=1`` then one ``k=v`` line per claim, LF ended.

    Keys and order follow ``tokens/token-ascii.txt``: ``V r c C i a u I A`` then the
    optional look-ahead ``d`` (signal address), ``D`` (protocol) and ``e`` (network
    id). ``A`` is the time limit in seconds (amount x increment), since the ASCII
    form has no increment. ``random`` fills ``r`` (ignored by devices); by default
    it is drawn at random.
    """
    f = _check_claims(claims)
    nonce = secrets.randbelow(_MAX_INT32) + 1 if random is None else random
    nonce = _check_int("random", nonce, 0, _MAX_INT32)
    pairs = [
        ("V", "1"),
        ("r", str(nonce)),
        ("c", f.calling),
        ("C", f.called),
        ("i", f.call_id_b64),
        ("a", f.valid_after),
        ("u", f.valid_until),
        ("I", f.transaction_id),
        ("A", f.time_limit),
    ]
    if f.signal_address is not None:
        pairs.append(("d", f.signal_address))
    if f.protocol is not None:
        pairs.append(("D", f.protocol))
    if f.network_id is not None:
        pairs.append(("e", f.network_id))
    lines = []
    for key, value in pairs:
        line = f"{key}={value}"
        if len(line) > _MAX_ASCII_LINE:
            raise TokenError(
                f"ASCII token line {key!r} is {len(line)} characters (at most {_MAX_ASCII_LINE})"
            )
        lines.append(line + "\n")
    return _check_size("ASCII", "".join(lines).encode("ascii"), MAX_ASCII_TOKEN_BYTES)


class TokenSigner:
    """Signs token content as DER PKCS#7 SignedData that OSP Toolkit devices verify.

    SHA-256, content embedded (never detached), the ``Binary`` option so the bytes
    are signed exactly as given, and only the signer certificate embedded (no chain:
    the device verifies with ``PKCS7_NOCHAIN`` against its CA set, so the signer
    certificate must be issued directly by our CA). The signed attributes and
    S/MIME capabilities are kept as in the observed accepted tokens.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ) -> None:
        if not isinstance(certificate, x509.Certificate):
            raise TokenError("token-signing certificate must be an x509.Certificate")
        if isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < 2048:
                raise TokenError(
                    f"RSA token-signing key is {private_key.key_size} bits (at least 2048)"
                )
        elif not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise TokenError("token-signing key must be an EC or RSA private key")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        cert_spki = certificate.public_key().public_bytes(der, spki)
        if cert_spki != private_key.public_key().public_bytes(der, spki):
            raise TokenError("token-signing certificate does not match the private key")
        self._certificate = certificate
        self._builder = pkcs7.PKCS7SignatureBuilder().add_signer(
            certificate, private_key, hashes.SHA256()
        )

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate embedded in every signed token."""
        return self._certificate

    def sign(self, content: bytes) -> bytes:
        """Return DER PKCS#7 SignedData embedding ``content`` (an XML or ASCII token)."""
        if not isinstance(content, bytes) or not content:
            raise TokenError("token content to sign must be non-empty bytes")
        _check_size("token content", content)
        try:
            return self._builder.set_data(content).sign(
                serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]
            )
        except (TypeError, ValueError) as exc:
            raise TokenError(f"signing the token failed: {exc}") from exc


class TokenFactory:
    """Builds the token for one destination in the configured format."""

    def __init__(
        self,
        *,
        default_format: TokenFormat,
        signer: TokenSigner | None,
        signed_content: SignedContent = "xml",
    ) -> None:
        if default_format not in get_args(TokenFormat):
            raise TokenError(f"unknown token format {default_format!r}")
        if signed_content not in get_args(SignedContent):
            raise TokenError(f"unknown signed token content {signed_content!r}")
        if default_format == "signed" and signer is None:
            raise TokenError("signed tokens are the default but no token signer is configured")
        self._default_format: TokenFormat = default_format
        self._signer = signer
        self._signed_content: SignedContent = signed_content

    @property
    def default_format(self) -> TokenFormat:
        """The format used when :meth:`build` is not told otherwise."""
        return self._default_format

    def build(self, claims: TokenClaims, *, token_format: TokenFormat | None = None) -> bytes:
        """Return the raw token bytes (the caller base64-encodes them), at most 3000 bytes.

        ``token_format`` overrides the default for this call (e.g. a device whose
        policy accepts only unsigned tokens).
        """
        fmt = self._default_format if token_format is None else token_format
        if fmt == "xml":
            token = build_xml_token(claims)
        elif fmt == "ascii":
            token = build_ascii_token(claims)
        elif fmt == "signed":
            if self._signer is None:
                raise TokenError("a signed token was asked for but no token signer is configured")
            if self._signed_content == "xml":
                content = build_xml_token(claims)
            else:
                content = build_ascii_token(claims)
            token = self._signer.sign(content)
        else:
            raise TokenError(f"unknown token format {fmt!r}")
        return _check_size(fmt, token)
