"""A worker process: ``python -m osp_server.workers.child``, started by its supervisor.

It reads the configuration from stdin (osp_server.workers.role), adopts the listening
sockets named on its command line, and serves until SIGTERM or until stdin reaches
EOF (the supervisor is gone).  Its log events go to stdout as JSON lines, which the
supervisor relays into its own log.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO, cast

from twisted.logger import FileLogObserver, Logger, eventAsJSON, globalLogBeginner
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str

from osp_server.workers.role import HandOverError, WorkerRole, read_config
from osp_server.workers.supervisor import ACCEPTING_KEY, SERVING_KEY

if TYPE_CHECKING:
    from osp_server.reactor import IWorkerReactor

log = Logger()

STDIN = 0
EXIT_HANDOVER = 2
EXIT_STARTUP = 3


def _listener(text: str) -> tuple[str, int]:
    name, equals, fd = text.partition("=")
    if not equals or not name or not fd.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=FD, got {text!r}")
    return name, int(fd)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line the supervisor builds (osp_server.workers.composition)."""
    parser = argparse.ArgumentParser(prog="osp_server.workers.child")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--reactor", default=None, help="twistd --reactor short name")
    parser.add_argument("--listener", type=_listener, action="append", default=[])
    parser.add_argument(
        "--accept-when-ready",
        action="store_true",
        help="take no connections from the shared sockets until start-up work is done",
    )
    return parser.parse_args(argv)


def event_as_json_line(event: dict[str, Any]) -> str:
    """One log event as the JSON line the supervisor relays.

    An exception inside a logged failure does not survive JSON (it arrives as
    "unpersistable"), so it travels as its text: the supervisor's log then shows the
    traceback with the error message, as a single process would."""
    failure = event.get("log_failure")
    if isinstance(failure, Failure) and not isinstance(failure.value, str):
        portable = copy.copy(failure)
        portable.value = safe_str(failure.value)  # type: ignore[assignment]
        event = {**event, "log_failure": portable}
    return eventAsJSON(event) + "\n"


def json_lines_observer(stream: TextIO) -> FileLogObserver:
    """The worker's log observer: :func:`event_as_json_line` on ``stream``."""
    return FileLogObserver(stream, event_as_json_line)


class _Stopper:
    """Stops the reactor once, whoever asks first: SIGTERM can arrive twice (systemd
    signals the whole control group, and the supervisor forwards its own), and the
    supervisor can vanish while a stop is under way."""

    def __init__(self, reactor: IWorkerReactor) -> None:
        self._reactor = reactor
        self._stopping = False
        reactor.addSystemEventTrigger("before", "shutdown", self._mark)

    def _mark(self) -> None:
        self._stopping = True

    def stop(self) -> None:
        """Stop the reactor unless it is stopping already (reactor thread)."""
        if not self._stopping and self._reactor.running:
            self._stopping = True
            self._reactor.stop()

    def on_signal(self, _signum: int, _frame: object) -> None:
        """A signal handler for SIGTERM."""
        self._reactor.callFromThread(self.stop)

    def when_supervisor_gone(self) -> None:
        """Stop when stdin reaches EOF: the supervisor keeps it open and never writes
        to it again, so EOF means it died (even by SIGKILL), and a worker must not
        keep serving without it."""

        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader
        # holds its lock, and the interpreter aborts on that lock at exit.
        def watch() -> None:
            while os.read(STDIN, 65536):
                pass
            self._reactor.callFromThread(self.stop)

        threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker until it is told to stop; the process exit status."""
    # Until our handlers are installed, a signal sent to the whole process group (a
    # terminal hang-up, kill -HUP -PGID) must not kill a starting worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.reactor:
        from twisted.application.reactors import installReactor

        installReactor(args.reactor)
    try:
        config = read_config(sys.stdin.buffer)
    except HandOverError as e:
        sys.stderr.write(f"osp_server.workers.child: {e}\n")
        return EXIT_HANDOVER
    globalLogBeginner.beginLoggingTo([json_lines_observer(sys.stdout)], redirectStandardIO=False)

    from osp_server.app import CoreService, build_worker_service
    from osp_server.endpoints import StartupError
    from osp_server.reactor import global_reactor

    reactor = cast("IWorkerReactor", global_reactor())
    role = WorkerRole(
        index=args.index,
        count=args.count,
        listeners=dict(args.listener),
        accept_when_ready=args.accept_when_ready,
    )
    try:
        service = build_worker_service(config, reactor, role)
    except StartupError as e:
        log.critical("worker {index} cannot start: {error}", index=role.index, error=str(e))
        return EXIT_STARTUP
    service.privilegedStartService()

    def start() -> None:
        # Ctrl-C in a terminal reaches the whole process group: the supervisor
        # decides when workers stop (SIGTERM), so they ignore SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, stopper.on_signal)
        try:
            service.startService()
        except Exception:
            # Half started, it would answer nothing on some listener: exit, and let
            # the supervisor count a failed start.
            log.failure("worker {index} failed to start", index=role.index)
            exit_status.append(EXIT_STARTUP)
            stopper.stop()
            return
        # Tells the supervisor that SIGHUP is handled now (it holds SIGHUP until then).
        log.info(
            "worker {index} of {count} serving",
            index=role.index,
            count=role.count,
            **{SERVING_KEY: True},
        )
        core_service = service.getServiceNamed("core")
        if isinstance(core_service, CoreService):
            # Tells the supervisor this worker answers OSP now: a replacement started
            # beside it may leave the shared sockets to it.
            core_service.components.core.readiness.when_ready().addCallback(
                lambda _: log.info(
                    "worker {index} accepting OSP traffic",
                    index=role.index,
                    **{ACCEPTING_KEY: True},
                )
            )

    exit_status: list[int] = []
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    stopper = _Stopper(reactor)
    stopper.when_supervisor_gone()
    reactor.run()
    return exit_status[0] if exit_status else 0


if __name__ == "__main__":
    sys.exit(main())
