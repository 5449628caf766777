"""TEP codec: the real enroll 4.33.1 requests, the hostile catalog, and the client oracle."""

from __future__ import annotations

import base64
import random
import re
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from osp_server.enrollment import wire
from osp_server.enrollment.wire import TepFormatError, TepOperation, TepStatus
from tests.conftest import VECTORS

TEP = VECTORS / "tep"
REQUEST_VECTORS = [
    "request.request.http",
    "request-pending.request.http",
    "request-rejected.request.http",
    "retrieve.request.http",
]
FIELD_ORDER = ["operation", "nonce", "username", "password", "device", "customer", "request"]
CERT_BODY = re.compile(rb"^status=0&certificate=[A-Za-z0-9+/]+={0,2}\n$")


def _split(name: str) -> tuple[bytes, bytes]:
    head, sep, body = (TEP / name).read_bytes().partition(b"\r\n\r\n")
    assert sep, f"{name} has no CRLFCRLF"
    return head, body


def _body(name: str) -> bytes:
    return _split(name)[1]


@pytest.fixture(scope="module")
def csr_der() -> bytes:
    return (TEP / "csr.der").read_bytes()


@pytest.fixture(scope="module")
def request_body() -> bytes:
    return _body("request.request.http")


@pytest.fixture(scope="module")
def vector_ca() -> x509.Certificate:
    _, der = wire.parse_client_view(
        _body("getcacert.accepted-response.http"), operation=TepOperation.GETCACERT
    )
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    key = issuer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    algorithm = cert.signature_hash_algorithm
    assert algorithm is not None
    key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)


def _with_field(body: bytes, name: str, raw_value: bytes) -> bytes:
    """Replace one field's raw (still encoded) value."""
    parts = []
    for part in body.split(b"&"):
        key, _, _ = part.partition(b"=")
        parts.append(key + b"=" + raw_value if key == name.encode() else part)
    return b"&".join(parts)


def _without_field(body: bytes, name: str) -> bytes:
    return b"&".join(p for p in body.split(b"&") if p.partition(b"=")[0] != name.encode())


# --- the real requests ------------------------------------------------------------------


def test_request_vector_has_seven_fields_in_order(request_body: bytes, csr_der: bytes) -> None:
    fields = wire.parse_fields(request_body)
    assert [name for name, _ in fields] == FIELD_ORDER
    parsed = wire.parse_body(request_body)
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.operation is TepOperation.REQUEST
    assert parsed.nonce == b"82813648\x00172762\x00"
    assert len(parsed.nonce) == 16
    assert parsed.username == "trans"
    assert parsed.password == "nexus"
    assert parsed.device_id == "1000"
    assert parsed.customer_id == "1000"
    assert parsed.csr_der == csr_der
    assert parsed.ignored_fields == ()


@pytest.mark.parametrize("name", REQUEST_VECTORS)
def test_every_captured_request_parses(name: str, csr_der: bytes) -> None:
    head, body = _split(name)
    assert b"content-type: text/html\r\n" in head
    parsed = wire.parse_body(body)
    assert isinstance(parsed, wire.EnrollmentRequest)
    expected = TepOperation.RETRIEVE if name.startswith("retrieve") else TepOperation.REQUEST
    assert parsed.operation is expected
    assert len(parsed.nonce) == 16 and parsed.nonce.count(b"\x00") == 2
    assert parsed.nonce.endswith(b"\x00")
    assert parsed.csr_der == csr_der


@pytest.mark.parametrize("name", REQUEST_VECTORS)
def test_encode_fields_reproduces_enroll_bytes(name: str) -> None:
    body = _body(name)
    assert wire.encode_fields(wire.parse_fields(body)) == body


def test_encode_fields_escapes_every_non_alphanumeric_upper_case() -> None:
    encoded = wire.encode_fields([("nonce", b"\x00+/= a~Z9\xff"), ("x-y", b"")])
    assert encoded == b"nonce=%00%2B%2F%3D%20a%7EZ9%FF&x%2Dy="


def test_getcacert_vector_parses() -> None:
    head, body = _split("getcacert.request.http")
    assert body == b"operation=getcacert"
    assert b"content-type: text/plain\r\n" in head
    assert wire.parse_body(body) == wire.CACertRequest(TepOperation.GETCACERT)


def test_getocert_is_an_alias() -> None:
    assert wire.parse_body(b"operation=getocert") == wire.CACertRequest(TepOperation.GETCACERT)
    assert TepOperation.from_wire(b"getocert") is TepOperation.GETCACERT


