"""Concurrent calls held per key (a route, a fraud counter), in memory, self-healing.

Pure: the clock is passed in. Used by the routing policy for route call limits and by
the fraud guard for concurrent-call limits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Final

from osp_server.routing.model import Route

MAX_CALL_HOLD_SECONDS: Final = 4 * 3600.0
"""A counted call is released after this long even if its end is never reported."""
MAX_TRACKED_CALLS: Final = 1_000_000
"""Memory bound for the call counter; the oldest calls are released beyond it."""
CounterKey = Hashable
"""A route's key (table, prefix, destination), or any other counted key."""


@dataclass(frozen=True)
class _HeldCall:
    started: float
    keys: tuple[CounterKey, ...]


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
        self._active: dict[CounterKey, int] = {}

    def active(self, route: Route) -> int:
        """Calls currently held on ``route``."""
        self.expire()
        return self._active.get(route.key, 0)

    def at_limit(self, route: Route) -> bool:
        """True when ``route`` has a call limit and it is used up."""
        return route.call_limit is not None and self.active(route) >= route.call_limit

    def active_count(self, key: CounterKey) -> int:
        """Calls currently held on ``key``."""
        self.expire()
        return self._active.get(key, 0)

    def start(self, transaction_id: int, routes: Iterable[Route]) -> None:
        """Hold one slot on each of ``routes`` for ``transaction_id``.

        Starting a transaction id again releases what it held before.
        """
        self.start_keys(transaction_id, (route.key for route in routes))

    def start_keys(self, transaction_id: int, counted: Iterable[CounterKey]) -> None:
        """Hold one slot on each key for ``transaction_id`` (see `start`)."""
        self.end(transaction_id)
        keys = tuple(dict.fromkeys(counted))
        if not keys:
            return
        self._calls[transaction_id] = _HeldCall(self._clock(), keys)
        active = self._active
        for key in keys:
            active[key] = active.get(key, 0) + 1
        while len(self._calls) > self._max_tracked:
            self.end(next(iter(self._calls)))

    def end(self, transaction_id: int) -> None:
        """Release what ``transaction_id`` holds (nothing if unknown or already ended)."""
        held = self._calls.pop(transaction_id, None)
        if held is not None:
            active = self._active
            for key in held.keys:
                left = active.get(key, 0) - 1
                if left > 0:
                    active[key] = left
                else:
                    active.pop(key, None)

    def expire(self) -> int:
        """Release calls held longer than the maximum hold time; return how many."""
        calls = self._calls
        if not calls:
            return 0
        deadline = self._clock() - self._max_hold
        if next(iter(calls.values())).started > deadline:
            return 0  # the oldest call is within its hold time: nothing to release
        expired = list(
            itertools.takewhile(lambda item: item[1].started <= deadline, self._calls.items())
        )
        for transaction_id, _held in expired:
            self.end(transaction_id)
        return len(expired)

    def __len__(self) -> int:
        return len(self._calls)
