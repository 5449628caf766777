"""``[server] workers = 2`` under the real ``twistd osp``: the workers share the
listeners, a killed worker is restarted while the other keeps serving, SIGHUP reaches
every worker, and no worker outlives its supervisor (SIGTERM or SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from osp_server.workers.composition import EXIT_WORKERS_FAILED
from osp_server.workers.supervisor import MAX_FAILED_STARTS
from tests.reliability.harness import (
    TWISTD,
    TwistdServer,
    add_devices,
    child_env,
    enroll_device,
    exchange,
    query,
    tls_context,
    write_config,
)
from tests.reliability.test_kill import CUSTOMER, _confirmed, _usage_messages

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def _wait_for(condition: object, what: str, server: TwistdServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{server.log_text()}")
        time.sleep(0.05)


def _workers(server: TwistdServer) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's log."""
    return {int(i): int(pid) for i, pid in _STARTED.findall(server.log_text())}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _send_usage(server: TwistdServer, context: object, first: int, count: int) -> list[int]:
    """``count`` usage indications, each on its own connection; the confirmed ids."""
    confirmed = []
    for transaction_id, raw in _usage_messages()[first : first + count]:
        code, body = exchange(server.https_port, raw, context)  # type: ignore[arg-type]
        assert _confirmed(code, body), (code, body[:300])
        confirmed.append(transaction_id)
    return confirmed


def test_workers_serve_survive_a_worker_kill_and_forward_sighup(
    database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, database_url, workers=2)
    add_devices(config, CUSTOMER, [CUSTOMER], cwd=tmp_path)
    server = TwistdServer(config, tmp_path)
    try:
        server.start(ready=2)
        first = _workers(server)
        assert sorted(first) == [0, 1] and first[0] != first[1]
        assert server.process is not None
        assert all(_alive(pid) for pid in first.values())
        context = tls_context(enroll_device(server, tmp_path, CUSTOMER, CUSTOMER))
        confirmed = _send_usage(server, context, 0, 6)

        # Worker 0 dies: worker 1 alone answers everything until 0 is back.
        os.kill(first[0], signal.SIGKILL)
        confirmed += _send_usage(server, context, 6, 6)
        _wait_for(lambda: _workers(server)[0] != first[0], "worker 0 restarted", server)
        _wait_for(
            lambda: server.log_text().count("taking OSP traffic") >= 3, "worker 0 ready", server
        )
        # Then worker 1 dies: the restarted worker 0 answers.
        os.kill(first[1], signal.SIGKILL)
        confirmed += _send_usage(server, context, 12, 6)
        _wait_for(lambda: _workers(server)[1] != first[1], "worker 1 restarted", server)
        # Starting beside a serving sibling, the new worker 1 leaves the shared sockets
        # to it until it is ready: no request meets a "starting" 503 meanwhile.
        _wait_for(
            lambda: "accepting once start-up work is done" in server.log_text(),
            "worker 1 holding its listeners",
            server,
        )
        confirmed += _send_usage(server, context, 18, 4)

        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for(
            lambda: server.log_text().count("SIGHUP: reloading TLS material") >= 3,
            "SIGHUP in the supervisor and both workers",
            server,
        )
        confirmed += _send_usage(server, context, 22, 4)

        workers = _workers(server)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        _wait_for(lambda: not any(_alive(pid) for pid in workers.values()), "workers gone", server)
        server.process = None
    finally:
        server.stop()

    log = server.log_text()
    assert "Traceback" not in log, log
    assert "exited (signal 9)" in log
    assert "stderr" not in log, log
    rows = query(database_url, "SELECT transaction_id FROM usage_records")
    stored = sorted(int(r[0]) for r in rows)
    assert stored == sorted(t for t in confirmed for _ in range(2))


