"""OSP over real mutual TLS: captured requests replayed by an enrolled device, every
answer checked against OSP.md, identity and revocation enforcement, bad input."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from defusedxml import ElementTree
from prometheus_client import generate_latest

from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from osp_server import passwords
from osp_server.enrollment.wire import TepOperation, encode_fields, parse_client_view
from osp_server.osp.codec import decode_request
from osp_server.osp.messages import AuthorizationRequest, UsageIndicationMessage
from osp_server.pki.ca import DeviceSubject
from osp_server.pki.csr import validate_csr
from osp_server.routing.model import BlockRule, Route
from osp_server.routing.table import RouteTables
from osp_server.storage import calls
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from tests.conftest import VECTORS, make_config
from tests.integration.harness import RunningServer, run_server
from tests.integration.wire import Answer, build_request, exchange_sync, split_vector
from tests.memory import MemoryEnv, enroll_in_memory, memory_server
from tests.unit.osp_checker import check_osp_response

OSP = VECTORS / "osp"
NOW = datetime.now(UTC)


def _csr(key: rsa.RSAPrivateKey) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


@dataclass
class Device:
    """An enrolled device's files."""

    cert_path: Path
    key_path: Path
    cert: x509.Certificate


def save_device(
    directory: Path, name: str, key: rsa.RSAPrivateKey, cert: x509.Certificate
) -> Device:
    """Write a device's key and certificate as PEM files."""
    device = Device(directory / f"{name}.pem", directory / f"{name}.key", cert)
    device.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    device.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return device


def self_signed(cn: str, *, ca: bool) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A key and a self-signed certificate that our CA never saw."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    return key, builder.sign(key, hashes.SHA256())


@dataclass
class Env:
    server: RunningServer
    tmp_path: Path
    device: Device

    @property
    def core(self) -> Any:
        return self.server.components.core

    async def post(
        self, body: bytes, *, device: Device | bool | None = True, head: bytes | None = None
    ) -> Answer:
        if head is None:
            head, _ = split_vector(OSP / "authorization-request.http")
        chosen = self.device if device is True else (device or None)
        client = (chosen.cert_path, chosen.key_path) if isinstance(chosen, Device) else None
        raw = build_request(head, body)
        answer: Answer = await deferToThread(
            exchange_sync, self.server.https_port, raw, tls=True, client_cert=client
        )
        return answer

    async def vector(self, name: str, **kw: Any) -> tuple[Answer, bytes]:
        path = OSP / name
        if name.endswith(".http"):
            head, body = split_vector(path)
            return await self.post(body, head=head, **kw), body
        body = path.read_bytes()
        return await self.post(body, **kw), body


def spy_call_ended(env: Any) -> list[int]:
    """The transaction ids the service tells the routing policy have ended, from now on."""
    ended: list[int] = []
    policy = env.server.components.policy
    original = policy.call_ended

    def spy(transaction_id: int) -> None:
        ended.append(transaction_id)
        original(transaction_id)

    policy.call_ended = spy
    return ended


