"""CA rollover with devices of both generations served throughout: a device of the old
CA keeps its open connection and makes new ones (verifying the server through the link
certificate); a device enrolled after the rollover gets the new CA and is served; after
``ca retire`` the old CA's device is refused in the handshake."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from osp_server.admin.cli import main as osp_admin
from osp_server.client.enroll import main as osp_enroll
from tests.conftest import VECTORS, make_config
from tests.integration.harness import RunningServer, reactor, run_server
from tests.integration.test_osp import add_device
from tests.integration.wire import build_request, split_vector
from tests.reliability.harness import read_answer

OSP = VECTORS / "osp"


@pytest_twisted.async_yield_fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    config = make_config(tmp_path, database_url)
    (tmp_path / "osp.toml").write_text(
        f'[server]\ndata_dir = "{config.data_dir}"\n[database]\nurl = "{database_url}"\n'
    )
    async for running in run_server(config):
        yield running


def _admin(tmp_path: Path, *argv: str) -> dict[str, object]:
    import io

    out, err = io.StringIO(), io.StringIO()
    code = osp_admin(
        ["--config", str(tmp_path / "osp.toml"), "--json", *argv], stdout=out, stderr=err
    )
    assert code == 0, err.getvalue()
    answer: dict[str, object] = json.loads(out.getvalue())
    return answer


def _enroll(server: RunningServer, out: Path, device: str, fingerprint: str) -> int:
    return osp_enroll(
        [
            "--ca-url", f"{server.http_url}/tep",
            "--url", f"{server.https_url}/tep",
            "--fingerprint", fingerprint,
            "--username", f"gw{device}",
            "--password", "secret",
            "--device", device,
            "--customer", "1000",
            "--out-dir", str(out),
        ]
    )  # fmt: skip


def _context(device_dir: Path, verify: bool = True) -> ssl.SSLContext:
    """A device that verifies the server against the CA it enrolled with, and only it
    (``verify``), presenting its certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if verify:
        context.load_verify_locations(cafile=str(device_dir / "cacert_0.pem"))
    else:
        context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(device_dir / "localcert.pem"), str(device_dir / "pkey.pem"))
    return context


def _request() -> bytes:
    head, body = split_vector(OSP / "authorization-request.http")
    return build_request(head, body)


def _connect(port: int, device_dir: Path, verify: bool = True) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return _context(device_dir, verify).wrap_socket(raw)


def _ask(sock: ssl.SSLSocket) -> int:
    sock.sendall(_request())
    return read_answer(sock)[0]


def _served(port: int) -> x509.Certificate:
    """The certificate the server presents now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _ocsp(port: int, device_dir: Path, issuer_dir: Path | None = None) -> ocsp.OCSPResponse:
    """Ask /ocsp about the device's certificate (as issued by the CA in ``issuer_dir``,
    its own by default); the response, signature checked."""
    import urllib.request

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    cert = x509.load_pem_x509_certificate((device_dir / "localcert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate(((issuer_dir or device_dir) / "cacert_0.pem").read_bytes())
    body = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, ca, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ocsp",
        data=body,
        headers={"Content-Type": "application/ocsp-request"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        answer = ocsp.load_der_ocsp_response(reply.read())
    signer = answer.certificates[0] if answer.certificates else ca
    key = signer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert answer.signature_hash_algorithm is not None
    key.verify(
        answer.signature,
        answer.tbs_response_bytes,
        padding.PKCS1v15(),
        answer.signature_hash_algorithm,
    )
    if signer != ca:
        signer.verify_directly_issued_by(ca)
    return answer


def _crl(port: int, key_id: str) -> x509.CertificateRevocationList:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/crl/{key_id}", timeout=10) as reply:
        return x509.load_der_x509_crl(reply.read())


def _once(port: int, device_dir: Path, verify: bool = True) -> int:
    with _connect(port, device_dir, verify) as sock:
        return _ask(sock)


async def _until(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_rollover_serves_both_generations(server: RunningServer, tmp_path: Path) -> None:
    core = server.components.core
    add_device(server, "1000", "1000")
    old_dir, new_dir = tmp_path / "old-device", tmp_path / "new-device"
    old_ca = core.ca.fingerprint_sha256()
    assert await deferToThread(_enroll, server, old_dir, "1000", old_ca) == 0
    held = await deferToThread(_connect, server.https_port, old_dir)
    try:
        assert await deferToThread(_ask, held) == 200

        rolled = await deferToThread(_admin, tmp_path, "ca", "rollover")
        new_ca = str(rolled["sha256_fingerprint"])
        assert rolled["previous_sha256_fingerprint"] == old_ca and new_ca != old_ca
        assert rolled["subject"] == core.ca.certificate.subject.rfc4514_string()
        # The running server hears of it (osp-admin reload's signal) and reloads.
        await _until(lambda: core.ca.fingerprint_sha256() == new_ca, "the CA to roll over")
        deadline = time.monotonic() + 10
        while not core.ca.issued(await deferToThread(_served, server.https_port)):
            assert time.monotonic() < deadline, "the HTTPS certificate from the new CA"
            await deferLater(reactor, 0.05, lambda: None)

        # The old device: its open connection, and a new one that verifies the server
        # (now the new CA's) through the link certificate.
        assert await deferToThread(_ask, held) == 200
        assert await deferToThread(_once, server.https_port, old_dir) == 200
        # Enrolling now (the same device again: the captured messages name it) gets the
        # new CA from getcacert and a certificate from it.
        assert await deferToThread(_enroll, server, new_dir, "1000", new_ca) == 0
        issued = x509.load_pem_x509_certificate((new_dir / "localcert.pem").read_bytes())
        assert core.ca.issued(issued)
        assert await deferToThread(_once, server.https_port, new_dir) == 200
        assert _admin(tmp_path, "ca", "show")["also_trusted"] == [old_ca]
        # Each CA publishes its own CRL at the key identifier its certificates name.
        old_key_id = (
            x509.load_pem_x509_certificate((old_dir / "cacert_0.pem").read_bytes())
            .extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            .value.digest.hex()
        )
        for key_id, issuer_dir in ((old_key_id, old_dir), (core.ca.key_id_hex, new_dir)):
            crl = await deferToThread(_crl, server.http_port, key_id)
            issuer = x509.load_pem_x509_certificate((issuer_dir / "cacert_0.pem").read_bytes())
            public = issuer.public_key()
            assert isinstance(public, rsa.RSAPublicKey)
            assert crl.is_signature_valid(public)
        # OCSP answers for both generations: the old CA signs for its own certificates.
        for device_dir in (old_dir, new_dir):
            answer = await deferToThread(_ocsp, server.http_port, device_dir)
            assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
        # The old CA asked about a serial the new one issued: not its certificate.
        crossed = await deferToThread(_ocsp, server.http_port, new_dir, old_dir)
        assert crossed.certificate_status == ocsp.OCSPCertStatus.UNKNOWN

        # Retired: the old CA's devices are refused in the handshake; the new ones stay.
        _admin(tmp_path, "ca", "retire", old_ca[:11])
        await _until(lambda: old_ca not in core.trust.fingerprints(), "the old CA retired")
        deadline = time.monotonic() + 10
        while True:  # the TLS contexts are rebuilt once the reload's renewals are done
            try:
                # Not verifying the server: the refusal must be the server's.
                await deferToThread(_once, server.https_port, old_dir, False)
            except (ssl.SSLError, OSError):
                break
            assert time.monotonic() < deadline, "the old CA's device still accepted"
            await deferLater(reactor, 0.05, lambda: None)
        assert await deferToThread(_once, server.https_port, new_dir) == 200
    finally:
        held.close()
