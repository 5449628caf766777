"""Tell this node's caches at once when who may connect changes anywhere.

A revocation or a device state change commits with a new access version
(:mod:`osp_server.storage.access`).  :class:`AccessWatcher` notices it and calls its
listeners (the device authenticator and the CRL drop what they cached):

* on this node, at once: whoever changes access here calls :meth:`AccessWatcher.changed`;
* on PostgreSQL, within milliseconds: a thread holds one extra connection that
  ``LISTEN``\\s on the channel the change's transaction ``NOTIFY``\\s;
* everywhere, within ``interval`` seconds: the version is polled, which covers SQLite
  (``osp-admin`` and worker processes write from other processes), a dropped listening
  connection, and anything sent while it was reconnecting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from osp_server.reactor import IOSPReactor
from osp_server.storage import access
from osp_server.storage.db import Database
from osp_server.storage.errors import describe_error

log = Logger()

RECONNECT_SECONDS = 2.0
_NOTIFY_WAIT_SECONDS = 0.5  # how long the listening thread blocks before checking for stop


class AccessWatcher(Service):
    """Calls every listener once per access change seen (module docstring)."""

    name = "access-watch"

    def __init__(
        self,
        db: Database,
        reactor: IOSPReactor,
        *,
        interval: float,
        listen: bool | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the access poll interval must be positive, got {interval!r}")
        self._db = db
        self._reactor = reactor
        self._interval = interval
        self.listen = db.dialect == "postgresql" if listen is None else listen
        """True: a thread LISTENs for PostgreSQL notifications (as well as polling)."""
        self._listeners: list[Callable[[], object]] = []
        self._loop = LoopingCall(self.poll)
        self._loop.clock = reactor
        self._polling = False
        self._failing = False
        self._stop_listening = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        """Set while the LISTEN connection is up (PostgreSQL)."""
        self.version: int | None = None
        """The access version last seen (None until the first poll)."""
        self.changes = 0
        """How many changes the listeners were told of."""

    def subscribe(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` on the reactor thread after every access change."""
        self._listeners.append(listener)

    def changed(self) -> None:
        """Access changed (this node changed it, or a notification said so): tell every
        listener now.  Called on the reactor thread."""
        self.changes += 1
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.failure("an access change listener failed")

    async def poll(self) -> None:
        """Read the access version; tell the listeners when it moved."""
        if self._polling:
            return  # a slow read is still running: the next tick reads again
        self._polling = True
        try:
            version = await self._db.peek("access_version", access.current_version_txn)
        except Exception as e:
            if not self._failing:
                log.warn("reading the access version failed: {error}", error=describe_error(e))
            self._failing = True
            return
        finally:
            self._polling = False
        self._failing = False
        if self.version is not None and version != self.version:
            self.changed()
        self.version = version

    def startService(self) -> None:
        """Poll every ``interval`` seconds, and LISTEN on PostgreSQL."""
        super().startService()
        if not self._loop.running:
            self._loop.start(self._interval, now=True)
        if self.listen and self._thread is None:
            self._stop_listening.clear()
            self._thread = threading.Thread(
                target=self._listen_forever, name="osp-access-listen", daemon=True
            )
            self._thread.start()

    def stopService(self) -> None:
        """Stop polling and listening."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._thread is not None:
            self._stop_listening.set()
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------ the listening thread

    def _listen_forever(self) -> None:
        stop = self._stop_listening
        reported = False
        while not stop.is_set():
            try:
                self._listen(stop)
                reported = False
            except Exception as e:
                self.listening.clear()
                if not reported:
                    self._reactor.callFromThread(
                        log.warn,
                        "listening for access changes failed ({error}); polling every "
                        "{interval} s until it reconnects",
                        error=describe_error(e),
                        interval=self._interval,
                    )
                    reported = True
                stop.wait(RECONNECT_SECONDS)

    def _listen(self, stop: threading.Event) -> None:
        import psycopg

        engine = self._db.engine
        args, params = engine.dialect.create_connect_args(engine.url)
        with psycopg.connect(*args, **{**params, "autocommit": True}) as conn:
            conn.execute(f"LISTEN {access.CHANNEL}")
            self.listening.set()
            # A change committed while we were not listening: the poll finds it, but
            # at once is better after a reconnect.
            self._reactor.callFromThread(self._loop_now)
            while not stop.is_set():
                for _ in conn.notifies(timeout=_NOTIFY_WAIT_SECONDS):
                    self._reactor.callFromThread(self._notified)

    def _notified(self) -> None:
        self.changed()
        # Keep the version in step, so the next poll does not report the change again.
        self._read_version(report=False)

    def _loop_now(self) -> None:
        self._read_version(report=True)

    def _read_version(self, *, report: bool) -> None:
        if not self.running:
            return
        if report:
            Deferred.fromCoroutine(self.poll())
            return

        async def quietly() -> None:
            try:
                self.version = await self._db.peek("access_version", access.current_version_txn)
            except Exception:
                return  # the regular poll reports failures

        Deferred.fromCoroutine(quietly())
