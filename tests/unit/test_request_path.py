"""Per-request work the /osp path no longer repeats: the client certificate is read and
hashed once per connection, and POST bodies are never parsed as forms."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from osp_server.tls.identity import peer_certificate
from osp_server.web.site import CappedRequest, OSPSite
from tests.memory import MemoryReactor, PeerTransport


def _certificate() -> x509.Certificate:
    from datetime import UTC, datetime, timedelta

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


class CountingTransport(PeerTransport):
    """Counts how often the TLS layer is asked for the peer certificate."""

    asked = 0

    def getPeerCertificate(self) -> Any:
        self.asked += 1
        return super().getPeerCertificate()


def _request_on(channel: DummyChannel) -> Request:
    request = Request(channel)
    return request


def test_peer_certificate_is_read_once_per_connection() -> None:
    from twisted.internet.address import IPv4Address

    address = IPv4Address("TCP", "127.0.0.1", 40000)
    for certificate in (_certificate(), None):
        channel = DummyChannel()
        transport = CountingTransport(certificate, address)
        channel.transport = transport  # type: ignore[assignment]
        first = peer_certificate(_request_on(channel))
        second = peer_certificate(_request_on(channel))
        assert transport.asked == 1
        assert first is second
        assert (first is None) == (certificate is None)
    # Another connection reads its own.
    other = DummyChannel()
    other_transport = CountingTransport(_certificate(), address)
    other.transport = other_transport  # type: ignore[assignment]
    assert peer_certificate(_request_on(other)) is not None
    assert other_transport.asked == 1


def test_post_bodies_are_not_parsed_as_forms() -> None:
    channel = DummyChannel()
    channel.site = OSPSite(Resource(), reactor=MemoryReactor(), name="test")
    request = CappedRequest(channel)
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])
    request.content = BytesIO(b"a=b&c=d")
    request.content.seek(0, 2)
    handled: list[dict[bytes, list[bytes]]] = []
    request.process = lambda: handled.append(dict(request.args))  # type: ignore[method-assign]
    request.requestReceived(b"POST", b"/tep?x=1", b"HTTP/1.1")
    # The query string still is (getcacert is a GET with one); the body is left alone.
    assert handled == [{b"x": [b"1"]}]
    assert request.content.read() == b"a=b&c=d"
