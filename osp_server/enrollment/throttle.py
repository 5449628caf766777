"""In-memory throttling of enrollment attempts, checked before any password hashing.

Two sliding windows: failures per device (a password-guessing attack on one device)
and requests per source address (one host trying many devices).  State is per
process; with several nodes each node enforces its own limit, which still bounds an
attacker to N times the rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

MAX_TRACKED_KEYS = 100_000


class SlidingWindow:
    """Counts events per key within the last ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        horizon = self._clock() - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def count(self, key: str) -> int:
        """Events of ``key`` in the window."""
        events = self._recent(key)
        return 0 if events is None else len(events)

    def exceeded(self, key: str) -> bool:
        """True when ``key`` already has ``limit`` events in the window."""
        return self.count(key) >= self.limit

    def add(self, key: str) -> None:
        """Count one event for ``key``."""
        if key not in self._events and len(self._events) >= MAX_TRACKED_KEYS:
            self._prune()
        events = self._events.setdefault(key, deque())
        events.append(self._clock())
        while len(events) > self.limit:  # older events cannot change the verdict
            events.popleft()

    def clear(self, key: str) -> None:
        """Forget ``key`` (after a success)."""
        self._events.pop(key, None)

    def _prune(self) -> None:
        for key in list(self._events):
            self._recent(key)
        if len(self._events) >= MAX_TRACKED_KEYS:
            # Still full of live keys: drop the oldest half rather than grow without bound.
            for key in sorted(self._events, key=lambda k: self._events[k][-1])[
                : MAX_TRACKED_KEYS // 2
            ]:
                del self._events[key]


class EnrollmentThrottle:
    """Failures per device and requests per source address.

    Attempts still being checked count against the device's failure budget, so that
    concurrent guesses cannot all slip in before the first failure is recorded.
    """

    def __init__(
        self,
        *,
        failures_per_device: int,
        requests_per_address: int,
        window_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.device_failures = SlidingWindow(failures_per_device, window_seconds, clock)
        self.address_requests = SlidingWindow(requests_per_address, window_seconds, clock)
        self._in_flight: dict[str, int] = {}

    @staticmethod
    def device_key(customer_id: str, device_id: str) -> str:
        """The throttle key of a device."""
        return f"{customer_id}/{device_id}"

    def admit(self, *, customer_id: str, device_id: str, address: str) -> bool:
        """Count a request; False when it must be refused before any hashing.

        Every admitted attempt must be closed with :meth:`finished`.
        """
        if self.address_requests.exceeded(address):
            return False
        self.address_requests.add(address)
        key = self.device_key(customer_id, device_id)
        pending = self._in_flight.get(key, 0)
        if self.device_failures.count(key) + pending >= self.device_failures.limit:
            return False
        self._in_flight[key] = pending + 1
        return True

    def finished(self, *, customer_id: str, device_id: str, authenticated: bool | None) -> None:
        """Close an admitted attempt: a failure counts, a success clears the count, and
        ``None`` (no verdict, e.g. storage trouble) only releases the slot."""
        key = self.device_key(customer_id, device_id)
        pending = self._in_flight.get(key, 0) - 1
        if pending > 0:
            self._in_flight[key] = pending
        else:
            self._in_flight.pop(key, None)
        if authenticated is True:
            self.device_failures.clear(key)
        elif authenticated is False:
            self.device_failures.add(key)
