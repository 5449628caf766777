"""TEP against a running server: the real enroll requests replayed byte for byte, every
status path, the hostile catalog, replay and concurrency, on both engines and profiles."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from twisted.internet.defer import Deferred, gatherResults

from osp_server import passwords
from osp_server.app import Components
from osp_server.enrollment.service import approve, reject
from osp_server.enrollment.wire import TepOperation, encode_fields, parse_client_view
from osp_server.storage import audit, enrollments
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from tests.conftest import VECTORS, make_config
from tests.integration.harness import RunningServer, run_server
from tests.integration.wire import Answer, build_request, exchange, split_vector
from tests.memory import HeldThreadPool, ImmediateThreadPool, MemoryServer, memory_server

TEP = VECTORS / "tep"
BODY_RE = re.compile(rb"^status=0&certificate=[A-Za-z0-9+/]+={0,2}\n$")
NOW = datetime.now(UTC)


@dataclass
class Tep:
    """A server (in memory, or on loopback sockets) plus helpers to talk TEP to it."""

    components: Components
    tmp_path: Path
    send_raw: Callable[[bytes, bool], Awaitable[Answer]]
    memory: MemoryServer | None = None

    @classmethod
    def on_sockets(cls, server: RunningServer, tmp_path: Path) -> Tep:
        """Real TCP and TLS on loopback ports, real thread pools."""

        async def send(raw: bytes, tls: bool) -> Answer:
            port = server.https_port if tls else server.http_port
            return await exchange(port, raw, tls=tls)

        return cls(server.components, tmp_path, send)

    @classmethod
    def in_memory(cls, server: MemoryServer, tmp_path: Path) -> Tep:
        """The same sites on a memory reactor; pools run work at once."""

        async def send(raw: bytes, tls: bool) -> Answer:
            head, _, body = server.exchange(raw, site="https" if tls else "http").partition(
                b"\r\n\r\n"
            )
            return Answer(head, body)

        return cls(server.components, tmp_path, send, memory=server)

    @property
    def db(self) -> Any:
        return self.components.core.db

    @property
    def ca(self) -> Any:
        return self.components.core.ca

    def add_device(
        self,
        device_id: str = "1000",
        *,
        customer_id: str = "1000",
        username: str = "trans",
        password: str | None = "nexus",
        secret: str | None = None,
        policy: str = "auto",
    ) -> None:
        def work(conn: Any) -> None:
            try:
                device_store.get_customer(conn, customer_id)
            except LookupError:
                device_store.add_customer(conn, customer_id=customer_id, name="c", now=NOW)
            device_store.add_device(
                conn,
                customer_id=customer_id,
                device_id=device_id,
                username=username,
                now=NOW,
                password_hash=passwords.hash_secret(password) if password else None,
                secret_hash=passwords.hash_one_time_secret(secret) if secret else None,
                secret_expires_at=NOW + timedelta(hours=1) if secret else None,
                enrollment_policy=policy,  # type: ignore[arg-type]
            )

        self.db.transact_sync(work)

    async def send(self, raw: bytes, *, tls: bool = True) -> Answer:
        return await self.send_raw(raw, tls)

    async def vector(self, name: str, *, tls: bool = True) -> Answer:
        head, body = split_vector(TEP / name)
        return await self.send(build_request(head, body), tls=tls)

    async def fields(
        self, fields: list[tuple[str, bytes]], *, media: bytes = b"text/html", tls: bool = True
    ) -> Answer:
        head = b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: " + media
        head += b"\r\nContent-Length: 0\r\nConnection: Keep-Alive"
        return await self.send(build_request(head, encode_fields(fields)), tls=tls)

    def count(self, what: Callable[[Any], list[Any]]) -> int:
        return len(self.db.transact_sync(what))


def enroll_fields(
    csr_der: bytes,
    *,
    operation: str = "request",
    nonce: bytes = b"1234\x005678\x00",
    username: str = "trans",
    password: str = "nexus",
    device: str = "1000",
    customer: str = "1000",
) -> list[tuple[str, bytes]]:
    return [
        ("operation", operation.encode()),
        ("nonce", nonce),
        ("username", username.encode()),
        ("password", password.encode()),
        ("device", device.encode()),
        ("customer", customer.encode()),
        ("request", base64.b64encode(csr_der)),
    ]


_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sha256_csr(key: rsa.RSAPrivateKey = _KEY, cn: str = "gw1.example.com") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def check_answer_form(answer: Answer) -> None:
    """TEP.md §4.2 head rules and the exactly-one-newline body rule."""
    assert answer.status_line == b"HTTP/1.1 200 OK"
    assert len(answer.head) + 4 < 1024
    lines = answer.header_lines()
    assert b"Content-Type: text/html" in lines
    assert b"Content-Length: %d" % len(answer.body) in lines
    assert not any(line.lower().startswith(b"transfer-encoding") for line in lines)
    assert answer.body.endswith(b"\n") and not answer.body.endswith(b"\n\n")
    assert b"\r" not in answer.body


def issued_certificate(answer: Answer) -> x509.Certificate:
    check_answer_form(answer)
    assert BODY_RE.match(answer.body), answer.body[:80]
    status, der = parse_client_view(answer.body, operation=TepOperation.REQUEST)
    assert status == "0" and der is not None
    return x509.load_der_x509_certificate(der)


def status_of(answer: Answer) -> int:
    check_answer_form(answer)
    match = re.fullmatch(rb"status=(\d+)\n", answer.body)
    assert match, answer.body
    return int(match.group(1))


def spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_csr(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def verify_md5(cert: x509.Certificate, ca: x509.Certificate) -> None:
    public = ca.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_MD5
    public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hashes.MD5())


def _server(profile: str, **enrollment: Any) -> Callable[..., Any]:
    """The server in memory: every test that needs neither real concurrency nor
    real timing."""

    @pytest.fixture
    def fixture(tmp_path: Path, database_url: str) -> Iterator[Tep]:
        for server in memory_server(_config(tmp_path, database_url, profile, enrollment)):
            yield Tep.in_memory(server, tmp_path)

    result: Callable[..., Any] = fixture
    return result


def _server_on_sockets(profile: str, **enrollment: Any) -> Callable[..., Any]:
    """The server on loopback sockets with its real thread pools: for the tests about
    requests that overlap, and about storage that stalls."""

    @pytest_twisted.async_yield_fixture
    async def fixture(tmp_path: Path, database_url: str) -> AsyncIterator[Tep]:
        async for server in run_server(_config(tmp_path, database_url, profile, enrollment)):
            yield Tep.on_sockets(server, tmp_path)

    result: Callable[..., Any] = fixture
    return result


def _config(tmp_path: Path, database_url: str, profile: str, enrollment: dict[str, Any]) -> Any:
    settings = {"throttle_per_address": 1000, **enrollment}
    return make_config(tmp_path, database_url, ca={"profile": profile}, enrollment=settings)


legacy = _server("legacy")
secure = _server("secure")
plain_allowed = _server("secure", allow_plain_http=True)
renew_revoke = _server("secure", renewal="revoke")
strict_throttle = _server("secure", throttle_failures=3)
concurrent_secure = _server_on_sockets("secure")
concurrent_strict_throttle = _server_on_sockets("secure", throttle_failures=3)
# Concurrent attempts of one device count against its failure budget while they are
# checked; the concurrency test raises the budget so that all 50 are checked.
concurrent_wide_throttle = _server_on_sockets("secure", throttle_failures=100)


# --- getcacert -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_getcacert_vector_over_plain_http(legacy: Tep) -> None:
    answer = await legacy.vector("getcacert.request.http", tls=False)
    check_answer_form(answer)
    assert BODY_RE.match(answer.body)
    _, der = parse_client_view(answer.body, operation=TepOperation.GETCACERT)
    assert der is not None and der == legacy.ca.certificate_der
    ca = x509.load_der_x509_certificate(der)
    verify_md5(ca, ca)  # the stock client verifies the CA self-signature with MD5
    # The patent's spelling answers the same.
    alias = await legacy.fields([("operation", b"getocert")], media=b"text/plain", tls=False)
    assert alias.body == answer.body
    over_tls = await legacy.vector("getcacert.request.http", tls=True)
    assert over_tls.body == answer.body


@pytest_twisted.ensureDeferred
async def test_getcacert_secure_profile_is_sha256(secure: Tep) -> None:
    answer = await secure.vector("getcacert.request.http", tls=False)
    _, der = parse_client_view(answer.body, operation=TepOperation.GETCACERT)
    assert der is not None
    ca = x509.load_der_x509_certificate(der)
    assert ca.signature_hash_algorithm is not None
    assert ca.signature_hash_algorithm.name == "sha256"


# --- request / retrieve with the real client's bytes ------------------------------


@pytest_twisted.ensureDeferred
async def test_real_request_vector_enrolls_in_the_legacy_profile(legacy: Tep) -> None:
    legacy.add_device()
    answer = await legacy.vector("request.request.http")
    cert = issued_certificate(answer)
    csr_der = (TEP / "csr.der").read_bytes()
    # The toolkit compares SubjectPublicKeyInfo bytes and verifies with MD5 only.
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki(csr_der)
    verify_md5(cert, legacy.ca.certificate)
    assert cert.serial_number.bit_length() >= 64
    # Subject from the device record, nothing from the CSR.
    assert "Acceptance Test" not in cert.subject.rfc4514_string()
    assert "1000" in cert.subject.rfc4514_string()
    # Committed before the answer: the row is there, by serial and by fingerprint.
    record = legacy.db.transact_sync(cert_store.get_by_serial, format(cert.serial_number, "x"))
    assert record.der == cert.public_bytes(serialization.Encoding.DER)
    assert record.profile == "legacy" and record.device_id == "1000"

    # The same bytes again (same nonce, same CSR): the same certificate, never a second.
    again = issued_certificate(await legacy.vector("request.request.http"))
    assert again.serial_number == cert.serial_number
    # retrieve (new nonce, same CSR): the same certificate.
    retrieved = issued_certificate(await legacy.vector("retrieve.request.http"))
    assert retrieved.serial_number == cert.serial_number
    assert legacy.count(lambda c: cert_store.list_certificates(c, kind="device")) == 1
    actions = [e.action for e in legacy.db.transact_sync(audit.recent)]
    assert "certificate.sign-intent" in actions and "certificate.issued" in actions


@pytest_twisted.ensureDeferred
async def test_real_md5_csr_is_refused_in_the_secure_profile(secure: Tep) -> None:
    secure.add_device()
    assert status_of(await secure.vector("request.request.http")) == 3
    assert secure.count(enrollments.list_enrollments) == 0
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0


@pytest_twisted.ensureDeferred
async def test_secure_profile_issues_sha256_certificates(secure: Tep) -> None:
    secure.add_device()
    csr = sha256_csr()
    cert = issued_certificate(await secure.fields(enroll_fields(csr)))
    cert.verify_directly_issued_by(secure.ca.certificate)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


@pytest_twisted.ensureDeferred
async def test_manual_approval_pending_then_retrieve(legacy: Tep) -> None:
    legacy.add_device(policy="manual")
    assert status_of(await legacy.vector("request-pending.request.http")) == 1
    pending = legacy.db.transact_sync(enrollments.list_enrollments, state="pending")
    assert len(pending) == 1
    assert legacy.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0
    assert status_of(await legacy.vector("retrieve.request.http")) == 1

    issued = approve(
        legacy.db,
        pending[0].id,
        ca=legacy.ca,
        config=legacy.components.core.config.enrollment,
        now=datetime.now(UTC),
        actor="test",
    )
    first = issued_certificate(await legacy.vector("retrieve.request.http"))
    second = issued_certificate(await legacy.vector("retrieve.request.http"))
    assert format(first.serial_number, "x") == issued.serial
    assert first.serial_number == second.serial_number


@pytest_twisted.ensureDeferred
async def test_rejected_enrollment_answers_the_rejection_status(secure: Tep) -> None:
    secure.add_device(policy="manual")
    csr = sha256_csr()
    assert status_of(await secure.fields(enroll_fields(csr))) == 1
    (pending,) = secure.db.transact_sync(enrollments.list_enrollments, state="pending")
    reject(secure.db, pending.id, now=datetime.now(UTC), actor="test")
    retrieve = enroll_fields(csr, operation="retrieve", nonce=b"n2")
    assert status_of(await secure.fields(retrieve)) == 3
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0


@pytest_twisted.ensureDeferred
async def test_retrieve_without_request_is_8(secure: Tep) -> None:
    secure.add_device()
    retrieve = enroll_fields(sha256_csr(), operation="retrieve")
    assert status_of(await secure.fields(retrieve)) == 8


@pytest_twisted.ensureDeferred
async def test_bad_credentials_and_unknown_devices_are_2_and_store_nothing(legacy: Tep) -> None:
    legacy.add_device(password="other")
    assert status_of(await legacy.vector("request-rejected.request.http")) == 2
    csr = (TEP / "csr.der").read_bytes()
    for fields in (
        enroll_fields(csr, device="9999"),
        enroll_fields(csr, customer="9999"),
        enroll_fields(csr, username="nobody", password="other"),
    ):
        assert status_of(await legacy.fields(fields)) == 2
    legacy.db.transact_sync(device_store.update_device, "1000", "1000", now=NOW, state="disabled")
    assert status_of(await legacy.fields(enroll_fields(csr, password="other"))) == 2
    assert legacy.count(enrollments.list_enrollments) == 0
    assert legacy.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0
    denied = [e for e in legacy.db.transact_sync(audit.recent) if e.action == "enrollment.denied"]
    assert len(denied) == 5


@pytest_twisted.ensureDeferred
async def test_throttling_refuses_before_hashing(strict_throttle: Tep) -> None:
    strict_throttle.add_device()
    csr = sha256_csr()
    statuses = [
        status_of(await strict_throttle.fields(enroll_fields(csr, password="wrong")))
        for _ in range(4)
    ]
    assert statuses == [2, 2, 2, 5]
    # Even the right password is throttled now.
    assert status_of(await strict_throttle.fields(enroll_fields(csr))) == 5


@pytest_twisted.ensureDeferred
async def test_concurrent_guesses_cannot_outrun_the_throttle(
    concurrent_strict_throttle: Tep,
) -> None:
    strict_throttle = concurrent_strict_throttle
    strict_throttle.add_device()
    csr = sha256_csr()
    answers = await gatherResults(
        [
            Deferred.fromCoroutine(strict_throttle.fields(enroll_fields(csr, password="bad")))
            for _ in range(10)
        ]
    )
    statuses = sorted(status_of(a) for a in answers)
    assert statuses.count(2) <= 3, statuses
    assert set(statuses) <= {2, 5}


@pytest_twisted.ensureDeferred
async def test_one_time_secret_gets_one_certificate_under_concurrency(
    concurrent_secure: Tep,
) -> None:
    secure = concurrent_secure
    secure.add_device(password=None, secret="OneTimeSecret42")
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4)]
    answers = await gatherResults(
        [
            Deferred.fromCoroutine(
                secure.fields(
                    enroll_fields(sha256_csr(k), password="OneTimeSecret42", nonce=b"c%d" % i)
                )
            )
            for i, k in enumerate(keys)
        ]
    )
    statuses = sorted(0 if a.body.startswith(b"status=0&") else status_of(a) for a in answers)
    assert statuses.count(0) == 1, statuses
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 1


@pytest_twisted.ensureDeferred
async def test_plain_http_enrollment_is_off_by_default(secure: Tep) -> None:
    secure.add_device()
    answer = await secure.fields(enroll_fields(sha256_csr()), tls=False)
    assert status_of(answer) == 4
    assert secure.count(enrollments.list_enrollments) == 0


@pytest_twisted.ensureDeferred
async def test_plain_http_enrollment_when_enabled(plain_allowed: Tep) -> None:
    plain_allowed.add_device()
    issued_certificate(await plain_allowed.fields(enroll_fields(sha256_csr()), tls=False))


@pytest_twisted.ensureDeferred
async def test_nonce_reused_with_another_csr_is_4(secure: Tep) -> None:
    secure.add_device()
    issued_certificate(await secure.fields(enroll_fields(sha256_csr())))
    other = sha256_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert status_of(await secure.fields(enroll_fields(other))) == 4


@pytest.mark.parametrize("change", ["delete", "disable", "delete and add again"])
@pytest_twisted.ensureDeferred
async def test_a_device_deleted_or_disabled_during_its_request_gets_nothing(
    secure: Tep, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device is read before its password is hashed (which takes a while); if the
    operator deletes or disables it meanwhile, the request is refused (2), not filed
    under a successor or signed."""
    from osp_server.storage.removal import delete_device_txn

    secure.add_device()
    service = secure.components.enrollment
    authenticate = service._authenticate

    def then_change(*args: Any) -> Any:
        verdict = authenticate(*args)
        if change == "disable":
            secure.db.transact_sync(
                device_store.update_device, "1000", "1000", now=NOW, state="disabled"
            )
        else:
            secure.db.transact_sync(delete_device_txn, "1000", "1000", now=NOW)
            if change == "delete and add again":
                secure.add_device(password="another")
        return verdict

    monkeypatch.setattr(service, "_authenticate", then_change)
    assert status_of(await secure.fields(enroll_fields(sha256_csr()))) == 2
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0
    assert secure.count(enrollments.list_enrollments) == 0


