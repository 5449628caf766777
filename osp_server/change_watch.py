"""Act at once, on this node, on changes made anywhere (:mod:`osp_server.storage.changes`).

:class:`ChangeWatcher` notices that a change version moved and calls the listeners
subscribed to that kind of change: on ``access`` the device authenticator and the CRL
drop what they cached; on ``reload`` the node re-reads its certificate files.  It
hears of a change

* on this node, at once: whoever makes the change here calls :meth:`ChangeWatcher.changed`;
* on PostgreSQL, within milliseconds: a thread holds one extra connection that
  ``LISTEN``\\s on the channel the change's transaction notifies;
* everywhere, within ``interval`` seconds: the versions are polled, which covers SQLite
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
from osp_server.storage import changes
from osp_server.storage.changes import ChangeName
from osp_server.storage.db import Database
from osp_server.storage.errors import describe_error

log = Logger()

RECONNECT_SECONDS = 2.0
_NOTIFY_WAIT_SECONDS = 0.5  # how long the listening thread blocks before checking for stop


class ChangeWatcher(Service):
    """Calls the listeners of a kind of change once per change seen (module docstring)."""

    name = "change-watch"

    def __init__(
        self,
        db: Database,
        reactor: IOSPReactor,
        *,
        interval: float,
        listen: bool | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the change poll interval must be positive, got {interval!r}")
        self._db = db
        self._reactor = reactor
        self._interval = interval
        self.listen = db.dialect == "postgresql" if listen is None else listen
        """True: a thread LISTENs for PostgreSQL notifications (as well as polling)."""
        self._listeners: dict[str, list[Callable[[], object]]] = {}
        self._loop = LoopingCall(self.poll)
        self._loop.clock = reactor
        self._polling = False
        self._failing = False
        self._stop_listening = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        """Set while the LISTEN connection is up (PostgreSQL)."""
        self.versions: dict[str, int] | None = None
        """The change versions last seen (None until the first poll)."""
        self.changes: dict[str, int] = {}
        """How many changes of each kind the listeners were told of."""

    def subscribe(self, name: ChangeName, listener: Callable[[], object]) -> None:
        """Call ``listener()`` on the reactor thread after every change of kind ``name``."""
        self._listeners.setdefault(name, []).append(listener)

    def changed(self, name: ChangeName = changes.ACCESS) -> None:
        """A change of kind ``name`` happened (this node made it, or a notification said
        so): tell its listeners now.  Called on the reactor thread."""
        self.changes[name] = self.changes.get(name, 0) + 1
        for listener in self._listeners.get(name, []):
            try:
                listener()
            except Exception:
                log.failure("a {name} change listener failed", name=name)

    async def poll(self) -> None:
        """Read the versions; tell the listeners of every kind that moved."""
        if self._polling:
            return  # a slow read is still running: the next tick reads again
        self._polling = True
        try:
            versions = await self._db.peek("change_versions", changes.versions_txn)
        except Exception as e:
            if not self._failing:
                log.warn("reading the change versions failed: {error}", error=describe_error(e))
            self._failing = True
            return
        finally:
            self._polling = False
        self._failing = False
        seen, self.versions = self.versions, versions
        if seen is None:
            return
        for name in changes.KINDS:
            if seen.get(name) != versions.get(name):
                self.changed(name)

    def startService(self) -> None:
        """Poll every ``interval`` seconds, and LISTEN on PostgreSQL."""
        super().startService()
        if not self._loop.running:
            self._loop.start(self._interval, now=True)
        if self.listen and self._thread is None:
            self._stop_listening.clear()
            self._thread = threading.Thread(
                target=self._listen_forever, name="osp-change-listen", daemon=True
            )
            self._thread.start()

    def stopService(self) -> None:
        """Stop polling and listening."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._thread is not None:
            self._stop_listening.set()
            # It checks for the stop every half second; a connection attempt in progress
            # gives up within its 5 s timeout, on a daemon thread nobody waits for.
            self._thread.join(timeout=1)
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
                        "listening for changes failed ({error}); polling every "
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
        # Bounded: a database host that stops answering must not hold this thread (or
        # stopService) for the operating system's TCP timeout.
        options = {
            **params,
            "autocommit": True,
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        with psycopg.connect(*args, **options) as conn:
            conn.execute(f"LISTEN {changes.CHANNEL}")
            self.listening.set()
            # A change committed while we were not listening: the poll finds it, but
            # at once is better after a reconnect.
            self._reactor.callFromThread(self._poll_now)
            while not stop.is_set():
                for notice in conn.notifies(timeout=_NOTIFY_WAIT_SECONDS):
                    for name in changes.KINDS:
                        if notice.payload == name:
                            self._reactor.callFromThread(self._notified, name)

    def _notified(self, name: ChangeName) -> None:
        self.changed(name)

        # Keep this kind's version in step, so the next poll does not report the change
        # again; only this kind, and only upward: another kind's change whose
        # notification is still on its way must still be seen by the poll.
        async def quietly() -> None:
            try:
                now = await self._db.peek("change_versions", changes.versions_txn)
            except Exception:
                return  # the regular poll reports failures
            if self.versions is not None and name in now:
                self.versions[name] = max(self.versions.get(name, 0), now[name])

        if self.running:
            Deferred.fromCoroutine(quietly())

    def _poll_now(self) -> None:
        if self.running:
            Deferred.fromCoroutine(self.poll())