def enroll(server: RunningServer, tmp_path: Path, customer: str, device: str) -> Device:
    """Enroll over TEP (HTTPS) as a device would, and keep its files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fields = [
        ("operation", b"request"),
        ("nonce", b"%s\x00" % device.encode()),
        ("username", b"gw" + device.encode()),
        ("password", b"secret"),
        ("device", device.encode()),
        ("customer", customer.encode()),
        ("request", base64.b64encode(_csr(key))),
    ]
    head = b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/html\r\n"
    head += b"Content-Length: 0\r\nConnection: Keep-Alive"
    answer = exchange_sync(server.https_port, build_request(head, encode_fields(fields)), tls=True)
    status, der = parse_client_view(answer.body, operation=TepOperation.REQUEST)
    assert status == "0" and der is not None, answer.body
    cert = x509.load_der_x509_certificate(der)
    return save_device(tmp_path, f"device-{device}", key, cert)


def add_device(server: RunningServer, customer: str, device: str, **customer_kw: Any) -> None:
    add_device_db(server.components.core.db, customer, device, **customer_kw)


def add_device_db(db: Any, customer: str, device: str, **customer_kw: Any) -> None:
    """A customer (if new) and a device with the password "secret"."""

    def work(conn: Any) -> None:
        try:
            device_store.get_customer(conn, customer)
        except LookupError:
            device_store.add_customer(conn, customer_id=customer, name="c", now=NOW, **customer_kw)
        device_store.add_device(
            conn,
            customer_id=customer,
            device_id=device,
            username=f"gw{device}",
            now=NOW,
            password_hash=passwords.hash_secret("secret"),
        )

    db.transact_sync(work)


ROUTES = [
    Route(table="default", prefix="1", destination="[10.1.1.1]:5060", priority=1, cost=Decimal(2)),
    Route(table="default", prefix="1", destination="[10.1.1.2]:5060", priority=1, cost=Decimal(1)),
    Route(
        table="default",
        prefix="1678",
        destination="gw.example.net:5060",
        priority=1,
        network_id="TG9",
    ),
    Route(
        table="default",
        prefix="1678",
        destination="[10.2.2.2]:5060",
        priority=2,
        protocol="h323-Q931",
    ),
]


def _tables() -> RouteTables:
    return RouteTables(
        routes=ROUTES, blocks=[BlockRule(table="default", kind="destination", prefix="1900")]
    )


def _env_fixture(*, memory: bool = True, **sections: Any) -> Any:
    """A fixture: the server with ROUTES and an enrolled device 1000/1000.

    ``memory`` (default): the real server built in memory (tests/memory.py), requests
    fed to its site with the device's certificate as TLS presents it. Otherwise on
    loopback sockets with real TLS, for what needs a handshake or real threads.
    """
    if memory:

        @pytest.fixture
        def in_memory(tmp_path: Path, database_url: str) -> Iterator[MemoryEnv]:
            config = make_config(
                tmp_path, database_url, enrollment={"throttle_per_address": 1000}, **sections
            )
            for server in memory_server(config):
                add_device_db(server.core.db, "1000", "1000")
                server.components.policy.replace(_tables())  # type: ignore[attr-defined]
                yield MemoryEnv(server, tmp_path, enroll_in_memory(server, "1000", "1000"))

        return in_memory

    @pytest_twisted.async_yield_fixture
    async def fixture(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
        config = make_config(
            tmp_path, database_url, enrollment={"throttle_per_address": 1000}, **sections
        )
        async for server in run_server(config):
            add_device(server, "1000", "1000")
            server.components.policy.replace(_tables())  # type: ignore[attr-defined]
            device = await deferToThread(enroll, server, tmp_path, "1000", "1000")
            yield Env(server, tmp_path, device)

    return fixture


async def enroll_device(env: Any, customer: str, device: str) -> Any:
    """Enroll another device into ``env``'s server the way that server is reached."""
    if isinstance(env, MemoryEnv):
        return enroll_in_memory(env.server, customer, device)
    return await deferToThread(enroll, env.server, env.tmp_path, customer, device)


env = _env_fixture()
env_tls = _env_fixture(memory=False)
env_xml_tokens = _env_fixture(osp={"token_format": "xml"})


def _decoded(body: bytes) -> Any:
    return decode_request(body)


def _destinations(body: bytes) -> list[Any]:
    root = ElementTree.fromstring(body)
    found: list[Any] = root.findall("./AuthorizationResponse/Destination")
    return found


