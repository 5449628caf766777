"""A device's whole life against a running server: osp-enroll, then OSP over mutual TLS
with the files it wrote; both profiles (legacy through the opt-in level-0 listener)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509

from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from osp_server.client.enroll import main as osp_enroll
from osp_server.enrollment.service import approve
from osp_server.routing.model import Route
from osp_server.routing.table import RouteTables
from osp_server.storage import enrollments
from tests.conftest import VECTORS, make_config
from tests.integration.harness import RunningServer, reactor, run_server
from tests.integration.test_osp import add_device
from tests.integration.wire import build_request, exchange_sync, split_vector

OSP = VECTORS / "osp"


@dataclass
class Flow:
    server: RunningServer
    tmp_path: Path

    def enroll_argv(self, out: Path, *extra: str) -> list[str]:
        ca = self.server.components.core.ca
        return [
            "--ca-url", f"{self.server.http_url}/tep",
            "--url", f"{self.server.https_url}/tep",
            "--fingerprint", ca.fingerprint_sha256(),
            "--username", "gw1000",
            "--password", "secret",
            "--device", "1000",
            "--customer", "1000",
            "--out-dir", str(out),
            *extra,
        ]  # fmt: skip


def _flow(profile: str) -> Any:
    @pytest_twisted.async_yield_fixture
    async def fixture(tmp_path: Path, database_url: str) -> AsyncIterator[Flow]:
        config = make_config(tmp_path, database_url, ca={"profile": profile})
        async for server in run_server(config):
            server.components.policy.replace(  # type: ignore[attr-defined]
                RouteTables(
                    routes=[Route(table="default", prefix="1", destination="[10.9.9.9]:5060")]
                )
            )
            yield Flow(server, tmp_path)

    return fixture


secure_flow = _flow("secure")
legacy_flow = _flow("legacy")


def _authorize(port: int, out: Path, *, legacy: bool = False) -> int:
    head, body = split_vector(OSP / "authorization-request.http")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy:
        # What a device with an MD5 certificate must do too (OSP.md §5).
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(str(out / "localcert.pem"), str(out / "pkey.pem"))
    answer = exchange_sync(port, build_request(head, body), tls=True, tls_options=context)
    return answer.code


@pytest_twisted.ensureDeferred
async def test_osp_enroll_then_authorize(secure_flow: Flow) -> None:
    add_device(secure_flow.server, "1000", "1000")
    out = secure_flow.tmp_path / "device"
    out.mkdir()
    code = await deferToThread(osp_enroll, secure_flow.enroll_argv(out))
    assert code == 0
    for name in ("cacert_0.pem", "localcert.pem", "pkey.pem"):
        assert (out / name).exists(), name
    assert (out / "pkey.pem").stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate((out / "cacert_0.pem").read_bytes())
    assert ca == secure_flow.server.components.core.ca.certificate
    status = await deferToThread(_authorize, secure_flow.server.https_port, out)
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_osp_enroll_refuses_a_wrong_fingerprint(secure_flow: Flow) -> None:
    add_device(secure_flow.server, "1000", "1000")
    out = secure_flow.tmp_path / "device"
    out.mkdir()
    argv = secure_flow.enroll_argv(out)
    argv[argv.index("--fingerprint") + 1] = "00" * 32
    assert await deferToThread(osp_enroll, argv) != 0
    assert not (out / "localcert.pem").exists()


@pytest_twisted.ensureDeferred
async def test_osp_enroll_waits_while_pending(secure_flow: Flow) -> None:
    add_device(secure_flow.server, "1000", "1000")
    secure_flow.server.components.core.db.transact_sync(
        lambda conn: conn.exec_driver_sql("UPDATE devices SET enrollment_policy = 'manual'")
    )
    core = secure_flow.server.components.core
    out = secure_flow.tmp_path / "device"
    out.mkdir()

    def approve_when_pending() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = core.db.transact_sync(enrollments.list_enrollments, state="pending")
            if pending:
                approve(
                    core.db,
                    pending[0].id,
                    ca=core.ca,
                    config=core.config.enrollment,
                    now=datetime.now(UTC),
                    actor="test",
                )
                return
            time.sleep(0.1)

    approver = threading.Thread(target=approve_when_pending)
    approver.start()
    argv = secure_flow.enroll_argv(out, "--poll-interval", "0.2", "--max-wait", "30")
    code = await deferToThread(osp_enroll, argv)
    approver.join()
    assert code == 0
    assert (out / "localcert.pem").exists()


@pytest_twisted.ensureDeferred
async def test_legacy_device_uses_the_level_0_listener(legacy_flow: Flow) -> None:
    add_device(legacy_flow.server, "1000", "1000")
    out = legacy_flow.tmp_path / "device"
    out.mkdir()
    assert await deferToThread(osp_enroll, legacy_flow.enroll_argv(out)) == 0
    cert = x509.load_pem_x509_certificate((out / "localcert.pem").read_bytes())
    assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_MD5
    # The default listener refuses the MD5 certificate in the handshake...
    with pytest.raises((ssl.SSLError, OSError)):
        await deferToThread(_authorize, legacy_flow.server.https_port, out, legacy=True)
    # ...the opt-in legacy listener accepts it, and the application still checks it.
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        legacy_flow.server.components.legacy_osp_factory()
    )
    try:
        status = await deferToThread(_authorize, port.getHost().port, out, legacy=True)
        assert status == 200
    finally:
        await maybeDeferred(port.stopListening)


@pytest_twisted.async_yield_fixture
async def renewing_flow(tmp_path: Path, database_url: str) -> AsyncIterator[Flow]:
    config = make_config(
        tmp_path, database_url, enrollment={"renewal_window_days": 3650, "renewal": "revoke"}
    )
    async for server in run_server(config):
        server.components.policy.replace(  # type: ignore[attr-defined]
            RouteTables(routes=[Route(table="default", prefix="1", destination="[10.9.9.9]:5060")])
        )
        yield Flow(server, tmp_path)


def _renew_argv(flow: Flow, out: Path) -> list[str]:
    return ["renew", "--url", f"{flow.server.https_url}/tep", "--out-dir", str(out)]


def _files(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("localcert.pem", "pkey.pem")}


@pytest_twisted.ensureDeferred
async def test_osp_enroll_renew_without_password(renewing_flow: Flow) -> None:
    """Enrolled once with the password, the device renews over mutual TLS: a new key and
    certificate replace the old ones, the old certificate is revoked ([enrollment]
    renewal = "revoke") and refused, and the new pair authorizes calls."""
    add_device(renewing_flow.server, "1000", "1000")
    out = renewing_flow.tmp_path / "device"
    assert await deferToThread(osp_enroll, renewing_flow.enroll_argv(out)) == 0
    before = _files(out)
    assert await deferToThread(osp_enroll, _renew_argv(renewing_flow, out)) == 0
    after = _files(out)
    assert after["pkey.pem"] != before["pkey.pem"]
    assert after["localcert.pem"] != before["localcert.pem"]
    assert (out / "pkey.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in out.iterdir()) == ["cacert_0.pem", "localcert.pem", "pkey.pem"]
    assert await deferToThread(_authorize, renewing_flow.server.https_port, out) == 200
    old = renewing_flow.tmp_path / "old"
    old.mkdir()
    for name, data in before.items():
        (old / name).write_bytes(data)
    (old / "pkey.pem").chmod(0o600)
    (old / "cacert_0.pem").write_bytes((out / "cacert_0.pem").read_bytes())
    assert await deferToThread(_authorize, renewing_flow.server.https_port, old) == 403
    # The revoked certificate renews nothing, and the files stay as they were.
    assert await deferToThread(osp_enroll, _renew_argv(renewing_flow, old)) == 2
    assert _files(old) == before


@pytest_twisted.ensureDeferred
async def test_osp_enroll_renew_not_yet_due_changes_nothing(secure_flow: Flow) -> None:
    add_device(secure_flow.server, "1000", "1000")
    out = secure_flow.tmp_path / "device"
    assert await deferToThread(osp_enroll, secure_flow.enroll_argv(out)) == 0
    before = _files(out)
    assert await deferToThread(osp_enroll, _renew_argv(secure_flow, out)) == 0
    assert _files(out) == before
