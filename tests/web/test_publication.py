"""/crl, /crl.pem and /ocsp on the plain listener, served by the real server in memory,
checked with openssl as a relying party would."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from osp_server.storage import certificates as cert_store
from tests.conftest import make_config
from tests.integration.test_osp import add_device_db
from tests.memory import MemoryDevice, MemoryServer, enroll_in_memory, memory_server

OPENSSL = shutil.which("openssl")


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[MemoryServer]:
    config = make_config(
        tmp_path,
        database_url,
        ca={"public_url": "http://osp.example.net:5045/"},
        enrollment={"throttle_per_address": 1000},
    )
    for server in memory_server(config):
        add_device_db(server.core.db, "1000", "1000")
        yield server


def _get(server: MemoryServer, path: bytes) -> tuple[bytes, bytes]:
    raw = server.exchange(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path, site="http")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw[:200]
    content_type = [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-type:")
    ]
    return content_type[0], body


def _post_ocsp(server: MemoryServer, request: bytes) -> ocsp.OCSPResponse:
    raw = server.exchange(
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(request), request),
        site="http",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"application/ocsp-response" in head
    return ocsp.load_der_ocsp_response(body)


def _revoke(server: MemoryServer, device: MemoryDevice, reason: str) -> None:
    server.core.db.transact_sync(
        cert_store.revoke,
        format(device.cert.serial_number, "x"),
        now=datetime.now(UTC),
        reason=reason,
    )
    server.reactor.advance(server.core.config.osp.access_poll_seconds)


def test_issued_certificates_name_the_crl_and_the_responder(server: MemoryServer) -> None:
    device = enroll_in_memory(server, "1000", "1000")
    points = device.cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name == [
        x509.UniformResourceIdentifier(
            f"http://osp.example.net:5045/crl/{server.core.ca.key_id_hex}"
        )
    ]
    access = device.cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert access.value[0].access_location.value == "http://osp.example.net:5045/ocsp"


def test_crl_in_der_and_pem_with_reasons(server: MemoryServer, tmp_path: Path) -> None:
    device = enroll_in_memory(server, "1000", "1000")
    content_type, body = _get(server, b"/crl")
    assert content_type == b"application/pkix-crl"
    assert len(list(x509.load_der_x509_crl(body))) == 0
    _revoke(server, device, "keyCompromise")
    # Invalidated by the revocation: the next request rebuilds it.
    crl = x509.load_der_x509_crl(_get(server, b"/crl")[1])
    (entry,) = list(crl)
    assert entry.serial_number == device.cert.serial_number
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert crl.is_signature_valid(server.core.ca.certificate.public_key())
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC)
    content_type, pem = _get(server, b"/crl.pem")
    assert content_type == b"application/x-pem-file"
    assert x509.load_pem_x509_crl(pem) == crl
    # The distribution point issued certificates name: the same CRL, DER and PEM.
    by_key = b"/crl/" + server.core.ca.key_id_hex.encode()
    assert x509.load_der_x509_crl(_get(server, by_key)[1]) == crl
    assert x509.load_pem_x509_crl(_get(server, by_key + b".pem")[1]) == crl
    missing = server.exchange(b"GET /crl/00ff HTTP/1.1\r\nHost: x\r\n\r\n", site="http")
    assert missing.startswith(b"HTTP/1.1 404 ")
    if OPENSSL is None:
        return
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(server.core.ca.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "crl.pem").write_bytes(pem)
    result = subprocess.run(
        [OPENSSL, "crl", "-in", str(tmp_path / "crl.pem"), "-CAfile", str(ca_pem), "-noout",
         "-text"],
        capture_output=True, text=True,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "verify OK" in output and "Key Compromise" in output, output
    assert "X509v3 CRL Number" in output and "Next Update" in output


def test_ocsp_post_and_get(server: MemoryServer) -> None:
    device = enroll_in_memory(server, "1000", "1000")
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(device.cert, server.core.ca.certificate, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    good = _post_ocsp(server, request)
    assert good.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD
    responder = good.certificates[0]
    responder.verify_directly_issued_by(server.core.ca.certificate)
    _revoke(server, device, "cessationOfOperation")
    # RFC 6960 A.1: GET with the URL-escaped base64 of the request.
    encoded = base64.b64encode(request).replace(b"+", b"%2B").replace(b"=", b"%3D")
    content_type, body = _get(server, b"/ocsp/" + encoded)
    revoked = ocsp.load_der_ocsp_response(body)
    assert content_type == b"application/ocsp-response"
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.cessation_of_operation


def test_ocsp_refusals_are_ocsp_answers(server: MemoryServer) -> None:
    assert _post_ocsp(server, b"not der").response_status == (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    _, body = _get(server, b"/ocsp/%%%")
    assert ocsp.load_der_ocsp_response(body).response_status == (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