def _openssl_verify_token(token: bytes, ca_pem: Path, tmp_path: Path) -> bytes:
    """The content, once verified both ways: ``cms`` and the device's ``smime -nochain``."""
    path = tmp_path / "token.der"
    path.write_bytes(token)
    contents = []
    for command in (
        ["cms", "-verify", "-purpose", "any"],
        # PKCS7_verify with PKCS7_NOCHAIN, as the OSP Toolkit calls it.
        ["smime", "-verify", "-nochain"],
    ):
        args = ["openssl", *command, "-inform", "DER", "-in", str(path), "-binary"]
        result = subprocess.run(
            [*args, "-CAfile", str(ca_pem)],
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        contents.append(result.stdout)
    assert contents[0] == contents[1]
    return contents[0]


def _ascii_token(content: bytes) -> dict[str, str]:
    """The fields of an ASCII token (the content of our signed tokens)."""
    text = content.decode("ascii")
    assert text.startswith("V=1\n") and text.endswith("\n")
    return dict(line.split("=", 1) for line in text[:-1].split("\n"))


# --- authorization ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_authorization_vector_over_mutual_tls(env_tls: Env) -> None:
    env = env_tls
    answer, body = await env.vector("authorization-request.http")
    request = _decoded(body)
    assert isinstance(request, AuthorizationRequest)
    problems = check_osp_response(
        answer.head + b"\r\n\r\n", answer.body, expect="AuthorizationResponse", request=request
    )
    assert problems == []
    root = ElementTree.fromstring(answer.body)
    response = root.find("AuthorizationResponse")
    assert response is not None
    assert response.get("componentId") == request.component_id
    assert root.get("messageId") == request.message_id
    assert response.findtext("Status/Code") == "200"
    transaction_id = int(response.findtext("TransactionId") or "0")
    assert 0 < transaction_id < 2**63
    destinations = _destinations(answer.body)
    # Longest prefix 1678: two routes, priority order; the network id goes along.
    addresses = [d.findtext("DestinationSignalAddress") for d in destinations]
    assert addresses == ["gw.example.net:5060", "[10.2.2.2]:5060"]
    assert destinations[0].findtext("DestinationAlternate[@type='network']") == "TG9"
    assert destinations[1].findtext("SignalingProtocol") == "h323-Q931"
    ca_pem = env.core.config.ca.cert_file
    for i, destination in enumerate(destinations):
        assert destination.findtext("CallId") == request.call_ids_b64[i]
        assert destination.findtext("DestinationInfo") == "1678"
        assert destination.findtext("SourceInfo") == "14048724799"
        token = base64.b64decode(destination.findtext("Token") or "")
        assert len(token) <= 1024  # OpenSIPS/Kamailio (OSP.md §4)
        content = _openssl_verify_token(token, ca_pem, env.tmp_path)
        fields = _ascii_token(content)
        assert (fields["c"], fields["C"]) == ("14048724799", "1678")
        assert fields["i"] == request.call_ids_b64[i]
        assert fields["I"] == str(transaction_id)
        if i == 0:
            assert fields["e"] == "TG9"
    stored = env.core.db.transact_sync(
        lambda conn: conn.exec_driver_sql(
            "SELECT calling, called, device_pk FROM transactions WHERE transaction_id = "
            + str(transaction_id)
        ).first()
    )
    assert stored is not None and (stored[0], stored[1]) == ("14048724799", "1678")


@pytest_twisted.ensureDeferred
async def test_token_signed_by_another_ca_fails(env: Env, tmp_path: Path) -> None:
    answer, _ = await env.vector("authorization-request.http")
    token = base64.b64decode(_destinations(answer.body)[0].findtext("Token") or "")
    _, other = self_signed("other", ca=True)
    other_pem = tmp_path / "other.pem"
    other_pem.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AssertionError):
        _openssl_verify_token(token, other_pem, tmp_path)


@pytest_twisted.ensureDeferred
async def test_opensips_request_gets_tokens_that_fit(env: Env) -> None:
    """The captured OpenSIPS 3.6.8 request: every signed token is at most 1,024 raw bytes
    (the module's 2,048-byte base64 buffer) and verifies like the terminating device."""
    answer, body = await env.vector("opensips-3.6/authorization-request.http")
    request = _decoded(body)
    assert answer.code == 200
    destinations = _destinations(answer.body)
    assert destinations
    for destination in destinations:
        token = base64.b64decode(destination.findtext("Token") or "")
        assert len(token) <= 1024, len(token)
        assert len(destination.findtext("Token") or "") < 2048
        fields = _ascii_token(
            _openssl_verify_token(token, env.core.config.ca.cert_file, env.tmp_path)
        )
        assert (fields["c"], fields["C"]) == ("14085551000", "15551234567")
        assert base64.b64decode(fields["i"]) == b"1-3037@127.0.0.1" == request.call_ids[0]