@pytest_twisted.ensureDeferred
async def test_new_csr_keeps_previous_by_default(secure: Tep) -> None:
    secure.add_device()
    first = issued_certificate(await secure.fields(enroll_fields(sha256_csr())))
    other = sha256_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    second = issued_certificate(await secure.fields(enroll_fields(other, nonce=b"n2")))
    assert first.serial_number != second.serial_number
    states = {c.serial: c.state for c in secure.db.transact_sync(cert_store.list_certificates)}
    assert states[format(first.serial_number, "x")] == "valid"


@pytest_twisted.ensureDeferred
async def test_new_csr_revokes_previous_when_configured(renew_revoke: Tep) -> None:
    renew_revoke.add_device()
    first = issued_certificate(await renew_revoke.fields(enroll_fields(sha256_csr())))
    other = sha256_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    issued_certificate(await renew_revoke.fields(enroll_fields(other, nonce=b"n2")))
    record = renew_revoke.db.transact_sync(
        cert_store.get_by_serial, format(first.serial_number, "x")
    )
    assert record.state == "revoked" and record.revocation_reason == "superseded"


@pytest_twisted.ensureDeferred
async def test_one_time_secret_is_consumed(secure: Tep) -> None:
    secure.add_device(password=None, secret="OneTimeSecret42")
    issued_certificate(await secure.fields(enroll_fields(sha256_csr(), password="OneTimeSecret42")))
    other = sha256_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    again = enroll_fields(other, password="OneTimeSecret42", nonce=b"n2")
    assert status_of(await secure.fields(again)) == 2


