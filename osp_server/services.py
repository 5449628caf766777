"""Generic Twisted services of the server: a listener, and the process-wide set-up.

The composition root (app.py) puts them in the service tree; nothing here knows the
OSP or TEP protocols.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorFromThreads,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class PortService(Service):
    """Holds one listening port and closes it when stopped (the listeners below, and
    a worker's adopted one: osp_server.workers.sockets)."""

    port: IListeningPort | None = None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped


class ListenerService(PortService):
    """Listens on a Twisted endpoint and logs the address it got.

    It binds in ``privilegedStartService``, which twistd calls before the reactor
    runs: a port in use then stops start-up with one line and a non-zero status,
    instead of leaving a server without that listener.
    """

    def __init__(
        self,
        reactor: IReactorCore,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
    ) -> None:
        self._reactor = reactor
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self._listening: Deferred[IListeningPort] | None = None

    def _listening_on(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        host = port.getHost()
        log.info(
            "{name} listening on {host}:{port} ({description})",
            name=self.name,
            host=getattr(host, "host", "?"),
            port=getattr(host, "port", "?"),
            description=self.description,
        )
        return port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        d = self.endpoint.listen(self.factory)
        failures: list[Failure] = []
        d.addCallbacks(self._listening_on, failures.append)
        if failures:  # TCP, SSL and UNIX endpoints answer at once
            raise SystemExit(
                f"osp-server: {self.name} listener {self.description}: "
                f"{failures[0].getErrorMessage()}"
            )
        self._listening = d

    def startService(self) -> None:
        super().startService()
        if self._listening is None and self.port is None:
            # Started without privilegedStartService (e.g. embedded): listen now.
            d = self.endpoint.listen(self.factory)

            def failed(failure: Failure) -> None:
                log.failure(
                    "{name}: cannot listen on {description}",
                    failure,
                    name=self.name,
                    description=self.description,
                )
                self._reactor.callWhenRunning(self._reactor.stop)

            d.addCallbacks(self._listening_on, failed)


def freeze_long_lived_objects() -> None:
    """Collect once, then move every object the collector tracks into its permanent
    generation.

    For objects that live until replaced, such as a route table: a million routes
    made each full collection pause the reactor for 230-320 ms (bench/routes.py).
    Frozen objects are still freed by reference counting when the next table
    replaces them (route tables hold no reference cycles).  The unfreeze and collect
    first let cyclic garbage frozen by the previous call (requests in flight then) be
    collected; that one pass is the price of a route change.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ProcessService(Service):
    """Process-wide set-up for the twistd process only: SIGHUP calls ``reload`` on the
    reactor thread, and the start-up objects are frozen out of the collector."""

    def __init__(self, reactor: IReactorFromThreads, *, reload: Callable[[], object]) -> None:
        self._reactor = reactor
        self._reload = reload
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        # Start-up objects (CA, tables, modules) live as long as the process: keep
        # them out of the collector, whose full passes stalled the reactor 50-90 ms
        # under load (bench/authorization.py).
        freeze_long_lived_objects()
        self._previous = signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, _signum: int, _frame: object) -> None:
        self._reactor.callFromThread(self._reload)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        gc.unfreeze()
