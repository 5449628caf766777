"""OSP codec: real toolkit requests decode, hostile bodies are refused, answers pass the checker."""

from __future__ import annotations

import base64
import random
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import defusedxml.ElementTree as DET
import pytest

from osp_server.osp import codec
from osp_server.osp.codec import (
    MAX_BODY_BYTES,
    OSPDecodeError,
    OSPEncodeError,
    decode_request,
    encode_authorization_response,
    encode_capabilities_confirmation,
    encode_usage_confirmations,
)
from osp_server.osp.messages import (
    AuthorizationRequest,
    AuthorizationResponse,
    CapabilitiesConfirmation,
    CapabilitiesIndication,
    Destination,
    ReauthorizationRequest,
    Status,
    TerminationCause,
    UnsupportedMessage,
    UsageConfirmation,
    UsageIndicationMessage,
)
from tests.conftest import VECTORS as ALL_VECTORS
from tests.unit.osp_checker import check_osp_response, split_http

VECTORS = ALL_VECTORS / "osp"
REQUEST_FILES = sorted(p.name for p in VECTORS.glob("*.http") if "response" not in p.name)
BODY_FILES = sorted(p.name for p in (VECTORS / "bodies").glob("*.xml") if "accepted" not in p.name)
NOW = datetime(2026, 11, 26, 16, 0, 21, tzinfo=UTC)


def _body(name: str) -> bytes:
    if name.endswith(".http"):
        return split_http((VECTORS / name).read_bytes())[1]
    return (VECTORS / "bodies" / name).read_bytes()


def _auth(name: str) -> AuthorizationRequest:
    msg = decode_request(_body(name))
    assert isinstance(msg, AuthorizationRequest)
    return msg


def _usage(name: str) -> UsageIndicationMessage:
    msg = decode_request(_body(name))
    assert isinstance(msg, UsageIndicationMessage)
    return msg


def _http(body: bytes, content_type: bytes = b"text/plain") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        content_type,
        len(body),
    )


def _strings(obj: object) -> list[str]:
    """Every str held by a decoded message, recursively (to check stripping)."""
    out: list[str] = []
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, tuple | list):
        for x in obj:
            out.extend(_strings(x))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_strings(k))
            out.extend(_strings(v))
    elif hasattr(obj, "__slots__"):
        for name in obj.__slots__:
            out.extend(_strings(getattr(obj, name)))
    return out


# =========================================================================== vectors


def test_vectors_present() -> None:
    assert len(REQUEST_FILES) == 7, REQUEST_FILES
    assert len(BODY_FILES) == 6, BODY_FILES


@pytest.mark.parametrize("name", REQUEST_FILES + BODY_FILES)
def test_every_captured_request_decodes_stripped(name: str) -> None:
    msg = decode_request(_body(name))
    expected = {
        "authorization": AuthorizationRequest,
        "usage": UsageIndicationMessage,
        "capabilities": CapabilitiesIndication,
        "reauthorization": ReauthorizationRequest,
    }[name.split("-")[0]]
    assert isinstance(msg, expected)
    for s in _strings(msg):
        assert s == s.strip(), (name, s)


def test_authorization_request_minimal_test_app() -> None:
    req = _auth("authorization-request.http")
    assert req.message_id == "20073041881"
    assert req.component_id == "20073041880"
    assert req.timestamp == datetime(2026, 11, 26, 16, 0, 21, tzinfo=UTC)
    assert req.call_ids == tuple(str(i).encode() for i in range(1, 9))
    assert req.call_ids_b64[0] == "MQ==" and req.call_ids_b64[7] == "OA=="
    assert (req.calling, req.calling_type) == ("14048724799", "e164")
    assert (req.called, req.called_type) == ("1678", "e164")
    assert req.max_destinations == 8
    assert req.customer_id == "1000" and req.device_id == "1000"
    assert req.source_alternates == (("subscriber", "919404556#4444"),)
    assert req.service_type is None
    assert req.destination_infos == () and req.extra == ()


def test_authorization_request_full_entities_unescaped() -> None:
    req = _auth("authorization-request-full.http")
    assert len(req.call_ids) == 8 and req.max_destinations == 8
    assert req.source_alternate("network") == "SrcNetworkId"
    assert req.source_alternate("switchId") == "SrcSwitchId"
    assert req.destination_info("spid") == "spid"
    assert req.destination_info("mnc") == "mnc"
    assert req.custom_info == ((1, b"CustomInfo_first"), (17, b"true"))
    extra = dict(req.extra)
    assert extra["RemotePartyIdSourceInfo[2]"] == (
        "\"'Eric Smith' of AT&T\" <sip:2001@att.com>;privacy=off;screen=no"
    )
    assert extra["RemotePartyIdSourceInfo[2]@type"] == "sip"
    assert extra["FromSourceInfo[3]"] == "<sip:1001@sip.transnexus.com>"
    assert extra["FromSourceInfo"] == "Hello Gunter"  # trailing space stripped
    assert extra["CallingPartyInfo/UserGroup"] == "callingusergroup"
    assert [extra["SdpFingerprint"], extra["SdpFingerprint[2]"], extra["SdpFingerprint[3]"]] == [
        "fingerprint1",
        "fingerprint2",
        "fingerprint3",
    ]
    assert extra["OriginationId"] == "1b541919-d4e1-42dc-bbc7-a13c06ad45c4"


