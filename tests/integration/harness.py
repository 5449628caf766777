"""A running osp-server on loopback port-0 listeners, for integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort

from osp_server.app import Components, CoreService, build_components, prepare
from osp_server.config import Config
from osp_server.reactor import global_reactor

reactor = global_reactor()


@dataclass
class RunningServer:
    """Ports and objects of a server started by :func:`run_server`."""

    components: Components
    http_port: int
    https_port: int
    ports: list[IListeningPort]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"


async def run_server(
    config: Config, customize: Callable[[Components], None] | None = None
) -> AsyncIterator[RunningServer]:
    """Start the real service on 127.0.0.1:0 (plain + TLS); stop it afterwards."""
    core = prepare(config, reactor)
    components = build_components(core)
    if customize is not None:
        customize(components)
    service = CoreService(components)
    service.startService()
    http = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(components.http_site)
    https = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        components.https_factory()
    )
    try:
        yield RunningServer(components, http.getHost().port, https.getHost().port, [http, https])
    finally:
        for port in (http, https):
            await maybeDeferred(port.stopListening)
        service.stopService()
