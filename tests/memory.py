"""The real server in memory: Core, sites, services and storage, no sockets, no threads.

In the style of Synapse's ``HomeserverTestCase``: the composition root builds every
object as ``twistd osp`` would, on a :class:`MemoryReactor` whose clock the test
advances; the database and CPU pools run their work at once on the calling thread, so
a request's whole answer is written before :meth:`MemoryServer.exchange` returns.
Requests are raw HTTP bytes fed to the real site's protocol, so every answer is the
exact bytes a device would read; a device's client certificate is presented as TLS
would present it (``getPeerCertificate``), without a handshake. What needs real TLS
(handshake refusals, ALPN) stays in the loopback integration tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from osp_server.app import Components, CoreService, build_components, prepare
from osp_server.config import Config
from osp_server.reactor import IOSPReactor
from osp_server.web.site import OSPSite
from tests.conftest import VECTORS
from tests.integration.wire import Answer

OSP_VECTORS = VECTORS / "osp"


@implementer(IOSPReactor)
class MemoryReactor(MemoryReactorClock):
    """A memory reactor whose ``callFromThread`` runs the call at once (no threads).

    It declares :class:`IOSPReactor`, so the type checker compares it with what the
    server calls on its reactor."""

    def callFromThread(
        self,
        callable: Callable[..., Any],  # the interface names it so
        *args: object,
        **kwargs: object,
    ) -> None:
        callable(*args, **kwargs)

    def callInThread(
        self,
        callable: Callable[..., Any],  # the interface names it so
        *args: object,
        **kwargs: object,
    ) -> None:
        callable(*args, **kwargs)

    def getThreadPool(self) -> ThreadPool:
        """The server never uses the reactor's shared pool (it has its own pools)."""
        raise NotImplementedError("the server must not use the reactor's thread pool")

    def suggestThreadPoolSize(self, size: int) -> None:
        """Ignored: there is no reactor thread pool here."""


class ImmediateThreadPool:
    """Stands in for a ThreadPool: runs each piece of work at once, on this thread."""

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None] | None,
        func: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Run ``func`` now and report its result or failure as ThreadPool does."""
        try:
            result = func(*args, **kwargs)
        except BaseException:
            if on_result is not None:
                on_result(False, Failure())
            return
        if on_result is not None:
            on_result(True, result)

    def callInThread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``func`` now."""
        func(*args, **kwargs)