def test_getcacert_ignores_other_fields_but_not_bad_syntax() -> None:
    assert isinstance(wire.parse_body(b"operation=getcacert&device=1000"), wire.CACertRequest)
    with pytest.raises(TepFormatError, match="repeated"):
        wire.parse_body(b"operation=getcacert&operation=getcacert")


def test_unknown_fields_are_reported(request_body: bytes) -> None:
    parsed = wire.parse_body(request_body + b"&extra=1&we%01ird=2")
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.ignored_fields == ("extra", "we\\x01ird")


def test_password_is_not_in_repr(request_body: bytes) -> None:
    parsed = wire.parse_body(request_body)
    assert "nexus" not in repr(parsed)
    assert "trans" in repr(parsed)


def test_request_base64_may_carry_line_breaks(request_body: bytes, csr_der: bytes) -> None:
    wrapped = base64.encodebytes(csr_der).replace(b"\n", b"\r\n")
    body = _with_field(request_body, "request", wire.encode_fields([("r", wrapped)])[2:])
    parsed = wire.parse_body(body)
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.csr_der == csr_der


# --- raw "+" -----------------------------------------------------------------------------


def test_raw_plus_stays_plus(request_body: bytes, csr_der: bytes) -> None:
    raw_plus = request_body.replace(b"%2B", b"+")
    assert b"+" in raw_plus
    parsed = wire.parse_body(raw_plus)
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.csr_der == csr_der


def test_form_decoding_would_corrupt_raw_plus(request_body: bytes) -> None:
    # What a generic parse_qs would do: "+" becomes a space, and strict base64 refuses it.
    raw_plus = request_body.replace(b"%2B", b"+")
    form_value = urllib.parse.parse_qs(raw_plus.decode("latin-1"))["request"][0]
    assert " " in form_value
    corrupted = _with_field(request_body, "request", form_value.replace(" ", "%20").encode())
    with pytest.raises(TepFormatError, match="request"):
        wire.parse_body(corrupted)


# --- hostile catalog ---------------------------------------------------------------------

_REQ = _body("request.request.http") if TEP.is_dir() else b""


def _hostile_cases() -> list[tuple[str, bytes, str]]:
    b64 = _with_field  # short alias for readability below
    request_value = _REQ.rpartition(b"request=")[2]
    cases = [
        ("%00 in device", b64(_REQ, "device", b"10%0000"), "device"),
        ("%zz in device", b64(_REQ, "device", b"10%zz"), "device"),
        ("%zz in customer", b64(_REQ, "customer", b"%zz"), "customer"),
        ("truncated escape", b64(_REQ, "customer", b"1000%2"), "customer"),
        ("bare percent", b64(_REQ, "username", b"tr%"), "username"),
        ("non-UTF-8 escaped user", b64(_REQ, "username", b"%FF%FE"), "username"),
        ("non-UTF-8 raw user", b64(_REQ, "username", b"tr\xffans"), "username"),
        ("non-ASCII password", b64(_REQ, "password", b"n%C3%A9xus"), "password"),
        ("control char in user", b64(_REQ, "username", b"tr%0Aans"), "username"),
        ("empty password", b64(_REQ, "password", b""), "password"),
        ("long user", b64(_REQ, "username", b"u" * 129), "username"),
        ("letters in device", b64(_REQ, "device", b"10a0"), "device"),
        ("device with newline", b64(_REQ, "device", b"1000%0A"), "device"),
        ("fullwidth digits", b64(_REQ, "device", b"%EF%BC%91"), "device"),
        ("21-digit customer", b64(_REQ, "customer", b"1" * 21), "customer"),
        ("empty device", b64(_REQ, "device", b""), "device"),
        ("empty nonce", b64(_REQ, "nonce", b""), "nonce"),
        ("65-byte nonce", b64(_REQ, "nonce", b"%00" * 65), "nonce"),
        ("repeated username", _REQ + b"&username=trans", "repeated"),
        ("repeated operation", b"operation=request&" + _REQ, "repeated"),
        ("repeated via escape", _REQ + b"&%64evice=1000", "repeated"),
        ("junk base64", b64(_REQ, "request", b"!!!!" + request_value), "request"),
        ("base64 with space", b64(_REQ, "request", b"MIIC%20" + request_value[4:]), "request"),
        ("truncated base64", b64(_REQ, "request", request_value[:-5]), "request"),
        ("truncated DER", b64(_REQ, "request", request_value[:400]), "request"),
        ("empty request", b64(_REQ, "request", b""), "request"),
        ("only line breaks", b64(_REQ, "request", b"%0D%0A"), "request"),
        ("huge CSR", b64(_REQ, "request", base64.b64encode(b"0" * 9000)), "request"),
        ("oversized body", _REQ + b"&pad=" + b"A" * wire.MAX_BODY_BYTES, "larger"),
        ("empty body", b"", "empty"),
        ("no equals", b"operation", "no '='"),
        ("no equals later", b"operation=request&nonce", "no '='"),
        ("empty part", _REQ.replace(b"&nonce", b"&&nonce"), "no '='"),
        ("empty name", _REQ + b"&=1", "empty name"),
        ("unknown operation", b"operation=delete", "operation"),
        ("upper-case operation", b"operation=GETCACERT", "operation"),
        ("empty operation", b"operation=", "operation"),
        ("no operation", _without_field(_REQ, "operation"), "operation"),
        (
            "too many fields",
            b"operation=getcacert" + b"".join(b"&f%d=1" % i for i in range(40)),
            "many",
        ),
    ]
    cases += [
        (f"missing {name}", _without_field(_REQ, name), name)
        for name in FIELD_ORDER
        if name != "operation"
    ]
    return cases


