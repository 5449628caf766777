"""Renewal over mutual TLS: a ``request`` without user name and password, authenticated
by the device's current certificate (TEP.md, "Renewal over mutual TLS")."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from osp_server.enrollment.wire import TepOperation, encode_fields, parse_client_view
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from tests.conftest import make_config
from tests.integration.test_osp import _csr, add_device_db
from tests.integration.wire import build_request, split_vector
from tests.memory import OSP_VECTORS, MemoryServer, enroll_in_memory, memory_server


def _server(tmp_path: Path, database_url: str, **enrollment: Any) -> Iterator[MemoryServer]:
    config = make_config(
        tmp_path,
        database_url,
        enrollment={"throttle_per_address": 1000, "renewal_window_days": 3650, **enrollment},
    )
    for server in memory_server(config):
        add_device_db(server.core.db, "1000", "1000")
        add_device_db(server.core.db, "1000", "1001")
        yield server


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[MemoryServer]:
    yield from _server(tmp_path, database_url)


def renew(
    server: MemoryServer,
    presented: x509.Certificate | None,
    *,
    device: str = "1000",
    key: rsa.RSAPrivateKey | None = None,
    nonce: bytes = b"4711\x00",
) -> tuple[str | None, x509.Certificate | None]:
    """POST a renewal as osp-enroll renew does; (status, certificate)."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = encode_fields(
        [
            ("operation", b"request"),
            ("nonce", nonce),
            ("device", device.encode()),
            ("customer", b"1000"),
            ("request", base64.b64encode(_csr(key))),
        ]
    )
    raw = (
        b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/html\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = server.exchange(raw, certificate=presented)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    status, der = parse_client_view(payload, operation=TepOperation.REQUEST)
    return status, None if der is None else x509.load_der_x509_certificate(der)


def osp_code(server: MemoryServer, certificate: x509.Certificate) -> int:
    head, body = split_vector(OSP_VECTORS / "authorization-request.http")
    answer = server.exchange(build_request(head, body), certificate=certificate)
    return int(answer.split(b" ", 2)[1])


def _state(server: MemoryServer, cert: x509.Certificate) -> str:
    record = server.core.db.transact_sync(cert_store.get_by_serial, format(cert.serial_number, "x"))
    return str(record.state)


def test_renewal_without_password(server: MemoryServer) -> None:
    device = enroll_in_memory(server, "1000", "1000")
    status, renewed = renew(server, device.cert)
    assert status == "0" and renewed is not None
    assert renewed.serial_number != device.cert.serial_number
    assert renewed.subject == device.cert.subject
    assert renewed.public_key() != device.cert.public_key()
    # "keep" (the default): both are valid until the old one expires.
    assert _state(server, device.cert) == "valid"
    assert osp_code(server, renewed) == 200 and osp_code(server, device.cert) == 200
    actions = [
        e.action
        for e in server.core.db.transact_sync(_audit_entries)
        if e.detail.get("policy") == "renewal"
    ]
    assert "certificate.sign-intent" in actions


def _audit_entries(conn: Any) -> list[Any]:
    from osp_server.storage import audit

    return audit.recent(conn)


def test_renewal_revokes_the_old_certificate_at_once(tmp_path: Path, database_url: str) -> None:
    for server in _server(tmp_path, database_url, renewal="revoke"):
        device = enroll_in_memory(server, "1000", "1000")
        assert osp_code(server, device.cert) == 200  # cached as good
        status, renewed = renew(server, device.cert)
        assert status == "0" and renewed is not None
        assert _state(server, device.cert) == "revoked"
        # No clock advance: the node that revoked refuses the old one from now on.
        assert osp_code(server, device.cert) == 403
        assert osp_code(server, renewed) == 200
        # The revoked certificate renews nothing.
        assert renew(server, device.cert, nonce=b"4712\x00")[0] == "2"


def test_renewal_before_the_window_is_status_9(tmp_path: Path, database_url: str) -> None:
    for server in _server(tmp_path, database_url, renewal_window_days=30):
        device = enroll_in_memory(server, "1000", "1000")
        assert renew(server, device.cert) == ("9", None)
        # 29 days before expiry it is due.
        later = device.cert.not_valid_after_utc - timedelta(days=29)

        def near_expiry(later: datetime = later) -> datetime:
            return later

        server.components.enrollment._clock = near_expiry
        assert renew(server, device.cert, nonce=b"4712\x00")[0] == "0"


def test_renewal_refusals(server: MemoryServer) -> None:
    device = enroll_in_memory(server, "1000", "1000")
    other = enroll_in_memory(server, "1000", "1001")
    # No certificate, or another device's certificate: denied (2).
    assert renew(server, None) == ("2", None)
    assert renew(server, other.cert, nonce=b"1\x00") == ("2", None)
    # The key of the certificate being renewed: CSR refused (3).
    assert renew(server, device.cert, key=device.key, nonce=b"2\x00") == ("3", None)
    # Expired: denied.
    after = device.cert.not_valid_after_utc + timedelta(seconds=1)
    enrollment = server.components.enrollment
    clock = enrollment._clock
    enrollment._clock = lambda: after
    assert renew(server, device.cert, nonce=b"3\x00") == ("2", None)
    enrollment._clock = clock
    # Disabled device: denied.
    server.core.db.transact_sync(
        device_store.update_device, "1000", "1000", now=clock(), state="disabled"
    )
    assert renew(server, device.cert, nonce=b"4\x00") == ("2", None)


def test_renewal_is_refused_on_plain_http(server: MemoryServer) -> None:
    device = enroll_in_memory(server, "1000", "1000")
    body = b"operation=request&nonce=1%00&device=1000&customer=1000&request=" + base64.b64encode(
        _csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ).replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
    raw = (
        b"POST /tep HTTP/1.1\r\nHost: x\r\ncontent-type: text/html\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answer = server.exchange(raw, site="http", certificate=device.cert)
    assert answer.endswith(b"status=4\n")


def test_a_half_credential_is_malformed(server: MemoryServer) -> None:
    """Only both absent makes a renewal: a user name without a password is status 4."""
    body = encode_fields(
        [
            ("operation", b"request"),
            ("nonce", b"1\x00"),
            ("username", b"gw1000"),
            ("device", b"1000"),
            ("customer", b"1000"),
            ("request", base64.b64encode(b"0\x00")),
        ]
    )
    raw = (
        b"POST /tep HTTP/1.1\r\nHost: x\r\ncontent-type: text/html\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert server.exchange(raw).endswith(b"status=4\n")


def _same_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_a_lost_answer_is_fetched_again_with_the_same_key(
    tmp_path: Path, database_url: str
) -> None:
    """renewal = "revoke": the answer to a renewal is lost after the server revoked the
    old certificate.  The same key (so the same CSR) presenting the old certificate gets
    the stored certificate; another key is refused."""
    for server in _server(tmp_path, database_url, renewal="revoke"):
        device = enroll_in_memory(server, "1000", "1000")
        key = _same_key()
        status, first = renew(server, device.cert, key=key)
        assert status == "0" and first is not None
        assert _state(server, device.cert) == "revoked"
        status, again = renew(server, device.cert, key=key, nonce=b"4712\x00")
        assert status == "0" and again == first
        assert renew(server, device.cert, nonce=b"4713\x00") == ("2", None)


def test_a_certificate_renews_once(server: MemoryServer) -> None:
    """renewal = "keep": the old certificate stays valid, but it renews only once
    (a stolen key cannot keep minting certificates); the same CSR again is the stored
    answer."""
    device = enroll_in_memory(server, "1000", "1000")
    key = _same_key()
    status, renewed = renew(server, device.cert, key=key)
    assert status == "0" and renewed is not None
    assert renew(server, device.cert, nonce=b"4712\x00") == ("2", None)
    assert renew(server, device.cert, key=key, nonce=b"4713\x00") == ("0", renewed)
    # The new certificate renews in its turn.
    assert renew(server, renewed, nonce=b"4714\x00")[0] == "0"


def test_a_revocation_during_the_renewal_wins(server: MemoryServer) -> None:
    """The certificate is revoked after it authenticated the renewal and before the
    issuing transaction: nothing is issued."""
    from datetime import UTC, datetime

    device = enroll_in_memory(server, "1000", "1000")
    enrollment = server.components.enrollment
    original = enrollment._in_thread
    revoked: list[bool] = []

    def revoke_first(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not revoked:
            revoked.append(True)
            server.core.db.transact_sync(
                cert_store.revoke,
                format(device.cert.serial_number, "x"),
                now=datetime.now(UTC),
                reason="keyCompromise",
            )
        return original(fn, *args, **kwargs)

    enrollment._in_thread = revoke_first  # type: ignore[method-assign]
    assert renew(server, device.cert) == ("2", None)
    held = server.core.db.transact_sync(cert_store.list_certificates, device_pk=None, kind="device")
    assert [c.serial for c in held] == [format(device.cert.serial_number, "x")]


def test_a_renewal_over_plain_http_has_no_certificate(tmp_path: Path, database_url: str) -> None:
    """With passwords allowed over plain HTTP, a renewal there still presents no client
    certificate: denied (2)."""
    config = make_config(
        tmp_path,
        database_url,
        enrollment={"allow_plain_http": True, "renewal_window_days": 3650},
    )
    for server in memory_server(config):
        add_device_db(server.core.db, "1000", "1000")
        body = encode_fields(
            [
                ("operation", b"request"),
                ("nonce", b"1\x00"),
                ("device", b"1000"),
                ("customer", b"1000"),
                ("request", base64.b64encode(_csr(_same_key()))),
            ]
        )
        raw = (
            b"POST /tep HTTP/1.1\r\nHost: x\r\ncontent-type: text/html\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert server.exchange(raw, site="http").endswith(b"status=2\n")
