"""osp-enroll against a small stdlib HTTP(S) server playing the TEP server."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import io
import ipaddress
import re
import ssl
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from osp_server.client import enroll as client
from osp_server.enrollment import wire
from osp_server.enrollment.wire import TepOperation, TepStatus
from tests.conftest import VECTORS

TEP = VECTORS / "tep"
NOW = datetime.datetime.now(datetime.UTC)


# --- a test CA ---------------------------------------------------------------------------


@dataclass
class CA:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def issue(
        self,
        public_key: rsa.RSAPublicKey,
        *,
        cn: str = "device",
        san: x509.GeneralName | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        return builder.sign(self.key, hashes.SHA256())


def _make_ca(name: str) -> CA:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(key, cert)


@pytest.fixture(scope="module")
def ca() -> CA:
    return _make_ca("Test OSP CA")


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return _make_ca("Another CA")


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- a fake TEP server -------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it."""

    request_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def operation(self) -> str:
        return dict(wire.parse_fields(self.body))["operation"].decode()


Responder = Callable[[bytes], tuple[int, bytes]]


@dataclass
class FakeServer:
    url: str
    seen: list[Seen] = field(default_factory=list)
    respond: Responder | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        fake = self.server.fake
        fake.seen.append(Seen(self.requestline, list(self.headers.items()), body))
        assert fake.respond is not None
        code, reply = fake.respond(body)
        self.send_response(code)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    fake: FakeServer


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[tuple[_Server, threading.Thread]] = []

    def start(respond: Responder | None = None, tls: ssl.SSLContext | None = None) -> FakeServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        server.fake = FakeServer(
            f"{scheme}://127.0.0.1:{server.server_address[1]}/tep", [], respond
        )
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        return server.fake

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Script:
    """Answers getcacert with the CA and enrollments from a list of outcomes."""

    def __init__(self, ca: CA, outcomes: Sequence[TepStatus | str] = (TepStatus.ISSUED,)) -> None:
        self.ca = ca
        self.outcomes: list[TepStatus | str] = list(outcomes)
        self.issue_for: rsa.RSAPublicKey | None = None  # issue for another key
        self.issuer: CA = ca

    def __call__(self, body: bytes) -> tuple[int, bytes]:
        request = wire.parse_body(body)
        if isinstance(request, wire.CACertRequest):
            return 200, wire.render_certificate(self.ca.der)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, str):
            return 200, outcome.encode()
        if outcome is not TepStatus.ISSUED:
            return 200, wire.render_status(outcome)
        public_key = x509.load_der_x509_csr(request.csr_der).public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        cert = self.issuer.issue(self.issue_for or public_key)
        return 200, wire.render_certificate(cert.public_bytes(serialization.Encoding.DER))


