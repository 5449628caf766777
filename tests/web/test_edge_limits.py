"""The HTTP edge (SECURITY.md, HTTP catalog): the head must arrive within the header
deadline, the whole request within the request deadline, and an oversized header line
or head gets 431 at once (Twisted closed silently, and over TLS then held the
connection until the request deadline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.conftest import make_config
from tests.memory import MemoryServer, memory_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MemoryServer]:
    config = make_config(
        tmp_path, listeners={"header_timeout_seconds": 10.0, "request_timeout_seconds": 30.0}
    )
    yield from memory_server(config)


def test_a_slow_head_is_cut_at_the_header_deadline(server: MemoryServer) -> None:
    connection = server.connect(b"GET /health HTTP/1.1\r\nHost: osp\r\n", site="http")
    for _ in range(9):
        server.reactor.advance(1.0)
        connection.protocol.dataReceived(b"X-Trickle: 1\r\n")
    assert not connection.transport.disconnecting
    server.reactor.advance(1.0)
    assert connection.transport.disconnecting or connection.transport.disconnected
    assert connection.answer() == b""


def test_a_complete_head_then_a_slow_body_gets_the_request_deadline(
    server: MemoryServer,
) -> None:
    head = b"POST /tep HTTP/1.1\r\nHost: osp\r\nContent-Length: 100\r\n\r\n"
    connection = server.connect(head + b"operation=", site="http")
    server.reactor.advance(20.0)  # past the header deadline: the head was complete
    assert not connection.transport.disconnecting
    server.reactor.advance(10.0)
    assert connection.transport.disconnecting or connection.transport.disconnected


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * 100_000 + b"\r\n",  # one line over the limit
        b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 900) for i in range(30)),  # many lines
    ],
)
def test_oversized_heads_get_431_at_once(server: MemoryServer, head: bytes) -> None:
    connection = server.connect(b"GET /health HTTP/1.1\r\nHost: osp\r\n" + head + b"\r\n")
    answer = connection.answer()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:100]
    assert answer.endswith(b"request headers too large\r\n")
    assert connection.transport.disconnecting


def test_a_normal_request_is_unaffected(server: MemoryServer) -> None:
    answer = server.exchange(b"GET /health HTTP/1.1\r\nHost: osp\r\n\r\n", site="http")
    assert answer.startswith(b"HTTP/1.1 200 ")


def _limited(tmp_path: Path, **listeners: object) -> Iterator[MemoryServer]:
    return memory_server(make_config(tmp_path, listeners=listeners))


def _open_channel(server: MemoryServer, peer: str) -> Any:
    from twisted.internet.address import IPv4Address

    # The plain listener: at the limit it refuses (TLS listeners may close an
    # anonymous connection instead, tested below).
    site = server.components.http_site
    return site.buildProtocol(IPv4Address("TCP", peer, 40000))


def _open(server: MemoryServer, peer: str) -> bool:
    return _open_channel(server, peer) is not None


def test_trusted_addresses_are_not_held_to_the_per_address_limit(tmp_path: Path) -> None:
    """An SBC carrying many devices behind one address: an attacker holding that
    address's slots used to lock every device behind it out."""
    for server in _limited(
        tmp_path, max_connections_per_address=2, trusted_addresses=["10.20.0.0/24"]
    ):
        assert [_open(server, "192.0.2.7") for _ in range(3)] == [True, True, False]
        assert all(_open(server, "10.20.0.9") for _ in range(10))
        # The same peer through a dual-stack tcp6 listener.
        assert all(_open(server, "::ffff:10.20.0.9") for _ in range(10))


class _TLSTransport(StringTransport):
    """A TLS connection as a channel sees it: a peer certificate (or none yet)."""

    def __init__(self, certificate: object | None) -> None:
        super().__init__()
        self.certificate = certificate
        self.aborted = False

    def getPeerCertificate(self) -> object | None:
        return self.certificate

    def abortConnection(self) -> None:
        self.aborted = True


def _connect(
    server: MemoryServer, peer: str, certificate: object | None = None, site: str = "https"
) -> _TLSTransport | None:
    from twisted.internet.address import IPv4Address

    listener = getattr(server.components, f"{site}_site")
    channel = listener.buildProtocol(IPv4Address("TCP", peer, 40000))
    if channel is None:
        return None
    transport = _TLSTransport(certificate)
    channel.makeConnection(transport)
    return transport


