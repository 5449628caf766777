"""ReauthorizationRequest details and the ReauthorizationResponse encoder (OSP.md §3.7).

The encoder is for patched clients only (``[osp] reauthorization_fixed_clients``); its
output must have the element structure of the captured well-formed response in
``reauthorization-response.crashes-stock-client.http`` (the form a fixed client parses)
and follow every value rule of OSP.md §2.2.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import defusedxml.ElementTree as DET
import pytest

from osp_server.osp.codec import (
    OSPEncodeError,
    decode_request,
    encode_reauthorization_response,
)
from osp_server.osp.messages import (
    Destination,
    ReauthorizationRequest,
    ReauthorizationResponse,
    Status,
    UnsupportedMessage,
)
from tests.conftest import VECTORS as ALL_VECTORS
from tests.unit.osp_checker import split_http

VECTORS = ALL_VECTORS / "osp"
REQUEST = VECTORS / "reauthorization-request.http"
CRASHING = VECTORS / "reauthorization-response.crashes-stock-client.http"
NOW = datetime(2026, 11, 26, 16, 0, 49, tzinfo=UTC)
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _request_body() -> bytes:
    return split_http(REQUEST.read_bytes())[1]


def _reauth(body: bytes) -> ReauthorizationRequest:
    msg = decode_request(body)
    assert isinstance(msg, ReauthorizationRequest)
    return msg


def _leaf(root: ET.Element, path: str) -> str:
    el = root.find(path)
    assert el is not None, path
    return (el.text or "").strip()


def _wrap(inner: str, kind: str = "ReauthorizationRequest") -> bytes:
    return (
        f'<?xml version="1.0"?><Message messageId="NULL" random="1">'
        f'<{kind} componentId="NULL">{inner}</{kind}></Message>'
    ).encode()


# =========================================================================== decoding


def test_captured_request_decodes_every_detail() -> None:
    body = _request_body()
    # Expected values read independently of our codec (stdlib parser via defusedxml).
    ref = DET.fromstring(body).find("ReauthorizationRequest")
    assert ref is not None
    req = _reauth(body)
    assert req.message_id == "NULL"
    assert req.component_id == "NULL"
    assert req.transaction_id == int(_leaf(ref, "TransactionId"))
    assert req.call_id_b64 == _leaf(ref, "CallId")
    assert req.call_id == base64.b64decode(_leaf(ref, "CallId"))
    assert req.calling == _leaf(ref, "SourceInfo")
    assert req.calling_type == "e164"
    assert req.called == _leaf(ref, "DestinationInfo")
    assert req.called_type == "e164"
    assert req.token == base64.b64decode(_leaf(ref, "Token"))
    assert req.usage_amount == Decimal(_leaf(ref, "UsageDetail/Amount"))
    assert req.usage_increment == int(_leaf(ref, "UsageDetail/Increment"))
    assert req.customer_id == _leaf(ref, "CustomerId")
    assert req.device_id == _leaf(ref, "DeviceId")


def test_captured_request_values_are_the_expected_call() -> None:
    # Pin the vector's content too, so that a parser that returned raw (unstripped)
    # text for both sides of the comparison above would still be caught.
    req = _reauth(_request_body())
    assert req.transaction_id == 1000000001
    assert (req.call_id, req.call_id_b64) == (b"1", "MQ==")
    assert (req.calling, req.called) == ("14048724799", "1678")
    assert req.usage_amount == Decimal("0.010")
    assert req.usage_increment == 1
    assert (req.customer_id, req.device_id) == ("1000", "1000")
    assert req.token is not None
    assert req.token.startswith(b"<?xml") and b"<TokenInfo>" in req.token


def test_british_spelling_and_plain_call_id() -> None:
    req = _reauth(
        _wrap(
            "<CallId>abc@host</CallId><SourceInfo type='sip'> a@b </SourceInfo>"
            "<DestinationInfo type='routingnumber'>99</DestinationInfo>"
            "<DestinationInfo type='e164'>\n1678</DestinationInfo>",
            kind="ReauthorisationRequest",
        )
    )
    assert req.call_id == b"abc@host"
    assert req.call_id_b64 == base64.b64encode(b"abc@host").decode()
    assert (req.calling, req.calling_type) == ("a@b", "sip")
    assert (req.called, req.called_type) == ("1678", "e164")


@pytest.mark.parametrize(
    ("inner", "field"),
    [
        ('<Token encoding="base64">not base64!</Token>', "token"),
        ('<Token encoding="base64"></Token>', "token"),
        ('<Token encoding="cdata">abcd</Token>', "token"),
        ('<CallId encoding="base64">%%%</CallId>', "call_id"),
        ('<CallId encoding="base64">%%%</CallId>', "call_id_b64"),
        ("<TransactionId>12x</TransactionId>", "transaction_id"),
        ("<TransactionId>99999999999999999999</TransactionId>", "transaction_id"),
        ("<UsageDetail><Amount>lots</Amount></UsageDetail>", "usage_amount"),
        ("<UsageDetail><Increment>x</Increment></UsageDetail>", "usage_increment"),
        ("<SourceInfo type='e164'>  </SourceInfo>", "calling"),
        ("<CustomerId/>", "customer_id"),
    ],
)
def test_unreadable_fields_become_none(inner: str, field: str) -> None:
    # Lenient on purpose: the request must still be recognised and answered.
    req = _reauth(_wrap(inner + "<DeviceId>7</DeviceId>"))
    assert getattr(req, field) is None
    assert req.device_id == "7"


def test_empty_request_is_still_a_reauthorization() -> None:
    req = _reauth(_wrap(""))
    assert req == ReauthorizationRequest(message_id="NULL", component_id="NULL")


def test_token_with_line_breaks_decodes() -> None:
    token = base64.b64encode(b"V=1\nI=5\n").decode()
    req = _reauth(_wrap(f'<Token encoding="base64">\n{token[:4]}\r\n{token[4:]}\n</Token>'))
    assert req.token == b"V=1\nI=5\n"


# =========================================================================== encoding


def _response_for(req: ReauthorizationRequest, **changes: object) -> ReauthorizationResponse:
    assert req.token is not None and req.transaction_id is not None
    assert req.calling is not None and req.called is not None
    dest = Destination(
        call_id_b64=req.call_id_b64 or "",
        signal_address="[1.1.1.1]:5060",
        token=req.token,
        valid_after=NOW,
        valid_until=NOW + timedelta(hours=1),
        calling=req.calling,
        called=req.called,
        usage_amount=14400,
        usage_increment=1,
    )
    resp = ReauthorizationResponse(
        message_id=req.message_id,
        component_id=req.component_id,
        timestamp=NOW,
        status=Status(code=200, description="OK"),
        transaction_id=req.transaction_id,
        destination=dest,
    )
    return replace(resp, **changes)  # type: ignore[arg-type]


def _shape(el: ET.Element) -> tuple[object, ...]:
    """Element names, attribute names and child order, recursively (no values)."""
    return (el.tag, tuple(sorted(el.attrib)), tuple(_shape(c) for c in el))


def _encoded() -> tuple[ReauthorizationRequest, bytes]:
    req = _reauth(_request_body())
    return req, encode_reauthorization_response(_response_for(req), random=314321341)


def test_structure_matches_the_captured_response() -> None:
    _, body = _encoded()
    _, captured = split_http(CRASHING.read_bytes())
    assert body.startswith(b'<?xml version="1.0"?>')
    assert _shape(DET.fromstring(body)) == _shape(DET.fromstring(captured))


def test_values_echo_the_request() -> None:
    req, body = _encoded()
    root = DET.fromstring(body)
    assert root.get("messageId") == "NULL"
    assert root.get("random") == "314321341"
    comp = root.find("ReauthorizationResponse")
    assert comp is not None and comp.get("componentId") == "NULL"
    assert _leaf(comp, "Status/Code") == "200"
    assert _leaf(comp, "TransactionId") == str(req.transaction_id)
    assert _leaf(comp, "Destination/CallId") == req.call_id_b64
    assert _leaf(comp, "Destination/SourceInfo") == req.calling
    assert _leaf(comp, "Destination/DestinationInfo") == req.called
    assert base64.b64decode(_leaf(comp, "Destination/Token"), validate=True) == req.token
    assert _leaf(comp, "Destination/UsageDetail/Amount") == "14400"
    assert _leaf(comp, "Destination/UsageDetail/Unit") == "s"
    assert _leaf(comp, "Destination/ValidUntil") == "2026-11-26T17:00:49Z"


def test_every_leaf_follows_the_device_rules() -> None:
    _, body = _encoded()
    root = DET.fromstring(body)
    leaves = [el for el in root.iter() if len(el) == 0]
    assert len(leaves) >= 12
    for el in leaves:
        text = el.text or ""
        assert text, el.tag
        assert not any(ch.isspace() for ch in text), (el.tag, text)
        assert len(text) < 4096, el.tag
        if el.tag in ("Timestamp", "ValidAfter", "ValidUntil"):
            assert TIME_RE.fullmatch(text), (el.tag, text)
    assert b"\n" not in body.split(b"\n", 1)[1]  # nothing between elements after the XML decl


def test_our_decoder_reads_it_as_a_response_not_a_request() -> None:
    _, body = _encoded()
    msg = decode_request(body)
    assert msg == UnsupportedMessage(message_type="ReauthorizationResponse", message_id="NULL")


def test_error_status_without_destination() -> None:
    req = _reauth(_request_body())
    resp = _response_for(req, status=Status(code=403, description="Blocked"), destination=None)
    root = DET.fromstring(encode_reauthorization_response(resp, random=1))
    comp = root.find("ReauthorizationResponse")
    assert comp is not None
    assert [c.tag for c in comp] == ["Timestamp", "Status", "TransactionId"]
    assert _leaf(comp, "Status/Code") == "403"


def test_random_is_generated_when_not_given() -> None:
    _, body = _encoded()
    req = _reauth(_request_body())
    other = encode_reauthorization_response(_response_for(req))
    rnd = DET.fromstring(other).get("random") or ""
    assert rnd.isdigit() and int(rnd) > 0
    assert other.replace(f'random="{rnd}"'.encode(), b'random="314321341"') == body


def test_token_just_under_the_device_limit_is_accepted() -> None:
    req = _reauth(_request_body())
    raw = b"x" * 3069  # 4092 base64 characters
    body = encode_reauthorization_response(
        _response_for(req, destination=replace(_dest(req), token=raw)), random=1
    )
    assert base64.b64decode(_leaf(DET.fromstring(body), ".//Token")) == raw


def _dest(req: ReauthorizationRequest) -> Destination:
    d = _response_for(req).destination
    assert d is not None
    return d


_REFUSED: dict[str, dict[str, object]] = {
    "token-4096": {"token": b"x" * 3072},
    "token-empty": {"token": b""},
    "token-none": {"token": None},
    "space-in-address": {"signal_address": "[1.1.1.1]:5060 "},
    "newline-in-called": {"called": "\n1678"},
    "space-in-calling": {"calling": "1404 872"},
    "tab-in-callid": {"call_id_b64": "MQ==\t"},
    "non-ascii": {"called": "1678é"},
    "no-address": {"signal_address": ""},
    "naive-time": {"valid_after": datetime(2026, 11, 26, 16, 0, 49)},
    "negative-amount": {"usage_amount": -1},
    "osp-version": {"osp_version": "2.1.1"},
    "alternates": {"alternates": (("network", "TG9"),)},
    "destination-infos": {"destination_infos": (("routingnumber", "99"),)},
    "service-type": {"service_type": "voice"},
    "oversize-address": {"signal_address": "1" * 4096},
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_bad_destination_values_are_refused(case: str) -> None:
    req = _reauth(_request_body())
    dest = replace(_dest(req), **_REFUSED[case])  # type: ignore[arg-type]
    with pytest.raises(OSPEncodeError):
        encode_reauthorization_response(_response_for(req, destination=dest), random=1)


@pytest.mark.parametrize(
    "changes",
    [
        {"destination": None},  # 2xx without the Destination the client reads
        {"status": Status(code=200, description="all good")},
        {"transaction_id": 1 << 63},
        {"transaction_id": -1},
        {"message_id": 'a"b'},
        {"component_id": "x" * 65},
        {"timestamp": datetime(2026, 11, 26, 16, 0, 49)},
    ],
)
def test_bad_response_values_are_refused(changes: dict[str, object]) -> None:
    req = _reauth(_request_body())
    with pytest.raises(OSPEncodeError):
        encode_reauthorization_response(_response_for(req, **changes), random=1)
