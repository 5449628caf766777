"""The supervisor side of worker processes: start, relay logs, restart, signal, stop.

Pure Twisted process management, no OSP: what each worker runs and which sockets it
inherits come from a ``launch(index, siblings_serve)`` function the composition root
provides (``siblings_serve``: the new worker should accept only once it is ready).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from osp_server.reactor import ISupervisorReactor

STOP_GRACE_SECONDS = 15.0
"""A worker still running this long after SIGTERM gets SIGKILL."""
QUICK_RESTART_SECONDS = 0.5
"""Restart delay after a worker that had run for STABLE_AFTER_SECONDS dies."""
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STABLE_AFTER_SECONDS = 60.0
MAX_FAILED_STARTS = 5
"""A worker that exits this many times in a row before it serves makes the supervisor
give up (the configuration or the database it was checked against changed)."""
MAX_LINE_BYTES = 1 << 20
"""A log line longer than this (a worker gone wrong) is relayed cut, not buffered."""


@dataclass(frozen=True)
class WorkerLaunch:
    """How to start worker ``index``: program, arguments, environment, the parent
    descriptors it inherits (child fd -> parent fd, or "r"/"w" for pipes), and the
    bytes written to its stdin (which stays open: EOF tells it the supervisor died)."""

    executable: str
    args: Sequence[str]
    env: Mapping[str, str]
    child_fds: Mapping[int, int | str]
    stdin: bytes


def restart_delay(lived_seconds: float, previous_delay: float | None) -> float:
    """How long to wait before restarting a worker that ran ``lived_seconds``: quick
    after a long run, doubling (up to MAX_BACKOFF_SECONDS) while it keeps dying."""
    if lived_seconds >= STABLE_AFTER_SECONDS:
        return QUICK_RESTART_SECONDS
    if previous_delay is None:
        return FIRST_BACKOFF_SECONDS
    return min(MAX_BACKOFF_SECONDS, max(FIRST_BACKOFF_SECONDS, previous_delay * 2))


def describe_exit(reason: Failure) -> str:
    """``exit status 3``, ``signal 9`` or ``exit status 0`` for a processEnded reason."""
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        return f"signal {value.signal}"
    code = getattr(value, "exitCode", None)
    return f"exit status {code}"


SERVING_KEY = "osp_worker_serving"
"""Set in the event a worker logs once it serves (its SIGHUP handler is installed)."""
ACCEPTING_KEY = "osp_worker_accepting"
"""Set on the log event a worker sends once it answers OSP (start-up work done)."""
DEFERRED_SIGNALS = frozenset({"HUP"})
"""Signals held for a worker until it serves: before, SIGHUP's default action kills it."""


