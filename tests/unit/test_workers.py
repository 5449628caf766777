"""Worker processes, the pure parts and the supervisor on a fake reactor: restart
back-off, stop with SIGTERM then SIGKILL, SIGHUP held until a worker serves, log relay,
the configuration hand-over and per-worker metrics ports."""

from __future__ import annotations

import io
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import create_engine, inspect

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, eventAsJSON, formatEventAsClassicLogText
from twisted.python.failure import Failure

from osp_server.app import build_server_certificate, prepare, token_signer
from osp_server.config import Config, ConfigError, parse_config
from osp_server.endpoints import StartupError
from osp_server.storage.db import normalize_url
from osp_server.workers.child import event_as_json_line
from osp_server.workers.role import HandOverError, WorkerRole, encode_config, read_config
from osp_server.workers.sockets import SharedSocketError, offset_port
from osp_server.workers.supervisor import (
    ACCEPTING_KEY,
    FIRST_BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    MAX_FAILED_STARTS,
    MAX_LINE_BYTES,
    QUICK_RESTART_SECONDS,
    SERVING_KEY,
    STABLE_AFTER_SECONDS,
    WorkerLaunch,
    WorkerProcess,
    WorkerSupervisor,
    describe_exit,
    restart_delay,
)
from tests.conftest import make_config
from tests.memory import MemoryReactor


