"""The HTTP edge (SECURITY.md, HTTP catalog): the head must arrive within the header
deadline, the whole request within the request deadline, and an oversized header line
or head gets 431 at once (Twisted closed silently, and over TLS then held the
connection until the request deadline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.memory import MemoryServer, memory_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MemoryServer]:
    config = make_config(
        tmp_path, listeners={"header_timeout_seconds": 10.0, "request_timeout_seconds": 30.0}
    )
    yield from memory_server(config)


def test_a_slow_head_is_cut_at_the_header_deadline(server: MemoryServer) -> None:
    connection = server.connect(b"GET /health HTTP/1.1\r\nHost: osp\r\n", site="http")
    for _ in range(9):
        server.reactor.advance(1.0)
        connection.protocol.dataReceived(b"X-Trickle: 1\r\n")
    assert not connection.transport.disconnecting
    server.reactor.advance(1.0)
    assert connection.transport.disconnecting or connection.transport.disconnected
    assert connection.answer() == b""


def test_a_complete_head_then_a_slow_body_gets_the_request_deadline(
    server: MemoryServer,
) -> None:
    head = b"POST /tep HTTP/1.1\r\nHost: osp\r\nContent-Length: 100\r\n\r\n"
    connection = server.connect(head + b"operation=", site="http")
    server.reactor.advance(20.0)  # past the header deadline: the head was complete
    assert not connection.transport.disconnecting
    server.reactor.advance(10.0)
    assert connection.transport.disconnecting or connection.transport.disconnected


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * 100_000 + b"\r\n",  # one line over the limit
        b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 900) for i in range(30)),  # many lines
    ],
)
def test_oversized_heads_get_431_at_once(server: MemoryServer, head: bytes) -> None:
    connection = server.connect(b"GET /health HTTP/1.1\r\nHost: osp\r\n" + head + b"\r\n")
    answer = connection.answer()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:100]
    assert answer.endswith(b"request headers too large\r\n")
    assert connection.transport.disconnecting


def test_a_normal_request_is_unaffected(server: MemoryServer) -> None:
    answer = server.exchange(b"GET /health HTTP/1.1\r\nHost: osp\r\n\r\n", site="http")
    assert answer.startswith(b"HTTP/1.1 200 ")