@pytest_twisted.ensureDeferred
async def test_secret_stored_as_argon2_by_an_earlier_version_still_enrolls(secure: Tep) -> None:
    secure.add_device(password=None)
    secure.db.transact_sync(
        device_store.update_device,
        "1000",
        "1000",
        now=NOW,
        secret_hash=passwords.hash_secret("OldSecret42"),
        secret_expires_at=NOW + timedelta(hours=1),
    )
    answer = await secure.fields(enroll_fields(sha256_csr(), password="OldSecret42"))
    issued_certificate(answer)


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_identical_requests_get_one_serial(
    concurrent_wide_throttle: Tep,
) -> None:
    secure = concurrent_wide_throttle
    secure.add_device()
    fields = enroll_fields(sha256_csr())
    answers = await gatherResults(
        [Deferred.fromCoroutine(secure.fields(fields)) for _ in range(50)]
    )
    serials = {issued_certificate(a).serial_number for a in answers}
    assert len(serials) == 1
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 1


# --- hostile input: status 3/4 in a 200, or 413; never a 5xx; nothing stored --------


def _hostile_bodies() -> list[tuple[str, bytes, bytes]]:
    _, body = split_vector(TEP / "request.request.http")
    fields = body.split(b"&")
    request_value = fields[-1]
    return [
        ("dropped field", b"&".join(fields[:-2] + fields[-1:]), b"text/html"),
        ("repeated field", body + b"&device=1000", b"text/html"),
        ("garbled escape", body.replace(b"device=1000", b"device=10%zz"), b"text/html"),
        ("NUL in id", body.replace(b"device=1000", b"device=10%0000"), b"text/html"),
        ("raw plus inserted", body.replace(b"request=", b"request=+"), b"text/html"),
        ("truncated base64", body[: -len(request_value) // 2], b"text/html"),
        ("junk base64", body.replace(b"request=", b"request=%21%21"), b"text/html"),
        ("non-UTF-8", body.replace(b"username=trans", b"username=\xff\xfe"), b"text/html"),
        ("no equals", b"operation", b"text/html"),
        ("empty", b"", b"text/html"),
        ("unknown operation", b"operation=steal", b"text/html"),
        ("getcacert as text/html", b"operation=getcacert", b"text/html"),
        ("form-encoded request", body, b"application/x-www-form-urlencoded"),
        ("17 KiB body", body + b"&x=" + b"A" * 17 * 1024, b"text/html"),
    ]


@pytest_twisted.ensureDeferred
async def test_hostile_forms_get_a_status_and_store_nothing(legacy: Tep) -> None:
    legacy.add_device()
    for name, body, media in _hostile_bodies():
        head = b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: " + media
        head += b"\r\nContent-Length: 0\r\nConnection: Keep-Alive"
        answer = await legacy.send(build_request(head, body))
        assert answer.code == 200, name
        assert status_of(answer) in (3, 4), name
    assert legacy.count(enrollments.list_enrollments) == 0
    assert legacy.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0


@pytest_twisted.ensureDeferred
async def test_a_raw_plus_is_decoded_as_plus(legacy: Tep) -> None:
    """A generic form decoder would turn '+' into a space and corrupt the CSR."""
    legacy.add_device()
    head, body = split_vector(TEP / "request.request.http")
    assert b"%2B" in body
    cert = issued_certificate(await legacy.send(build_request(head, body.replace(b"%2B", b"+"))))
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki((TEP / "csr.der").read_bytes())


@pytest_twisted.ensureDeferred
async def test_hostile_csrs_are_3(secure: Tep) -> None:
    secure.add_device()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    good = sha256_csr()
    tampered = bytearray(good)
    tampered[-10] ^= 0xFF
    not_a_csr = hashlib.sha256(b"x").digest() * 10
    for n, der in enumerate([sha256_csr(weak), bytes(tampered), b"\x30\x03\x02\x01\x00"]):
        answer = await secure.fields(enroll_fields(der, nonce=b"h%d" % n))
        assert status_of(answer) in (3, 4)
    answer = await secure.fields(enroll_fields(not_a_csr, nonce=b"junk"))
    assert status_of(answer) in (3, 4)
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0


@pytest_twisted.ensureDeferred
async def test_oversized_tep_body_is_413(secure: Tep) -> None:
    head = (
        b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/html\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    answer = await secure.send(head)
    assert answer.code == 413


@pytest_twisted.ensureDeferred
async def test_crl_lists_revoked_certificates(secure: Tep) -> None:
    secure.add_device()
    cert = issued_certificate(await secure.fields(enroll_fields(sha256_csr())))
    secure.db.transact_sync(cert_store.revoke, format(cert.serial_number, "x"), now=NOW)
    head = b"GET /crl HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = await secure.send(head, tls=False)
    assert answer.code == 200
    crl = x509.load_der_x509_crl(answer.body)
    assert crl.is_signature_valid(secure.ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


@pytest_twisted.ensureDeferred
async def test_crl_numbers_grow_even_within_one_second(secure: Tep) -> None:
    """The CRL number is the issue time in seconds; a rebuild in the same second (here
    the clock stands still while the cache expires) still gets a larger number."""
    server = secure.memory
    assert server is not None
    head = b"GET /crl HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    crl_resource = server.components.http_site.resource.children[b"crl"]
    crl_resource._clock = lambda: NOW  # the wall clock stands still
    numbers = []
    for _ in range(2):
        answer = await secure.send(head, tls=False)
        crl = x509.load_der_x509_crl(answer.body)
        numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        server.reactor.advance(61)
    assert numbers[0] == int(NOW.timestamp())
    assert numbers[1] == numbers[0] + 1


def test_stalled_storage_is_status_6(secure: Tep) -> None:
    """R5: the database pool does not answer; at the timeout the device gets status 6,
    and the late work stores nothing."""
    server = secure.memory
    assert server is not None
    secure.add_device()
    held = HeldThreadPool()
    secure.db._pool = held
    head = b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/html"
    head += b"\r\nContent-Length: 0\r\nConnection: Keep-Alive"
    connection = server.connect(build_request(head, encode_fields(enroll_fields(sha256_csr()))))
    assert connection.answer() == b""  # waiting on the database
    server.reactor.advance(secure.db._timeout - 0.01)
    assert connection.answer() == b""
    server.reactor.advance(0.01)
    head_bytes, _, body = connection.answer().partition(b"\r\n\r\n")
    assert status_of(Answer(head_bytes, body)) == 6
    held.release()  # the stalled work finishes late; nothing comes of it
    connection.close()
    secure.db._pool = ImmediateThreadPool()
    assert secure.count(enrollments.list_enrollments) == 0


@pytest_twisted.ensureDeferred
async def test_locked_sqlite_fails_fast_and_recovers(tmp_path: Path) -> None:
    """R5 on the embedded engine: another process holds the write lock; requests get
    status 6 within the database timeout and succeed again once it is released."""
    import sqlite3
    import time

    config = make_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'osp.sqlite3'}",
        database={"timeout_seconds": 1.0},
        enrollment={"throttle_per_address": 1000},
    )
    async for server in run_server(config):
        tep = Tep.on_sockets(server, tmp_path)
        tep.add_device()
        blocker = sqlite3.connect(tmp_path / "osp.sqlite3", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            answer = await tep.fields(enroll_fields(sha256_csr()))
            elapsed = time.monotonic() - started
            assert status_of(answer) == 6
            assert elapsed < 5.0, elapsed
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        recovered = await tep.fields(enroll_fields(sha256_csr(), nonce=b"again"))
        issued_certificate(recovered)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("verdict", "status"), [("issue", 0), ("pending", 1), ("reject", 3)])
async def test_enrollment_authorizer_decides_new_requests(
    secure: Tep, verdict: str, status: int
) -> None:
    from osp_server.testing import FakeEnrollmentAuthorizer, verify_enrollment_authorizer

    authorizer = FakeEnrollmentAuthorizer(verdict, deferred=True)  # type: ignore[arg-type]
    verify_enrollment_authorizer(authorizer)
    enrollment_service = secure.components.enrollment
    enrollment_service.authorizer = authorizer
    secure.add_device(policy="manual" if verdict == "issue" else "auto")
    csr = sha256_csr()
    answer = await secure.fields(enroll_fields(csr))
    got = 0 if answer.body.startswith(b"status=0&") else status_of(answer)
    assert got == status
    assert authorizer.calls == [("1000", "1000", hashlib.sha256(csr).hexdigest())]
    # A replay of a known CSR does not ask again.
    await secure.fields(enroll_fields(csr))
    assert len(authorizer.calls) == 1


def test_unknown_enrollment_authorizer_stops_start_up(tmp_path: Path) -> None:
    from osp_server.app import build_service
    from osp_server.endpoints import StartupError
    from tests.integration.harness import reactor

    config = make_config(
        tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}", enrollment={"authorizer": "nope"}
    )
    with pytest.raises(StartupError, match=r"enrollment\.authorizer"):
        build_service(config, reactor)


# --- signing off the database writer -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_signature_runs_on_the_cpu_pool_outside_any_transaction(
    concurrent_secure: Tep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RSA signature never holds the database writer (or the enrollment row lock):
    it runs on a CPU pool thread, before the issuing transaction (real pools here)."""
    import threading

    core = concurrent_secure.components.core
    threads: list[str] = []
    sign = core.ca.issue_device_certificate

    def recording_sign(*args: Any, **kwargs: Any) -> x509.Certificate:
        threads.append(threading.current_thread().name)
        signed: x509.Certificate = sign(*args, **kwargs)
        return signed

    monkeypatch.setattr(core.ca, "issue_device_certificate", recording_sign)
    concurrent_secure.add_device()
    cert = issued_certificate(await concurrent_secure.fields(enroll_fields(sha256_csr())))
    assert len(threads) == 1 and "osp-cpu" in threads[0], threads
    stored = concurrent_secure.db.transact_sync(
        cert_store.get_by_serial, format(cert.serial_number, "x")
    )
    assert stored.der == cert.public_bytes(serialization.Encoding.DER)


@pytest_twisted.ensureDeferred
async def test_a_certificate_signed_beforehand_is_checked_recorded_or_discarded(
    secure: Tep,
) -> None:
    from osp_server.enrollment.issuance import (
        EnrollmentStateError,
        device_subject,
        issue_enrollment,
        record_sign_intent,
    )
    from osp_server.pki.csr import validate_csr

    secure.add_device(policy="manual")
    assert status_of(await secure.fields(enroll_fields(sha256_csr()))) == 1
    (pending,) = secure.db.transact_sync(enrollments.list_enrollments, state="pending")
    now = datetime.now(UTC)
    secure.db.transact_sync(record_sign_intent, pending.id, now=now, actor="test")
    device = secure.db.transact_sync(device_store.get_device, "1000", "1000")
    ca = secure.ca

    def presigned(csr_der: bytes, device_id: str = "1000") -> x509.Certificate:
        csr = validate_csr(csr_der, profile=ca.profile)
        subject = device_subject(device)
        if device_id != "1000":
            from osp_server.pki.ca import DeviceSubject

            subject = DeviceSubject(customer_id="1000", device_id=device_id)
        signed: x509.Certificate = ca.issue_device_certificate(
            csr, subject, validity=timedelta(days=30), now=now
        )
        return signed

    def issue(signed: x509.Certificate) -> Any:
        return secure.db.transact_sync(
            issue_enrollment,
            pending.id,
            ca=ca,
            validity=timedelta(days=30),
            renewal="keep",
            now=now,
            actor="test",
            signed=signed,
        )

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for wrong in (presigned(sha256_csr(other_key)), presigned(sha256_csr(), device_id="2000")):
        with pytest.raises(EnrollmentStateError, match="does not match"):
            issue(wrong)
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 0

    right = presigned(sha256_csr())
    issued = issue(right)
    assert issued.newly_issued and issued.serial == format(right.serial_number, "x")

    # Signed again meanwhile (a concurrent identical request): the stored one is
    # returned, the new signature never recorded, and its discard audited.
    late = presigned(sha256_csr())
    again = issue(late)
    assert not again.newly_issued and again.serial == issued.serial
    assert secure.count(lambda c: cert_store.list_certificates(c, kind="device")) == 1
    entries = secure.db.transact_sync(audit.recent)
    discarded = [e for e in entries if e.action == "certificate.discarded"]
    assert len(discarded) == 1
    assert discarded[0].serial == format(late.serial_number, "x")
