"""SECURITY.md R6: hundreds of slow connections alongside a device's mutual-TLS load.

SLOW_CONNECTIONS peers complete the TLS handshake on the HTTPS listener, then send
one header byte a second (slowloris).  Each is cut within the 10 s header deadline;
meanwhile the device's authorizations still succeed (>= 99 %).  Its p99 against the
p99 before the attack (target: within 2x) is printed, not asserted: timing on shared
CI cores is noise.  The slow peers come from 127.0.0.2-127.0.0.9 (below the
per-address limit each), the device from 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

import pytest_twisted

from twisted.internet.threads import deferToThread

from tests.integration.test_osp import Env, _env_fixture
from tests.reliability.harness import p99

SLOW_CONNECTIONS = 480
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
HEADER_DEADLINE = 10.0
REQUESTS = 150

slow_env = _env_fixture(memory=False)


class Slowloris:
    """The slow peers: connect, handshake, then trickle; records when each was cut."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sockets: list[ssl.SSLSocket] = []
        self.opened_at: dict[int, float] = {}
        self.cut_after: dict[int, float] = {}
        self.refused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open_all(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        for i in range(SLOW_CONNECTIONS):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.settimeout(10)
            try:
                raw.bind((SOURCES[i % len(SOURCES)], 0))
                raw.connect(("127.0.0.1", self.port))
                tls = context.wrap_socket(raw)
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: osp\r\n")
            except OSError:
                self.refused += 1
                raw.close()
                continue
            tls.setblocking(False)
            self.opened_at[tls.fileno()] = time.monotonic()
            self.sockets.append(tls)

    def trickle(self) -> None:
        """Until stopped: one byte a second on every open connection."""
        open_ = {s.fileno(): s for s in self.sockets}
        while open_ and not self._stop.is_set():
            readable, _, _ = select.select(list(open_.values()), [], [], 1.0)
            now = time.monotonic()
            for sock in readable:
                fd = sock.fileno()
                try:
                    data = sock.recv(100)
                except ssl.SSLWantReadError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.cut_after[fd] = now - self.opened_at[fd]
                    del open_[fd]
                    sock.close()
            for fd, sock in list(open_.items()):
                try:
                    sock.send(b"X")
                except (ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except OSError:
                    self.cut_after[fd] = now - self.opened_at[fd]
                    del open_[fd]
                    sock.close()
        for sock in open_.values():
            sock.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.trickle, name="slowloris", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


async def _authorizations(env: Env, count: int) -> tuple[int, list[float]]:
    ok, latencies = 0, []
    for _ in range(count):
        started = time.monotonic()
        answer, _ = await env.vector("authorization-request.http")
        latencies.append((time.monotonic() - started) * 1000)
        ok += answer.code == 200
    return ok, latencies


@pytest_twisted.ensureDeferred
async def test_r6_slow_connections_are_cut_and_devices_still_served(slow_env: Env) -> None:
    env = slow_env
    await _authorizations(env, 20)  # warm-up
    _, baseline = await _authorizations(env, REQUESTS)
    slow = Slowloris(env.server.https_port)
    await deferToThread(slow.open_all)
    slow.start()
    try:
        ok, during = await _authorizations(env, REQUESTS)
        deadline = time.monotonic() + HEADER_DEADLINE + 10
        while len(slow.cut_after) < len(slow.sockets) and time.monotonic() < deadline:
            await deferToThread(time.sleep, 0.5)
    finally:
        slow.stop()
    cut = sorted(slow.cut_after.values())
    success = ok / REQUESTS
    print(
        f"\nR6: {len(slow.sockets)} slow TLS connections ({slow.refused} refused at "
        f"connect), {len(cut)} cut, the last after {cut[-1] if cut else 0:.1f} s (target "
        f"< {HEADER_DEADLINE:.0f} s + 1 s trickle); device: {success:.1%} of {REQUESTS} "
        f"authorizations answered 200, p99 {p99(during):.1f} ms against {p99(baseline):.1f} "
        f"ms before (target <= 2x: {'met' if p99(during) <= 2 * p99(baseline) else 'NOT met'})"
    )
    assert slow.refused == 0
    assert len(cut) == len(slow.sockets), "slow connections still open"
    assert cut[-1] < HEADER_DEADLINE + 2.0
    assert success >= 0.99
    # The p99 target is printed above, not asserted: the suite shares two cores with
    # other tests, and latency targets are measured, never asserted (CONVENTIONS).
