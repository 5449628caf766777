"""The access log names the device a resource identified (typed on the request class)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from osp_server.web.site import CappedRequest, OSPSite, note_device


def test_the_access_event_carries_the_noted_device() -> None:
    site = OSPSite(Resource(), reactor=Clock(), name="https")
    request = CappedRequest(DummyChannel())
    request.method, request.path, request.code = b"POST", b"/osp", 200
    note_device(request, "1000")
    with capturedLogs() as events:
        site.log(request)
    (event,) = [e for e in events if e.get("listener") == "https"]
    assert event["device_id"] == "1000" and event["path"] == "/osp"
    # The text line (what `twistd --logfile` writes) has every field.
    assert formatEvent(event) == "https POST /osp 200 0B Nonems from 192.168.1.1 device=1000"


def test_a_request_without_a_device_logs_none() -> None:
    site = OSPSite(Resource(), reactor=Clock(), name="http")
    request = CappedRequest(DummyChannel())
    request.method, request.path, request.code = b"GET", b"/health", 200
    with capturedLogs() as events:
        site.log(request)
    assert [e["device_id"] for e in events if e.get("listener") == "http"] == [None]
