"""Listening sockets shared between the supervisor and its workers.

The supervisor binds each listener through its Twisted endpoint description
(``tcp:``, ``tcp6:`` and ``systemd:`` socket activation), stops accepting on it, and
passes the descriptor to every worker, which adopts it.  ``unix:`` listeners are
refused with workers: Twisted's UNIX port unlinks its path and shuts the socket down
when one worker stops, and resets the file mode when one adopts it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocolFactory,
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from osp_server.services import ListenerService, PortService

log = Logger()

# Twisted endpoint descriptions separate arguments with ':' and escape it as '\:'.
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


class SharedSocketError(Exception):
    """A listener cannot be shared with worker processes; the message says why."""


class SupervisorSocket(ServerFactory):
    """The supervisor never accepts on a shared socket; should a connection slip in
    between bind and the first worker, it is closed, not served."""

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> None:
        return None


class SharedListenerService(ListenerService):
    """Binds like :class:`ListenerService` (before the reactor runs, a port in use
    stops start-up) but leaves accepting to the workers: :meth:`fileno` is the socket
    they inherit."""

    def __init__(
        self,
        reactor: IReactorCore,
        description: str,
        endpoint: IStreamServerEndpoint,
        *,
        close_after: Callable[[], Deferred[None]] | None = None,
    ):
        super().__init__(reactor, description, endpoint, SupervisorSocket())
        self._close_after = close_after

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        port = self.port
        if port is None or not hasattr(port, "stopReading") or not hasattr(port, "fileno"):
            raise SystemExit(
                f"osp-server: {self.name} listener {self.description}: this endpoint type "
                "cannot be shared with worker processes"
            )
        port.stopReading()

    def stopService(self) -> Deferred[None] | None:
        # Closing a listening socket we bound shuts it down, and shutdown() acts on the
        # socket every worker shares: accept() there fails with EINVAL.  So it is
        # closed only once ``close_after`` says the workers are gone.
        if self._close_after is None:
            return super().stopService()
        waiting = self._close_after()
        stopped: Deferred[None] = waiting.addCallback(
            lambda _: super(SharedListenerService, self).stopService()
        )
        return stopped

    def fileno(self) -> int:
        """The listening socket's descriptor (valid once bound)."""
        if self.port is None:
            raise SharedSocketError(f"{self.name} listener {self.description}: not bound")
        fd: int = self.port.fileno()  # type: ignore[attr-defined]
        return fd


class AdoptedListenerService(PortService):
    """A worker's listener on a socket its supervisor bound (descriptor ``fd``)."""

    def __init__(
        self,
        reactor: IReactorSocket,
        fd: int,
        factory: IProtocolFactory,
        *,
        accept_after: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        self._reactor = reactor
        self._fd = fd
        self.factory = factory
        # When given, no accept() until the Deferred it returns fires: the socket is
        # shared, so the connections meanwhile go to the siblings that do accept.
        self._accept_after = accept_after

    def startService(self) -> None:
        super().startService()
        family = socket_family(self._fd)
        # Twisted's own listening sockets are non-blocking, but one handed over by
        # systemd need not be, and a blocking accept() stalls the reactor.
        os.set_blocking(self._fd, False)
        # adoptStreamPort duplicates the descriptor; ours is closed so that the
        # socket is released when the port stops listening.
        # The interface names ServerFactory; any IProtocolFactory serves (as listenTCP).
        self.port = self._reactor.adoptStreamPort(
            self._fd,
            family,
            self.factory,  # type: ignore[arg-type]
        )
        os.close(self._fd)
        if self._accept_after is None:
            self._log_accepting()
            return
        port = self.port
        port.stopReading()  # type: ignore[attr-defined]

        def accept(_: object) -> None:
            # Stopped meanwhile: the port no longer listens, nothing to resume.
            if self.running and self.port is port:
                port.startReading()  # type: ignore[attr-defined]
                self._log_accepting()

        self._accept_after().addCallback(accept)
        log.info("{name}: accepting once start-up work is done (siblings serve)", name=self.name)

    def _log_accepting(self) -> None:
        assert self.port is not None
        host = self.port.getHost()
        log.info(
            "{name} accepting on {host}:{port} (socket shared by the supervisor)",
            name=self.name,
            host=getattr(host, "host", getattr(host, "name", "?")),
            port=getattr(host, "port", "?"),
        )


SHAREABLE = ("tcp", "tcp6", "systemd")
"""Endpoint types whose sockets workers can share (module docstring)."""


def check_shareable(description: str) -> None:
    """:class:`SharedSocketError` unless ``description`` is of a SHAREABLE type."""
    kind = _UNESCAPED_COLON.split(description, 1)[0].strip().lower()
    if kind not in SHAREABLE:
        raise SharedSocketError(
            f"{description!r}: with [server] workers > 1 a listener must be one of "
            f"{', '.join(k + ':' for k in SHAREABLE)} (a {kind}: socket cannot be shared "
            "between worker processes)"
        )


def socket_family(fd: int) -> socket.AddressFamily:
    """The address family of the socket on ``fd`` (the descriptor stays open)."""
    probe = socket.socket(fileno=fd)
    try:
        return probe.family
    finally:
        probe.detach()


def offset_port(description: str, offset: int) -> str:
    """``description`` (a ``tcp:`` or ``tcp6:`` endpoint) with its port raised by
    ``offset``: worker ``i``'s own metrics listener.  Port 0 stays 0 (each worker gets
    an ephemeral port, as tests use)."""
    parts = _UNESCAPED_COLON.split(description)
    if parts[0] not in ("tcp", "tcp6"):
        raise SharedSocketError(
            f"{description!r}: with [server] workers > 1 each worker serves its metrics "
            "on port + its index, so this listener must be a tcp: or tcp6: endpoint"
        )
    for i, part in enumerate(parts[1:], start=1):
        key, equals, value = part.partition("=")
        if equals and key != "port":
            continue
        text = value if equals else key
        if not text.isdigit():
            break
        port = int(text)
        if port == 0:
            return description
        if port + offset > 65535:
            raise SharedSocketError(f"{description!r}: port {port} + {offset} is above 65535")
        parts[i] = f"port={port + offset}" if equals else str(port + offset)
        return ":".join(parts)
    raise SharedSocketError(f"{description!r}: no port number to offset")
