"""The real service on loopback ports: /health, TLS handshake, per-request limits."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from treq.client import HTTPClient

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from osp_server import __version__
from osp_server.config import Config
from tests.conftest import make_config
from tests.integration.harness import RunningServer, reactor, run_server


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return make_config(tmp_path, database_url)


@pytest_twisted.async_yield_fixture
async def server(config: Config) -> AsyncIterator[RunningServer]:
    async for running in run_server(config):
        yield running


def _client() -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@pytest_twisted.ensureDeferred
async def test_health_reports_storage(server: RunningServer) -> None:
    from twisted.internet.threads import deferToThread

    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = await deferToThread(_raw_exchange, server.http_port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(body) == {"status": "ok", "storage": "ok", "version": __version__}
    assert f"Content-Length: {len(body)}".encode() in head.split(b"\r\n")
    assert b"Content-Type: application/json" in head.split(b"\r\n")


@pytest_twisted.ensureDeferred
async def test_health_is_503_when_storage_fails(server: RunningServer) -> None:
    from twisted.internet.defer import fail

    probe = server.components.core.storage_probe
    db = server.components.core.db

    def broken() -> Deferred[bool]:
        return fail(RuntimeError("database gone"))

    db.ping = broken  # type: ignore[method-assign]
    assert await probe.probe_once() is False
    response = await _client().get(server.http_url + "/health")
    assert response.code == 503
    assert json.loads(await response.content())["storage"] == "unavailable"


@pytest_twisted.ensureDeferred
async def test_health_answers_from_the_probe_while_storage_stalls(
    server: RunningServer,
) -> None:
    """A fresh verdict is served without touching storage (R5: answers stay fast)."""
    probe = server.components.core.storage_probe
    assert await probe.probe_once() is True
    db = server.components.core.db

    def stalled() -> Deferred[bool]:
        return Deferred()  # never answers

    db.ping = stalled  # type: ignore[method-assign]
    response = await _client().get(server.http_url + "/health")
    assert response.code == 200


def _handshake(port: int, ca_pem: bytes, tmp_path: Path) -> tuple[str, x509.Certificate]:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_pem)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False  # the toolkit sends no SNI and checks no name
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return str(tls.version()), x509.load_der_x509_certificate(der)


@pytest_twisted.ensureDeferred
async def test_https_listener_presents_a_certificate_from_our_ca(
    server: RunningServer, config: Config, tmp_path: Path
) -> None:
    from twisted.internet.threads import deferToThread

    ca_pem = config.ca.cert_file.read_bytes()
    version, cert = await deferToThread(_handshake, server.https_port, ca_pem, tmp_path)
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    # The server certificate is recorded like every certificate we issue.
    records = server.components.core.db.transact_sync(
        __import__("osp_server.storage.certificates", fromlist=["x"]).list_certificates,
        kind="server",
    )
    assert [r.serial for r in records] == [format(cert.serial_number, "x")]
    # And the key file is private.
    assert (config.tls.key_file.stat().st_mode & 0o777) == 0o600
    assert (config.ca.key_file.stat().st_mode & 0o777) == 0o600


def _old_tls(port: int) -> str:
    import warnings

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # the deprecation is the point of this test
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw):
                return "connected"
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e}"


@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused(server: RunningServer) -> None:
    from twisted.internet.threads import deferToThread

    result = await deferToThread(_old_tls, server.https_port)
    assert result.startswith("refused")


def _tls12_with(port: int, ciphers: str) -> str:
    """A TLS 1.2 handshake offering only ``ciphers``: the suite agreed, or why not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                cipher = tls.cipher()
                return cipher[0] if cipher else "?"
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e}"


@pytest_twisted.ensureDeferred
async def test_tls_1_2_takes_only_ecdhe_with_aead(server: RunningServer) -> None:
    """SECURITY.md P12: no CBC, no static RSA key exchange (the Mozilla intermediate
    profile); ECDHE with AES-GCM or ChaCha20-Poly1305 is accepted."""
    from twisted.internet.threads import deferToThread

    port = server.https_port
    for refused in (
        "AES128-SHA",
        "AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-SHA",
        "DHE-RSA-AES128-GCM-SHA256",
    ):
        result = await deferToThread(_tls12_with, port, refused)
        assert result.startswith("refused"), (refused, result)
    for accepted in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"):
        assert await deferToThread(_tls12_with, port, accepted) == accepted