@pytest.mark.parametrize(
    ("body", "needle"),
    [pytest.param(body, needle, id=label) for label, body, needle in _hostile_cases()],
)
def test_hostile_bodies_raise_format_error(body: bytes, needle: str) -> None:
    assert body != _REQ
    with pytest.raises(TepFormatError) as info:
        wire.parse_body(body)
    assert needle in str(info.value)
    assert "nexus" not in str(info.value)


def test_mutations_raise_only_format_errors(request_body: bytes) -> None:
    rng = random.Random(20240611)
    alphabet = b"%&=+ \x00\xff\r\nAz09/"
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(3000):
        data = bytearray(request_body)
        for _ in range(rng.randint(1, 4)):
            action = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if action == 0 and data:
                del data[pos : pos + rng.randint(1, 8)]
            elif action == 1:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
            elif action == 2 and pos < len(data):
                data[pos] = rng.randrange(256)
            else:
                del data[pos:]
        try:
            wire.parse_body(bytes(data))
        except TepFormatError:
            outcomes["refused"] += 1
        else:
            outcomes["parsed"] += 1
    assert outcomes["refused"] > 1000


def test_non_bytes_input_is_a_format_error() -> None:
    with pytest.raises(TepFormatError):
        wire.parse_body("operation=getcacert")  # type: ignore[arg-type]


# --- statuses and rendering ----------------------------------------------------------------


def test_status_values_match_the_spec() -> None:
    assert {s.name: s.value for s in TepStatus} == {
        "ISSUED": 0,
        "PENDING": 1,
        "DENIED": 2,
        "CSR_REFUSED": 3,
        "MALFORMED": 4,
        "THROTTLED": 5,
        "TEMPORARY_FAILURE": 6,
        "NO_REQUEST": 8,
        "NOT_DUE": 9,  # ours (renewal over mutual TLS): never 7 or 18, which enroll uses
    }
    assert all(status.meaning for status in TepStatus)


def test_renewal_form_has_no_credentials() -> None:
    """A request without username and password is the renewal form; a retrieve without
    them, or a request with only one of them, is still malformed."""
    fields = [
        ("operation", b"request"),
        ("nonce", b"1\x00"),
        ("device", b"1000"),
        ("customer", b"1000"),
        ("request", base64.b64encode(b"0\x03\x02\x01\x00")),
    ]
    parsed = wire.parse_body(wire.encode_fields(fields))
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.renewal and parsed.username == parsed.password == ""
    with pytest.raises(TepFormatError, match="username"):
        wire.parse_body(wire.encode_fields([("operation", b"retrieve"), *fields[1:]]))
    with pytest.raises(TepFormatError, match="username"):
        wire.parse_body(wire.encode_fields([*fields, ("password", b"x")]))


@pytest.mark.parametrize("status", [s for s in TepStatus if s is not TepStatus.ISSUED])
def test_render_status(status: TepStatus) -> None:
    body = wire.render_status(status)
    assert body == f"status={status.value}\n".encode()
    for operation in (TepOperation.REQUEST, TepOperation.RETRIEVE):
        assert wire.parse_client_view(body, operation=operation) == (str(status.value), None)


def test_render_status_refuses_issued() -> None:
    with pytest.raises(ValueError, match="certificate"):
        wire.render_status(TepStatus.ISSUED)


def test_render_certificate_satisfies_regex_and_oracle(vector_ca: x509.Certificate) -> None:
    der = vector_ca.public_bytes(serialization.Encoding.DER)
    body = wire.render_certificate(der)
    assert CERT_BODY.match(body)
    assert body.count(b"\n") == 1
    for operation in TepOperation:
        status, got = wire.parse_client_view(body, operation=operation)
        assert got == der
        assert status == (None if operation is TepOperation.GETCACERT else "0")