def relay_line(
    index: int, line: bytes, observer: ILogObserver, log: Logger
) -> dict[str, Any] | None:
    """One line of a worker's stdout: a JSON log event (osp_server.workers.child logs
    so), re-emitted here tagged with the worker and returned; anything else is logged
    as text (None)."""
    event: Any = None
    try:
        event = eventFromJSON(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
        pass
    if not isinstance(event, dict) or "log_time" not in event:
        log.info("worker {index}: {line}", index=index, line=line.decode("utf-8", "replace"))
        return None
    event["log_system"] = f"worker-{index}"
    event["worker"] = index
    observer(event)
    return event


class _Lines:
    """Splits a byte stream into lines for ``emit``; over-long lines are cut."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._pending = b""

    def feed(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            if line:
                self._emit(line)
        if len(self._pending) > MAX_LINE_BYTES:
            line, self._pending = self._pending, b""
            self._emit(line[:MAX_LINE_BYTES] + b"...")

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, b""
            self._emit(line)


class WorkerProcess(ProcessProtocol):
    """One running worker, as its supervisor sees it."""

    def __init__(
        self,
        index: int,
        stdin: bytes,
        *,
        clock: Callable[[], float],
        ended: Callable[[WorkerProcess, Failure], None],
        observer: ILogObserver,
        log: Logger,
    ) -> None:
        self.index = index
        self._clock = clock
        self.started_at = clock()
        self.serving_since: float | None = None
        self.accepting = False
        """The worker said it takes OSP traffic (its readiness fired)."""
        self.pid: int | None = None
        self._held: set[str] = set()
        self._stdin = stdin
        self._ended = ended
        self._observer = observer
        self._log = log
        self._out = _Lines(self._relay)
        self._err = _Lines(
            lambda line: log.warn(
                "worker {index} stderr: {line}", index=index, line=line.decode("utf-8", "replace")
            )
        )

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        # Written once and never closed: the worker stops when this pipe reaches EOF.
        self.transport.write(self._stdin)

    def _relay(self, line: bytes) -> None:
        event = relay_line(self.index, line, self._observer, self._log)
        if event is not None and event.get(ACCEPTING_KEY) is True:
            self.accepting = True
        if event is not None and event.get(SERVING_KEY) is True and not self.serving:
            self.serving_since = self._clock()
            for name in sorted(self._held):
                self.signal(name)
            self._held.clear()

    @property
    def serving(self) -> bool:
        """True once the worker said it serves (its signal handlers are installed)."""
        return self.serving_since is not None

    def outReceived(self, data: bytes) -> None:
        self._out.feed(data)

    def errReceived(self, data: bytes) -> None:
        self._err.feed(data)

    def processEnded(self, reason: Failure) -> None:
        self._out.flush()
        self._err.flush()
        self._ended(self, reason)

    def signal(self, name: str) -> None:
        """Send signal ``name`` (``TERM``, ``KILL``, ``HUP``) unless it already ended;
        DEFERRED_SIGNALS wait until the worker serves."""
        if self.transport is None:
            return
        if name in DEFERRED_SIGNALS and not self.serving:
            self._held.add(name)
            return
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass
        except OSError:
            pass  # exited between the check and the kill


class WorkerSupervisor(Service):
    """Keeps ``count`` workers running until stopped (module docstring)."""

    def __init__(
        self,
        reactor: ISupervisorReactor,
        count: int,
        launch: Callable[[int, bool], WorkerLaunch],
        *,
        observer: ILogObserver | None = None,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
        max_failed_starts: int = MAX_FAILED_STARTS,
        give_up: Callable[[], object] | None = None,
    ) -> None:
        self._reactor = reactor
        self.count = count
        self._launch = launch
        self._observer: ILogObserver = observer if observer is not None else globalLogPublisher
        self._log = Logger(namespace="osp_server.workers", observer=self._observer)
        self._grace = stop_grace_seconds
        self.workers: dict[int, WorkerProcess] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}
        self._stopping: Deferred[None] | None = None
        self._kill_call: IDelayedCall | None = None
        self._stopped_waiters: list[Deferred[None]] = []
        self._failed_starts: dict[int, int] = {}
        self._max_failed_starts = max_failed_starts
        self._give_up = give_up

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._start(index)

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        # With a sibling serving, the new worker accepts only once it can answer.
        # Accepting, not merely serving: a sibling still holding its own listeners
        # (itself a replacement) answers nothing yet.
        siblings_serve = any(w.accepting for i, w in self.workers.items() if i != index)
        launch = self._launch(index, siblings_serve)
        worker = WorkerProcess(
            index,
            launch.stdin,
            clock=self._reactor.seconds,
            ended=self._ended,
            observer=self._observer,
            log=self._log,
        )
        try:
            self._reactor.spawnProcess(
                worker,
                launch.executable,
                list(launch.args),
                env=dict(launch.env),
                childFDs=dict(launch.child_fds),
            )
        except OSError as e:
            self._log.error("worker {index} cannot start: {error}", index=index, error=str(e))
            if not self._count_failed_start(index, "cannot be spawned"):
                self._schedule_restart(index, 0.0)
            return
        self.workers[index] = worker
        self._log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def _ended(self, worker: WorkerProcess, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        status = describe_exit(reason)
        if not self.running:
            self._log.info(
                "worker {index} (pid {pid}) stopped: {status}",
                index=worker.index,
                pid=worker.pid,
                status=status,
            )
            self._maybe_stopped()
            return
        now = self._reactor.seconds()
        if worker.serving_since is None:
            self._log.warn(
                "worker {index} (pid {pid}) exited ({status}) {lived:.1f} s after it was "
                "started, before it served",
                index=worker.index,
                pid=worker.pid,
                status=status,
                lived=now - worker.started_at,
            )
            if self._count_failed_start(worker.index, status):
                return
            served = 0.0
        else:
            self._failed_starts[worker.index] = 0
            served = now - worker.serving_since
            self._log.warn(
                "worker {index} (pid {pid}) exited ({status}) after serving {served:.1f} s",
                index=worker.index,
                pid=worker.pid,
                status=status,
                served=served,
            )
        delay = self._schedule_restart(worker.index, served)
        self._log.info(
            "restarting worker {index} in {delay:.1f} s", index=worker.index, delay=delay
        )

    def _count_failed_start(self, index: int, status: str) -> bool:
        """Count a start that failed; True when that was one too many (gave up)."""
        failures = self._failed_starts.get(index, 0) + 1
        self._failed_starts[index] = failures
        if failures < self._max_failed_starts or self._give_up is None:
            return False
        self._log.critical(
            "worker {index} failed to start {failures} times in a row (last: {status}); "
            "giving up: the server stops rather than hold its listeners without a worker",
            index=index,
            failures=failures,
            status=status,
        )
        self._give_up()
        return True

    def _schedule_restart(self, index: int, lived: float) -> float:
        delay = restart_delay(lived, self._delays.get(index))
        self._delays[index] = delay
        self._restarts[index] = self._reactor.callLater(delay, self._start, index)
        return delay

    def signal_all(self, name: str) -> None:
        """Send signal ``name`` to every running worker (SIGHUP is forwarded so)."""
        for worker in list(self.workers.values()):
            worker.signal(name)

    def pids(self) -> dict[int, int | None]:
        """Worker index -> pid of the running workers."""
        return {index: worker.pid for index, worker in self.workers.items()}

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        if not self.workers:
            self._fire_stopped()
            return succeed(None)
        self._stopping = Deferred()
        self.signal_all("TERM")
        self._kill_call = self._reactor.callLater(self._grace, self._kill_remaining)
        return self._stopping

    def _kill_remaining(self) -> None:
        self._kill_call = None
        self._log.warn(
            "workers {pids} still running {grace:.0f} s after SIGTERM: killing them",
            pids=json.dumps(sorted(p for p in self.pids().values() if p is not None)),
            grace=self._grace,
        )
        self.signal_all("KILL")

    def _maybe_stopped(self) -> None:
        if self.workers or self._stopping is None:
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        stopping, self._stopping = self._stopping, None
        stopping.callback(None)
        self._fire_stopped()

    def when_stopped(self) -> Deferred[None]:
        """Fires once the service is stopped and no worker runs any more (at once if
        that is so already)."""
        if not self.running and not self.workers:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stopped_waiters.append(waiter)
        return waiter

    def _fire_stopped(self) -> None:
        waiters, self._stopped_waiters = self._stopped_waiters, []
        for waiter in waiters:
            waiter.callback(None)