@pytest_twisted.ensureDeferred
async def test_long_call_id_gets_an_undefined_token_and_a_warning(env: Env) -> None:
    """A Call-ID that would push the signed token past 1,024 bytes: the token says
    UNDEFINED (the device then skips the Call-ID check), the answer still echoes the
    request's CallId, and a warning names the sizes."""
    head, body = split_vector(OSP / "opensips-3.6" / "authorization-request.http")
    long_id = b"x" * 147  # the i= line fits the device's 199 characters; the token does not
    body = body.replace(b"MS0zMDM3QDEyNy4wLjAuMQ==", base64.b64encode(long_id))
    with capturedLogs() as events:
        answer = await env.post(body, head=head)
    assert answer.code == 200
    ca_pem = env.core.config.ca.cert_file
    for destination in _destinations(answer.body):
        assert destination.findtext("CallId") == base64.b64encode(long_id).decode()
        token = base64.b64decode(destination.findtext("Token") or "")
        assert len(token) <= 1024
        fields = _ascii_token(_openssl_verify_token(token, ca_pem, env.tmp_path))
        assert base64.b64decode(fields["i"]) == b"UNDEFINED"
    dropped = [e for e in events if e.get("log_format", "").startswith("token_call_id_dropped")]
    assert len(dropped) == len(_destinations(answer.body))
    assert all(e["call_id_bytes"] == 147 and e["limit"] == 1024 for e in dropped)


@pytest_twisted.ensureDeferred
async def test_token_too_large_even_without_call_id_is_400(env: Env) -> None:
    """Hostile but well-formed: the longest numbers (131 digits calling, 128 called, the
    most the route lookup takes) make every signed token too large: HTTP 200 with OSP
    status 400, never a token the proxy would drop."""
    head, body = split_vector(OSP / "opensips-3.6" / "authorization-request.http")
    body = body.replace(b"\n14085551000</SourceInfo>", b"\n" + b"1" * 131 + b"</SourceInfo>")
    body = body.replace(
        b"\n15551234567</DestinationInfo>", b"\n1" + b"5" * 127 + b"</DestinationInfo>"
    )
    answer = await env.post(body, head=head)
    assert answer.code == 200  # OSP answers in the body
    assert b"<Code>400</Code>" in answer.body, answer.body


@pytest_twisted.ensureDeferred
async def test_unsigned_xml_tokens_when_configured(env_xml_tokens: Env) -> None:
    answer, _ = await env_xml_tokens.vector("authorization-request.http")
    for destination in _destinations(answer.body):
        token = base64.b64decode(destination.findtext("Token") or "")
        assert token.startswith(b"<?xml")
        assert ElementTree.fromstring(token).tag == "TokenInfo"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "name",
    [
        "authorization-request-full.http",
        "bodies/authorization-request-rich.xml",
        "bodies/authorization-request-minimal.xml",
    ],
)
async def test_other_authorization_vectors(env: Env, name: str) -> None:
    answer, body = await env.vector(name)
    request = _decoded(body)
    problems = check_osp_response(
        answer.head + b"\r\n\r\n", answer.body, expect="AuthorizationResponse", request=request
    )
    assert problems == []
    assert answer.code == 200


async def _authorize_called(env: Env, called: bytes) -> Any:
    _, body = split_vector(OSP / "authorization-request.http")
    body = body.replace(b"\n1678</DestinationInfo>", b"\n" + called + b"</DestinationInfo>")
    answer = await env.post(body)
    assert answer.code == 200
    assert (
        check_osp_response(answer.head + b"\r\n\r\n", answer.body, expect="AuthorizationResponse")
        == []
    )
    response = ElementTree.fromstring(answer.body).find("AuthorizationResponse")
    assert response is not None
    return response


@pytest_twisted.ensureDeferred
async def test_blocked_and_no_route(env: Env) -> None:
    blocked = await _authorize_called(env, b"19005551212")
    assert blocked.findtext("Status/Code") == "403"
    assert blocked.find("Destination") is None
    assert blocked.find("TerminationCause").get("type") == "sip"
    assert blocked.findtext("TerminationCause/TCCode") == "403"
    missing = await _authorize_called(env, b"4415550000")
    assert missing.findtext("Status/Code") == "404"
    assert missing.findtext("TerminationCause/TCCode") == "404"
    # Least cost first within a priority, for the catch-all prefix.
    routed = await _authorize_called(env, b"15551234567")
    addresses = [d.findtext("DestinationSignalAddress") for d in routed.findall("Destination")]
    assert addresses == ["[10.1.1.2]:5060", "[10.1.1.1]:5060"]


