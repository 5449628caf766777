"""The HTTP site every listener uses: body caps, deadlines, HTTP/1.1 only, access log.

Twisted 26 accepts a request body of any size and resets its idle timeout on every
byte, so slow clients could hold a connection forever (SECURITY.md, HTTP catalog).
This module adds what is missing: an early 413 from Content-Length, a cap on
chunked bodies, a deadline for the head (request line and headers) and one for the
whole request, 431 for an oversized header line or head (Twisted closed silently,
and over TLS then waited for the peer until the deadline), a limit of connections
per peer address, and ALPN pinned to HTTP/1.1 (under h2 the client certificate is
unreachable).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from io import BytesIO
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from osp_server.web.responses import error_response, write_response

log = Logger()

DEFAULT_MAX_BODY = 256 * 1024

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 27\r\n"
    b"Connection: close\r\n\r\n"
    b"request headers too large\r\n"
)
# After a 431, how long the peer has to complete the TLS shutdown before the
# connection is aborted.
ABORT_AFTER_SECONDS = 5

_TOO_LARGE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 24\r\n"
    b"Connection: close\r\n\r\n"
    b"request body too large\r\n"
)


def note_device(request: Request, device_id: str) -> None:
    """Name the device a request came from, for the access log line."""
    if isinstance(request, CappedRequest):
        request.osp_device_id = device_id


class RootResource(Resource):
    """A site's root: its children by name, a plain 404 for anything else (Twisted's
    default goes through a deprecated, HTML-unescaped error page)."""

    def getChild(self, path: bytes, request: Any) -> IResource:
        return notFound()


def allowed_methods(resource: object) -> list[bytes]:
    """The methods ``resource`` renders (``render_<METHOD>``), HEAD wherever GET is."""
    methods = {name[len("render_") :] for name in dir(resource) if name.startswith("render_")}
    # Resource.render_HEAD (inherited by every resource) only calls render_GET.
    methods.discard("HEAD")
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(m.encode("ascii") for m in methods if m.isascii() and m.isupper())


def _handles(resource: object, method: bytes) -> bool:
    name = method.decode("ascii", "replace")
    if name == "HEAD":
        return hasattr(resource, "render_GET")
    return hasattr(resource, f"render_{name}")


class CappedRequest(Request):
    """A request that refuses bodies larger than its site's cap, as early as possible.

    ``osp_device_id`` is the device the request came from, once a resource knows it
    (:func:`note_device`); the access log prints it.
    """

    _refused = False
    _received = 0
    osp_device_id: str | None = None

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        return int(getattr(site, "max_body_bytes", DEFAULT_MAX_BODY))

    def _refuse(self) -> None:
        self._refused = True
        self.content = BytesIO()
        # Otherwise Twisted answers "Expect: 100-continue" after our 413.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.write(_TOO_LARGE)
            channel.transport.loseConnection()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        self.started_at = time.monotonic()
        super().requestReceived(command, path, version)

    def render(self, resrc: Any) -> None:
        # Twisted answers 501 to a method it does not know (PUT, TRACE, DELETE …) and
        # an HTML page to one it knows; RFC 9110 wants 405 with Allow for both.  Only
        # resources that dispatch to render_<METHOD> are judged here: an error page
        # (404 …) overrides render and answers any method itself.
        if type(resrc).render is Resource.render and not _handles(resrc, self.method):
            allowed = allowed_methods(resrc)
            self.setHeader(b"allow", b", ".join(allowed))
            write_response(
                self,
                error_response(
                    405,
                    f"method {self.method.decode('ascii', 'replace')} not allowed here; "
                    f"allowed: {b', '.join(allowed).decode('ascii')}",
                ),
            )
            return
        super().render(resrc)


def tls_failure_reason(error: BaseException | None) -> str:
    """OpenSSL's reasons for a failed TLS connection, in its words
    (``tlsv1 alert unknown ca``, ``peer did not return a certificate``)."""
    if error is None:
        return "unknown"
    reasons = []
    details = error.args[0] if error.args else None
    if isinstance(details, list):
        for entry in details:
            if isinstance(entry, tuple) and entry:
                reasons.append(str(entry[-1]))
    return "; ".join(reason for reason in reasons if reason) or str(error) or type(error).__name__


class DeadlineChannel(http.HTTPChannel):
    """An HTTP channel that must receive each whole request within a deadline."""

    site: OSPSite
    _deadline: IDelayedCall | None = None
    _head_deadline: IDelayedCall | None = None
    _head_bytes = 0
    _peer_host: str | None = None
    _closing_since: IDelayedCall | None = None
    _evicted = False

    def evictable(self) -> bool:
        """True when this connection may make way for a new one from its address: no
        client certificate (yet), idle (no request arriving or being answered: the
        request deadline runs from a request's first byte to its answer), not closing."""
        if self._evicted or self._closing_since is not None or self._handlingRequest:
            return False
        if self._deadline is not None:
            return False
        peer_certificate = getattr(self.transport, "getPeerCertificate", None)
        return peer_certificate is None or peer_certificate() is None

    def evict(self) -> None:
        """Close this connection at once to make way for another from its address."""
        self._evicted = True
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._closing_since is not None:
            return  # answered and closing: nothing more is read
        if self._deadline is None and not self._handlingRequest:
            site = self.site
            self._deadline = site.reactor.callLater(site.request_timeout, self._expired)
            self._head_deadline = site.reactor.callLater(site.header_timeout, self._expired)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self._head_bytes += len(line) + 2
        if self._head_bytes > self.totalHeadersSize:
            self._head_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._head_too_large()

    def _head_too_large(self) -> None:
        if self._closing_since is not None:
            return
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.write(_HEAD_TOO_LARGE)
        # Over TLS the socket stays open until the peer answers our close_notify; a
        # peer that never does is cut ABORT_AFTER_SECONDS later, and whatever it sends
        # meanwhile is dropped (dataReceived).
        self._closing_since = self.site.reactor.callLater(ABORT_AFTER_SECONDS, self._abort)
        self.loseConnection()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def allHeadersReceived(self) -> None:
        self._head_bytes = 0
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def _cancel_deadline(self) -> None:
        for call in (self._deadline, self._head_deadline):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._head_deadline = None

    def _expired(self) -> None:
        self._cancel_deadline()
        log.info("closing {peer}: request not received within the deadline", peer=self._peer_host)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(SSL.Error) is not None:
            # Once per connection, with what OpenSSL said: a device with a certificate
            # from another CA, none where one is required, an MD5 one on a normal listener.
            log.info(
                "TLS with {peer} on {listener} failed: {why}",
                peer=self._peer_host,
                listener=self.site.name,
                why=tls_failure_reason(reason.value),
            )
        self._cancel_deadline()
        if self._closing_since is not None and self._closing_since.active():
            self._closing_since.cancel()
        if self._peer_host is not None:
            self.site.connection_closed(self._peer_host, self)
            self._peer_host = None
        super().connectionLost(reason)


class OSPSite(Site):
    """Site for every osp-server listener (see the module docstring)."""

    requestFactory = CappedRequest
    protocol = DeadlineChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: IReactorTime,
        name: str,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        request_timeout: float = 30.0,
        header_timeout: float = 10.0,
        max_connections_per_address: int = 64,
        max_connections: int = 10_000,
        trusted_networks: Sequence[IPv4Network | IPv6Network] = (),
        prefer_authenticated: bool = False,
    ) -> None:
        # No resource here reads form arguments from a POST body (TEP parses its own
        # raw body), and Twisted's parsing built an email.message object for every POST.
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.reactor = reactor
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.header_timeout = min(header_timeout, request_timeout)
        self.timeOut = request_timeout  # idle keep-alive connections
        self.max_connections_per_address = max_connections_per_address
        self.max_connections = max_connections
        self.trusted_networks = tuple(trusted_networks)
        # On a TLS listener, an address at its limit has its oldest connection without
        # a client certificate closed to make way, rather than the new one refused: an
        # attacker behind a device's NAT address cannot hold the device out by keeping
        # anonymous connections open, and authenticated devices are never cut.
        self.prefer_authenticated = prefer_authenticated
        # Each address's open connections, oldest first (their count is the per-address
        # figure; the order picks whom to evict).
        self._channels: dict[str, dict[DeadlineChannel, None]] = {}
        self._open = 0
        self.displayTracebacks = False

    def acceptableProtocols(self) -> list[bytes]:
        """Only HTTP/1.1 is offered over ALPN (under h2 the peer certificate is lost)."""
        return [b"http/1.1"]

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = str(getattr(addr, "host", "?"))
        if self._open >= self.max_connections:
            log.warn(
                "refusing connection from {peer}: {count} connections open on {listener}",
                peer=host,
                count=self._open,
                listener=self.name,
            )
            return None
        open_here = len(self._channels.get(host, ()))
        if open_here >= self.max_connections_per_address and not self._trusted(host):
            victim = self._eviction_candidate(host) if self.prefer_authenticated else None
            if victim is None:
                log.warn("refusing connection from {peer}: too many connections", peer=host)
                return None
            log.warn(
                "connection limit for {peer}: closing its oldest connection without a "
                "client certificate to accept a new one",
                peer=host,
            )
            victim.evict()
        channel = super().buildProtocol(addr)
        if channel is not None:
            self._open += 1
            self._channels.setdefault(host, {})[channel] = None
            channel._peer_host = host
        return channel

    def _eviction_candidate(self, host: str) -> DeadlineChannel | None:
        for channel in self._channels.get(host, ()):
            if channel.evictable():
                return channel
        return None

    def _trusted(self, host: str) -> bool:
        if not self.trusted_networks:
            return False
        try:
            address = ip_address(host)
        except ValueError:
            return False
        # A dual-stack tcp6 listener sees IPv4 peers as ::ffff:a.b.c.d.
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        return any(address in network for network in self.trusted_networks)

    def connection_closed(self, host: str, channel: DeadlineChannel) -> None:
        """Called by a channel when its connection ends."""
        self._open -= 1
        channels = self._channels.get(host)
        if channels is not None:
            channels.pop(channel, None)
            if not channels:
                del self._channels[host]

    def log(self, request: http.Request) -> None:
        """One structured access event per request (no free-text Combined Log lines)."""
        started = getattr(request, "started_at", None)
        elapsed_ms = None if started is None else round((time.monotonic() - started) * 1000, 2)
        peer = getattr(request.getClientAddress(), "host", None)
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")[:200]
        device_id = request.osp_device_id if isinstance(request, CappedRequest) else None
        # The text line is rendered here with an f-string: the logger's own formatting
        # (string.Formatter over nine fields) cost twice as much on every request.
        # JSON observers still get every field.
        log.info(
            "{access_line}",
            access_line=(
                f"{self.name} {method} {path} {request.code} {request.sentLength}B "
                f"{elapsed_ms}ms from {peer} device={device_id}"
            ),
            listener=self.name,
            method=method,
            path=path,
            code=request.code,
            length=request.sentLength,
            elapsed_ms=elapsed_ms,
            peer=peer,
            device_id=device_id,
        )
