"""What must finish before the server takes OSP traffic (e.g. the first route load).

The listeners bind at start, before the route tables are read from storage; a call
authorized in between would get "no route". Until every awaited task is done, ``/osp``
answers HTTP 503 (devices fail over to their next service point) and ``/health`` says
``starting``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()


class Readiness:
    """The set of start-up tasks still running; ready when it is empty."""

    def __init__(self) -> None:
        self._pending: dict[str, Deferred[Any]] = {}
        self._ready_waiters: list[Deferred[None]] = []

    def wait_for(self, what: str, done: Deferred[Any]) -> None:
        """Not ready until ``done`` fires with a result (a failure keeps it not ready:
        the task's owner retries and logs)."""
        self._pending[what] = done

        def finished(result: object) -> object:
            if self._pending.get(what) is done:
                del self._pending[what]
                if not self._pending:
                    log.info("ready: {what} done, taking OSP traffic", what=what)
                    waiters, self._ready_waiters = self._ready_waiters, []
                    for waiter in waiters:
                        waiter.callback(None)
            return result

        done.addCallback(finished)
        # The task's owner logs its own failures; nothing more to report here.
        done.addErrback(lambda _failure: None)

    def is_ready(self) -> bool:
        """True when nothing is awaited any more."""
        return not self._pending

    def when_ready(self) -> Deferred[None]:
        """A new Deferred that fires once nothing is awaited (at once if so now)."""
        waiter: Deferred[None] = Deferred()
        if self.is_ready():
            waiter.callback(None)
        else:
            self._ready_waiters.append(waiter)
        return waiter

    def waiting_for(self) -> tuple[str, ...]:
        """The names of the tasks still running, for logs and ``/health``."""
        return tuple(sorted(self._pending))