# --- usage and capabilities ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_usage_is_stored_once_and_confirmed_each_time(env: Env) -> None:
    first, body = await env.vector("usage-indication.http")
    message = _decoded(body)
    assert isinstance(message, UsageIndicationMessage)
    for answer in (first, (await env.vector("usage-indication.http"))[0]):
        assert (
            check_osp_response(
                answer.head + b"\r\n\r\n", answer.body, expect="UsageConfirmation", request=message
            )
            == []
        )
        confirmations = ElementTree.fromstring(answer.body).findall("UsageConfirmation")
        assert [c.get("componentId") for c in confirmations] == [
            c.component_id for c in message.components
        ]
        assert [c.findtext("Status/Code") for c in confirmations] == ["200", "200"]
    transaction_id = message.components[0].transaction_id
    assert transaction_id is not None
    rows = env.core.db.transact_sync(calls.usage_for_transaction, transaction_id)
    assert len(rows) == 2
    failed = next(r for r in rows if r["termination_cause_code"] == "41")
    assert failed["duration"] is None
    answered = next(r for r in rows if r["duration"] is not None)
    assert answered["duration"] == Decimal("30.000")
    # Each transaction is counted under its call site's label.
    exposition = generate_latest(env.core.metrics.registry).decode()
    assert 'osp_db_transactions_total{desc="osp_store_usage",outcome="ok"} 2.0' in exposition


@pytest_twisted.ensureDeferred
async def test_other_usage_vectors_are_accepted(env: Env) -> None:
    for name in (
        "usage-indication-full.http",
        "usage-indication-destination-role.http",
        "bodies/usage-indication-rich.xml",
        "bodies/usage-indication-destination-role.xml",
        "bodies/usage-indication-from-scratch.xml",
    ):
        answer, body = await env.vector(name)
        assert answer.code == 200, name
        assert (
            check_osp_response(
                answer.head + b"\r\n\r\n",
                answer.body,
                expect="UsageConfirmation",
                request=_decoded(body),
            )
            == []
        )
    # The terminating leg pairs with the originating one by TransactionId.
    _, body = split_vector(OSP / "usage-indication-destination-role.http")
    message = _decoded(body)
    rows = env.core.db.transact_sync(
        calls.usage_for_transaction, message.components[0].transaction_id
    )
    assert "destination" in {r["role"] for r in rows}


@pytest_twisted.ensureDeferred
async def test_capabilities(env: Env) -> None:
    answer, body = await env.vector("capabilities-indication.http")
    assert (
        check_osp_response(
            answer.head + b"\r\n\r\n",
            answer.body,
            expect="CapabilitiesConfirmation",
            request=_decoded(body),
        )
        == []
    )
    device = env.core.db.transact_sync(device_store.get_device, "1000", "1000")
    assert (
        env.core.db.transact_sync(calls.capabilities_of, device.pk)["almost_out_of_resources"]
        is False
    )
    answer, _ = await env.vector("bodies/capabilities-indication-resources.xml")
    assert answer.code == 200
    assert (
        env.core.db.transact_sync(calls.capabilities_of, device.pk)["almost_out_of_resources"]
        is True
    )


@pytest_twisted.ensureDeferred
async def test_reauthorization_gets_501_never_a_response(env: Env) -> None:
    answer, _ = await env.vector("reauthorization-request.http")
    assert answer.status_line == b"HTTP/1.1 501 Not Implemented"
    assert answer.header(b"content-type") == b"text/plain"
    assert answer.header(b"content-length") == str(len(answer.body)).encode()
    assert b"ReauthorizationResponse" not in answer.body
    assert b"<" not in answer.body


# --- identity -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_is_403(env: Env) -> None:
    answer, _ = await env.vector("authorization-request.http", device=None)
    assert answer.code == 403
    assert b"Destination" not in answer.body


@pytest_twisted.ensureDeferred
async def test_forged_device_id_is_refused(env: Env) -> None:
    _, body = split_vector(OSP / "authorization-request.http")
    forged = body.replace(
        b'<DeviceId critical="false">\n1000', b'<DeviceId critical="false">\n1001'
    )
    assert forged != body
    assert (await env.post(forged)).code == 403
    forged = body.replace(
        b'<CustomerId critical="false">\n1000', b'<CustomerId critical="false">\n2'
    )
    assert (await env.post(forged)).code == 403