def test_at_the_limit_anonymous_connections_make_way_for_new_ones(tmp_path: Path) -> None:
    """Devices behind one NAT address with an attacker: the attacker's connections
    without a client certificate no longer hold the devices out, and a device's
    authenticated connection is never the one closed."""
    for server in _limited(tmp_path, max_connections_per_address=3):
        device = _connect(server, "192.0.2.7", certificate="device certificate")
        attacker = [_connect(server, "192.0.2.7") for _ in range(2)]
        assert device is not None and all(attacker)
        # At the limit: each new connection closes the oldest anonymous one.
        newcomer = _connect(server, "192.0.2.7")
        assert newcomer is not None
        assert [t.aborted for t in attacker if t] == [True, False]
        assert not device.aborted
        # One whose request is arriving, or being answered, is not cut either.
        channels = list(server.components.https_site._channels["192.0.2.7"])
        channels[-1].dataReceived(b"POST /tep HTTP/1.1\r\nHost: osp\r\n")  # head on its way
        for channel in channels[:-1]:
            channel._handlingRequest = True
        assert _connect(server, "192.0.2.7") is None
        # Other addresses are not affected, and the plain HTTP listener refuses as before.
        assert _connect(server, "198.51.100.1") is not None
        assert [_connect(server, "203.0.113.5", site="http") for _ in range(4)][-1] is None


def test_authenticated_connections_are_never_closed_for_new_ones(tmp_path: Path) -> None:
    for server in _limited(tmp_path, max_connections_per_address=2):
        devices = [_connect(server, "192.0.2.7", certificate="cert") for _ in range(2)]
        assert _connect(server, "192.0.2.7") is None
        assert not any(t.aborted for t in devices if t)
        # A closed connection frees its slot (and leaves the bookkeeping).
        channels = list(server.components.osp_site._channels.get("192.0.2.7", {}))
        assert channels == []
        https = server.components.https_site
        first = next(iter(https._channels["192.0.2.7"]))
        first.connectionLost(Failure(ConnectionDone()))
        assert first not in https._channels["192.0.2.7"]
        assert _connect(server, "192.0.2.7", certificate="cert") is not None


def test_the_listener_cap_counts_everyone_trusted_or_not(tmp_path: Path) -> None:
    for server in _limited(
        tmp_path, max_connections=5, trusted_addresses=["10.20.0.0/24", "2001:db8::/32"]
    ):
        first = _open_channel(server, "192.0.2.0")
        assert first is not None
        assert all(_open(server, f"192.0.2.{i}") for i in range(1, 3))
        assert all(_open(server, "10.20.0.9") for _ in range(2))
        assert not _open(server, "10.20.0.9")
        assert not _open(server, "198.51.100.1")
        # A closed connection frees a slot.
        server.components.http_site.connection_closed("192.0.2.0", first)
        assert _open(server, "198.51.100.1")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["10.0.0.0/33"], "not an address or network"),
        (["example.com"], "not an address or network"),
        ("10.0.0.0/8", "must be a list"),
    ],
)
def test_bad_trusted_addresses_are_refused(tmp_path: Path, value: object, problem: str) -> None:
    from osp_server.config import ConfigError

    with pytest.raises(ConfigError, match=rf"listeners\.trusted_addresses.*{problem}"):
        make_config(tmp_path, listeners={"trusted_addresses": value})


def test_after_a_431_nothing_more_is_read_and_the_connection_is_aborted(
    server: MemoryServer,
) -> None:
    """A peer that keeps sending after the 431 (or never completes the TLS shutdown)
    used to reset the deadlines with every line and hold the connection indefinitely."""
    from osp_server.web.site import ABORT_AFTER_SECONDS

    head = b"GET /health HTTP/1.1\r\nHost: osp\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n"
    connection = server.connect(head)
    answered = connection.answer()
    assert answered.startswith(b"HTTP/1.1 431 ")
    for _ in range(10):
        connection.protocol.dataReceived(b"X-More: " + b"b" * 20_000 + b"\r\n")
        server.reactor.advance(0.4)
    assert connection.answer() == answered  # one answer, nothing read after it
    assert not connection.transport.disconnected
    server.reactor.advance(ABORT_AFTER_SECONDS)
    assert connection.transport.disconnected  # StringTransport.abortConnection


def test_tls_failure_reasons_are_openssls_words() -> None:
    from OpenSSL import SSL

    from osp_server.web.site import tls_failure_reason

    error = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])
    assert tls_failure_reason(error) == "tlsv1 alert unknown ca"
    assert tls_failure_reason(SSL.Error("odd")) == "odd"
    assert tls_failure_reason(None) == "unknown"
