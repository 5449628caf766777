"""The default routing policy: blocks, longest-prefix match, priority, least cost, weights.

Pure and synchronous: no reactor, no I/O. Route changes arrive as a new `RouteTables`
snapshot through `DefaultRoutingPolicy.replace` and apply to the next request.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from zope.interface import implementer

from osp_server.interfaces import IRouteTablesConsumer, IRoutingPolicy
from osp_server.osp.messages import MAX_DESTINATIONS
from osp_server.routing.model import Route, RoutedDestination, RoutingDecision, RoutingRequest
from osp_server.routing.table import RouteTables

MAX_CALL_HOLD_SECONDS: Final = 4 * 3600.0
"""A counted call is released after this long even if its end is never reported."""
MAX_TRACKED_CALLS: Final = 1_000_000
"""Memory bound for the call counter; the oldest calls are released beyond it."""
CALL_LIMIT_DESCRIPTION: Final = "All routes at call limit"

RouteKey = tuple[str, str, str]


@dataclass(frozen=True)
class _HeldCall:
    started: float
    routes: tuple[RouteKey, ...]


class CallCounter:
    """Concurrent calls per route, in memory.

    `start` records that a transaction holds a slot on each given route; `end`
    releases them (idempotent). Calls older than ``max_hold_seconds`` by ``clock`` are
    released automatically, so lost end reports heal. Routes are counted by
    `Route.key`, so counts survive a table reload that keeps the route.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_hold_seconds: float = MAX_CALL_HOLD_SECONDS,
        max_tracked: int = MAX_TRACKED_CALLS,
    ) -> None:
        self._clock = clock
        self._max_hold = max_hold_seconds
        self._max_tracked = max_tracked
        # Insertion order is start order (a restarted call is moved to the end), so
        # expiry only ever looks at the front.
        self._calls: dict[int, _HeldCall] = {}
        self._active: Counter[RouteKey] = Counter()

    def active(self, route: Route) -> int:
        """Calls currently held on ``route``."""
        self.expire()
        return self._active[route.key]

    def at_limit(self, route: Route) -> bool:
        """True when ``route`` has a call limit and it is used up."""
        return route.call_limit is not None and self.active(route) >= route.call_limit

    def start(self, transaction_id: int, routes: Iterable[Route]) -> None:
        """Hold one slot on each of ``routes`` for ``transaction_id``.

        Starting a transaction id again releases what it held before.
        """
        self.end(transaction_id)
        keys = tuple(dict.fromkeys(route.key for route in routes))
        if not keys:
            return
        self._calls[transaction_id] = _HeldCall(self._clock(), keys)
        self._active.update(keys)
        while len(self._calls) > self._max_tracked:
            self.end(next(iter(self._calls)))

    def end(self, transaction_id: int) -> None:
        """Release what ``transaction_id`` holds (nothing if unknown or already ended)."""
        held = self._calls.pop(transaction_id, None)
        if held is not None:
            self._active.subtract(held.routes)
            for key in held.routes:
                if self._active[key] <= 0:
                    del self._active[key]

    def expire(self) -> int:
        """Release calls held longer than the maximum hold time; return how many."""
        deadline = self._clock() - self._max_hold
        expired = list(
            itertools.takewhile(lambda item: item[1].started <= deadline, self._calls.items())
        )
        for transaction_id, _held in expired:
            self.end(transaction_id)
        return len(expired)

    def __len__(self) -> int:
        return len(self._calls)


def order_routes(routes: Sequence[Route], rng: random.Random) -> list[Route]:
    """Priority ascending, then cost ascending, then weighted random order.

    Among routes of equal priority and cost, the order is a weighted sample without
    replacement (each next route is picked with probability weight / remaining
    weight): exponential keys ``Exp(weight)`` sorted ascending do exactly that.
    Weight-0 routes come last in their group, in table order.
    """
    groups: dict[tuple[int, Decimal], list[Route]] = {}
    for route in routes:
        groups.setdefault((route.priority, route.cost), []).append(route)
    ordered: list[Route] = []
    for group_key in sorted(groups):
        group = groups[group_key]
        if len(group) == 1:
            ordered.extend(group)
            continue
        weighted = [route for route in group if route.weight > 0]
        keyed = sorted((rng.expovariate(route.weight), i) for i, route in enumerate(weighted))
        ordered.extend(weighted[i] for _key, i in keyed)
        ordered.extend(route for route in group if route.weight == 0)
    return ordered


@implementer(IRoutingPolicy, IRouteTablesConsumer)
class DefaultRoutingPolicy:
    """Block rules, then longest-prefix match on the called number, then priority /
    least cost / weights, skipping routes at their call limit.

    ``count_all_destinations`` chooses which routes a call holds a slot on: only the
    first destination (default: the one the device tries first; failover calls are
    not counted against later routes) or every destination returned (never exceeds a
    limit, but reserves capacity on alternatives that are rarely used).
    """

    name = "default"

    def __init__(
        self,
        tables: RouteTables | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_hold_seconds: float = MAX_CALL_HOLD_SECONDS,
        count_all_destinations: bool = False,
    ) -> None:
        self._tables = tables if tables is not None else RouteTables()
        self._rng = rng if rng is not None else random.SystemRandom()
        self.calls = CallCounter(clock, max_hold_seconds=max_hold_seconds)
        self._count_all = count_all_destinations
        # Without a transaction id a counted call can only expire; give it a key that
        # cannot collide with real (non-negative) transaction ids.
        self._anonymous = itertools.count(-1, -1)

    @property
    def tables(self) -> RouteTables:
        """The current snapshot."""
        return self._tables

    def replace(self, tables: RouteTables) -> None:
        """Use ``tables`` from the next request on (call counts are kept)."""
        self._tables = tables

    def route(self, request: RoutingRequest) -> RoutingDecision:
        """Decide where a call goes (see the class docstring)."""
        tables = self._tables
        block = tables.find_block(request.route_table, request.calling, request.called)
        if block is not None:
            return RoutingDecision.blocked(block.description)
        candidates = tables.lookup(request.route_table, request.called)
        if not candidates:
            return RoutingDecision.no_route()
        usable = [route for route in candidates if not self.calls.at_limit(route)]
        if not usable:
            return RoutingDecision.no_route(CALL_LIMIT_DESCRIPTION)
        limit = max(1, min(request.max_destinations, MAX_DESTINATIONS))
        chosen = order_routes(usable, self._rng)[:limit]
        counted = chosen if self._count_all else chosen[:1]
        limited = [route for route in counted if route.call_limit is not None]
        if limited:
            transaction_id = request.transaction_id
            if transaction_id is None:
                transaction_id = next(self._anonymous)
            self.calls.start(transaction_id, limited)
        return RoutingDecision.routed(RoutedDestination.from_route(route) for route in chosen)

    def call_ended(self, transaction_id: int) -> None:
        """Release the call-limit slots held by ``transaction_id``."""
        self.calls.end(transaction_id)
