"""The real ``twistd osp`` as a child process that a test may ``kill -9``, and raw clients.

Every server runs in its own session (so its process group can be killed whole and
nothing it spawned outlives it) and logs into a file per start (a pipe that nobody
reads would fill up and stall the server).  The executables are looked up next to
``sys.executable``: ``.ci/run`` installs the project into ``.venv``; a checkout that
is not installed gets ``osp-admin`` through ``python -m`` and the repository on
``PYTHONPATH`` (which is also how ``twistd`` finds the ``osp`` plugin there).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

from osp_server.enrollment.wire import encode_fields
from osp_server.storage.db import normalize_url

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TWISTD = BIN / "twistd"
OSP_ADMIN = BIN / "osp-admin"

MAX_ANSWER_BYTES = 1 << 20
_LISTENING = re.compile(rb"(https?) listening on 127\.0\.0\.1:(\d+)")
_READY = b"taking OSP traffic"
_ISSUED = re.compile(rb"status=0&certificate=([A-Za-z0-9+/]+={0,2})\n")
_STATUS = re.compile(rb"status=([0-9]+)\n")
TEP_HEAD = (
    b"POST /tep HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: text/html\r\n"
    b"Content-Length: %d\r\nConnection: Keep-Alive\r\n\r\n"
)


class Interrupted(Exception):
    """An exchange that ended without a complete HTTP answer (refused, reset, cut, late)."""


def child_env() -> dict[str, str]:
    """The environment of server and admin processes."""
    env = dict(os.environ)
    if not OSP_ADMIN.exists():
        # Not installed: run from the checkout, like ``PYTHONPATH=. pytest`` does.
        env["PYTHONPATH"] = str(REPO)
    return env


def admin_argv(config: Path, *args: str) -> list[str]:
    """The command line of ``osp-admin --config config args…``."""
    program = (
        [str(OSP_ADMIN)] if OSP_ADMIN.exists() else [sys.executable, "-m", "osp_server.admin.cli"]
    )
    return [*program, "--config", str(config), *args]


def osp_admin(config: Path, *args: str, stdin: str | None = None, cwd: Path) -> str:
    """Run ``osp-admin`` to completion; its stdout, or AssertionError with its stderr."""
    result = subprocess.run(
        admin_argv(config, *args),
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(),
        timeout=60,
    )
    assert result.returncode == 0, f"osp-admin {' '.join(args)}: {result.stderr}"
    return result.stdout


def add_devices(config: Path, customer: str, devices: Sequence[str], *, cwd: Path) -> None:
    """A customer and its devices (username ``gw<id>``, password ``secret``), via osp-admin.

    The database is created (or migrated) first, as an operator does before the first
    start; the devices are added in parallel because each one costs an argon2id hash
    and a Python start-up.
    """
    osp_admin(config, "db", "upgrade", cwd=cwd)
    osp_admin(config, "customer", "add", customer, cwd=cwd)
    running = [
        subprocess.Popen(
            admin_argv(
                config, "device", "add", customer, d, "--username", f"gw{d}", "--password-stdin"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=child_env(),
        )
        for d in devices
    ]
    failures = []
    for process in running:
        try:
            _, err = process.communicate("secret\n", timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if process.returncode != 0:
            failures.append(err)
    assert not failures, failures


def write_config(directory: Path, database_url: str, *, workers: int = 1) -> Path:
    """A config with loopback port-0 listeners, this database and no address throttle.

    Passwords use the OWASP-minimum argon2id profile: these tests are about what a
    kill leaves behind, and with RFC 9106 parameters two argon2 checks per enrollment
    were most of their CPU time.  (The default profile is what the packaging tests run.)
    """
    config = directory / "osp.toml"
    config.write_text(
        "[server]\n"
        f"data_dir = {json.dumps(str(directory / 'data'))}\n"
        f"workers = {workers}\n"
        "[database]\n"
        f"url = {json.dumps(database_url)}\n"
        "[listeners]\n"
        'http = "tcp:0:interface=127.0.0.1"\n'
        'https = "tcp:0:interface=127.0.0.1"\n'
        'metrics = ""\n'
        "[enrollment]\n"
        "throttle_per_address = 100000\n"
        'password_hashing = "owasp-minimum"\n'
    )
    return config


class TwistdServer:
    """``twistd -n osp`` started, killed with SIGKILL and restarted on the same state."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.http_port = 0
        self.https_port = 0
        self._logs: list[Path] = []

    def start(self, timeout: float = 60.0, *, ready: int = 1) -> None:
        """Start a new server process; wait until both listeners report their port and
        the server says ``ready`` times (once per worker process) it takes OSP traffic."""
        assert self.process is None, "the previous server still runs"
        log_path = self.workdir / f"twistd-{self.starts}.log"
        self._logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(TWISTD), "-n", "--pidfile=", "osp", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=child_env(),
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            text = log_path.read_bytes()
            ports = {m[0]: int(m[1]) for m in _LISTENING.findall(text)}
            # /osp answers 503 until the first route load: wait for the ready line too.
            if set(ports) == {b"http", b"https"} and text.count(_READY) >= ready:
                self.http_port, self.https_port = ports[b"http"], ports[b"https"]
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"twistd did not come up:\n{self.log_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server's whole process group and reap it; it must have been alive."""
        process = self.process
        assert process is not None, "no server to kill"
        alive = process.poll() is None
        self._kill_group(process)
        self.process = None
        self.kills += 1
        assert alive, f"the server had died on its own:\n{self.log_text()}"

    def terminate(self, timeout: float = 30.0) -> None:
        """Stop the server cleanly (SIGTERM, as systemd does) and reap it."""
        process = self.process
        assert process is not None, "no server to stop"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout)
        self.process = None

    def stop(self) -> None:
        """Kill and reap the server if one runs (for ``finally`` blocks); never raises."""
        if self.process is not None:
            self._kill_group(self.process)
            self.process = None

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)

    def log_text(self) -> str:
        """Every start's log, for failure messages."""
        parts = []
        for path in self._logs:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)