@pytest_twisted.ensureDeferred
async def test_revocation_elsewhere_is_refused_after_one_poll(env: MemoryEnv) -> None:
    """Revoked by another process (osp-admin): the answer was cached, and the next poll
    of the access version (not the cache lifetime) ends it, on the open connection."""
    assert (await env.vector("authorization-request.http"))[0].code == 200
    serial = format(env.device.cert.serial_number, "x")
    env.core.db.transact_sync(cert_store.revoke, serial, now=datetime.now(UTC))
    assert (await env.vector("authorization-request.http"))[0].code == 200  # cached
    env.server.reactor.advance(env.core.config.osp.access_poll_seconds)
    assert (await env.vector("authorization-request.http"))[0].code == 403


@pytest_twisted.ensureDeferred
async def test_disabled_device_is_refused_after_one_poll(env: MemoryEnv) -> None:
    assert (await env.vector("authorization-request.http"))[0].code == 200
    env.core.db.transact_sync(
        device_store.update_device, "1000", "1000", now=datetime.now(UTC), state="disabled"
    )
    env.server.reactor.advance(env.core.config.osp.access_poll_seconds)
    assert (await env.vector("authorization-request.http"))[0].code == 403
    # Enabled again: accepted again, by the same signal.
    env.core.db.transact_sync(
        device_store.update_device, "1000", "1000", now=datetime.now(UTC), state="active"
    )
    env.server.reactor.advance(env.core.config.osp.access_poll_seconds)
    assert (await env.vector("authorization-request.http"))[0].code == 200


@pytest_twisted.ensureDeferred
async def test_certificate_from_our_ca_but_not_recorded_is_refused(env: Env) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = validate_csr(_csr(key), profile="secure")
    cert = env.core.ca.issue_device_certificate(
        csr,
        DeviceSubject(customer_id="1000", device_id="1000"),
        validity=timedelta(days=1),
        now=datetime.now(UTC),
    )
    rogue = save_device(env.tmp_path, "rogue", key, cert)
    assert (await env.vector("authorization-request.http", device=rogue))[0].code == 403


