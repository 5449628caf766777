"""Unsupported methods: 405 with Allow on every resource (RFC 9110 §15.5.6), never
Twisted's 501 for methods it does not know, and 404 stays 404 whatever the method."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.memory import MemoryServer, memory_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MemoryServer]:
    yield from memory_server(make_config(tmp_path))


def _ask(
    server: MemoryServer, method: bytes, path: bytes, site: str
) -> tuple[bytes, dict[bytes, bytes], bytes]:
    raw = method + b" " + path + b" HTTP/1.1\r\nHost: osp\r\nContent-Length: 0\r\n\r\n"
    head, _, body = server.exchange(raw, site=site).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return lines[0].split(b" ")[1], headers, body


@pytest.mark.parametrize(
    ("method", "path", "site", "allow"),
    [
        (b"PUT", b"/osp", "https", b"POST"),
        (b"TRACE", b"/osp", "https", b"POST"),
        (b"GET", b"/osp", "https", b"POST"),
        (b"DELETE", b"/health", "http", b"GET, HEAD"),
        (b"POST", b"/health", "https", b"GET, HEAD"),
        (b"PATCH", b"/tep", "https", b"POST"),
        (b"OPTIONS", b"/crl", "http", b"GET, HEAD"),
    ],
)
def test_unsupported_methods_get_405_with_allow(
    server: MemoryServer, method: bytes, path: bytes, site: str, allow: bytes
) -> None:
    code, headers, body = _ask(server, method, path, site)
    assert code == b"405", (method, path, code, body)
    assert headers[b"allow"] == allow
    assert headers[b"content-type"] == b"text/plain"
    assert body.startswith(b"method " + method + b" not allowed here")


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"TRACE"])
def test_an_unknown_path_is_404_for_every_method(server: MemoryServer, method: bytes) -> None:
    code, _, _ = _ask(server, method, b"/nothing-here", "https")
    assert code == b"404"


def test_supported_methods_are_unchanged(server: MemoryServer) -> None:
    assert _ask(server, b"GET", b"/health", "http")[0] == b"200"
    assert _ask(server, b"HEAD", b"/health", "http")[0] == b"200"
