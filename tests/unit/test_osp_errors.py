"""Bugs are not bad input: only the decoder's own refusals answer 400 (issue 8, item 4).

A decoder bug used to become ``OSPDecodeError("undecodable request (KeyError)")``,
logged at info without a traceback and answered 400, so a misspelt field name would
have silently refused every UsageIndication.  Now any exception other than
``OSPDecodeError`` leaves :func:`decode_request` as it is, and ``/osp`` answers it (and
any unexpected exception from the service) with HTTP 500, a logged traceback and a
count in ``osp_messages{message="error",code="500"}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from io import BytesIO
from typing import NoReturn, cast

import pytest

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import LogEvent, capturedLogs
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from osp_server.metrics import Metrics
from osp_server.osp import codec
from osp_server.osp.authn import DeviceAuthenticator, DeviceIdentity
from osp_server.osp.codec import OSPDecodeError, decode_request
from osp_server.osp.messages import (
    ReauthorizationRequest,
    Status,
    UsageConfirmation,
    UsageConfirmationMessage,
    UsageIndication,
    UsageIndicationMessage,
)
from osp_server.osp.resource import OSPResource
from osp_server.osp.service import OSPService
from osp_server.storage.db import StorageError
from osp_server.tls.identity import PeerCertificate
from tests.conftest import VECTORS
from tests.unit.osp_checker import split_http

OSP = VECTORS / "osp"


def _body(name: str) -> bytes:
    if name.endswith(".http"):
        return split_http((OSP / name).read_bytes())[1]
    return (OSP / "bodies" / name).read_bytes()


def _broken(*args: object) -> NoReturn:
    raise KeyError("misspelt_field")


# --------------------------------------------------------------------------- the codec


@pytest.mark.parametrize(
    ("vector", "helper"),
    [
        # the usage decoder and the UsageDetail reader
        ("usage-indication-full.http", "_time"),
        ("usage-indication-full.http", "_report_number"),
        ("usage-indication-full.http", "_txid"),
        ("usage-indication-full.http", "_call_id"),
        ("usage-indication-full.http", "_flatten"),
        ("usage-indication.http", "_usage_detail"),
        # the other decoders and the envelope
        ("authorization-request.http", "_request_number"),
        ("authorization-request-full.http", "_custom_info"),
        ("capabilities-indication-resources.xml", "_bool"),
        ("reauthorization-request.http", "_txid"),  # lenient only for OSPDecodeError
        ("reauthorization-request.http", "_reauth_token"),
        ("usage-indication.http", "_id"),
    ],
)
def test_a_decoder_bug_propagates(
    monkeypatch: pytest.MonkeyPatch, vector: str, helper: str
) -> None:
    body = _body(vector)
    decode_request(body)  # the vector itself decodes
    monkeypatch.setattr(codec, helper, _broken)
    with pytest.raises(KeyError, match="misspelt_field"):
        decode_request(body)


def test_a_recursion_error_in_a_decoder_is_a_bug_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def deep(*args: object) -> NoReturn:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(codec, "_flatten", deep)
    with pytest.raises(RecursionError):
        decode_request(_body("usage-indication.http"))


def test_recursion_while_converting_the_tree_is_refused_at_the_parse_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def deep(self: object, el: object, depth: int) -> NoReturn:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(codec._Converter, "convert", deep)
    with pytest.raises(OSPDecodeError) as info:
        decode_request(_body("usage-indication.http"))
    assert info.value.status_code == codec.STATUS_PARSE


def _usage_component(inner: str) -> UsageIndication:
    body = (
        '<?xml version="1.0"?><Message messageId="1"><UsageIndication componentId="2">'
        f"{inner}</UsageIndication></Message>"
    ).encode()
    message = decode_request(body)
    assert isinstance(message, UsageIndicationMessage)
    (component,) = message.components
    return component


def test_out_of_range_numbers_and_times_are_unreadable_not_errors() -> None:
    """These raised OverflowError/decimal.Overflow inside the decoder (a 400 by accident);
    like any other unreadable time or number they are now None, kept verbatim in fields,
    and each number out of its range is named in ``problems`` for the log."""
    u = _usage_component(
        "<SetupAttempt>1e999999999</SetupAttempt>"
        "<UsageDetail><StartTime>0001-01-01T00:00:00+01:00</StartTime>"
        "<EndTime>9999-12-31T23:59:59-01:00</EndTime>"
        "<Increment>-1E+999999999</Increment><Amount>1e999999999</Amount>"
        "<PostDialDelay>86400.5</PostDialDelay></UsageDetail>"
    )
    assert u.setup_attempt is None and u.increment is None
    assert u.start_time is None and u.end_time is None
    assert u.amount is None and u.post_dial_delay is None
    assert u.fields["UsageDetail/StartTime"] == "0001-01-01T00:00:00+01:00"
    assert u.fields["UsageDetail/Amount"] == "1e999999999"
    assert u.problems == (
        "SetupAttempt '1e999999999' is not an integer in 0..2147483647",
        "UsageDetail/Increment '-1E+999999999' is not an integer in 0..2147483647",
        "UsageDetail/Amount '1e999999999' is not a number in 0..999999999.999",
        "PostDialDelay '86400.5' is not a number in 0..86400",
    )


def test_numbers_in_range_are_bounded_values() -> None:
    u = _usage_component(
        "<SetupAttempt>2.0</SetupAttempt><UsageDetail><Amount>30.0005</Amount>"
        "<Increment>1E0</Increment><PostDialDelay>1.010</PostDialDelay></UsageDetail>"
    )
    assert (u.setup_attempt, u.increment) == (2, 1)
    assert u.amount == Decimal("30.000")  # thousandths, half to even
    assert u.post_dial_delay == Decimal("1.010")
    assert u.problems == ()


@pytest.mark.parametrize(
    ("element", "problem"),
    [
        (
            "<MaximumDestinations>13</MaximumDestinations>",
            "MaximumDestinations '13' is not an integer in 1..12",
        ),
        ("<MaximumDestinations>1E+99999</MaximumDestinations>", "MaximumDestinations '1E+99999'"),
        ("<MaximumDestinations></MaximumDestinations>", "MaximumDestinations ''"),
        ("<MaximumDestinations>2.5</MaximumDestinations>", "MaximumDestinations '2.5'"),
    ],
)
def test_a_request_number_out_of_range_is_a_400_naming_it(element: str, problem: str) -> None:
    body = _body("authorization-request.http")
    start = body.index(b"<MaximumDestinations>")
    end = body.index(b"</MaximumDestinations>") + len(b"</MaximumDestinations>")
    with pytest.raises(OSPDecodeError, match=re.escape(problem)) as info:
        decode_request(body[:start] + element.encode() + body[end:])
    assert info.value.status_code == 400


def test_first_occurrence_wins_in_a_usage_component() -> None:
    u = _usage_component(
        "<Timestamp>yesterday</Timestamp><Timestamp>2026-11-26T16:00:52Z</Timestamp>"
        "<Role></Role><Role>source</Role>"
        "<RoleInfo><Format>radius</Format></RoleInfo><RoleInfo><State>stop</State></RoleInfo>"
        "<RoleInfo><State>start</State></RoleInfo>"
        "<TransactionId></TransactionId><TransactionId>8</TransactionId>"
        '<CallId encoding="base64">MQ==</CallId><CallId encoding="base64">!!</CallId>'
        '<SourceInfo type="sip">alice</SourceInfo><SourceInfo>1404</SourceInfo>'
        '<DestinationInfo type="routingnumber">rn</DestinationInfo>'
        '<DestinationInfo type="e164">1678</DestinationInfo><DestinationInfo>999</DestinationInfo>'
        '<DestinationAlternate type="network">N</DestinationAlternate>'
        '<DestinationAlternate type="transport">[1.1.1.1]:5060</DestinationAlternate>'
        '<DestinationAlternate type="transport">[2.2.2.2]:5060</DestinationAlternate>'
        "<DeviceInfo></DeviceInfo><DeviceInfo>gw</DeviceInfo>"
        "<SetupAttempt>x</SetupAttempt><SetupAttempt>2</SetupAttempt>"
        "<CustomerId></CustomerId><CustomerId>1000</CustomerId>"
        # inside UsageDetail a later leaf replaces an earlier one
        "<UsageDetail><Amount>1</Amount><Amount>2</Amount>"
        '<PostDialDelay type="destination">7</PostDialDelay>'
        '<PostDialDelay type="source">3</PostDialDelay><PostDialDelay>4</PostDialDelay>'
        "</UsageDetail>"
    )
    assert u.timestamp is None  # the first Timestamp, unreadable
    assert u.role is None  # the first Role, empty
    assert u.role_state == "stop"  # the first RoleInfo with a State
    assert u.transaction_id is None
    assert (u.call_id, u.call_id_b64) == (b"1", "MQ==")  # the second is never decoded
    assert (u.calling, u.calling_type) == ("alice", "sip")
    assert (u.called, u.called_type) == ("1678", "e164")
    assert u.destination_infos == (("routingnumber", "rn"), ("e164", "999"))
    assert u.destination == "[1.1.1.1]:5060"
    assert u.destination_alternates == (("network", "N"), ("transport", "[2.2.2.2]:5060"))
    assert u.device_info == "" and u.customer_id == "" and u.device_id is None
    assert u.setup_attempt is None
    assert u.amount == Decimal(2) and u.post_dial_delay == Decimal(3)


def test_every_usage_transaction_id_is_checked_though_the_first_wins() -> None:
    with pytest.raises(OSPDecodeError, match="TransactionId"):
        _usage_component("<TransactionId>7</TransactionId><TransactionId>x</TransactionId>")


def test_first_occurrence_wins_in_a_reauthorization_even_when_unreadable() -> None:
    body = (
        b'<Message messageId="1"><ReauthorizationRequest componentId="2">'
        b"<TransactionId>x</TransactionId><TransactionId>9</TransactionId>"
        b'<CallId encoding="base64">!!</CallId><CallId encoding="base64">MQ==</CallId>'
        b'<SourceInfo type="e164"></SourceInfo><SourceInfo type="sip">alice</SourceInfo>'
        b"<UsageDetail><Increment>1</Increment></UsageDetail>"
        b"<UsageDetail><Amount>5</Amount></UsageDetail>"
        b"<CustomerId></CustomerId><CustomerId>1000</CustomerId>"
        b"</ReauthorizationRequest></Message>"
    )
    r = decode_request(body)
    assert isinstance(r, ReauthorizationRequest)
    assert r.transaction_id is None
    assert (r.call_id, r.call_id_b64) == (None, None)
    assert (r.calling, r.calling_type) == ("alice", "sip")  # an empty one does not count
    assert (r.usage_amount, r.usage_increment) == (None, 1)
    assert r.customer_id is None


# --------------------------------------------------------------------------- /osp

IDENTITY = DeviceIdentity(
    device_pk=1,
    customer_id="1000",
    device_id="1000",
    serial="01",
    route_table=None,
    token_format=None,
)


class _Authenticator:
    """Accepts any certificate once the test fires ``answer`` (the database answering).

    The answer must come after ``render_POST`` returns: ``render_async`` registers
    ``notifyFinish`` then, and a DummyRequest finished before that refuses it.
    """

    def __init__(self) -> None:
        self.answer: Deferred[None] = Deferred()

    async def identify(self, peer: PeerCertificate | None) -> tuple[DeviceIdentity | None, str]:
        await self.answer
        return IDENTITY, "ok"


class _Service:
    """Answers UsageIndications, or raises ``error``; ``pending`` never answers."""

    def __init__(self, error: Exception | None = None, *, pending: bool = False) -> None:
        self.error = error
        self.pending = pending
        self.calls = 0

    async def usage(
        self, identity: DeviceIdentity, message: UsageIndicationMessage
    ) -> UsageConfirmationMessage:
        self.calls += 1
        if self.pending:
            await Deferred()
        if self.error is not None:
            raise self.error
        return UsageConfirmationMessage(
            message_id=message.message_id,
            confirmations=tuple(
                UsageConfirmation(
                    component_id=c.component_id,
                    timestamp=datetime(2026, 11, 29, tzinfo=UTC),
                    status=Status(code=200, description="OK"),
                )
                for c in message.components
            ),
        )


class _Posted:
    def __init__(self, request: DummyRequest, metrics: Metrics, events: Sequence[LogEvent]) -> None:
        self.request = request
        self.metrics = metrics
        self.events = events

    @property
    def body(self) -> bytes:
        return b"".join(self.request.written)

    def header(self, name: bytes) -> Sequence[bytes] | None:
        return self.request.responseHeaders.getRawHeaders(name)

    def count(self, message: str, code: int) -> float | None:
        return self.metrics.registry.get_sample_value(
            "osp_messages_total", {"message": message, "code": str(code)}
        )

    def failures(self) -> list[Failure]:
        return [e["log_failure"] for e in self.events if "log_failure" in e]


def _post(service: _Service, body: bytes, *, disconnect: bool = False) -> _Posted:
    metrics = Metrics()
    authenticator = _Authenticator()
    resource = OSPResource(
        cast(OSPService, service),
        cast(DeviceAuthenticator, authenticator),
        metrics=metrics,
        identify=lambda request: PeerCertificate(der=b"", sha256="00" * 32),
    )
    request = DummyRequest([b""])
    request.method = b"POST"
    request.content = BytesIO(body)  # type: ignore[attr-defined]
    with capturedLogs() as events:
        assert resource.render_POST(request) == NOT_DONE_YET  # type: ignore[arg-type]
        authenticator.answer.callback(None)
        if disconnect:
            request._disconnected = True  # type: ignore[attr-defined]  # as Request sets it
            request.processingFailed(Failure(ConnectionDone()))
    return _Posted(request, metrics, events)


def _assert_plain_500(posted: _Posted) -> None:
    assert posted.request.responseCode == 500
    assert posted.body == b"internal error\n"  # never the traceback
    assert posted.header(b"content-type") == [b"text/plain"]
    assert posted.header(b"content-length") == [str(len(posted.body)).encode()]
    assert posted.header(b"transfer-encoding") is None
    assert posted.request.finished == 1
    assert posted.count("error", 500) == 1
    assert posted.count("malformed", 400) is None


def test_a_service_bug_is_a_logged_and_counted_500() -> None:
    service = _Service(RuntimeError("boom"))
    posted = _post(service, _body("usage-indication.http"))
    assert service.calls == 1
    _assert_plain_500(posted)
    (failure,) = posted.failures()
    assert failure.check(RuntimeError) and "boom" in failure.getTraceback()
    assert b"boom" not in posted.body


def test_a_decoder_bug_is_a_logged_and_counted_500_not_a_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "_time", _broken)
    service = _Service()
    posted = _post(service, _body("usage-indication.http"))
    assert service.calls == 0
    _assert_plain_500(posted)
    (failure,) = posted.failures()
    assert failure.check(KeyError)
    assert "_broken" in failure.getTraceback()  # the frame that raised, for the operator


def test_a_malformed_body_is_still_a_400_without_traceback() -> None:
    service = _Service()
    posted = _post(service, b"<Message><UsageIndication></Message>")
    assert service.calls == 0
    assert posted.request.responseCode == 400
    assert posted.body == b"malformed OSP message\n"
    assert posted.header(b"content-length") == [str(len(posted.body)).encode()]
    assert posted.count("malformed", 400) == 1
    assert posted.count("error", 500) is None
    assert posted.failures() == []


def test_a_storage_error_is_still_a_503() -> None:
    posted = _post(_Service(StorageError("database unreachable")), _body("usage-indication.http"))
    assert posted.request.responseCode == 503
    assert posted.body == b"temporarily unavailable\n"
    assert posted.count("storage", 503) == 1
    assert posted.count("error", 500) is None
    assert posted.failures() == []


def test_a_client_that_goes_away_is_not_counted_as_an_error() -> None:
    service = _Service(pending=True)
    posted = _post(service, _body("usage-indication.http"), disconnect=True)
    assert service.calls == 1
    assert posted.request.written == [] and posted.request.finished == 0
    assert posted.count("error", 500) is None
    assert posted.failures() == []


def test_the_decoded_usage_still_reaches_the_service() -> None:
    service = _Service()
    posted = _post(service, _body("usage-indication.http"))
    assert posted.request.responseCode == 200
    assert posted.body.count(b"<UsageConfirmation ") == 2  # encoded by the resource
    assert posted.count("usage", 200) == 1
    assert service.calls == 1