def test_authorization_request_rich_module_style() -> None:
    req = _auth("authorization-request-rich.xml")
    assert req.call_ids == (b"a84b4c76e66710@pc33.example.com",)
    assert req.device_info == "[10.0.0.2]:5060"
    assert req.source_alternates == (
        ("network", "srcTG1"),
        ("switchId", "srcSwitch"),
        ("transport", "[10.0.0.1]:5060"),
    )
    assert req.destination_infos == (
        ("routingnumber", "4045550000"),
        ("cic", "0288"),
        ("npdi", "true"),
        ("spid", "SPIDX"),
    )
    assert req.service_type == "voice"
    assert req.signaling_protocol == "sip"
    assert req.max_destinations == 12
    assert req.custom_info == ((1, b"custom-one"), (4, b"custom-four"))
    extra = dict(req.extra)
    assert extra["PricingIndication/Amount"] == "0.015"
    assert extra["PricingIndication/Currency"] == "USD"
    assert extra["Attestation"] == "A"
    assert extra["SdpFingerprint"] == "sha-256 AB:CD"


def test_authorization_request_minimal_module_style() -> None:
    req = _auth("authorization-request-minimal.xml")
    assert req.max_destinations == 12
    assert req.calling == "15551230000" and req.called == "15559870000"
    assert req.source_alternates == (("transport", "[10.0.0.1]:5060"),)
    assert req.customer_id is None and req.device_id is None


def test_usage_indication_two_components_in_order() -> None:
    msg = _usage("usage-indication.http")
    assert msg.message_id == "10000000013"
    first, second = msg.components
    assert [first.component_id, second.component_id] == ["10000000012", "10000000014"]
    assert first.role == "source" and first.transaction_id == 1000000001
    assert first.call_id == b"1"
    assert first.destination == "[1.1.1.1]:5060"
    assert first.termination_cause == TerminationCause(type="q850", code="41")
    assert first.amount is None and first.start_time is None
    assert first.fields["UsageDetail/TerminationCause/TCCode"] == "41"
    assert first.fields["UsageDetail/TerminationCause@type"] == "q850"
    assert first.fields["Group/GroupId"] == "E4596A7B-2C27-11D9-816A-EA39F2B2CD06"
    assert second.destination == "[2.2.2.2]:5060"
    assert second.amount == Decimal("30.000")
    assert str(second.amount) == "30.000"
    assert second.increment == 1 and second.unit == "s"
    assert second.post_dial_delay == Decimal("1.010")
    assert second.release_source == "unknown"
    assert second.termination_cause is None
    assert second.signaling_protocol == "sip"
    assert second.statistics["LossSent/Packets"] == "1"
    assert second.statistics["LossReceived/Fraction"] == "10"
    assert second.fields["UsageDetail/Statistics/LossReceived/Packets"] == "100"
    assert second.customer_id == "1000" and second.device_id == "1000"


def test_usage_indication_destination_role() -> None:
    for name in ("usage-indication-destination-role.http", "usage-indication-destination-role.xml"):
        (u,) = _usage(name).components
        assert u.role == "destination"
        assert u.transaction_id is not None
        assert u.amount == Decimal("30.000")
        assert u.start_time is not None and u.end_time is not None
        assert u.end_time > u.connect_time > u.alert_time  # type: ignore[operator]
    (u,) = _usage("usage-indication-destination-role.xml").components
    assert u.transaction_id == 4785098287068543018
    assert u.connect_time == datetime(2026, 11, 26, 15, 45, 32, tzinfo=UTC)
    assert u.release_source == "destination"


def test_usage_indication_from_scratch() -> None:
    (u,) = _usage("usage-indication-from-scratch.xml").components
    assert u.transaction_id == 1234567890123
    assert u.setup_attempt == 1
    assert u.destination == "[10.1.1.1]:5060"
    assert u.destination_alternates == (("deviceId", "1"),)
    assert u.fields["RoleInfo/VendorInfo"] == "opensips"
    assert u.device_info == "[10.0.0.2]:5060"


def test_usage_indication_full_and_rich() -> None:
    first, second = _usage("usage-indication-full.http").components
    assert first.termination_cause == TerminationCause(type="q850", code="41")
    assert [tc.type for tc in second.termination_causes] == ["h323", "q850", "sip", "xmpp"]
    assert second.termination_causes[3].description == "tc_xmpp"
    assert second.signaling_protocol == "h323-Q931"
    assert second.codec == "g729"
    assert second.setup_attempt == 2
    assert second.fields["UsageDetail/Codec[3]@service"] == "video"
    assert second.statistics["Metrics[2]@type"] == "rtcp"
    assert second.fields["RemotePartyIdSourceInfo[2]"].startswith("\"'Eric Smith' of AT&T\"")
    rich = _usage("usage-indication-rich.xml").components
    assert len(rich) == 2
    assert rich[1].amount == Decimal("65.432")
    assert rich[1].post_dial_delay == Decimal("2.500")  # the source-side one
    assert rich[1].termination_causes[0].description == "Normal call clearing"
    assert rich[1].statistics["RFactor"] == "88.500"
    assert rich[0].fields["PricingIndication/Unit"] == "s"
    assert rich[1].fields["PricingIndication/Unit"] == ""  # empty element kept