@pytest.mark.parametrize("length", [1, 2, 3, 700, 731, 1000])
def test_render_certificate_any_length(length: int) -> None:
    der = bytes(range(256)) * 4
    body = wire.render_certificate(der[:length])
    assert CERT_BODY.match(body)
    assert wire.parse_client_view(body, operation=TepOperation.REQUEST) == ("0", der[:length])


def test_render_certificate_refuses_empty() -> None:
    with pytest.raises(ValueError):
        wire.render_certificate(b"")


# --- the oracle against the captured accepted answers --------------------------------------


def test_oracle_reads_captured_getcacert(vector_ca: x509.Certificate) -> None:
    # The CA the real client accepted: MD5 self-signed, PrintableString names.
    assert vector_ca.subject == vector_ca.issuer
    _verify_signed_by(vector_ca, vector_ca)
    assert vector_ca.signature_hash_algorithm is not None
    assert vector_ca.signature_hash_algorithm.name == "md5"


@pytest.mark.parametrize(
    "name", ["request.accepted-response.http", "retrieve.accepted-response.http"]
)
def test_oracle_reads_captured_issued_certificates(
    name: str, vector_ca: x509.Certificate, csr_der: bytes
) -> None:
    status, der = wire.parse_client_view(_body(name), operation=TepOperation.REQUEST)
    assert status == "0"
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    csr = x509.load_der_x509_csr(csr_der)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        csr.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    _verify_signed_by(cert, vector_ca)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("request-pending.accepted-response.http", "1"),
        ("request-rejected.accepted-response.http", "2"),
    ],
)
def test_oracle_reads_captured_statuses(name: str, expected: str) -> None:
    body = _body(name)
    assert wire.parse_client_view(body, operation=TepOperation.REQUEST) == (expected, None)
    assert wire.parse_client_view(body, operation=TepOperation.RETRIEVE) == (expected, None)


def test_oracle_loses_the_last_byte(vector_ca: x509.Certificate) -> None:
    der = vector_ca.public_bytes(serialization.Encoding.DER)
    assert len(der) % 3 != 0  # so its base64 ends with "=", the byte that gets lost
    good = wire.render_certificate(der)
    assert wire.parse_client_view(good, operation=TepOperation.GETCACERT) == (None, der)
    assert wire.parse_client_view(good[:-1], operation=TepOperation.GETCACERT) == (None, None)
    assert wire.parse_client_view(good[:-1], operation=TepOperation.REQUEST) == ("0", None)
    pending = wire.render_status(TepStatus.PENDING)
    assert wire.parse_client_view(pending[:-1], operation=TepOperation.REQUEST) == (None, None)
    captured = _body("getcacert.accepted-response.http")
    assert wire.parse_client_view(captured[:-1], operation=TepOperation.GETCACERT) == (None, None)


def test_oracle_keeps_carriage_return_in_status() -> None:
    assert wire.parse_client_view(b"status=1\r\n", operation=TepOperation.REQUEST) == ("1\r", None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"status=0&cert=QUJD\n", ("0", b"ABC")),
        (b"status=0&certificate=QUJD\n", ("0", b"ABC")),
        (b"status=00&certificate=QUJD\n", ("00", b"ABC")),
        (b"xstatus=3&status=0&certificate=QUJD\n", ("0", b"ABC")),
        (b"status=&status=2\n", ("2", None)),
        (b"status=2 certificate=QUJD\n", ("2", None)),
        (b"status=0&mycert=QUJD\n", ("0", None)),
        (b"status=0\ncertificate=QU JD\n", ("0\ncertificate=QU", None)),
        (b"status=0&certificate=QU\nJD\n", ("0", b"ABC")),
        (b"status=0&certificate=QUJD\x00\n", ("0", b"ABC")),
        (b"status=0\x00&certificate=QUJD\n", ("0", None)),
        (b"status=0&certificate=%51UJD\n", ("0", None)),
        (b"", (None, None)),
    ],
)
def test_oracle_lookup_rules(body: bytes, expected: tuple[str | None, bytes | None]) -> None:
    assert wire.parse_client_view(body, operation=TepOperation.REQUEST) == expected


def test_oracle_getcacert_ignores_status() -> None:
    body = b"certificate=QUJD\n"
    assert wire.parse_client_view(body, operation=TepOperation.GETCACERT) == (None, b"ABC")
    assert wire.parse_client_view(body, operation=TepOperation.REQUEST) == (None, None)
