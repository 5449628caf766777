"""OSP authorisation tokens: unsigned XML, unsigned ASCII and signed PKCS#7 (OSP.md §4).

A token is handed to the originating device inside ``Destination/Token`` and forwarded
to the terminating device, which validates it locally with the OSP Toolkit. The toolkit
picks the format from the first raw bytes: ``<?xml`` (XML), ``V=1\\n`` (ASCII), anything
else is DER PKCS#7 SignedData with the XML or ASCII token embedded.

Everything here is pure: no I/O, no reactor, no logging (the factory reports a
dropped Call-ID through a callback the composition root turns into a log event).
Every value that goes into a token is validated against what the toolkit's fixed-size
buffers and parsers accept, and any problem is reported as :class:`TokenError`.

Size (OSP.md §4): OpenSIPS and Kamailio base64-encode the raw token into a 2,048-byte
buffer and the toolkit's encoder wants twice the raw size, so a raw token over 1,024
bytes is dropped from the INVITE. :class:`TokenFactory` enforces a per-token limit
(``max_token_bytes``, 1,024 by default); signed tokens embed the ASCII form, carry no
signed attributes and one compact signer certificate to stay under it.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from osp_server.osp.messages import SIGNALING_PROTOCOLS
from osp_server.pki import der, keys
from osp_server.pki.keys import ExternalKey, scratch_key

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "MAX_ASCII_TOKEN_BYTES",
    "MAX_TOKEN_BYTES",
    "MIN_TOKEN_LIMIT",
    "SIGNALING_PROTOCOLS",
    "CallIdDropped",
    "SignedContent",
    "TokenClaims",
    "TokenError",
    "TokenFactory",
    "TokenFormat",
    "TokenSigner",
    "TokenTooLargeError",
    "build_ascii_token",
    "build_xml_token",
    "reference_claims",
]

TokenFormat = Literal["signed", "xml", "ascii"]
SignedContent = Literal["xml", "ascii"]

# Base64 of the raw token must stay below the devices' 4096-byte element/token buffers
# (Asterisk's buffer): the hard cap, whatever the configured limit.
MAX_TOKEN_BYTES: Final = 3000
# OpenSIPS and Kamailio: a 2,048-byte base64 buffer, and the toolkit's encoder needs
# twice the raw size (ospb64.c), so at most 1,024 raw bytes (OSP.md §4).
DEFAULT_MAX_TOKEN_BYTES: Final = 1024
# The smallest limit a factory accepts: an unsigned token with short values is ~150 bytes.
MIN_TOKEN_LIMIT: Final = 256
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


class TokenTooLargeError(TokenError):
    """The token, or one of its ASCII lines, exceeds a device buffer or the size limit."""


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
        raise TokenTooLargeError(f"{kind} token is {len(token)} bytes (at most {limit})")
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
            raise TokenTooLargeError(
                f"ASCII token line {key!r} is {len(line)} characters (at most {_MAX_ASCII_LINE})"
            )
        lines.append(line + "\n")
    return _check_size("ASCII", "".join(lines).encode("ascii"), MAX_ASCII_TOKEN_BYTES)


_SIGN_OPTIONS: Final = (pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes)


class TokenSigner:
    """Signs token content as DER PKCS#7 SignedData that OSP Toolkit devices verify.

    SHA-256, content embedded (never detached), the ``Binary`` option so the bytes
    are signed exactly as given, and only the signer certificate embedded (no chain:
    the device verifies with ``PKCS7_NOCHAIN`` against its CA set, so the signer
    certificate must be issued directly by our CA). ``NoAttributes``: no signed
    attributes (contentType, signingTime, messageDigest, S/MIME capabilities), so the
    signature covers the content's digest directly. PKCS7_verify accepts both forms
    (RFC 2315 §9.3); the attributes cost about 165 bytes of the 1,024 a token may
    have, and the device reads none of them (it checks the token's own validity
    window, not a signing time).
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ExternalKey,
    ) -> None:
        if not isinstance(certificate, x509.Certificate):
            raise TokenError("token-signing certificate must be an x509.Certificate")
        public = private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            if public.key_size < 2048:
                raise TokenError(f"RSA token-signing key is {public.key_size} bits (at least 2048)")
        elif not isinstance(public, ec.EllipticCurvePublicKey):
            raise TokenError("token-signing key must be an EC or RSA private key")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        cert_spki = certificate.public_key().public_bytes(der, spki)
        if cert_spki != public.public_bytes(der, spki):
            raise TokenError("token-signing certificate does not match the private key")
        self._certificate = certificate
        # A token's key (PKCS#11) never reaches cryptography: the structure comes from
        # a throw-away key of the same kind, and the token signs (osp_server.pki.keys).
        builder_key = scratch_key(public) if isinstance(private_key, ExternalKey) else private_key
        self._builder = pkcs7.PKCS7SignatureBuilder().add_signer(
            certificate, builder_key, hashes.SHA256()
        )
        self._template = _SignedDataTemplate(self._builder, private_key)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate embedded in every signed token."""
        return self._certificate

    def sign(self, content: bytes) -> bytes:
        """Return DER PKCS#7 SignedData embedding ``content`` (an XML or ASCII token)."""
        if not isinstance(content, bytes) or not content:
            raise TokenError("token content to sign must be non-empty bytes")
        _check_size("token content", content)
        return self._template.sign(content)