class HeldThreadPool(ImmediateThreadPool):
    """Stands in for a ThreadPool whose workers are stuck: work waits in ``held`` until
    :meth:`release` runs it, so a test can advance the clock past a timeout first."""

    def __init__(self) -> None:
        self.held: list[Callable[[], None]] = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None] | None,
        func: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Keep the work for :meth:`release`."""
        run = super().callInThreadWithCallback
        self.held.append(lambda: run(on_result, func, *args, **kwargs))

    def release(self) -> None:
        """Run everything held, in order."""
        held, self.held = self.held, []
        for work in held:
            work()


class _Certified:
    """What ``getPeerCertificate`` returns: only ``to_cryptography`` is ever called."""

    def __init__(self, certificate: x509.Certificate) -> None:
        self._certificate = certificate

    def to_cryptography(self) -> x509.Certificate:
        return self._certificate


class PeerTransport(StringTransport):
    """A connection whose client presented ``certificate`` in its TLS handshake."""

    def __init__(self, certificate: x509.Certificate | None, peer: IPv4Address) -> None:
        super().__init__(peerAddress=peer)
        self._certificate = certificate

    def getPeerCertificate(self) -> _Certified | None:
        return None if self._certificate is None else _Certified(self._certificate)


@dataclass
class MemoryServer:
    """The composed server, with helpers to talk to it as a device would."""

    reactor: MemoryReactor
    components: Components

    @property
    def core(self) -> Any:
        return self.components.core

    def exchange(
        self,
        raw_request: bytes,
        *,
        site: str = "https",
        certificate: x509.Certificate | None = None,
        peer: str = "127.0.0.1",
    ) -> bytes:
        """Send ``raw_request`` (HTTP bytes) on a new connection; the raw answer.

        ``site`` is ``https`` (the TLS listener's site) or ``http`` (the plain one);
        ``certificate`` is what the client presented in its handshake.
        """
        connection = self.connect(raw_request, site=site, certificate=certificate, peer=peer)
        answer = connection.answer()
        connection.close()
        return answer

    def connect(
        self,
        raw_request: bytes,
        *,
        site: str = "https",
        certificate: x509.Certificate | None = None,
        peer: str = "127.0.0.1",
    ) -> MemoryConnection:
        """Send ``raw_request`` on a new connection and keep it open: for answers that
        wait on something (held database work, the clock)."""
        chosen: OSPSite = (
            self.components.https_site if site == "https" else self.components.http_site
        )
        address = IPv4Address("TCP", peer, 40000)
        protocol = chosen.buildProtocol(address)
        assert protocol is not None, "the site refused the connection"
        transport = PeerTransport(certificate, address)
        protocol.makeConnection(transport)
        protocol.dataReceived(raw_request)
        return MemoryConnection(protocol, transport)


@dataclass
class MemoryConnection:
    """One open connection to an in-memory site."""

    protocol: Any
    transport: PeerTransport

    def answer(self) -> bytes:
        """Everything the server has written so far."""
        written: bytes = self.transport.value()
        return written

    def close(self) -> None:
        """The client goes away."""
        self.protocol.connectionLost(Failure(ConnectionError("test done")))


def memory_server(config: Config) -> Iterator[MemoryServer]:
    """Build the server from ``config`` in memory; stop it afterwards (a generator for
    a pytest fixture)."""
    reactor = MemoryReactor()
    core = prepare(config, reactor)
    immediate = cast(ThreadPool, ImmediateThreadPool())
    core.db._pool = immediate  # test-only: the database pools run work at once
    core.db._read_pool = immediate
    core.db._peek_pool = immediate
    core.cpu_pool = immediate
    components = build_components(core)
    components.change_watcher.listen = False  # no LISTEN thread: the clock drives polls
    service = CoreService(components)
    service.startService()
    try:
        yield MemoryServer(reactor, components)
    finally:
        service.stopService()


@dataclass(frozen=True)
class MemoryDevice:
    """An enrolled device: its ids and the certificate it presents."""

    customer_id: str
    device_id: str
    cert: x509.Certificate
    key: Any = None
    """The device's private key (RSA), where the test made it."""


def enroll_in_memory(
    server: MemoryServer, customer_id: str, device_id: str, password: str = "secret"
) -> MemoryDevice:
    """Enroll over TEP on the HTTPS site as a device would (the real request path:
    argon2 check, CSR policy, signing, recording); the device must exist with the user
    name ``gw<device_id>`` and ``password``."""
    import base64

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from osp_server.enrollment.wire import TepOperation, encode_fields, parse_client_view

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gw{device_id}")]))
        .sign(key, hashes.SHA256())
    )
    body = encode_fields(
        [
            ("operation", b"request"),
            ("nonce", b"%s\x00" % device_id.encode()),
            ("username", b"gw" + device_id.encode()),
            ("password", password.encode()),
            ("device", device_id.encode()),
            ("customer", customer_id.encode()),
            ("request", base64.b64encode(csr.public_bytes(serialization.Encoding.DER))),
        ]
    )
    raw = (
        b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/html\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    answer = server.exchange(raw)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    status, der = parse_client_view(payload, operation=TepOperation.REQUEST)
    assert status == "0" and der is not None, payload
    return MemoryDevice(customer_id, device_id, x509.load_der_x509_certificate(der), key)


@dataclass
class MemoryEnv:
    """A device talking OSP to an in-memory server: the same ``post``/``vector`` calls
    as the loopback integration environment (``tests.integration.test_osp.Env``)."""

    server: MemoryServer
    tmp_path: Path
    device: MemoryDevice

    @property
    def core(self) -> Any:
        return self.server.core

    async def post(self, body: bytes, *, device: Any = True, head: bytes | None = None) -> Answer:
        """POST ``body`` to /osp (``head``: the captured request head to reuse).

        ``device``: True for the enrolled device, None or False for no certificate, or
        any device object with a ``cert`` (the certificate it presents).
        """
        from tests.integration.wire import build_request, split_vector

        if head is None:
            head, _ = split_vector(OSP_VECTORS / "authorization-request.http")
        chosen = self.device if device is True else (device or None)
        certificate = None if chosen is None else chosen.cert
        raw = self.server.exchange(build_request(head, body), certificate=certificate)
        answer_head, _, answer_body = raw.partition(b"\r\n\r\n")
        return Answer(answer_head, answer_body)

    async def vector(self, name: str, **kw: Any) -> tuple[Answer, bytes]:
        """POST a captured request from tests/vectors/osp/."""
        from tests.integration.wire import split_vector

        path = OSP_VECTORS / name
        if name.endswith(".http"):
            head, body = split_vector(path)
            return await self.post(body, head=head, **kw), body
        body = path.read_bytes()
        return await self.post(body, **kw), body


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def http_status(answer: bytes) -> int | None:
    """The status code of a raw answer, None when it does not start with a status line
    (no answer at all: an incomplete request, or a closed connection)."""
    match = _STATUS_LINE.match(answer)
    return None if match is None else int(match[1])