def _handshake_fails(port: int, device: Device | None, ca_pem: Path | None = None) -> str:
    """Try a TLS handshake plus one request; return what happened."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if device is not None:
        context.load_cert_chain(str(device.cert_path), str(device.key_path))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"POST /osp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                data = tls.recv(100)
                return "answered " + data[:12].decode("latin-1") if data else "closed"
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e}"


@pytest_twisted.ensureDeferred
async def test_foreign_and_expired_certificates_fail_the_handshake(env_tls: Env) -> None:
    env = env_tls
    intruder = save_device(env.tmp_path, "intruder", *self_signed("intruder", ca=False))
    result = await deferToThread(_handshake_fails, env.server.https_port, intruder)
    assert result.startswith("refused") or result == "closed", result

    # Expired, though issued by our CA and recorded.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = validate_csr(_csr(key), profile="secure")
    # Our CA cannot backdate past its own notBefore: issue a one-second certificate,
    # record it like any other, and let it expire.
    cert = env.core.ca.issue_device_certificate(
        csr,
        DeviceSubject(customer_id="1000", device_id="1000"),
        validity=timedelta(seconds=1),
        now=datetime.now(UTC),
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    env.core.db.transact_sync(
        cert_store.insert_certificate,
        serial=cert.serial_number,
        device_pk=1,
        kind="device",
        subject="expired",
        sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        profile="secure",
        now=datetime.now(UTC),
    )
    await deferToThread(time.sleep, 2.5)
    expired = save_device(env.tmp_path, "expired", key, cert)
    result = await deferToThread(_handshake_fails, env.server.https_port, expired)
    assert result.startswith("refused") or result == "closed", result


@pytest_twisted.ensureDeferred
async def test_mtls_required_listener(env_tls: Env) -> None:
    env = env_tls
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tests.integration.harness import reactor

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        env.server.components.osp_mtls_factory()
    )
    try:
        number = port.getHost().port
        with capturedLogs() as events:
            result = await deferToThread(_handshake_fails, number, None)
        assert result.startswith("refused") or result == "closed", result
        # Logged once, at info, with the peer and OpenSSL's reason.
        failed = [formatEvent(e) for e in events if "TLS with" in formatEvent(e)]
        assert len(failed) == 1, failed
        assert "127.0.0.1 on osp failed: peer did not return a certificate" in failed[0]
        _, body = split_vector(OSP / "authorization-request.http")
        head, _ = split_vector(OSP / "authorization-request.http")
        answer = await deferToThread(
            exchange_sync,
            number,
            build_request(head, body),
            tls=True,
            client_cert=(env.device.cert_path, env.device.key_path),
        )
        assert answer.code == 200
    finally:
        await maybeDeferred(port.stopListening)


# --- hostile input --------------------------------------------------------------


HOSTILE = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><Message>&b;</Message>',
    "external entity": b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM '
    b'"file:///etc/passwd">]><Message>&x;</Message>',
    "deep nesting": b"<Message>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</Message>",
    "garbage": b"\xff\xfe\x00not xml",
    "empty": b"",
    "truncated": b'<?xml version="1.0"?><Message messageId="1"><AuthorizationRequest',
    "unknown message": b'<?xml version="1.0"?><Message messageId="1" random="2">'
    b'<Nonsense componentId="1"/></Message>',
}


@pytest_twisted.ensureDeferred
async def test_hostile_xml_is_4xx_never_5xx(env: Env) -> None:
    for name, body in HOSTILE.items():
        answer = await env.post(body)
        assert 400 <= answer.code < 500 or answer.code == 501, (name, answer.status_line)
        assert b"Traceback" not in answer.body
    oversized = await env.post(b"<Message>" + b"x" * (300 * 1024) + b"</Message>")
    assert oversized.code == 413


@pytest_twisted.ensureDeferred
async def test_answer_heads_follow_the_rules(env: Env) -> None:
    answer, _ = await env.vector("authorization-request.http")
    assert re.match(rb"HTTP/1\.1 200 OK", answer.status_line)
    assert answer.header(b"content-type") == b"text/plain"
    assert answer.header(b"transfer-encoding") is None
    assert len(answer.head) + 4 < 1024


# --- reauthorization for patched clients, routes from storage through the real service ---

env_fixed_reauth = _env_fixture(osp={"reauthorization_fixed_clients": True})


@pytest_twisted.ensureDeferred
async def test_reauthorization_for_fixed_clients(env_fixed_reauth: Env) -> None:
    env = env_fixed_reauth
    answer, _ = await env.vector("authorization-request.http")
    transaction_id = (
        ElementTree.fromstring(answer.body).findtext("AuthorizationResponse/TransactionId") or ""
    )
    head, body = split_vector(OSP / "reauthorization-request.http")
    body = body.replace(
        b"\n1000000001</TransactionId>", b"\n" + transaction_id.encode() + b"</TransactionId>"
    )
    reply = await env.post(body, head=head)
    assert reply.code == 200 and reply.header(b"content-type") == b"text/plain"
    response = ElementTree.fromstring(reply.body).find("ReauthorizationResponse")
    assert response is not None
    assert response.findtext("Status/Code") == "200"
    assert response.findtext("TransactionId") == transaction_id
    assert response.findtext("Destination/Token")
    # An unknown transaction gets an error status and no destination.
    unknown = await env.post(split_vector(OSP / "reauthorization-request.http")[1], head=head)
    missing = ElementTree.fromstring(unknown.body).find("ReauthorizationResponse")
    assert missing is not None and missing.findtext("Status/Code") == "404"
    assert missing.find("Destination") is None


@pytest_twisted.ensureDeferred
async def test_imported_routes_reach_the_running_service(tmp_path: Path, database_url: str) -> None:
    """The composition root's service tree: routes imported into storage (as osp-admin
    does from another process) are picked up without a restart."""
    from osp_server.app import build_service
    from osp_server.routing.refresh import RouteRefresher
    from osp_server.services import ListenerService
    from osp_server.storage import routes as route_store
    from tests.integration.harness import reactor

    config = make_config(
        tmp_path,
        database_url,
        enrollment={"throttle_per_address": 1000},
        osp={"route_refresh_seconds": 0.5},
    )
    top = build_service(config, reactor)
    top.startService()
    try:
        refresher = top.getServiceNamed("routes")
        assert isinstance(refresher, RouteRefresher)
        await refresher.when_loaded()
        https = top.getServiceNamed("https")
        assert isinstance(https, ListenerService)
        for _ in range(100):
            if https.port is not None:
                break
            await deferToThread(time.sleep, 0.05)
        assert https.port is not None
        server = RunningServer(
            components=None,  # type: ignore[arg-type]
            http_port=0,
            https_port=https.port.getHost().port,  # type: ignore[attr-defined]
            ports=[],
        )
        db = top.getServiceNamed("core").components.core.db
        add_device_db(db, "1000", "1000")
        device = await deferToThread(enroll, server, tmp_path, "1000", "1000")
        db.transact_sync(
            route_store.import_routes,
            [Route(table="default", prefix="16", destination="[10.7.7.7]:5060")],
            replace=False,
        )
        await refresher.refresh_now()
        head, body = split_vector(OSP / "authorization-request.http")
        answer = await deferToThread(
            exchange_sync,
            server.https_port,
            build_request(head, body),
            tls=True,
            client_cert=(device.cert_path, device.key_path),
        )
        addresses = [d.findtext("DestinationSignalAddress") for d in _destinations(answer.body)]
        assert addresses == ["[10.7.7.7]:5060"]
    finally:
        await top.stopService()


# --- review findings: odd but legal values, storage stalls, foreign transactions ---


@pytest_twisted.ensureDeferred
async def test_odd_request_values_never_give_5xx(env: Env) -> None:
    _, body = split_vector(OSP / "authorization-request.http")
    bad_type = body.replace(b'<SourceInfo type="e164">', b'<SourceInfo type="e 164">')
    assert (await env.post(bad_type)).code == 400
    for called in ("1678é".encode(), b"1678&lt;x", b"16" + b"7" * 5000):
        odd = body.replace(b"\n1678</DestinationInfo>", b"\n" + called + b"</DestinationInfo>")
        assert (await env.post(odd)).code < 500, called[:20]
    split_call_id = body.replace(b"\nMQ==</CallId>", b"\nM\nQ==</CallId>")
    answer = await env.post(split_call_id)
    assert answer.code == 200
    first = _destinations(answer.body)[0]
    assert first.findtext("CallId") == "MQ=="
    _, usage = split_vector(OSP / "usage-indication.http")
    huge = re.sub(rb"<TransactionId>\s*\d+", b"<TransactionId>\n18446744073709551000", usage)
    reply = await env.post(huge)
    assert reply.code == 200
    rows = env.core.db.transact_sync(calls.usage_for_transaction, 18446744073709551000)
    assert len(rows) == 2 and rows[0]["transaction_id"] == 18446744073709551000


@pytest_twisted.ensureDeferred
async def test_stalled_storage_gives_503(env_tls: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_tls
    env.server.components.authenticator.invalidate()
    original = cert_store.presented_certificate_txn

    def slow(conn: Any, sha256: str) -> Any:
        time.sleep(1.5)
        return original(conn, sha256)

    monkeypatch.setattr(cert_store, "presented_certificate_txn", slow)
    monkeypatch.setattr(env.core.db, "_timeout", 0.3)
    answer, _ = await env.vector("authorization-request.http")
    assert answer.code == 503
    await deferToThread(time.sleep, 1.5)  # let the stalled thread finish


@pytest_twisted.ensureDeferred
async def test_only_the_authorized_device_ends_its_call(env: Env) -> None:
    ended = spy_call_ended(env)
    answer, _ = await env.vector("authorization-request.http")
    txid = ElementTree.fromstring(answer.body).findtext("AuthorizationResponse/TransactionId") or ""
    _, usage = split_vector(OSP / "usage-indication.http")
    mine = re.sub(rb"<TransactionId>\s*\d+", b"<TransactionId>\n" + txid.encode(), usage)
    add_device(env.server, "1000", "2000")
    other = await enroll_device(env, "1000", "2000")
    foreign = mine.replace(b"\n1000</DeviceId>", b"\n2000</DeviceId>")
    assert (await env.post(foreign, device=other)).code == 200
    assert ended == []
    assert (await env.post(mine)).code == 200
    assert ended and set(ended) == {int(txid)}
