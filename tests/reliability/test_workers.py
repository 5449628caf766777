"""``[server] workers = 2`` under the real ``twistd osp``: the workers share the
listeners, a killed worker is restarted while the other keeps serving, SIGHUP reaches
every worker, and no worker outlives its supervisor (SIGTERM or SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from tests.reliability.harness import (
    TwistdServer,
    add_devices,
    exchange,
    query,
    tls_context,
    write_config,
)
from tests.reliability.test_kill import CUSTOMER, _confirmed, _enroll_device, _usage_messages

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
        context = tls_context(_enroll_device(server, tmp_path, CUSTOMER))
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

        os.kill(server.process.pid, signal.SIGHUP)
        _wait_for(
            lambda: server.log_text().count("SIGHUP: reloading TLS material") >= 3,
            "SIGHUP in the supervisor and both workers",
            server,
        )
        confirmed += _send_usage(server, context, 18, 4)

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
