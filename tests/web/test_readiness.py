"""Until the first route load is done, /osp answers 503 and /health says "starting"."""

from __future__ import annotations

import io
import json
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from osp_server import __version__
from osp_server.osp.authn import DeviceAuthenticator
from osp_server.osp.resource import OSPResource
from osp_server.osp.service import OSPService
from osp_server.readiness import Readiness
from osp_server.storage.db import Database
from osp_server.web.health import HealthResource, StorageProbe
from tests.conftest import VECTORS
from tests.integration.wire import split_vector


class _RefusingAuthenticator:
    """Records whether the resource got as far as identifying the device."""

    def __init__(self) -> None:
        self.asked = 0

    def identify(self, peer: object) -> Deferred[tuple[None, str]]:
        self.asked += 1
        return succeed((None, "no certificate"))


class _AnsweringDatabase:
    def ping(self) -> Deferred[bool]:
        return succeed(True)


def _post(resource: OSPResource, body: bytes) -> DummyRequest:
    request = DummyRequest([b""])
    request.method = b"POST"
    request.content = io.BytesIO(body)  # type: ignore[attr-defined]
    resource.render(cast(Request, request))
    return request


def test_readiness_waits_for_every_task() -> None:
    readiness = Readiness()
    assert readiness.is_ready()
    routes: Deferred[int] = Deferred()
    other: Deferred[None] = Deferred()
    readiness.wait_for("routes", routes)
    readiness.wait_for("other", other)
    assert not readiness.is_ready() and readiness.waiting_for() == ("other", "routes")
    routes.callback(7)
    assert readiness.waiting_for() == ("other",)
    other.callback(None)
    assert readiness.is_ready()


def test_a_failed_task_keeps_the_server_not_ready() -> None:
    readiness = Readiness()
    failing: Deferred[int] = Deferred()
    readiness.wait_for("routes", failing)
    failing.errback(RuntimeError("storage down"))
    assert readiness.waiting_for() == ("routes",)


def test_osp_answers_503_until_ready() -> None:
    readiness = Readiness()
    loaded: Deferred[int] = Deferred()
    readiness.wait_for("routes", loaded)
    authenticator = _RefusingAuthenticator()
    resource = OSPResource(
        cast(OSPService, object()),
        cast(DeviceAuthenticator, authenticator),
        identify=lambda request: None,
        ready=readiness.is_ready,
    )
    body = split_vector(VECTORS / "osp" / "authorization-request.http")[1]
    starting = _post(resource, body)
    assert starting.responseCode == 503 and starting.finished
    assert starting.responseHeaders.getRawHeaders(b"content-type") == [b"text/plain"]
    assert authenticator.asked == 0  # nothing else was done
    loaded.callback(1)
    after = _post(resource, body)
    assert after.responseCode == 403 and authenticator.asked == 1  # past the gate


def _health(resource: HealthResource) -> tuple[int, dict[str, Any]]:
    request = DummyRequest([b""])
    resource.render(cast(Request, request))
    assert request.responseCode is not None
    return request.responseCode, json.loads(b"".join(request.written))


def test_health_says_starting_until_ready() -> None:
    clock = Clock()
    probe = StorageProbe(cast(Database, _AnsweringDatabase()), clock)
    readiness = Readiness()
    loaded: Deferred[int] = Deferred()
    readiness.wait_for("routes", loaded)
    resource = HealthResource(probe, readiness)
    code, document = _health(resource)
    assert code == 503
    assert document == {
        "status": "starting",
        "storage": "ok",
        "version": __version__,
        "waiting_for": ["routes"],
    }
    loaded.callback(1)
    assert _health(resource) == (200, {"status": "ok", "storage": "ok", "version": __version__})
