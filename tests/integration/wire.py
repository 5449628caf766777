"""Raw HTTP exchanges for wire-exact tests: bytes in, head and body out."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread


@dataclass(frozen=True)
class Answer:
    """One HTTP response as it crossed the socket."""

    head: bytes
    body: bytes

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def code(self) -> int:
        return int(self.status_line.split(b" ")[1])

    def header_lines(self) -> list[bytes]:
        return self.head.split(b"\r\n")[1:]

    def header(self, name: bytes) -> bytes | None:
        for line in self.header_lines():
            key, _, value = line.partition(b":")
            if key.lower() == name.lower():
                return value[1:] if value.startswith(b" ") else value
        return None


def split_vector(path: Path) -> tuple[bytes, bytes]:
    """A captured request file as (head, body)."""
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def build_request(head: bytes, body: bytes) -> bytes:
    """The captured head with Content-Length set for ``body``."""
    lines = [
        b"Content-Length: %d" % len(body) if line.lower().startswith(b"content-length:") else line
        for line in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _read_answer(sock: socket.socket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        while chunk := sock.recv(65536):
            body += chunk
    else:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return Answer(head, body)


def exchange_sync(
    port: int,
    data: bytes,
    *,
    tls: bool = False,
    client_cert: tuple[Path, Path] | None = None,
    tls_options: ssl.SSLContext | None = None,
) -> Answer:
    """Send ``data`` to 127.0.0.1:port (optionally over TLS) and read one response."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock: socket.socket = raw
    try:
        if tls:
            context = tls_options or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if tls_options is None:
                # Like the toolkit: no SNI, no verification of the server.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                if client_cert is not None:
                    context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
            sock = context.wrap_socket(raw)
        sock.sendall(data)
        return _read_answer(sock)
    finally:
        sock.close()


def exchange(
    port: int, data: bytes, *, tls: bool = False, client_cert: tuple[Path, Path] | None = None
) -> Deferred[Answer]:
    """:func:`exchange_sync` in a thread (keeps the reactor free for the server)."""
    return deferToThread(exchange_sync, port, data, tls=tls, client_cert=client_cert)