def test_capabilities() -> None:
    cap = decode_request(_body("capabilities-indication.http"))
    assert isinstance(cap, CapabilitiesIndication)
    assert cap.component_id == "3217360170"
    assert cap.almost_out_of_resources is False
    assert cap.osp_version == "2.1.1"
    assert cap.source_alternates == (("network", "SrcNetworkId"),)
    busy = decode_request(_body("capabilities-indication-resources.xml"))
    assert isinstance(busy, CapabilitiesIndication)
    assert busy.almost_out_of_resources is True
    assert busy.device_info == "[10.0.0.2]:5060"


def test_reauthorization_is_recognised_with_null_ids() -> None:
    msg = decode_request(_body("reauthorization-request.http"))
    assert isinstance(msg, ReauthorizationRequest)
    assert (msg.message_id, msg.component_id, msg.transaction_id) == (
        "NULL",
        "NULL",
        1000000001,
    )


def test_no_reauthorization_response_encoder() -> None:
    # Any parseable ReauthorizationResponse crashes the stock client (OSP.md §3.7).
    assert [n for n in dir(codec) if "reauth" in n.lower() and n.startswith("encode")] == [
        "encode_reauthorization_response"
    ]


# =========================================================================== liberal input


def _wrap(inner: str, kind: str = "AuthorizationRequest") -> bytes:
    return (
        f'<?xml version="1.0"?><Message messageId="1" random="2">'
        f'<{kind} componentId="3">{inner}</{kind}></Message>'
    ).encode()


_MIN = (
    '<CallId encoding="base64">MQ==</CallId><SourceInfo type="e164">1</SourceInfo>'
    '<DestinationInfo type="e164">2</DestinationInfo>'
    "<MaximumDestinations>{n}</MaximumDestinations>"
)


def test_liberal_forms_accepted() -> None:
    british = _wrap(_MIN.format(n=" 3 ") + "<Unknown><X/></Unknown>", "AuthorisationRequest")
    req = decode_request(british)
    assert isinstance(req, AuthorizationRequest) and req.max_destinations == 3
    assert dict(req.extra)["Unknown/X"] == ""
    wrapped = (
        b'<Message messageId="m"><Component componentId="c"><AuthorizationRequest>'
        + _MIN.format(n=1).encode()
        + b"</AuthorizationRequest></Component></Message>"
    )
    req = decode_request(wrapped)
    assert isinstance(req, AuthorizationRequest) and req.component_id == "c"
    commented = _wrap("<!-- a comment -->" + _MIN.format(n=12) + "<Timestamp>bogus</Timestamp>")
    req = decode_request(commented)
    assert isinstance(req, AuthorizationRequest) and req.timestamp is None
    # a UTF-8 BOM and a declared UTF-8 encoding are fine
    bom = b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>' + _wrap(_MIN.format(n=2))[21:]
    assert isinstance(decode_request(bom), AuthorizationRequest)
    plain_call_id = _wrap(_MIN.format(n=1).replace(' encoding="base64"', ""))
    req = decode_request(plain_call_id)
    assert isinstance(req, AuthorizationRequest)
    assert req.call_ids == (b"MQ==",) and req.call_ids_b64 == ("TVE9PQ==",)


def test_unsupported_etsi_types() -> None:
    for kind in ("AuthorizationIndication", "PricingIndication", "AuthorisationConfirmation"):
        msg = decode_request(_wrap("<Timestamp>x</Timestamp>", kind))
        assert msg == UnsupportedMessage(message_type=kind, message_id="1")


def test_usage_values_liberal_but_transaction_id_strict() -> None:
    detail = (
        "<TransactionId>18446744073709551615</TransactionId><UsageDetail>"
        "<Amount>NaN</Amount><StartTime>yesterday</StartTime><Increment>1.000</Increment>"
        "</UsageDetail>"
    )
    msg = decode_request(_wrap(detail, "UsageIndication"))
    assert isinstance(msg, UsageIndicationMessage)
    u = msg.components[0]
    assert u.transaction_id == 2**64 - 1
    assert u.amount is None and u.start_time is None and u.increment == 1
    assert u.fields["UsageDetail/Amount"] == "NaN"
    assert u.fields["UsageDetail/StartTime"] == "yesterday"
    no_txid = decode_request(_wrap("<Role>source</Role>", "UsageIndication"))
    assert isinstance(no_txid, UsageIndicationMessage)
    assert no_txid.components[0].transaction_id is None


