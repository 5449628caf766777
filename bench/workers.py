"""Worker processes (``[server] workers = N``) against the bare stack's own scaling.

    python bench/workers.py [--workers N] [--requests R] [--concurrency C]
                            [--engine postgresql|sqlite] [--quick]

Runs the real ``twistd osp`` with ``workers = 1`` (one process, the default) and then
``workers = N`` on the same data directory and database, and the bare HTTP stack
(bench/authorization.py's baseline: our site and TLS around a fixed answer) in 1 and
then N processes sharing one listening socket the same way.  For each it measures
signed authorizations (3 EC tokens) and usage indications over C keep-alive TLS
connections, and prints req/s, p99, and the server CPU per request (every process of
the server summed).  The scaling line compares N/1 of the server with N/1 of the bare
stack measured in the same run: on a 2-core machine the load generator shares the
CPUs, so the bare stack's scaling is this machine's ceiling, not N.

The exit status says whether every request got a right answer; no timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.authorization import (  # noqa: E402
    CUSTOMER,
    DEVICE,
    PASSWORD,
    USAGE_LEGS,
    USERNAME,
    BenchError,
    Check,
    DeviceFiles,
    PhaseResult,
    bare_stack,
    build_request,
    check_authorization,
    check_bare,
    check_usage,
    database,
    drive,
    enroll,
    make_routes,
    read_vector,
    usage_requests,
)
from bench.common import positive_int  # noqa: E402

START_TIMEOUT: Final = 120.0
STOP_TIMEOUT: Final = 30.0
_LISTENING = re.compile(rb"https listening on 127\.0\.0\.1:(\d+)")
_READY = b"taking OSP traffic"


# --- CPU of a process and its children -------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def tree_cpu_seconds(root: int) -> tuple[float, float]:
    """User + system CPU of ``root`` and its direct children, and of ``root`` alone,
    now (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = own = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # After the command name: state, ppid, ... utime (12th), stime (13th).
        if fields is None or len(fields) < 13:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == root or ppid == root:
            seconds = (int(fields[11]) + int(fields[12])) / ticks
            total += seconds
            if pid == root:
                own = seconds
    return total, own


def measured(
    pid: int,
    port: int,
    device: DeviceFiles,
    requests: Sequence[bytes],
    warmup: Sequence[bytes],
    *,
    concurrency: int,
    check: Check,
    name: str,
) -> tuple[PhaseResult, float]:
    """A discarded warm-up, then the measured run with the CPU of ``pid``'s tree;
    also the CPU seconds of ``pid`` itself (the supervisor relaying logs)."""
    if warmup:
        drive(port, device, warmup, concurrency=concurrency, check=check, name=name)
    before: list[tuple[float, float]] = []
    result = drive(
        port,
        device,
        requests,
        concurrency=concurrency,
        check=check,
        name=name,
        on_start=lambda: before.append(tree_cpu_seconds(pid)),
    )
    total, own = tree_cpu_seconds(pid)
    result.server_cpu_seconds = total - before[0][0]
    return result, own - before[0][1]


# --- the real server under twistd ----------------------------------------------------


def write_config(work: Path, url: str, workers: int) -> Path:
    """The server's configuration: loopback port-0 listeners, no metrics."""
    path = work / f"osp-{workers}.toml"
    path.write_text(
        "[server]\n"
        f"data_dir = {json.dumps(str(work / 'data'))}\n"
        f"workers = {workers}\n"
        "[listeners]\n"
        'http = "tcp:0:interface=127.0.0.1"\n'
        'https = "tcp:0:interface=127.0.0.1"\n'
        'metrics = ""\n'
        "[database]\n"
        f"url = {json.dumps(url)}\n"
        "[enrollment]\n"
        "throttle_per_address = 100000\n"
        "throttle_failures = 1000\n",
        encoding="utf-8",
    )
    return path


def seed_database(url: str, routes: int) -> None:
    """Schema, customer/device 1000 and the route table, as an operator would have."""
    from osp_server import passwords
    from osp_server.storage import devices as device_store
    from osp_server.storage import routes as route_store
    from osp_server.storage.db import create_db_engine, upgrade_schema

    engine = create_db_engine(url, pool_size=1, timeout_seconds=30.0)
    try:
        upgrade_schema(engine)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            device_store.add_customer(conn, customer_id=CUSTOMER, name="bench", now=now)
            device_store.add_device(
                conn,
                customer_id=CUSTOMER,
                device_id=DEVICE,
                username=USERNAME,
                now=now,
                password_hash=passwords.hash_secret(PASSWORD),
            )
            route_store.import_routes(conn, make_routes(routes), replace=True)
    finally:
        engine.dispose()


class TwistdServer:
    """``twistd -n osp`` in its own process group, logging to a file."""

    def __init__(self, config: Path, work: Path, workers: int) -> None:
        self.config = config
        self.workers = workers
        self.log_path = work / f"twistd-{workers}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.https_port = 0

    @property
    def pid(self) -> int:
        """The twistd process (the supervisor when workers > 1)."""
        if self.process is None:
            raise BenchError("twistd is not running")
        return self.process.pid

    def start(self) -> None:
        """Start it and wait until every worker takes OSP traffic."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        twistd = Path(sys.executable).with_name("twistd")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", "osp", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = self.log_path.read_bytes()
            port = _LISTENING.search(text)
            if port is not None and text.count(_READY) >= self.workers:
                self.https_port = int(port[1])
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"twistd did not come up: {text[-2000:].decode(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL the group if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


# --- the bare stack in N processes on one socket ------------------------------------


class BareServers:
    """N processes serving the bare stack on one listening socket this process bound."""

    def __init__(self, count: int, tls_dir: Path) -> None:
        self.count = count
        self.tls_dir = tls_dir
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def port(self) -> int:
        """The shared port."""
        return int(self.listener.getsockname()[1])

    @property
    def pid(self) -> int:
        """This bench process: its children are the bare servers."""
        return os.getpid()

    def start(self) -> None:
        """Bind, spawn the servers, wait for each to say it adopted the socket."""
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        # adoptStreamPort needs a non-blocking socket: a blocking accept() would stall
        # the adopting reactor after its first connection.
        self.listener.setblocking(False)
        fd = self.listener.fileno()
        for _ in range(self.count):
            process = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-bare",
                    str(fd),
                    "--tls-dir",
                    str(self.tls_dir),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(fd,),
            )
            self.processes.append(process)
        for process in self.processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"ready":
                self.stop()
                raise BenchError("a bare server did not start")

    def stop(self) -> None:
        """Close their stdin (they stop), wait, close the socket."""
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes = []
        self.listener.close()


def serve_bare(fd: int, tls_dir: Path) -> int:
    """One bare server process: adopt ``fd``, serve until stdin closes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from twisted.internet import reactor

    from osp_server.tls.context import ReloadableServerTLS, TLSMaterial

    key = serialization.load_pem_private_key((tls_dir / "server.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
    tls = ReloadableServerTLS(
        lambda: TLSMaterial(private_key=key, certificate=cert)  # type: ignore[arg-type]
    )
    reactor.adoptStreamPort(fd, socket.AF_INET, bare_stack(reactor, tls))  # type: ignore[attr-defined]
    os.close(fd)
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    def watch() -> None:
        while os.read(0, 4096):
            pass
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    threading.Thread(target=watch, daemon=True).start()
    reactor.run()
    return 0


# --- the run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Command-line settings."""

    workers: int
    requests: int
    concurrency: int
    warmup: int
    engine: str
    routes: int


@dataclass
class Row:
    """One measured phase of one configuration."""

    stack: str
    workers: int
    result: PhaseResult
    root_cpu_seconds: float = 0.0
    """CPU of the twistd process itself (with workers: the supervisor)."""


def run(settings: Settings, out: TextIO) -> int:
    """Every configuration and phase, then the report; 0 unless a request failed."""

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    n, c, w = settings.requests, settings.concurrency, settings.warmup
    say(
        f"osp-server worker processes: 1 vs {settings.workers}, {n} requests x {c} "
        f"connections per phase (+{w} warm-up), engine {settings.engine}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    auth_head, auth_body = read_vector("authorization-request.http")
    auth = build_request(auth_head, auth_body)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="osp-bench-workers-") as tmp:
        work = Path(tmp)
        with database(settings.engine, work) as url:
            seed_database(url, settings.routes)
            device: DeviceFiles | None = None
            next_id = 10**12 + int.from_bytes(os.urandom(4), "big")
            for workers in (1, settings.workers):
                server = TwistdServer(write_config(work, url, workers), work, workers)
                server.start()
                try:
                    if device is None:
                        device = enroll(server.https_port, work)
                    for name, requests, check in (
                        ("auth-signed", [auth] * (n + w), check_authorization),
                        ("usage-insert", usage_requests(n + w, next_id), check_usage),
                    ):
                        result, root_cpu = measured(
                            server.pid,
                            server.https_port,
                            device,
                            requests[w:],
                            requests[:w],
                            concurrency=c,
                            check=check,
                            name=name,
                        )
                        rows.append(Row("osp-server", workers, result, root_cpu))
                    next_id += n + w
                finally:
                    server.stop()
                say(f"osp-server workers = {workers}: done ({server.log_path.name})")
            assert device is not None
            for workers in (1, settings.workers):
                bare = BareServers(workers, work / "data" / "tls")
                bare.start()
                try:
                    result, _ = measured(
                        bare.pid,
                        bare.port,
                        device,
                        [auth] * n,
                        [auth] * w,
                        concurrency=c,
                        check=check_bare,
                        name="bare-http",
                    )
                    rows.append(Row("bare", workers, result))
                finally:
                    bare.stop()
    say()
    for line in report(rows, settings.workers):
        say(line)
    errors = sum(r.result.errors for r in rows)
    for row in rows:
        for example in row.result.error_examples:
            say(f"error in {row.result.name} ({row.workers} workers): {example}")
    say(f"RESULT {'ok' if errors == 0 else 'FAILED'}: {errors} errors")
    return 0 if errors == 0 else 1


def report(rows: Sequence[Row], workers: int) -> list[str]:
    """The table and the scaling lines."""
    lines = [
        f"{'stack':<11}{'phase':<14}{'workers':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'srv CPU us/req':>16}{'errors':>8}"
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"{row.stack:<11}{r.name:<14}{row.workers:>8}{r.throughput:>10,.0f}"
            f"{r.percentile(50):>9.2f}{r.percentile(99):>9.2f}"
            f"{r.server_cpu_ms_per_request * 1000:>16,.0f}{r.errors:>8}"
        )

    def rate(stack: str, phase: str, n: int) -> float:
        return next(
            r.result.throughput
            for r in rows
            if r.stack == stack and r.result.name == phase and r.workers == n
        )

    lines.append("")
    bare = rate("bare", "bare-http", workers) / rate("bare", "bare-http", 1)
    lines.append(
        f"bare stack scaling 1 -> {workers} processes: {bare:.2f}x "
        "(this machine's ceiling with the load generator on the same CPUs)"
    )
    for phase in ("auth-signed", "usage-insert"):
        ours = rate("osp-server", phase, workers) / rate("osp-server", phase, 1)
        lines.append(
            f"osp-server {phase} scaling 1 -> {workers} workers: {ours:.2f}x = "
            f"{ours / bare:.2f} of the bare stack's (target >= 0.90)"
        )
    for row in rows:
        if row.stack == "osp-server" and row.workers > 1 and row.result.server_cpu_seconds:
            share = row.root_cpu_seconds / row.result.server_cpu_seconds * 100
            lines.append(
                f"supervisor in {row.result.name} with {row.workers} workers: {share:.0f} % "
                f"of the server's CPU ({row.root_cpu_seconds * 1e6 / row.result.requests:,.0f}"
                " us per request, relaying the workers' log lines)"
            )
    usage = rate("osp-server", "usage-insert", workers) * USAGE_LEGS
    lines.append(f"usage with {workers} workers: {usage:,.0f} durable records/s")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="bench/workers.py", description=__doc__)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--requests", type=positive_int, default=None, help="per phase (3000)")
    parser.add_argument("--concurrency", type=positive_int, default=None, help="connections (16)")
    parser.add_argument("--engine", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--routes", type=positive_int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every request got a right answer."""
    args = build_parser().parse_args(argv)
    if args.serve_bare is not None:
        if args.tls_dir is None:
            raise SystemExit("--serve-bare needs --tls-dir")
        return serve_bare(args.serve_bare, args.tls_dir)
    requests, concurrency = (60, 4) if args.quick else (3000, 16)
    requests = args.requests or requests
    settings = Settings(
        workers=args.workers,
        requests=requests,
        concurrency=args.concurrency or concurrency,
        warmup=max(1, requests // 10),
        engine=args.engine,
        routes=1000 if args.quick else args.routes,
    )
    try:
        return run(settings, sys.stdout)
    except BenchError as e:
        sys.stderr.write(f"benchmark failed: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
