"""An example integrator policy: every call goes to the same destinations.

It shows the whole contract in a few lines: declare `IRoutingPolicy`, have a ``name``,
answer `route` with a `RoutingDecision` (here synchronously; a Deferred is fine too),
and accept `call_ended`. Register the class as an entry point::

    [project.entry-points."osp_server.routing_policies"]
    static = "osp_server.routing.example:StaticRoutingPolicy"

and select it in the config, its keyword arguments in its own table::

    [osp]
    routing_policy = "static"

    [plugins.static]
    destinations = ["[10.0.0.1]:5060", "gw.example.net:5060"]
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from osp_server.interfaces import IRoutingPolicy
from osp_server.routing.model import RoutedDestination, RoutingDecision, RoutingRequest


@implementer(IRoutingPolicy)
class StaticRoutingPolicy:
    """Route every call to ``destinations`` in order (cut to what the device asks for).

    ``destinations`` are signal addresses such as ``"[10.0.0.1]:5060"``; they are
    checked here, so a bad config fails at start-up rather than on the first call.
    """

    name = "static"

    def __init__(
        self,
        destinations: Sequence[str],
        protocol: str = "sip",
        network_id: str | None = None,
    ) -> None:
        if isinstance(destinations, str) or not destinations:
            raise ValueError("destinations must be a non-empty list of signal addresses")
        self._destinations = tuple(
            RoutedDestination(signal_address=address, protocol=protocol, network_id=network_id)
            for address in destinations
        )

    def route(self, request: RoutingRequest) -> RoutingDecision:
        """The configured destinations, at most ``request.max_destinations``."""
        count = max(1, request.max_destinations)
        return RoutingDecision.routed(self._destinations[:count])

    def call_ended(self, transaction_id: int) -> None:
        """Nothing is held per call."""