class _SignedDataTemplate:
    """PKCS#7 SignedData without signed attributes, pre-encoded around its one variable
    part: the content and the raw signature over it.

    ``cryptography`` builds the whole structure (certificate included) for every
    token: about 150 us, of which the raw ECDSA signature is 25.  The template is cut
    from one structure ``cryptography`` built at start-up, and checked against it
    then: byte for byte with RSA (deterministic signatures); with ECDSA, identical but
    for the signature, which must verify.
    """

    _SAMPLE = b"osp-server token template check"

    def __init__(
        self,
        builder: pkcs7.PKCS7SignatureBuilder,
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ExternalKey,
    ) -> None:
        self._key = private_key
        reference = builder.set_data(self._SAMPLE).sign(serialization.Encoding.DER, _SIGN_OPTIONS)
        try:
            self._cut(reference)
        except (der.DERError, ValueError) as e:  # ValueError: an element count differs
            raise TokenError(f"unexpected PKCS#7 layout from cryptography: {e}") from e
        self._check(reference)

    def _cut(self, data: bytes) -> None:
        content_info = der.read_single(data, 0x30)
        content_type, explicit = der.children(data, content_info)
        (signed_data,) = der.children(data, explicit)
        version, digests, encap, certificates, signer_infos = der.children(data, signed_data)
        encap_type, encap_explicit = der.children(data, encap)
        (econtent,) = der.children(data, encap_explicit)
        (signer,) = der.children(data, signer_infos)
        *fixed, signature = der.children(data, signer)
        if (
            data[econtent.content_start : econtent.end] != self._SAMPLE
            or econtent.tag != 0x04
            or signature.tag != 0x04
            or certificates.tag != 0xA0
        ):
            raise der.DERError("content, certificates or signature not where expected")
        self._content_type = data[content_type.start : content_type.end]
        self._head = data[version.start : digests.end]
        self._encap_type = data[encap_type.start : encap_type.end]
        self._certificates = data[certificates.start : certificates.end]
        self._signer_fixed = data[fixed[0].start : fixed[-1].end]

    def _check(self, reference: bytes) -> None:
        """The template must reproduce cryptography's structure, and our raw signature
        must be the scheme cryptography used (its signature verifies under ours; with
        RSA, deterministic, the two are the same bytes)."""
        theirs = self._signature_of(reference)
        if self._assemble(self._SAMPLE, theirs) != reference:
            raise TokenError("PKCS#7 template differs from cryptography's encoding")
        ours = self._raw_signature(self._SAMPLE)
        key = self._key
        if isinstance(key, ExternalKey):
            # The reference was signed by a throw-away key: only ours must verify.
            try:
                keys.verify(key.public_key(), ours, self._SAMPLE, "sha256")
            except keys.ExternalSigningError:
                raise TokenError("the token's key signs differently from PKCS#7") from None
            return
        try:
            if isinstance(key, rsa.RSAPrivateKey):
                if ours != theirs:
                    raise TokenError("PKCS#7 template signs differently from cryptography")
                key.public_key().verify(theirs, self._SAMPLE, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.public_key().verify(theirs, self._SAMPLE, ec.ECDSA(hashes.SHA256()))
                key.public_key().verify(ours, self._SAMPLE, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise TokenError("PKCS#7 template signature scheme does not match") from None

    @staticmethod
    def _signature_of(token: bytes) -> bytes:
        content_info = der.read_single(token, 0x30)
        _, explicit = der.children(token, content_info)
        (signed_data,) = der.children(token, explicit)
        *_, signer_infos = der.children(token, signed_data)
        (signer,) = der.children(token, signer_infos)
        *_, signature = der.children(token, signer)
        return token[signature.content_start : signature.end]

    def sign(self, content: bytes) -> bytes:
        """DER SignedData embedding ``content``, signed with the signer's key."""
        return self._assemble(content, self._raw_signature(content))

    def _raw_signature(self, content: bytes) -> bytes:
        if isinstance(self._key, ExternalKey):
            try:
                return self._key.sign_bytes(content, "sha256")
            except Exception as exc:  # the token's own errors
                raise TokenError(f"signing the token failed: {exc!r}") from exc
        try:
            if isinstance(self._key, rsa.RSAPrivateKey):
                return self._key.sign(content, padding.PKCS1v15(), hashes.SHA256())
            return self._key.sign(content, ec.ECDSA(hashes.SHA256()))
        except (TypeError, ValueError) as exc:
            raise TokenError(f"signing the token failed: {exc}") from exc

    def _assemble(self, content: bytes, signature: bytes) -> bytes:
        encap = der.encode_tlv(
            0x30, self._encap_type + der.encode_tlv(0xA0, der.encode_tlv(0x04, content))
        )
        signer = der.encode_tlv(0x30, self._signer_fixed + der.encode_tlv(0x04, signature))
        signed_data = der.encode_tlv(
            0x30, self._head + encap + self._certificates + der.encode_tlv(0x31, signer)
        )
        return der.encode_tlv(0x30, self._content_type + der.encode_tlv(0xA0, signed_data))


@dataclass(frozen=True)
class CallIdDropped:
    """A token was sent with CallId ``UNDEFINED`` because it did not fit with the Call-ID.

    ``reason`` is why the token with the Call-ID was refused (it names that size or
    the ASCII line that was too long); ``size`` is the raw size of the token sent;
    ``limit`` is the factory's ``max_token_bytes``.
    """

    token_format: TokenFormat
    transaction_id: int
    call_id_bytes: int
    reason: str
    size: int
    limit: int


def reference_claims(now: datetime, *, amount: int = 3600) -> TokenClaims:
    """Claims shaped like a real OpenSIPS call, for measuring what a token weighs.

    11-digit calling and called numbers, a 40-byte Call-ID (SIP user agents commonly
    send 32-40 bytes; the captured OpenSIPS/SIPp one has 16), a 19-digit transaction
    id (the longest below 2**63) and the usual validity window.
    """
    return TokenClaims(
        calling="14085551000",
        called="15551234567",
        call_id=b"a84b4c76e66710f3b2c1d5e@pc33.example.net",
        valid_after=now - timedelta(seconds=60),
        valid_until=now + timedelta(seconds=300),
        transaction_id=_MAX_TRANSACTION_ID,
        amount=amount,
        increment=1,
    )


class TokenFactory:
    """Builds the token for one destination in the configured format, within the limit.

    Every token is at most ``max_token_bytes`` raw bytes (1,024 by default: the
    OpenSIPS/Kamailio limit, OSP.md §4). A token that is over only because of a long
    Call-ID is rebuilt with CallId ``UNDEFINED`` (the terminating device then skips
    the Call-ID comparison) and ``on_call_id_dropped`` is told; one still over the
    limit is a :class:`TokenTooLargeError`. Signed tokens embed the ASCII form by
    default (``signed_content="xml"`` embeds the XML one, about 330 bytes more).
    """

    def __init__(
        self,
        *,
        default_format: TokenFormat,
        signer: TokenSigner | None,
        signed_content: SignedContent = "ascii",
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        on_call_id_dropped: Callable[[CallIdDropped], None] | None = None,
    ) -> None:
        if default_format not in get_args(TokenFormat):
            raise TokenError(f"unknown token format {default_format!r}")
        if signed_content not in get_args(SignedContent):
            raise TokenError(f"unknown signed token content {signed_content!r}")
        if default_format == "signed" and signer is None:
            raise TokenError("signed tokens are the default but no token signer is configured")
        limit = _check_int("max_token_bytes", max_token_bytes, MIN_TOKEN_LIMIT, MAX_TOKEN_BYTES)
        self._default_format: TokenFormat = default_format
        self._signer = signer
        self._signed_content: SignedContent = signed_content
        self._max_token_bytes = limit
        self._on_call_id_dropped = on_call_id_dropped

    @property
    def signer(self) -> TokenSigner | None:
        """The signer of signed tokens."""
        return self._signer

    def replace_signer(self, signer: TokenSigner) -> None:
        """Sign with ``signer`` from the next token on (its certificate was renewed)."""
        self._signer = signer

    @property
    def default_format(self) -> TokenFormat:
        """The format used when :meth:`build` is not told otherwise."""
        return self._default_format

    @property
    def max_token_bytes(self) -> int:
        """The largest raw token :meth:`build` returns."""
        return self._max_token_bytes

    def _render(self, claims: TokenClaims, fmt: TokenFormat) -> bytes:
        """The token in *fmt*, checked against the device buffers but not the limit."""
        if fmt == "xml":
            return build_xml_token(claims)
        if fmt == "ascii":
            return build_ascii_token(claims)
        if fmt == "signed":
            if self._signer is None:
                raise TokenError("a signed token was asked for but no token signer is configured")
            if self._signed_content == "xml":
                content = build_xml_token(claims)
            else:
                content = build_ascii_token(claims)
            return _check_size("signed", self._signer.sign(content))
        raise TokenError(f"unknown token format {fmt!r}")

    def _fitted(self, claims: TokenClaims, fmt: TokenFormat) -> bytes:
        return _check_size(fmt, self._render(claims, fmt), self._max_token_bytes)

    def raw_size(self, claims: TokenClaims, *, token_format: TokenFormat | None = None) -> int:
        """The raw size of the token for *claims*, Call-ID included, limit not applied.

        For measuring (the start-up check, benchmarks); malformed claims still raise
        :class:`TokenError`.
        """
        fmt = self._default_format if token_format is None else token_format
        return len(self._render(claims, fmt))

    def build(self, claims: TokenClaims, *, token_format: TokenFormat | None = None) -> bytes:
        """Return the raw token bytes (the caller base64-encodes them), within the limit.

        ``token_format`` overrides the default for this call (e.g. a device whose
        policy accepts only unsigned tokens). A token over ``max_token_bytes`` (or with
        an ASCII line over the device's 199 characters) only because of its Call-ID is
        sent with CallId ``UNDEFINED`` instead; :class:`TokenTooLargeError` when even
        that does not fit.
        """
        fmt = self._default_format if token_format is None else token_format
        try:
            return self._fitted(claims, fmt)
        except TokenTooLargeError as exc:
            if claims.call_id is None:
                raise
            try:
                token = self._fitted(replace(claims, call_id=None), fmt)
            except TokenTooLargeError as again:
                raise TokenTooLargeError(f"{again} even with CallId UNDEFINED") from exc
            if self._on_call_id_dropped is not None:
                self._on_call_id_dropped(
                    CallIdDropped(
                        token_format=fmt,
                        transaction_id=claims.transaction_id,
                        call_id_bytes=len(claims.call_id),
                        reason=str(exc),
                        size=len(token),
                        limit=self._max_token_bytes,
                    )
                )
            return token