def _args(ca: CA, server: FakeServer, out: Path, *extra: str) -> list[str]:
    return [
        "--ca-url",
        server.url,
        "--url",
        server.url,
        "--fingerprint",
        ca.fingerprint,
        "--username",
        "trans",
        "--password",
        "nexus",
        "--device",
        "1000",
        "--customer",
        "1000",
        "--out-dir",
        str(out),
        # Keep any unexpected polling short; tests that study polling override these.
        "--poll-interval",
        "0.01",
        "--max-wait",
        "2",
        *extra,
    ]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _spki(key: rsa.RSAPublicKey | object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _vector_head_names(name: str) -> list[str]:
    head = (TEP / name).read_bytes().partition(b"\r\n\r\n")[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n")[1:]]


# --- success ------------------------------------------------------------------------------


def test_success_writes_checked_files(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = serve(Script(ca))
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_OK

    ca_pem = tmp_path / "cacert_0.pem"
    cert_pem = tmp_path / "localcert.pem"
    key_pem = tmp_path / "pkey.pem"
    assert x509.load_pem_x509_certificate(ca_pem.read_bytes()) == ca.cert
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    key = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert _spki(cert.public_key()) == _spki(key.public_key())
    assert key_pem.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert _mode(key_pem) == 0o600
    assert _mode(cert_pem) == 0o644 and _mode(ca_pem) == 0o644
    assert all(len(line) <= 64 for line in cert_pem.read_text().splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cacert_0.pem",
        "localcert.pem",
        "pkey.pem",
    ]


def test_requests_look_like_enroll(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = serve(Script(ca))
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_OK
    getcacert, request = server.seen

    assert getcacert.request_line == "POST /tep HTTP/1.1"
    assert getcacert.body == _body_of("getcacert.request.http")
    assert [n for n, _ in getcacert.headers] == _vector_head_names("getcacert.request.http")
    assert dict(getcacert.headers) == {
        "Host": "127.0.0.1",
        "content-type": "text/plain",
        "Content-Length": "19",
        "Connection": "Keep-Alive",
    }

    assert request.request_line == "POST /tep HTTP/1.1"
    assert [n for n, _ in request.headers] == _vector_head_names("request.request.http")
    headers = dict(request.headers)
    assert headers["Host"] == "127.0.0.1"
    assert headers["content-type"] == "text/html"
    assert headers["Content-Length"] == str(len(request.body))

    vector_fields = wire.parse_fields(_body_of("request.request.http"))
    fields = wire.parse_fields(request.body)
    assert [n for n, _ in fields] == [n for n, _ in vector_fields]
    assert wire.encode_fields(fields) == request.body
    assert re.fullmatch(
        rb"operation=request&nonce=[1-9][0-9]{7,8}%00[1-9][0-9]{4,5}%00&username=trans"
        rb"&password=nexus&device=1000&customer=1000&request=[A-Za-z0-9]+(%2B|%2F|[A-Za-z0-9])*"
        rb"(%3D){0,2}",
        request.body,
    )
    parsed = wire.parse_body(request.body)
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert len(parsed.nonce) == 16
    csr = x509.load_der_x509_csr(parsed.csr_der)
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    key = serialization.load_pem_private_key((tmp_path / "pkey.pem").read_bytes(), None)
    assert _spki(csr.public_key()) == _spki(key.public_key())


def _body_of(name: str) -> bytes:
    return (TEP / name).read_bytes().partition(b"\r\n\r\n")[2]


def test_nonces_are_fresh_and_shaped() -> None:
    nonces = {client.make_nonce() for _ in range(200)}
    assert len(nonces) == 200
    for nonce in nonces:
        assert len(nonce) == 16
        assert re.fullmatch(rb"[1-9][0-9]{7,8}\x00[1-9][0-9]{4,5}\x00", nonce)


def test_existing_key_and_csr_are_used(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "device.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw1")]))
        .sign(key, hashes.SHA256())
    )
    csr_file = tmp_path / "device.csr"
    csr_file.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "out"
    out.mkdir()
    server = serve(Script(ca))
    extra = ("--key", str(key_file), "--csr", str(csr_file))
    assert client.main(_args(ca, server, out, *extra)) == client.EXIT_OK
    parsed = wire.parse_body(server.seen[1].body)
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.csr_der == csr.public_bytes(serialization.Encoding.DER)
    saved = serialization.load_pem_private_key((out / "pkey.pem").read_bytes(), None)
    assert isinstance(saved, rsa.RSAPrivateKey)
    assert saved.private_numbers() == key.private_numbers()
    assert _mode(out / "pkey.pem") == 0o600


def test_csr_of_another_key_is_refused_locally(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, other_key: rsa.RSAPrivateKey
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "device.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw1")]))
        .sign(other_key, hashes.SHA256())
    )
    csr_file = tmp_path / "device.csr"
    csr_file.write_bytes(csr.public_bytes(serialization.Encoding.DER))
    server = serve(Script(ca))
    extra = ("--key", str(key_file), "--csr", str(csr_file))
    assert client.main(_args(ca, server, tmp_path, *extra)) == client.EXIT_LOCAL
    assert [s.operation for s in server.seen] == ["getcacert"]