def tls_context(client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client context like the toolkit's: no SNI, no server verification."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return context


def exchange(
    port: int, data: bytes, context: ssl.SSLContext, *, timeout: float = 20.0
) -> tuple[int, bytes]:
    """One HTTPS request to 127.0.0.1:port: (HTTP status, body), or :class:`Interrupted`.

    The answer counts only when its whole Content-Length arrived: a body cut by a kill
    is an interrupted exchange, not an answer.  A malformed status line is an
    AssertionError (a server that answers garbage is not interrupted, it is wrong).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with context.wrap_socket(raw) as sock:
                sock.sendall(data)
                return read_answer(sock)
    except OSError as e:  # refused, reset, TLS EOF, timeout (all OSError subclasses)
        raise Interrupted(f"{type(e).__name__}: {e}") from e


def read_answer(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One whole HTTP answer from ``sock``: (status, body); the connection stays open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise Interrupted(f"connection closed after {len(received)} bytes")
        received += chunk
        if len(received) > MAX_ANSWER_BYTES:
            raise Interrupted("answer head too large")
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ")
    assert len(status_line) >= 3 and status_line[1].isdigit(), head
    code = int(status_line[1])
    lengths = [
        int(v.strip())
        for k, _, v in (line.partition(b":") for line in lines[1:])
        if k.strip().lower() == b"content-length"
    ]
    if len(lengths) != 1 or lengths[0] > MAX_ANSWER_BYTES:
        raise Interrupted(f"no usable Content-Length in {head!r}")
    while len(body) < lengths[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise Interrupted(f"body cut at {len(body)} of {lengths[0]} bytes")
        body += chunk
    return code, body


def tep_request(
    *, customer: str, device: str, nonce: bytes, csr_der: bytes, operation: bytes = b"request"
) -> bytes:
    """A whole TEP request as the toolkit's ``enroll`` sends it (TEP.md §3)."""
    body = encode_fields(
        [
            ("operation", operation),
            ("nonce", nonce),
            ("username", b"gw" + device.encode()),
            ("password", b"secret"),
            ("device", device.encode()),
            ("customer", customer.encode()),
            ("request", base64.b64encode(csr_der)),
        ]
    )
    return TEP_HEAD % len(body) + body


def parse_tep_answer(code: int, body: bytes) -> tuple[int, bytes | None]:
    """(TEP status, certificate DER when issued); AssertionError for anything off-spec."""
    assert code == 200, (code, body)
    issued = _ISSUED.fullmatch(body)
    if issued:
        return 0, base64.b64decode(issued[1], validate=True)
    status = _STATUS.fullmatch(body)
    assert status is not None, body
    return int(status[1]), None


_KEYS: list[rsa.RSAPrivateKey] = []
_KEYS_LOCK = threading.Lock()


def rsa_keys(count: int) -> list[rsa.RSAPrivateKey]:
    """``count`` RSA-2048 keys, generated once per test session (they are slow)."""
    with _KEYS_LOCK:
        while len(_KEYS) < count:
            _KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _KEYS[:count]


def csr_der(key: rsa.RSAPrivateKey) -> bytes:
    """A SHA-256 CSR for ``key`` (the subject is ignored by the server)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def query(database_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one read-only statement, on a short-lived engine (disposed at once)."""
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def enroll_device(
    server: TwistdServer, tmp_path: Path, customer: str, device: str
) -> tuple[Path, Path]:
    """Enroll over TEP (the device must exist, password ``secret``) and keep its PEM
    files in ``tmp_path`` for mutual TLS: (certificate, key)."""
    (key,) = rsa_keys(1)
    raw = tep_request(customer=customer, device=device, nonce=b"1\x002\x00", csr_der=csr_der(key))
    status, der = parse_tep_answer(*exchange(server.https_port, raw, tls_context()))
    assert status == 0 and der is not None
    cert_path, key_path = tmp_path / "device.pem", tmp_path / "device.key"
    cert_path.write_bytes(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux /proc)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (0 when there are no values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0.0