def test_workers_stop_when_the_supervisor_is_killed(database_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, database_url, workers=2)
    server = TwistdServer(config, tmp_path)
    try:
        server.start(ready=2)
        workers = _workers(server)
        assert server.process is not None
        # SIGKILL to the supervisor alone (not its process group): nothing tells the
        # workers but their stdin reaching EOF.
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(30)
        _wait_for(
            lambda: not any(_alive(pid) for pid in workers.values()),
            "workers to stop without their supervisor",
            server,
            timeout=20.0,
        )
        server.process = None
    finally:
        server.stop()


def test_workers_serve_a_socket_passed_by_systemd(tmp_path: Path) -> None:
    """Socket activation: the supervisor adopts the socket systemd passes (fd 3,
    LISTEN_FDS/LISTEN_PID) and shares it with its workers."""
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}", workers=2)
    text = config.read_text()
    assert 'https = "tcp:0:interface=127.0.0.1"' in text
    config.write_text(
        text.replace('https = "tcp:0:interface=127.0.0.1"', 'https = "systemd:domain=INET:index=0"')
    )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    log_path = tmp_path / "twistd.log"
    # What systemd does: the socket on fd 3, and LISTEN_PID naming the service's pid.
    launcher = (
        f"import os, sys\nos.dup2({fd}, 3)\nos.close({fd})\n" if fd != 3 else "import os, sys\n"
    ) + (
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='osp')\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                launcher,
                str(TWISTD),
                "-n",
                "--pidfile=",
                "osp",
                "--config",
                str(config),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env(),
            pass_fds=(fd,),
            start_new_session=True,
        )
    listener.close()  # the server holds it now
    try:
        deadline = time.monotonic() + 60
        while log_path.read_bytes().count(b"taking OSP traffic") < 2:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        answers = [
            exchange(port, b"GET /health HTTP/1.1\r\nHost: osp\r\n\r\n", tls_context())
            for _ in range(4)
        ]
        assert all(code == 200 and b'"ok"' in body for code, body in answers), answers
        assert f"https listening on 127.0.0.1:{port}".encode() in log_path.read_bytes()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    assert "Traceback" not in log_path.read_text()


_WORKER_FAILURE_PLUGIN = '''
"""Test-only routing policy that builds in the supervisor and fails in a worker."""

import sys

from twisted.plugin import IPlugin
from zope.interface import implementer

from osp_server.interfaces import IRoutingPolicyFactory
from osp_server.routing.policy import DefaultRoutingPolicy


@implementer(IPlugin, IRoutingPolicyFactory)
class _SupervisorOnly:
    name = "supervisor-only"

    def build(self, **kwargs):
        main = getattr(sys.modules.get("__main__"), "__spec__", None)
        if main is not None and main.name == "osp_server.workers.child":
            raise RuntimeError("this policy does not run in a worker")
        return DefaultRoutingPolicy(**kwargs)


plugin = _SupervisorOnly()
'''


def test_the_supervisor_gives_up_when_workers_cannot_start(tmp_path: Path) -> None:
    """A worker that fails before it serves is restarted with back-off; after
    MAX_FAILED_STARTS failures in a row twistd stops with a non-zero status instead of
    holding listeners that nothing answers on."""
    plugins = tmp_path / "plugins" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "osp_test_supervisor_only.py").write_text(_WORKER_FAILURE_PLUGIN)
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}", workers=2)
    config.write_text(config.read_text() + '[osp]\nrouting_policy = "supervisor-only"\n')
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path / "plugins"), env.get("PYTHONPATH", "")) if p
    )
    log_path = tmp_path / "twistd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "osp", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
            start_new_session=True,
        )
    try:
        status = process.wait(90)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    text = log_path.read_text()
    assert status == EXIT_WORKERS_FAILED, text
    assert "this policy does not run in a worker" in text
    assert f"failed to start {MAX_FAILED_STARTS} times in a row" in text
    assert "taking OSP traffic" not in text
    assert not any(_alive(int(pid)) for _, pid in _STARTED.findall(text))