def test_password_from_stdin(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    server = serve(Script(ca))
    argv = _args(ca, server, tmp_path)
    at = argv.index("--password")
    argv[at : at + 2] = ["--password-stdin"]
    assert client.main(argv) == client.EXIT_OK
    parsed = wire.parse_body(server.seen[1].body)
    assert isinstance(parsed, wire.EnrollmentRequest)
    assert parsed.password == "s3cret pass"


# --- pending -------------------------------------------------------------------------------


def test_pending_then_issued_on_retrieve(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    script = Script(ca, [TepStatus.PENDING, TepStatus.PENDING, TepStatus.ISSUED])
    server = serve(script)
    argv = _args(ca, server, tmp_path, "--poll-interval", "0.01", "--max-wait", "30")
    assert client.main(argv) == client.EXIT_OK
    assert [s.operation for s in server.seen] == ["getcacert", "request", "retrieve", "retrieve"]
    parsed = [wire.parse_body(s.body) for s in server.seen[1:]]
    assert all(isinstance(p, wire.EnrollmentRequest) for p in parsed)
    enrollments = [p for p in parsed if isinstance(p, wire.EnrollmentRequest)]
    assert len({p.csr_der for p in enrollments}) == 1
    assert len({p.nonce for p in enrollments}) == 3
    assert (tmp_path / "localcert.pem").exists()


def test_poll_interval_doubles_up_to_sixty_seconds(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []

    def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)
        assert len(pauses) < 20, "the client keeps polling"

    monkeypatch.setattr("osp_server.client.enroll.time.sleep", fake_sleep)
    script = Script(ca, [TepStatus.PENDING] * 6 + [TepStatus.ISSUED])
    server = serve(script)
    argv = _args(ca, server, tmp_path, "--poll-interval", "5", "--max-wait", "600")
    assert client.main(argv) == client.EXIT_OK
    assert pauses == [5, 10, 20, 40, 60, 60]


def test_pending_timeout_then_resume_with_saved_key(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Script(ca, [TepStatus.PENDING])
    server = serve(script)
    argv = _args(ca, server, tmp_path, "--poll-interval", "0.01", "--max-wait", "0.05")
    assert client.main(argv) == client.EXIT_PENDING_TIMEOUT
    assert "still pending" in capsys.readouterr().err
    assert not (tmp_path / "localcert.pem").exists()
    assert _mode(tmp_path / "pkey.pem") == 0o600
    first_csr = wire.parse_body(server.seen[1].body)

    # Without --key the saved key is protected, not replaced.
    saved = (tmp_path / "pkey.pem").read_bytes()
    assert client.main(argv) == client.EXIT_LOCAL
    assert (tmp_path / "pkey.pem").read_bytes() == saved

    # With --key the very same CSR is sent again, so the server finds the enrollment.
    script.outcomes = [TepStatus.ISSUED]
    server.seen.clear()
    argv += ["--key", str(tmp_path / "pkey.pem")]
    assert client.main(argv) == client.EXIT_OK
    again = wire.parse_body(server.seen[1].body)
    assert isinstance(first_csr, wire.EnrollmentRequest)
    assert isinstance(again, wire.EnrollmentRequest)
    assert again.csr_der == first_csr.csr_der
    assert (tmp_path / "pkey.pem").read_bytes() == saved


def test_renewal_replaces_the_certificates_and_keeps_the_key(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = serve(Script(ca))
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_OK
    key = (tmp_path / "pkey.pem").read_bytes()
    first = x509.load_pem_x509_certificate((tmp_path / "localcert.pem").read_bytes())

    argv = _args(ca, server, tmp_path, "--key", str(tmp_path / "pkey.pem"))
    assert client.main(argv) == client.EXIT_OK
    renewed = x509.load_pem_x509_certificate((tmp_path / "localcert.pem").read_bytes())
    assert renewed.serial_number != first.serial_number
    assert _spki(renewed.public_key()) == _spki(first.public_key())
    assert (tmp_path / "pkey.pem").read_bytes() == key
    assert _mode(tmp_path / "pkey.pem") == 0o600
    assert _mode(tmp_path / "localcert.pem") == 0o644 == _mode(tmp_path / "cacert_0.pem")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cacert_0.pem",
        "localcert.pem",
        "pkey.pem",
    ]


# --- refusals -----------------------------------------------------------------------------


def test_no_fingerprint_is_refused(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(Script(ca))
    argv = _args(ca, server, tmp_path)
    at = argv.index("--fingerprint")
    del argv[at : at + 2]
    assert client.main(argv) == client.EXIT_USAGE == 2
    assert "--fingerprint" in capsys.readouterr().err
    assert server.seen == []
    assert list(tmp_path.iterdir()) == []


def test_insecure_skip_fingerprint_warns(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(Script(ca))
    argv = _args(ca, server, tmp_path)
    at = argv.index("--fingerprint")
    argv[at : at + 2] = ["--insecure-skip-fingerprint"]
    assert client.main(argv) == client.EXIT_OK
    err = capsys.readouterr().err
    assert "INSECURE" in err
    assert ":".join(f"{b:02X}" for b in bytes.fromhex(ca.fingerprint)) in err


def test_fingerprint_mismatch_is_refused(
    ca: CA,
    other_ca: CA,
    serve: Callable[..., FakeServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = serve(Script(ca))
    argv = _args(ca, server, tmp_path)
    argv[argv.index("--fingerprint") + 1] = other_ca.fingerprint
    assert client.main(argv) == client.EXIT_VERIFY
    assert "does not match --fingerprint" in capsys.readouterr().err
    assert [s.operation for s in server.seen] == ["getcacert"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text",
    [
        "{hex}",
        "{hex_upper}",
        "{colons}",
        "{colons_lower}",
    ],
)
def test_fingerprint_formats(ca: CA, text: str) -> None:
    digest = bytes.fromhex(ca.fingerprint)
    formatted = text.format(
        hex=digest.hex(),
        hex_upper=digest.hex().upper(),
        colons=":".join(f"{b:02X}" for b in digest),
        colons_lower=":".join(f"{b:02x}" for b in digest),
    )
    assert client.parse_fingerprint(formatted) == digest


@pytest.mark.parametrize("text", ["", "abc", "00" * 20, "zz" * 32, hashlib.md5(b"x").hexdigest()])
def test_bad_fingerprints(text: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        client.parse_fingerprint(text)


def test_bad_fingerprint_option_is_a_usage_error(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    server = serve(Script(ca))
    argv = _args(ca, server, tmp_path)
    argv[argv.index("--fingerprint") + 1] = hashlib.md5(ca.der).hexdigest()
    assert client.main(argv) == client.EXIT_USAGE
    assert server.seen == []


@pytest.mark.parametrize(
    "status",
    [
        TepStatus.DENIED,
        TepStatus.CSR_REFUSED,
        TepStatus.MALFORMED,
        TepStatus.THROTTLED,
        TepStatus.TEMPORARY_FAILURE,
        TepStatus.NO_REQUEST,
    ],
)
def test_rejection_exits_with_the_status(
    ca: CA,
    serve: Callable[..., FakeServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: TepStatus,
) -> None:
    server = serve(Script(ca, [status]))
    assert client.main(_args(ca, server, tmp_path)) == status.value
    err = capsys.readouterr().err
    assert f"status {status.value}" in err and status.meaning in err
    assert not (tmp_path / "localcert.pem").exists()


def test_rejected_vector_answer_exits_2(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    captured = _body_of("request-rejected.accepted-response.http").decode()
    server = serve(Script(ca, [captured]))
    assert client.main(_args(ca, server, tmp_path)) == 2


@pytest.mark.parametrize("answer", ["status=7\n", "status=1\r\n", "status=1", "nothing\n"])
def test_unusable_answers(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, answer: str
) -> None:
    server = serve(Script(ca, [answer]))
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_NETWORK
    assert not (tmp_path / "localcert.pem").exists()


def test_certificate_for_another_key_is_refused(
    ca: CA,
    serve: Callable[..., FakeServer],
    tmp_path: Path,
    other_key: rsa.RSAPrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = Script(ca)
    script.issue_for = other_key.public_key()
    server = serve(script)
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_VERIFY
    assert "another public key" in capsys.readouterr().err
    assert not (tmp_path / "localcert.pem").exists()
    assert not (tmp_path / "cacert_0.pem").exists()


def test_certificate_from_another_ca_is_refused(
    ca: CA, other_ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    script = Script(ca)
    script.issuer = other_ca
    server = serve(script)
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_VERIFY
    assert not (tmp_path / "localcert.pem").exists()


def test_forged_signature_is_refused(ca: CA, other_ca: CA) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw1")]))
        .sign(key, hashes.SHA256())
    )
    # Right issuer name, wrong key: only the signature check can catch it.
    forger = CA(other_ca.key, ca.cert)
    cert = forger.issue(key.public_key())
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    with pytest.raises(client.EnrollError, match="signature") as info:
        client.verify_issued_certificate(
            cert.public_bytes(serialization.Encoding.DER), csr_der, ca.cert
        )
    assert info.value.exit_code == client.EXIT_VERIFY
    good = ca.issue(key.public_key())
    der = good.public_bytes(serialization.Encoding.DER)
    assert client.verify_issued_certificate(der, csr_der, ca.cert) == good
    with pytest.raises(client.EnrollError, match="not valid now"):
        client.verify_issued_certificate(
            der, csr_der, ca.cert, now=NOW + datetime.timedelta(days=2)
        )


def test_md5_signed_vector_certificate_verifies() -> None:
    ca_view = wire.parse_client_view(
        _body_of("getcacert.accepted-response.http"), operation=TepOperation.GETCACERT
    )
    cert_view = wire.parse_client_view(
        _body_of("request.accepted-response.http"), operation=TepOperation.REQUEST
    )
    assert ca_view[1] is not None and cert_view[1] is not None
    vector_ca = x509.load_der_x509_certificate(ca_view[1])
    cert_der = cert_view[1]
    csr_der = (TEP / "csr.der").read_bytes()
    cert = x509.load_der_x509_certificate(cert_der)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "md5"
    moment = cert.not_valid_before_utc + datetime.timedelta(hours=1)
    assert client.verify_issued_certificate(cert_der, csr_der, vector_ca, now=moment) == cert
    # The same certificate against another CSR fails the SPKI comparison.
    other_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(client.EnrollError, match="another public key"):
        client.verify_issued_certificate(cert_der, other_csr, vector_ca, now=moment)
    # A flipped bit in the signature fails the MD5 verification.
    tampered = cert_der[:-1] + bytes([cert_der[-1] ^ 1])
    with pytest.raises(client.EnrollError, match="signature"):
        client.verify_issued_certificate(tampered, csr_der, vector_ca, now=moment)
    sig_key = vector_ca.public_key()
    assert isinstance(sig_key, rsa.RSAPublicKey)
    sig_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.MD5())


# --- transport ------------------------------------------------------------------------------


def _tls_server_context(tmp_path: Path, issuer: CA, san: x509.GeneralName) -> ssl.SSLContext:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = issuer.issue(key.public_key(), cn="tep server", san=san)
    cert_file = tmp_path / "server.pem"
    key_file = tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


LOCALHOST_IP = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))


def test_https_server_verified_against_fetched_ca(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    script = Script(ca)
    plain = serve(script)
    secure = serve(script, _tls_server_context(tmp_path, ca, LOCALHOST_IP))
    out = tmp_path / "out"
    out.mkdir()
    argv = _args(ca, plain, out)
    argv[argv.index("--url") + 1] = secure.url
    assert client.main(argv) == client.EXIT_OK
    assert [s.operation for s in plain.seen] == ["getcacert"]
    assert [s.operation for s in secure.seen] == ["request"]


@pytest.mark.parametrize("case", ["other CA", "wrong host name"])
def test_https_server_not_matching_is_refused(
    ca: CA,
    other_ca: CA,
    serve: Callable[..., FakeServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    if case == "other CA":
        tls = _tls_server_context(tmp_path, other_ca, LOCALHOST_IP)
    else:
        tls = _tls_server_context(tmp_path, ca, x509.DNSName("tep.example.com"))
    plain = serve(Script(ca))
    secure = serve(Script(ca), tls)
    out = tmp_path / "out"
    out.mkdir()
    argv = _args(ca, plain, out)
    argv[argv.index("--url") + 1] = secure.url
    assert client.main(argv) == client.EXIT_VERIFY
    assert "server certificate failed verification" in capsys.readouterr().err
    assert secure.seen == []
    assert not (out / "localcert.pem").exists()


def test_https_tls_ca_and_no_verify_options(
    ca: CA,
    other_ca: CA,
    serve: Callable[..., FakeServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = serve(Script(ca))
    secure = serve(Script(ca), _tls_server_context(tmp_path, other_ca, LOCALHOST_IP))
    other_ca_file = tmp_path / "other-ca.pem"
    other_ca_file.write_bytes(other_ca.cert.public_bytes(serialization.Encoding.PEM))
    for index, extra in enumerate(
        (["--tls-ca", str(other_ca_file)], ["--no-verify-server"]), start=1
    ):
        out = tmp_path / f"out{index}"
        out.mkdir()
        argv = _args(ca, plain, out, *extra)
        argv[argv.index("--url") + 1] = secure.url
        assert client.main(argv) == client.EXIT_OK
    assert "--no-verify-server" in capsys.readouterr().err


def test_connection_refused_is_one_line(
    ca: CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    fake = FakeServer(f"http://127.0.0.1:{port}/tep")
    assert client.main(_args(ca, fake, tmp_path)) == client.EXIT_NETWORK
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("osp-enroll: http://127.0.0.1:")


def test_http_error_status_is_reported(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(lambda body: (500, b"oops"))
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_NETWORK
    assert "HTTP 500" in capsys.readouterr().err


def test_getcacert_without_trailing_byte_is_unreadable(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    # The client reads answers like enroll: an answer missing its "\n" loses data.
    server = serve(lambda body: (200, wire.render_certificate(ca.der)[:-1]))
    assert client.main(_args(ca, server, tmp_path)) == client.EXIT_NETWORK


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--device", "10a"),
        ("--customer", ""),
        ("--username", "caf\u00e9"),
        ("--password", "x" * 129),
        ("--url", "ftp://127.0.0.1/tep"),
        ("--max-wait", "-1"),
    ],
)
def test_bad_arguments_are_usage_errors(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, option: str, value: str
) -> None:
    server = serve(Script(ca))
    argv = _args(ca, server, tmp_path)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    assert client.main(argv) == client.EXIT_USAGE
    assert server.seen == []


def test_help_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--insecure-skip-fingerprint" in out and "INSECURE" in out


def test_version_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    from osp_server import __version__
    from osp_server.client.enroll import main as enroll_main

    assert enroll_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"osp-enroll {__version__}"


def test_password_stdin_refuses_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from osp_server.client.enroll import EXIT_USAGE
    from osp_server.client.enroll import main as enroll_main

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("typed in clear\n"))
    fingerprint = ":".join(["AB"] * 32)
    argv = ["--username", "u", "--password-stdin", "--device", "1", "--customer", "1"]
    code = enroll_main([*argv, "--fingerprint", fingerprint])
    assert code == EXIT_USAGE
    assert "--password-stdin reads a pipe" in capsys.readouterr().err


def test_a_refused_run_leaves_no_key_and_a_retry_starts_afresh(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path
) -> None:
    out = tmp_path / "new" / "dir"  # created, owner-only
    server = serve(Script(ca, [TepStatus.DENIED]))
    assert client.main(_args(ca, server, out)) == TepStatus.DENIED
    assert _mode(out) == 0o700
    assert not (out / "pkey.pem").exists()
    server = serve(Script(ca))
    assert client.main(_args(ca, server, out)) == client.EXIT_OK
    assert (out / "pkey.pem").exists() and (out / "localcert.pem").exists()


def test_a_file_where_the_out_dir_goes_is_refused_locally(
    ca: CA, serve: Callable[..., FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "certs"
    in_the_way.write_text("not a directory")
    server = serve(Script(ca, [TepStatus.ISSUED]))
    assert client.main(_args(ca, server, in_the_way)) == client.EXIT_LOCAL
    assert f"--out-dir {in_the_way}: File exists" in capsys.readouterr().err
    assert in_the_way.read_text() == "not a directory"