# =========================================================================== hostile input

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]>
<Message><AuthorizationRequest>&lol9;</AuthorizationRequest></Message>"""

_QUAD_ENTITY = b"A" * 50_000
QUADRATIC = (
    b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "'
    + _QUAD_ENTITY
    + b'">]><Message>'
    + b"&a;" * 100_000
    + b"</Message>"
)
QUADRATIC_NO_DTD = b"<Message><UsageIndication>" + b"&a;" * 60_000 + b"</UsageIndication></Message>"
XXE_FILE = b"""<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Message messageId="1"><CapabilitiesIndication componentId="1"><OSPVersion>&x;</OSPVersion>
</CapabilitiesIndication></Message>"""
XXE_HTTP = XXE_FILE.replace(b"file:///etc/passwd", b"http://169.254.169.254/latest/meta-data/")
XXE_PARAM = b"""<?xml version="1.0"?><!DOCTYPE m [<!ENTITY % p SYSTEM "http://example.invalid/x.dtd">
%p;]><Message/>"""
_AUTH_BODY_PLACEHOLDER = b"__AUTH__"

HOSTILE: dict[str, tuple[bytes, set[int]]] = {
    "billion-laughs": (BILLION_LAUGHS, {411}),
    "quadratic-blowup": (QUADRATIC[:MAX_BODY_BYTES], {411}),
    "quadratic-blowup-too-big": (QUADRATIC, {400}),
    "undefined-entities": (QUADRATIC_NO_DTD, {411}),
    "xxe-file": (XXE_FILE, {411}),
    "xxe-http": (XXE_HTTP, {411}),
    "xxe-parameter-entity": (XXE_PARAM, {411}),
    "plain-doctype": (b'<?xml version="1.0"?><!DOCTYPE Message><Message/>', {411}),
    "doctype-system": (b'<!DOCTYPE Message SYSTEM "http://x.invalid/a.dtd"><Message/>', {411}),
    "deep-100k": (b"<Message>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</Message>", {400}),
    "deep-40k-in-cap": (b"<Message>" + b"<a>" * 40_000, {411}),
    "deep-300": (b"<Message>" + b"<a>" * 300 + b"</a>" * 300 + b"</Message>", {411}),
    "deep-40": (b"<Message>" + b"<a>" * 40 + b"</a>" * 40 + b"</Message>", {411}),
    "text-50MB": (b"<Message><UsageIndication>" + b"A" * 50_000_000, {400}),
    "attribute-2k": (_wrap(f'<SourceAlternate type="{"n" * 2000}">x</SourceAlternate>'), {411}),
    "namespaced-attribute": (
        _wrap('<SourceInfo xmlns:a="urn:a" a:type="e164">1</SourceInfo>'),
        {411},
    ),
    "text-40k-in-cap": (_wrap("<JIP>" + "9" * 40_000 + "</JIP>"), {411}),
    "too-many-elements": (
        b"<Message><UsageIndication>" + b"<a/>" * 6000 + b"</UsageIndication></Message>",
        {411},
    ),
    "too-many-elements-nested": (
        b"<Message><UsageIndication>" + b"<a><b/></a>" * 2600 + b"</UsageIndication></Message>",
        {411},
    ),
    "garbage": (bytes(random.Random(1).randrange(256) for _ in range(4000)), {410, 411}),
    "latin1-bytes": (_wrap("<JIP>\xe9</JIP>").replace(b"\xc3\xa9", b"\xe9"), {410}),
    "latin1-declared": (b'<?xml version="1.0" encoding="ISO-8859-1"?><Message/>', {410}),
    "utf16": ('<?xml version="1.0" encoding="UTF-16"?><Message/>'.encode("utf-16"), {410, 411}),
    "nul-bytes": (b"<Message>\x00</Message>", {410, 411}),
    "empty": (b"", {400}),
    "whitespace-only": (b" \r\n\t ", {400}),
    "truncated": (_AUTH_BODY_PLACEHOLDER, {411}),
    "wrong-root": (b'<?xml version="1.0"?><AuthorizationRequest componentId="1"/>', {400}),
    "namespaced-root": (b'<m:Message xmlns:m="urn:x"/>', {411}),
    "unknown-type": (_wrap("<X/>", "FooRequest"), {400}),
    "no-component": (b'<Message messageId="1" random="2"></Message>', {400}),
    "mixed-components": (
        b'<Message><UsageIndication componentId="1"/><CapabilitiesIndication componentId="2"/>'
        b"</Message>",
        {400},
    ),
    "two-auth-components": (
        _wrap(_MIN.format(n=1)).replace(b"</Message>", b"")
        + b'<AuthorizationRequest componentId="4"/></Message>',
        {400},
    ),
    "processing-instruction": (_wrap("<?php evil()?>" + _MIN.format(n=1)), {411}),
    "pi-before-decl": (b'<?foo?><?xml version="1.0"?><Message/>', {411}),
    "stylesheet-pi": (b'<?xml version="1.0"?><?xml-stylesheet href="http://x"?><Message/>', {411}),
    "txid-not-digits": (_wrap("<TransactionId>12a</TransactionId>", "UsageIndication"), {400}),
    "txid-negative": (_wrap("<TransactionId>-1</TransactionId>", "UsageIndication"), {400}),
    "txid-too-large": (
        _wrap("<TransactionId>18446744073709551616</TransactionId>", "UsageIndication"),
        {400},
    ),
    "txid-unicode-digits": (
        _wrap("<TransactionId>\u0663\u0664</TransactionId>", "UsageIndication"),
        {400},
    ),
    "max-destinations-0": (_wrap(_MIN.format(n=0)), {400}),
    "max-destinations-13": (_wrap(_MIN.format(n=13)), {400}),
    "max-destinations-text": (_wrap(_MIN.format(n="many")), {400}),
    "max-destinations-missing": (_wrap(_MIN.format(n=1).split("<Max")[0]), {400}),
    "no-calling-number": (_wrap(_MIN.format(n=1).replace("SourceInfo", "Src")), {400}),
    "no-called-number": (_wrap(_MIN.format(n=1).replace('"e164">2', '"cic">2')), {400}),
    "bad-base64-callid": (_wrap(_MIN.format(n=1).replace("MQ==", "M!Q==")), {410}),
    "bad-custom-info-index": (
        _wrap(_MIN.format(n=1) + '<CustomInfo index="33">x</CustomInfo>'),
        {400},
    ),
    "quote-in-message-id": (_wrap(_MIN.format(n=1)).replace(b'"1"', b'"a&quot;b"', 1), {400}),
    "long-message-id": (_wrap(_MIN.format(n=1)).replace(b'"1"', b'"' + b"9" * 65 + b'"', 1), {400}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bodies_refused_fast(case: str) -> None:
    body, statuses = HOSTILE[case]
    if body == _AUTH_BODY_PLACEHOLDER:
        full = _body("authorization-request.http")
        body = full[: len(full) // 2]
    start = time.perf_counter()
    with pytest.raises(OSPDecodeError) as info:
        decode_request(body)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"{case} took {elapsed:.3f}s"
    assert info.value.status_code in statuses, (case, info.value.status_code, str(info.value))
    assert str(info.value)


def test_size_cap_runs_before_parsing() -> None:
    # 50 MB that would not even be XML: refused by length alone, in well under a millisecond
    body = b"<" * 50_000_000
    start = time.perf_counter()
    with pytest.raises(OSPDecodeError, match="exceeds"):
        decode_request(body)
    assert time.perf_counter() - start < 0.05


def test_non_bytes_refused() -> None:
    with pytest.raises(OSPDecodeError):
        decode_request("<Message/>")  # type: ignore[arg-type]


def test_mutated_vectors_only_raise_decode_error() -> None:
    """Truncations and byte flips of every vector: a message or OSPDecodeError, nothing else."""
    rng = random.Random(20261126)
    seen_errors = 0
    for name in REQUEST_FILES + BODY_FILES:
        body = _body(name)
        variants = [body[:cut] for cut in range(0, len(body), max(1, len(body) // 40))]
        for _ in range(40):
            mutated = bytearray(body)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            variants.append(bytes(mutated))
        for v in variants:
            try:
                decode_request(v)
            except OSPDecodeError as exc:
                assert 400 <= exc.status_code <= 412
                seen_errors += 1
    assert seen_errors > 100  # the mutations really produced bad input


# =========================================================================== encoding


def _destinations(req: AuthorizationRequest, n: int) -> tuple[Destination, ...]:
    return tuple(
        Destination(
            call_id_b64=req.call_ids_b64[i],
            calling=req.calling,
            called=req.called,
            signal_address=f"[10.1.1.{i + 1}]:5060",
            token=b'<?xml version="1.0"?><TokenInfo>' + bytes([i]) * 100 + b"</TokenInfo>",
            valid_after=NOW - timedelta(seconds=60),
            valid_until=NOW + timedelta(minutes=5),
            usage_amount=3600,
            usage_increment=1,
            protocol="sip" if i == 0 else "h323-Q931",
            osp_version="2.1.1",
            alternates=(("network", f"TG{i}"),),
            destination_infos=(("routingnumber", "4045551000"), ("npdi", "true")),
        )
        for i in range(n)
    )


def _response(req: AuthorizationRequest, n: int = 2) -> AuthorizationResponse:
    return AuthorizationResponse(
        message_id=req.message_id,
        component_id=req.component_id,
        timestamp=NOW,
        status=Status(code=200, description="OK"),
        transaction_id=4785098287068543018,
        destinations=_destinations(req, n),
    )


def test_authorization_response_passes_checker_and_roundtrips() -> None:
    req = _auth("authorization-request.http")
    body = encode_authorization_response(_response(req, 8), random=77)
    assert check_osp_response(_http(body), body, expect="AuthorizationResponse", request=req) == []
    assert body.startswith(b'<?xml version="1.0"?>\n<Message messageId="20073041881" random="77">')
    root = DET.fromstring(body)
    comp = root[0]
    assert comp.tag == "AuthorizationResponse" and comp.get("componentId") == "20073041880"
    assert [c.tag for c in comp][:3] == ["Timestamp", "Status", "TransactionId"]
    assert comp.findtext("Timestamp") == "2026-11-26T16:00:21Z"
    assert comp.findtext("TransactionId") == "4785098287068543018"
    dests = comp.findall("Destination")
    assert len(dests) == 8
    assert [d.findtext("CallId") for d in dests] == list(req.call_ids_b64)
    first = dests[0]
    assert [c.tag for c in first] == [
        "CallId",
        "SourceInfo",
        "DestinationInfo",
        "DestinationSignalAddress",
        "Token",
        "ValidAfter",
        "ValidUntil",
        "UsageDetail",
        "SignalingProtocol",
        "OSPVersion",
        "DestinationAlternate",
        "DestinationInfo",
        "DestinationInfo",
    ]
    assert first.find("SignalingProtocol").get("type") == "destination"
    assert base64.b64decode(first.findtext("Token") or "") == _destinations(req, 1)[0].token
    assert first.findtext("ValidAfter") == "2026-11-26T15:59:21Z"
    usage = first.find("UsageDetail")
    assert usage is not None
    assert [c.text for c in usage] == ["3600", "1", "s"]
    assert dests[1].findtext("SignalingProtocol") == "h323-Q931"


def test_blocked_response_with_termination_cause() -> None:
    req = _auth("authorization-request-rich.xml")
    resp = AuthorizationResponse(
        message_id=req.message_id,
        component_id=req.component_id,
        timestamp=NOW,
        status=Status(code=403, description="Blocked"),
        termination_cause=TerminationCause(type="sip", code="403", description="Blocked"),
    )
    body = encode_authorization_response(resp)
    assert check_osp_response(_http(body), body, expect="AuthorizationResponse", request=req) == []
    assert body.endswith(
        b'<TerminationCause type="sip"><TCCode>403</TCCode><Description>Blocked</Description>'
        b"</TerminationCause></AuthorizationResponse></Message>"
    )
    assert b"<Destination>" not in body and b"<TransactionId>" not in body


def test_query_service_destination_without_token() -> None:
    req = _auth("authorization-request-minimal.xml")
    dest = replace(_destinations(req, 1)[0], token=None, service_type="portedNumberQuery")
    body = encode_authorization_response(replace(_response(req, 1), destinations=(dest,)))
    assert b'<UsageDetail><Service><ServiceType type="portedNumberQuery"/></Service>' in body
    assert check_osp_response(_http(body), body, expect="AuthorizationResponse", request=req) == []
    with pytest.raises(OSPEncodeError, match="Token"):
        encode_authorization_response(
            replace(_response(req, 1), destinations=(replace(dest, service_type=None),))
        )


def test_entities_escaped() -> None:
    req = _auth("authorization-request.http")
    dest = replace(_destinations(req, 1)[0], alternates=(("network", "a&b<c>\"d'"),))
    body = encode_authorization_response(replace(_response(req), destinations=(dest,)))
    assert b">a&amp;b&lt;c&gt;&quot;d&apos;</DestinationAlternate>" in body
    assert DET.fromstring(body).findtext(".//DestinationAlternate") == "a&b<c>\"d'"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"called": "\n1678"}, "whitespace"),
        ({"called": "16 78"}, "whitespace"),
        ({"signal_address": " [10.1.1.1]:5060 "}, "whitespace"),
        ({"calling": "caf\u00e9"}, "ASCII"),
        ({"signal_address": ""}, "signal address"),
        ({"token": b"x" * 3100}, "4095"),
        ({"protocol": "DestinationProtocol"}, "protocol"),
        ({"protocol": "tcp"}, "protocol"),
        ({"valid_until": datetime(2026, 11, 26, 16, 0, 0)}, "timezone"),
        ({"usage_amount": -1}, "usage amount"),
        ({"called_type": 'e164" critical="false'}, "type"),
        ({"alternates": (("network", "x" * 5000),)}, "4095"),
    ],
)
def test_bad_destination_values_refused(change: dict[str, object], match: str) -> None:
    req = _auth("authorization-request.http")
    dest = replace(_destinations(req, 1)[0], **change)  # type: ignore[arg-type]
    with pytest.raises(OSPEncodeError, match=match):
        encode_authorization_response(replace(_response(req), destinations=(dest,)))


def test_token_size_limits() -> None:
    req = _auth("authorization-request.http")
    ok = replace(_destinations(req, 1)[0], token=b"\x30" * 3000)
    body = encode_authorization_response(replace(_response(req), destinations=(ok,)))
    assert check_osp_response(_http(body), body, expect="AuthorizationResponse") == []
    assert issubclass(OSPEncodeError, ValueError)


@pytest.mark.parametrize(
    "change",
    [
        {"message_id": 'a"b'},
        {"component_id": "a b"},
        {"component_id": "<x>"},
        {"transaction_id": 2**63},
        {"transaction_id": -5},
        {"status": Status(code=404, description="Not Found")},
        {"timestamp": datetime(2026, 1, 1)},
        {"termination_cause": TerminationCause(type="sip", code="4 03")},
    ],
)
def test_bad_response_values_refused(change: dict[str, object]) -> None:
    req = _auth("authorization-request.http")
    with pytest.raises(OSPEncodeError):
        encode_authorization_response(replace(_response(req), **change))  # type: ignore[arg-type]


def test_times_converted_to_utc() -> None:
    req = _auth("authorization-request.http")
    plus2 = timezone(timedelta(hours=2))
    resp = replace(_response(req, 0), timestamp=datetime(2026, 11, 26, 18, 0, 21, 999, plus2))
    assert b"<Timestamp>2026-11-26T16:00:21Z</Timestamp>" in encode_authorization_response(resp)


def test_usage_confirmations() -> None:
    msg = _usage("usage-indication.http")
    confs = [
        UsageConfirmation(
            component_id=c.component_id, timestamp=NOW, status=Status(code=200, description="OK")
        )
        for c in msg.components
    ]
    body = encode_usage_confirmations(msg.message_id, confs)
    assert check_osp_response(_http(body), body, expect="UsageConfirmation", request=msg) == []
    root = DET.fromstring(body)
    assert [c.get("componentId") for c in root] == ["10000000012", "10000000014"]
    assert root.get("random", "").isdigit()
    # one confirmation missing is flagged by the checker when the request is given
    short = encode_usage_confirmations(msg.message_id, confs[:1])
    assert check_osp_response(_http(short), short, expect="UsageConfirmation", request=msg)
    with pytest.raises(OSPEncodeError):
        encode_usage_confirmations(msg.message_id, [])


def test_capabilities_confirmation() -> None:
    cap = decode_request(_body("capabilities-indication.http"))
    assert isinstance(cap, CapabilitiesIndication)
    conf = CapabilitiesConfirmation(
        message_id=cap.message_id,
        component_id=cap.component_id,
        timestamp=NOW,
        status=Status(code=200, description="OK"),
    )
    body = encode_capabilities_confirmation(conf, random=5)
    assert body == (
        b'<?xml version="1.0"?>\n<Message messageId="3217360171" random="5">'
        b'<CapabilitiesConfirmation componentId="3217360170">'
        b"<Timestamp>2026-11-26T16:00:21Z</Timestamp>"
        b"<Status><Code>200</Code><Description>OK</Description></Status>"
        b"</CapabilitiesConfirmation></Message>"
    )
    assert (
        check_osp_response(_http(body), body, expect="CapabilitiesConfirmation", request=cap) == []
    )


def test_null_ids_echo() -> None:
    conf = CapabilitiesConfirmation(
        message_id="NULL",
        component_id="NULL",
        timestamp=NOW,
        status=Status(code=200, description="OK"),
    )
    assert b'messageId="NULL"' in encode_capabilities_confirmation(conf)


# =========================================================================== checker


_ACCEPTED = sorted(p.name for p in VECTORS.glob("*.accepted-response.http"))


def _expect_for(name: str) -> str:
    if name.startswith("authorization"):
        return "AuthorizationResponse"
    if name.startswith("usage"):
        return "UsageConfirmation"
    return "CapabilitiesConfirmation"


@pytest.mark.parametrize("name", _ACCEPTED)
def test_checker_passes_captured_accepted_answers(name: str) -> None:
    head, body = split_http((VECTORS / name).read_bytes())
    request = decode_request(_body(name.replace(".accepted-response", "")))
    assert isinstance(
        request, AuthorizationRequest | UsageIndicationMessage | CapabilitiesIndication
    )
    assert check_osp_response(head, body, expect=_expect_for(name), request=request) == []


@pytest.mark.parametrize(
    "name",
    [
        "authorization-request-rich.accepted-response.xml",
        "authorization-response-ascii-tokens.accepted.xml",
        "authorization-response-signed-tokens.accepted.xml",
        "capabilities-indication-resources.accepted-response.xml",
    ],
)
def test_checker_passes_accepted_bodies(name: str) -> None:
    body = (VECTORS / "bodies" / name).read_bytes()
    expect = "CapabilitiesConfirmation" if name.startswith("capab") else "AuthorizationResponse"
    assert check_osp_response(_http(body), body, expect=expect) == []


def test_checker_refuses_the_reauthorization_response() -> None:
    head, body = split_http(
        (VECTORS / "reauthorization-response.crashes-stock-client.http").read_bytes()
    )
    assert check_osp_response(head, body, expect="AuthorizationResponse")


_GOOD_HEAD, _GOOD_BODY = split_http(
    (VECTORS / "authorization-request.accepted-response.http").read_bytes()
)


def _relen(head: bytes, body: bytes) -> bytes:
    lines = [
        b"Content-Length: %d" % len(body) if ln.lower().startswith(b"content-length:") else ln
        for ln in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines)


def _body_variant(old: bytes, new: bytes) -> tuple[bytes, bytes]:
    assert old in _GOOD_BODY
    body = _GOOD_BODY.replace(old, new, 1)
    return _relen(_GOOD_HEAD, body), body


_BROKEN: dict[str, tuple[tuple[bytes, bytes], str]] = {
    "missing-status": (
        _body_variant(b"<Status><Code>200</Code><Description>success</Description></Status>", b""),
        "Status/Code",
    ),
    "whitespace-value": (
        _body_variant(b"[1.1.1.1]:5060", b" [1.1.1.1]:5060"),
        "whitespace",
    ),
    "newline-value": (_body_variant(b">14048724799<", b">\n14048724799<"), "whitespace"),
    "text-xml": ((_GOOD_HEAD.replace(b"text/plain", b"text/xml"), _GOOD_BODY), "Content-Type"),
    "no-content-type": (
        (_GOOD_HEAD.replace(b"Content-Type: text/plain\r\n", b""), _GOOD_BODY),
        "Content-Type",
    ),
    "chunked": (
        (_GOOD_HEAD + b"\r\nTransfer-Encoding: chunked", _GOOD_BODY),
        "chunked",
    ),
    "head-1.5KB": ((_GOOD_HEAD + b"\r\nX-Padding: " + b"p" * 1500, _GOOD_BODY), "1024"),
    "content-length-no-space": (
        (_GOOD_HEAD.replace(b"Content-Length: ", b"Content-Length:"), _GOOD_BODY),
        "one space",
    ),
    "content-length-wrong": ((_GOOD_HEAD, _GOOD_BODY + b"\n"), "Content-Length"),
    "status-201": ((_GOOD_HEAD.replace(b" 200 OK", b" 201 Created"), _GOOD_BODY), "200"),
    "bare-lf-head": ((_GOOD_HEAD.replace(b"\r\n", b"\n"), _GOOD_BODY), "CRLF"),
    "bom": (
        (_relen(_GOOD_HEAD, b"\xef\xbb\xbf" + _GOOD_BODY), b"\xef\xbb\xbf" + _GOOD_BODY),
        "BOM",
    ),
    "unknown-element": (
        _body_variant(b"<TransactionId>", b"<Extension>x</Extension><TransactionId>"),
        "critical",
    ),
    "wrong-protocol-name": (
        _body_variant(
            b"<SignalingProtocol>sip</SignalingProtocol>",
            b"<DestinationProtocol>sip</DestinationProtocol>",
        ),
        "critical",
    ),
    "bad-protocol": (_body_variant(b">sip<", b">tcp<"), "SignalingProtocol"),
    "known-element-wrong-level": (
        _body_variant(b"<TransactionId>", b"<Token>x</Token><TransactionId>"),
        "critical",
    ),
    "unit-not-s": (_body_variant(b"<Unit>s</Unit>", b"<Unit>m</Unit>"), "Unit"),
    "no-amount": (_body_variant(b"<Amount>14400</Amount>", b""), "Amount"),
    "no-token": (
        _body_variant(
            _GOOD_BODY[_GOOD_BODY.index(b"<Token") : _GOOD_BODY.index(b"</Token>") + 8], b""
        ),
        "Token",
    ),
    "no-callid": (_body_variant(b'<CallId encoding="base64">MQ==</CallId>', b""), "CallId"),
    "no-signal-address": (
        _body_variant(b"<DestinationSignalAddress>[1.1.1.1]:5060</DestinationSignalAddress>", b""),
        "DestinationSignalAddress",
    ),
    "fractional-time": (
        _body_variant(b"16:00:21Z</Timestamp>", b"16:00:21.5Z</Timestamp>"),
        "time",
    ),
    "txid-too-big": (
        _body_variant(b"<TransactionId>1000000001<", b"<TransactionId>9223372036854775808<"),
        "TransactionId",
    ),
    "leaf-4096": (_body_variant(b">[1.1.1.1]:5060<", b">" + b"1" * 4096 + b"<"), "4096"),
    "reauth-name": (
        (_GOOD_HEAD, _GOOD_BODY.replace(b"AuthorisationResponse", b"ReauthorizationResponse")),
        "expected",
    ),
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_checker_flags_broken_variants(case: str) -> None:
    (head, body), needle = _BROKEN[case]
    errors = check_osp_response(head, body, expect="AuthorizationResponse")
    assert errors, case
    assert any(needle in e for e in errors), errors


def test_checker_accepts_noncritical_extension() -> None:
    head, body = _body_variant(
        b"<TransactionId>",
        b'<Extension critical="false"><Deep>a b</Deep></Extension><TransactionId>',
    )
    assert check_osp_response(head, body, expect="AuthorizationResponse") == []


def test_checker_checks_echo_and_callids() -> None:
    req = _auth("authorization-request.http")
    other = replace(req, message_id="1", call_ids_b64=("Zm9v",), max_destinations=1)
    errors = check_osp_response(
        _GOOD_HEAD, _GOOD_BODY, expect="AuthorizationResponse", request=other
    )
    assert any("messageId" in e for e in errors)
    assert any("CallId" in e for e in errors)
    assert any("MaximumDestinations" in e for e in errors)