class FakeProcess:
    """What spawnProcess returns: records signals and stdin; ``end`` finishes it."""

    def __init__(self, protocol: WorkerProcess, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.signals: list[str] = []
        self.stdin = b""
        self.ended = False

    def write(self, data: bytes) -> None:
        self.stdin += data

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def end(self, reason: Failure) -> None:
        self.ended = True
        self.protocol.processEnded(reason)


class FakeProcessReactor(Clock):
    """A clock that 'spawns' FakeProcess objects (or fails to, on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[FakeProcess, list[str], dict[int, Any]]] = []
        self.fail_next = 0

    def spawnProcess(
        self, protocol: WorkerProcess, executable: str, args: list[str], **kwargs: Any
    ) -> FakeProcess:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("no more processes")
        process = FakeProcess(protocol, 1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((process, args, kwargs["childFDs"]))
        return process


def _launch(index: int, siblings_serve: bool) -> WorkerLaunch:
    return WorkerLaunch(
        executable="python",
        args=["python", f"--index={index}", *(["--accept-when-ready"] if siblings_serve else [])],
        env={},
        child_fds={0: "w", 1: "r", 2: "r", 3: 10 + index},
        stdin=b"config-%d" % index,
    )


def _supervisor(
    count: int = 2,
) -> tuple[WorkerSupervisor, FakeProcessReactor, list[dict[str, Any]]]:
    reactor = FakeProcessReactor()
    events: list[dict[str, Any]] = []
    supervisor = WorkerSupervisor(
        reactor,  # type: ignore[arg-type]
        count,
        _launch,
        observer=cast(ILogObserver, events.append),
        stop_grace_seconds=10.0,
    )
    return supervisor, reactor, events


def _killed(signal_number: int = 9) -> Failure:
    return Failure(ProcessTerminated(signal=signal_number))


def _messages(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def test_restart_delay_backs_off_while_a_worker_keeps_dying() -> None:
    assert restart_delay(1.0, None) == FIRST_BACKOFF_SECONDS
    delays = [FIRST_BACKOFF_SECONDS]
    for _ in range(8):
        delays.append(restart_delay(1.0, delays[-1]))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == MAX_BACKOFF_SECONDS
    # A worker that had run a while is restarted quickly and its back-off forgotten.
    assert restart_delay(STABLE_AFTER_SECONDS, MAX_BACKOFF_SECONDS) == QUICK_RESTART_SECONDS
    assert restart_delay(1.0, QUICK_RESTART_SECONDS) == FIRST_BACKOFF_SECONDS


def test_describe_exit() -> None:
    assert describe_exit(_killed(9)) == "signal 9"
    assert describe_exit(Failure(ProcessTerminated(exitCode=3))) == "exit status 3"
    assert describe_exit(Failure(ProcessDone(0))) == "exit status 0"


def test_supervisor_starts_each_worker_with_its_launch() -> None:
    supervisor, reactor, events = _supervisor(3)
    supervisor.startService()
    assert [args for _, args, _ in reactor.spawned] == [
        ["python", "--index=0"],
        ["python", "--index=1"],
        ["python", "--index=2"],
    ]
    assert reactor.spawned[1][2][3] == 11
    # The configuration is written on stdin, which stays open.
    assert reactor.spawned[2][0].stdin == b"config-2"
    assert supervisor.pids() == {0: 1000, 1: 1001, 2: 1002}
    assert "worker 1 started (pid 1001)" in _messages(events)


def test_a_dead_worker_is_restarted_with_back_off() -> None:
    supervisor, reactor, events = _supervisor(2)
    supervisor.startService()
    first = reactor.spawned[0][0]
    first.protocol.outReceived(_serving_line(0))
    reactor.advance(5)
    first.end(_killed())
    assert supervisor.pids() == {1: 1001}
    assert "worker 0 (pid 1000) exited (signal 9) after serving 5.0 s" in _messages(events)
    reactor.advance(FIRST_BACKOFF_SECONDS - 0.01)
    assert len(reactor.spawned) == 2
    reactor.advance(0.01)
    assert len(reactor.spawned) == 3 and supervisor.pids()[0] == 1002
    # Dying again at once, before it serves, doubles the wait.
    reactor.spawned[2][0].end(Failure(ProcessTerminated(exitCode=3)))
    assert any("before it served" in m for m in _messages(events))
    reactor.advance(2 * FIRST_BACKOFF_SECONDS - 0.01)
    assert len(reactor.spawned) == 3
    reactor.advance(0.01)
    assert len(reactor.spawned) == 4
    # After serving a long time the restart is quick; the time before it served
    # does not count.
    reactor.advance(STABLE_AFTER_SECONDS)
    reactor.spawned[3][0].protocol.outReceived(_serving_line(0))
    reactor.advance(STABLE_AFTER_SECONDS - 1)
    reactor.spawned[3][0].end(_killed())
    reactor.advance(QUICK_RESTART_SECONDS)
    assert len(reactor.spawned) == 4
    reactor.advance(8.0)
    assert len(reactor.spawned) == 5
    reactor.spawned[4][0].protocol.outReceived(_serving_line(0))
    reactor.advance(STABLE_AFTER_SECONDS)
    reactor.spawned[4][0].end(_killed())
    reactor.advance(QUICK_RESTART_SECONDS)
    assert len(reactor.spawned) == 6


def test_the_supervisor_gives_up_on_a_worker_that_never_starts() -> None:
    gave_up: list[bool] = []
    reactor = FakeProcessReactor()
    events: list[dict[str, Any]] = []
    supervisor = WorkerSupervisor(
        reactor,  # type: ignore[arg-type]
        2,
        _launch,
        observer=cast(ILogObserver, events.append),
        give_up=lambda: gave_up.append(True),
    )
    supervisor.startService()
    # Worker 1 serves; worker 0 dies before serving, MAX_FAILED_STARTS times.
    reactor.spawned[1][0].protocol.outReceived(_serving_line(1))
    for attempt in range(MAX_FAILED_STARTS):
        process = next(
            p for p, args, _ in reactor.spawned if args[1] == "--index=0" and not p.ended
        )
        process.end(Failure(ProcessTerminated(exitCode=3)))
        if attempt < MAX_FAILED_STARTS - 1:
            assert gave_up == []
            reactor.advance(MAX_BACKOFF_SECONDS)
    assert gave_up == [True]
    assert any("failed to start 5 times in a row" in m for m in _messages(events))
    # No further restart is scheduled.
    spawned = len(reactor.spawned)
    reactor.advance(10 * MAX_BACKOFF_SECONDS)
    assert len(reactor.spawned) == spawned


def test_serving_resets_the_count_of_failed_starts() -> None:
    gave_up: list[bool] = []
    reactor = FakeProcessReactor()
    supervisor = WorkerSupervisor(
        reactor,  # type: ignore[arg-type]
        1,
        _launch,
        observer=cast(ILogObserver, lambda event: None),
        give_up=lambda: gave_up.append(True),
    )
    supervisor.startService()
    for _round in range(3):
        for _ in range(MAX_FAILED_STARTS - 1):
            reactor.spawned[-1][0].end(Failure(ProcessTerminated(exitCode=3)))
            reactor.advance(MAX_BACKOFF_SECONDS)
        reactor.spawned[-1][0].protocol.outReceived(_serving_line(0))
        reactor.spawned[-1][0].end(_killed())
        reactor.advance(MAX_BACKOFF_SECONDS)
    assert gave_up == []


def test_a_worker_that_cannot_be_spawned_is_retried() -> None:
    supervisor, reactor, events = _supervisor(1)
    reactor.fail_next = 1
    supervisor.startService()
    assert supervisor.pids() == {}
    assert "worker 0 cannot start: no more processes" in _messages(events)
    reactor.advance(FIRST_BACKOFF_SECONDS)
    assert supervisor.pids() == {0: 1000}


def test_stop_sends_term_then_kill_after_the_grace_period() -> None:
    supervisor, reactor, _ = _supervisor(2)
    supervisor.startService()
    a, b = (p for p, _, _ in reactor.spawned)
    stopped = supervisor.stopService()
    assert a.signals == ["TERM"] and b.signals == ["TERM"]
    a.end(Failure(ProcessDone(0)))
    results: list[object] = []
    stopped.addBoth(results.append)
    assert results == []
    reactor.advance(10.0)
    assert b.signals == ["TERM", "KILL"]
    b.end(_killed())
    assert results == [None]
    # Nothing is restarted after stop, and no timer is left behind.
    assert len(reactor.spawned) == 2 and reactor.getDelayedCalls() == []


def test_stop_cancels_a_pending_restart() -> None:
    supervisor, reactor, _ = _supervisor(1)
    supervisor.startService()
    reactor.spawned[0][0].end(_killed())
    results: list[object] = []
    supervisor.stopService().addBoth(results.append)
    assert results == [None]
    reactor.advance(60)
    assert len(reactor.spawned) == 1


def _serving_line(index: int, key: str = SERVING_KEY) -> bytes:
    event = {
        "log_format": "worker {index} serving",
        "log_level": LogLevel.info,
        "log_namespace": "osp_server.workers.child",
        "log_time": 1.0,
        "index": index,
        key: True,
    }
    return eventAsJSON(event).encode() + b"\n"


def test_sighup_is_held_until_the_worker_serves() -> None:
    supervisor, reactor, _ = _supervisor(2)
    supervisor.startService()
    a, b = (p for p, _, _ in reactor.spawned)
    a.protocol.outReceived(_serving_line(0))
    supervisor.signal_all("HUP")
    assert a.signals == ["HUP"]
    # SIGHUP would kill a worker that has not installed its handler yet.
    assert b.signals == []
    b.protocol.outReceived(_serving_line(1)[:10])
    assert b.signals == []
    b.protocol.outReceived(_serving_line(1)[10:])
    assert b.signals == ["HUP"]
    # TERM is never held.
    supervisor.stopService()
    assert b.signals == ["HUP", "TERM"]


def test_a_restarted_worker_accepts_only_once_ready_while_a_sibling_serves() -> None:
    supervisor, reactor, _ = _supervisor(2)
    supervisor.startService()
    # At start nobody serves: both accept at once (and answer 503 until ready, so
    # that devices fail over to another service point).
    assert [args for _, args, _ in reactor.spawned] == [
        ["python", "--index=0"],
        ["python", "--index=1"],
    ]
    first, second = (p for p, _, _ in reactor.spawned)
    first.protocol.outReceived(_serving_line(0))
    second.end(_killed())
    reactor.advance(FIRST_BACKOFF_SECONDS)
    # Worker 0 serves but does not accept yet (itself waiting for its routes): the new
    # worker 1 must not hold back too, or nobody would accept.
    assert reactor.spawned[2][1] == ["python", "--index=1"]
    reactor.spawned[2][0].end(_killed())
    first.protocol.outReceived(_serving_line(0, ACCEPTING_KEY))
    reactor.advance(2 * FIRST_BACKOFF_SECONDS)
    # Worker 0 accepts: the new worker 1 leaves the shared sockets to it until ready.
    assert reactor.spawned[3][1] == ["python", "--index=1", "--accept-when-ready"]
    # Both gone: the next one has no sibling to leave connections to.
    first.end(_killed())
    reactor.spawned[3][0].end(_killed())
    reactor.advance(MAX_BACKOFF_SECONDS)
    assert [args for _, args, _ in reactor.spawned[4:]] == [
        ["python", "--index=0"],
        ["python", "--index=1"],
    ]


class _AdoptingReactor:
    """adoptStreamPort for AdoptedListenerService: a fake port on a real descriptor."""

    def __init__(self) -> None:
        self.port = _FakePort()

    def adoptStreamPort(self, fd: int, family: object, factory: object) -> _FakePort:
        return self.port


@pytest.mark.parametrize("stop_first", [False, True])
def test_an_adopted_listener_can_wait_before_accepting(stop_first: bool) -> None:
    import os
    import socket

    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ServerFactory

    from osp_server.workers.sockets import AdoptedListenerService

    ready: Deferred[None] = Deferred()
    reactor = _AdoptingReactor()
    with socket.socket() as sock:
        service = AdoptedListenerService(
            reactor,  # type: ignore[arg-type]
            os.dup(sock.fileno()),
            ServerFactory(),
            accept_after=lambda: ready,
        )
        service.setName("https")
        service.startService()
    assert not reactor.port.reading
    if stop_first:
        service.stopService()
        assert reactor.port.closed
    ready.callback(None)
    assert reactor.port.reading is not stop_first


def test_worker_log_events_are_relayed_with_the_worker_named() -> None:
    supervisor, reactor, events = _supervisor(1)
    supervisor.startService()
    process = reactor.spawned[0][0]
    event = {
        "log_format": "https POST /osp {code}",
        "log_level": LogLevel.warn,
        "log_namespace": "osp_server.web.site",
        "log_time": 12345.0,
        "code": 200,
    }
    process.protocol.outReceived(eventAsJSON(event).encode() + b"\nnot json\n")
    process.protocol.errReceived(b"Traceback (most recent call last):\n  boom")
    process.end(_killed())
    relayed = [e for e in events if e.get("worker") == 0]
    assert len(relayed) == 1
    assert relayed[0]["log_system"] == "worker-0"
    assert relayed[0]["log_level"] == LogLevel.warn
    assert relayed[0]["log_time"] == 12345.0
    messages = _messages(events)
    assert "https POST /osp 200" in messages
    assert "worker 0: not json" in messages
    # stderr is relayed line by line, the unterminated tail when the worker ends.
    assert "worker 0 stderr: Traceback (most recent call last):" in messages
    assert "worker 0 stderr:   boom" in messages


def test_an_endless_line_is_cut_not_buffered() -> None:
    supervisor, reactor, events = _supervisor(1)
    supervisor.startService()
    process = reactor.spawned[0][0]
    process.protocol.outReceived(b"x" * (MAX_LINE_BYTES + 10))
    (message,) = [m for m in _messages(events) if m.startswith("worker 0: x")]
    assert len(message) < MAX_LINE_BYTES + 20


# --- hand-over and configuration ----------------------------------------------------


def _config(tmp_path: Path, **server: Any) -> Config:
    return parse_config(
        {"server": {"data_dir": str(tmp_path), **server}, "plugins": {"x": {"a": [1, 2]}}},
        source="test.toml",
        base=tmp_path,
    )


def test_config_hand_over_round_trips(tmp_path: Path) -> None:
    config = _config(tmp_path, workers=3)
    assert config.workers == 3
    again = read_config(io.BytesIO(encode_config(config)))
    assert again == config
    assert again.plugin_options("x") == {"a": [1, 2]}
    with pytest.raises(TypeError):
        again.plugins["x"]["a"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "no configuration on stdin"),
        (b"\x00\x00", "no configuration on stdin"),
        (b"\x7f\xff\xff\xff", "too large"),
        (b"\x00\x00\x00\x10abc", "cut short"),
    ],
)
def test_a_bad_hand_over_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(HandOverError, match=problem):
        read_config(io.BytesIO(data))


def test_a_hand_over_of_something_else_is_refused() -> None:
    payload = pickle.dumps({"not": "a config"})
    with pytest.raises(HandOverError, match="not a configuration"):
        read_config(io.BytesIO(len(payload).to_bytes(4, "big") + payload))


@pytest.mark.parametrize("workers", [0, 65, "2", 1.5])
def test_workers_setting_is_checked(tmp_path: Path, workers: object) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        _config(tmp_path, workers=workers)


def test_workers_default_to_one(tmp_path: Path) -> None:
    assert _config(tmp_path).workers == 1


@pytest.mark.parametrize(
    ("description", "offset", "expected"),
    [
        ("tcp:9090:interface=127.0.0.1", 2, "tcp:9092:interface=127.0.0.1"),
        ("tcp:interface=127.0.0.1:port=9090", 1, "tcp:interface=127.0.0.1:port=9091"),
        ("tcp6:9090:interface=\\:\\:1", 3, "tcp6:9093:interface=\\:\\:1"),
        ("tcp:0:interface=127.0.0.1", 5, "tcp:0:interface=127.0.0.1"),
        ("tcp:9090", 0, "tcp:9090"),
    ],
)
def test_metrics_port_per_worker(description: str, offset: int, expected: str) -> None:
    assert offset_port(description, offset) == expected


@pytest.mark.parametrize(
    ("description", "problem"),
    [
        ("unix:/run/osp-metrics.sock", "must be a tcp: or tcp6: endpoint"),
        ("tcp:65535", "above 65535"),
        ("tcp:interface=127.0.0.1", "no port number"),
    ],
)
def test_metrics_port_that_cannot_be_offset(description: str, problem: str) -> None:
    with pytest.raises(SharedSocketError, match=problem):
        offset_port(description, 1)


def test_a_relayed_failure_keeps_its_traceback() -> None:
    supervisor, reactor, events = _supervisor(1)
    supervisor.startService()
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    line = event_as_json_line(
        {
            "log_format": "request failed",
            "log_level": LogLevel.critical,
            "log_namespace": "osp_server.web.site",
            "log_time": 1.0,
            "log_failure": failure,
        }
    )
    reactor.spawned[0][0].protocol.outReceived(line.encode())
    (relayed,) = [e for e in events if e.get("worker") == 0]
    traceback = relayed["log_failure"].getTraceback()
    assert 'raise ValueError("boom")' in traceback
    assert "ValueError: boom" in traceback
    assert "ValueError: boom" in (formatEventAsClassicLogText(relayed) or "")
    # The worker's own failure object is left as it was.
    assert isinstance(failure.value, ValueError)


# --- a worker's start-up: it reads what its supervisor prepared ---------------------


def test_a_worker_never_migrates(empty_database_url: str, tmp_path: Path) -> None:
    config = make_config(tmp_path, empty_database_url)
    with pytest.raises(StartupError, match=r"schema is at revision None, not \d{4}: start"):
        prepare(config, MemoryReactor(), worker=WorkerRole(index=0, count=2))
    engine = create_engine(normalize_url(empty_database_url))
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_worker_reads_the_certificates_and_never_renews_them(
    database_url: str, tmp_path: Path
) -> None:
    config = make_config(tmp_path, database_url)
    supervisor_core = prepare(config, MemoryReactor())
    issued = build_server_certificate(supervisor_core).cert
    signer = token_signer(supervisor_core)
    supervisor_core.db.stop()

    # Inside the renewal window: a single process would renew, a worker must not.
    later = issued.not_valid_after_utc - timedelta(days=1)
    role = WorkerRole(index=1, count=2)
    worker_core = prepare(config, MemoryReactor(), clock=lambda: later, worker=role)
    try:
        assert build_server_certificate(worker_core).cert == issued
        assert token_signer(worker_core).certificate == signer.certificate
        assert not list(config.tls.cert_file.parent.glob("*.previous"))
        config.tls.cert_file.unlink()
        with pytest.raises(StartupError, match=str(config.tls.cert_file)):
            build_server_certificate(worker_core)
        assert not config.tls.cert_file.exists()
    finally:
        worker_core.db.stop()


def test_when_stopped_fires_after_the_last_worker_ended() -> None:
    supervisor, reactor, _ = _supervisor(2)
    supervisor.startService()
    a, b = (p for p, _, _ in reactor.spawned)
    fired: list[object] = []
    supervisor.when_stopped().addCallback(fired.append)
    supervisor.stopService()
    a.end(Failure(ProcessDone(0)))
    assert fired == []
    b.end(Failure(ProcessDone(0)))
    assert fired == [None]
    # Asked afterwards: at once.
    later: list[object] = []
    supervisor.when_stopped().addCallback(later.append)
    assert later == [None]


class _FakePort:
    def __init__(self) -> None:
        self.reading = True
        self.closed = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def fileno(self) -> int:
        return 7

    def getHost(self) -> object:
        return None

    def stopListening(self) -> None:
        self.closed = True


class _FakeEndpoint:
    def __init__(self) -> None:
        self.port = _FakePort()

    def listen(self, factory: object) -> object:
        from twisted.internet.defer import succeed

        return succeed(self.port)


def test_a_shared_socket_is_closed_only_after_the_workers_are_gone() -> None:
    # Closing it earlier shuts down the socket the workers still accept on.
    from twisted.internet.defer import Deferred

    from osp_server.workers.sockets import SharedListenerService

    gone: Deferred[None] = Deferred()
    endpoint = _FakeEndpoint()
    listener = SharedListenerService(
        MemoryReactor(),
        "tcp:0",
        endpoint,  # type: ignore[arg-type]
        close_after=lambda: gone,
    )
    listener.setName("https")
    listener.privilegedStartService()
    listener.startService()
    # The supervisor never accepts: the workers do.
    assert not endpoint.port.reading
    assert listener.fileno() == 7
    listener.stopService()
    assert not endpoint.port.closed
    gone.callback(None)
    assert endpoint.port.closed


@pytest.mark.parametrize(
    ("listeners", "problem"),
    [
        (
            {"http": "unix:/tmp/osp-http.sock"},
            r"listeners\.http: .*a unix: socket cannot be shared",
        ),
        ({"metrics": "unix:/tmp/osp-m.sock"}, r"listeners\.metrics: .*must be a tcp: or tcp6:"),
    ],
)
def test_unix_listeners_are_refused_with_workers(
    tmp_path: Path, listeners: dict[str, str], problem: str
) -> None:
    # Twisted's UNIX port unlinks its path, shuts the socket down and resets its mode
    # in whichever process stops or adopts it: it cannot be shared.
    from osp_server.workers.composition import build_supervisor_service

    config = make_config(tmp_path, server={"workers": 2}, listeners=listeners)
    with pytest.raises(StartupError, match=problem):
        build_supervisor_service(config, MemoryReactor())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("description", "problem"),
    [
        ("systemd:domain=INET:index=0", "systemd passed no such socket"),
        ("systemd:domain=INET:name=osp", "systemd passed no such socket"),
        ("nonsense:1", "bad endpoint description"),
    ],
)
def test_listener_descriptions_fail_start_up_with_a_reason(
    tmp_path: Path, description: str, problem: str
) -> None:
    """Twisted's own message for a systemd socket that is not there was only "list
    index out of range"."""
    from osp_server.app import build_service

    config = make_config(tmp_path, listeners={"https": description})
    with pytest.raises(StartupError, match=rf"listeners\.https: .*{problem}"):
        build_service(config, MemoryReactor())
    # Refused before anything was created: no data directory, CA or database.
    assert not config.data_dir.exists()