def _openssl_groups(port: int, groups: str) -> str:
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-groups", groups, "-brief"],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    return "connected" if result.returncode == 0 else "refused"


@pytest_twisted.ensureDeferred
async def test_key_exchange_groups_are_x25519_p256_p384(server: RunningServer) -> None:
    from twisted.internet.threads import deferToThread

    for group in ("X25519", "P-256", "P-384"):
        assert await deferToThread(_openssl_groups, server.https_port, group) == "connected"
    for group in ("X448", "P-521"):
        assert await deferToThread(_openssl_groups, server.https_port, group) == "refused"


def _raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_oversized_body_gets_413_before_it_is_sent(server: RunningServer) -> None:
    from twisted.internet.threads import deferToThread

    head = b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 209715200\r\n\r\n"
    answer = await deferToThread(_raw_exchange, server.http_port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest_twisted.ensureDeferred
async def test_slow_request_is_cut_at_the_deadline(tmp_path: Path, database_url: str) -> None:
    from twisted.internet.threads import deferToThread

    config = make_config(tmp_path, database_url, listeners={"request_timeout_seconds": 1.0})

    def slowloris(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            import time

            received = b""
            for _ in range(40):  # trickle one header byte every 0.1 s for up to 4 s
                time.sleep(0.1)
                try:
                    s.sendall(b"X")
                    s.settimeout(0.01)
                    received += s.recv(100)
                    if not received:
                        return b"closed"
                except (BlockingIOError, TimeoutError):
                    continue
                except OSError:
                    return b"closed"
                finally:
                    s.settimeout(10)
            return b"still open"

    async for running in run_server(config):
        result = await deferToThread(slowloris, running.http_port)
        assert result == b"closed"


def _oversized_head_over_tls(port: int) -> tuple[float, bytes]:
    import time

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw) as tls:
            started = time.monotonic()
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: osp\r\nX-Big: " + b"a" * 100_000)
            answer = tls.recv(200)
            return time.monotonic() - started, answer


@pytest_twisted.ensureDeferred
async def test_an_oversized_header_line_over_tls_gets_431_at_once(server: RunningServer) -> None:
    """It used to get no answer, and the connection was held until the request
    deadline (30 s)."""
    from twisted.internet.threads import deferToThread

    seconds, answer = await deferToThread(_oversized_head_over_tls, server.https_port)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert seconds < 10  # not held until the 30 s request deadline


def _alpn(port: int) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.selected_alpn_protocol()


@pytest_twisted.ensureDeferred
async def test_only_http_1_1_is_negotiated(server: RunningServer) -> None:
    """Under h2 the peer certificate is unreachable, so h2 is never offered."""
    from twisted.internet.threads import deferToThread

    assert await deferToThread(_alpn, server.https_port) == "http/1.1"


@pytest_twisted.ensureDeferred
async def test_connections_over_the_limit_are_closed_on_tls(
    tmp_path: Path, database_url: str
) -> None:
    """Refused TLS connections must be closed, not left without any timeout; at the
    per-address limit it is the older connection without a client certificate that
    is closed, and the new one is served."""
    import time

    from twisted.internet.threads import deferToThread

    def state(sock: socket.socket, wait: float) -> str:
        sock.settimeout(wait)
        try:
            return "closed" if sock.recv(10) == b"" else "data"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        except TimeoutError:
            return "left open"

    def over_limit(port: int) -> tuple[str, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            first.sendall(b"\x16")  # keep the first connection busy in its handshake
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                return state(second, 2), state(first, 5)

    for limit, expected in (
        ({"max_connections": 1}, ("closed", "left open")),
        ({"max_connections_per_address": 1}, ("left open", "closed")),
    ):
        config = make_config(
            tmp_path, database_url, listeners={**limit, "request_timeout_seconds": 30.0}
        )
        async for running in run_server(config):
            assert await deferToThread(over_limit, running.https_port) == expected, limit


@pytest_twisted.ensureDeferred
async def test_413_is_not_followed_by_100_continue(server: RunningServer) -> None:
    from twisted.internet.threads import deferToThread

    head = (
        b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
        b"Content-Length: 209715200\r\n\r\n"
    )
    answer = await deferToThread(_raw_exchange, server.http_port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in answer


def test_bad_tls_names_stop_start_up_with_one_line(tmp_path: Path, database_url: str) -> None:
    from osp_server.app import build_service
    from osp_server.endpoints import StartupError

    config = make_config(tmp_path, database_url, tls={"server_names": ["bad name!"]})
    with pytest.raises(StartupError) as info:
        build_service(config, reactor)
    assert "\n" not in str(info.value) and "bad name!" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_reload_rereads_the_certificate_files(
    server: RunningServer, config: Config, tmp_path: Path
) -> None:
    """SIGHUP: a replaced server certificate is used by new handshakes."""
    from twisted.internet.threads import deferToThread

    ca_pem = config.ca.cert_file.read_bytes()
    _, before = await deferToThread(_handshake, server.https_port, ca_pem, tmp_path)
    # Remove the files: the reload issues a new certificate from our CA.
    config.tls.cert_file.unlink()
    config.tls.key_file.unlink()
    await server.components.reload_tls()
    _, after = await deferToThread(_handshake, server.https_port, ca_pem, tmp_path)
    assert after.serial_number != before.serial_number


@pytest_twisted.ensureDeferred
async def test_reload_renews_ours_on_the_pools_and_deletes_nothing(
    server: RunningServer, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP renews our own expiring certificate: storage through the database pool
    (never transact_sync on the reactor or the CPU pool), the old files kept aside."""
    from datetime import timedelta

    core = server.components.core
    before = server.components.server_certificate.cert

    def no_blocking_storage(*args: object, **kwargs: object) -> None:
        raise AssertionError("transact_sync called during a reload")

    monkeypatch.setattr(core.db, "transact_sync", no_blocking_storage)
    later = before.not_valid_after_utc - timedelta(days=10)  # inside the renewal window
    # The certificate's own clock (it was given core.clock at start-up).
    monkeypatch.setattr(server.components.server_certificate, "_clock", lambda: later)
    old_pem = config.tls.cert_file.read_bytes()
    await server.components.reload_tls()
    after = server.components.server_certificate.cert
    assert after.serial_number != before.serial_number
    previous = config.tls.cert_file.with_name(config.tls.cert_file.name + ".previous")
    assert previous.read_bytes() == old_pem
    assert config.tls.key_file.with_name(config.tls.key_file.name + ".previous").exists()


@pytest_twisted.ensureDeferred
async def test_reload_never_touches_an_operators_files(
    server: RunningServer, config: Config, tmp_path: Path
) -> None:
    """An operator's certificate (not recorded by us) is used as it is, even expiring."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    config.tls.cert_file.write_bytes(pem)
    config.tls.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    await server.components.reload_tls()
    assert server.components.server_certificate.cert == cert
    assert config.tls.cert_file.read_bytes() == pem
    assert not config.tls.cert_file.with_name(config.tls.cert_file.name + ".previous").exists()


@pytest_twisted.ensureDeferred
async def test_reload_renews_the_token_signer_and_a_broken_file_keeps_its_old(
    server: RunningServer, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token signer is renewed while running and the next token is signed by the
    new one; a broken OCSP responder file keeps the responder in use and says why,
    and the rest still reloads."""
    from datetime import timedelta

    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
    from zope.interface import provider

    from osp_server.tls.server import ocsp_responder_paths

    components = server.components
    signer_before = components.token_signer.cert
    responder_before = components.ocsp_responder.cert
    later = signer_before.not_valid_after_utc - timedelta(days=10)
    monkeypatch.setattr(components.token_signer, "_clock", lambda: later)
    responder_cert, _ = ocsp_responder_paths(config.data_dir)
    responder_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
    logged: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, object]) -> None:
        if event.get("log_format"):
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        await components.reload_tls()
    finally:
        globalLogPublisher.removeObserver(observe)
    renewed = components.token_signer.cert
    assert renewed.serial_number != signer_before.serial_number
    signer = components.tokens.signer
    assert signer is not None and signer.certificate == renewed
    assert components.ocsp_responder.cert == responder_before
    assert any(
        "OCSP responder certificate reload failed; keeping the one in use" in line
        for line in logged
    ), logged


def test_periodic_renewal_runs_every_interval_not_at_start() -> None:
    from osp_server.app import PeriodicRenewal
    from tests.memory import MemoryReactor

    clock = MemoryReactor()
    calls: list[float] = []
    renewal = PeriodicRenewal(clock, lambda: calls.append(clock.seconds()), interval=60)
    renewal.startService()
    assert calls == []
    clock.advance(60)
    clock.advance(60)
    assert calls == [60, 120]
    renewal.stopService()
    clock.advance(60)
    assert calls == [60, 120]
