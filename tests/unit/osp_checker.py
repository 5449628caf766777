"""Reusable checker: does an HTTP answer follow every rule the OSP Toolkit 4.33.1 needs?

``check_osp_response(head, body, expect=...)`` returns the list of broken rules of
OSP.md §1.2 (HTTP head) and §2.2/§3.2/§3.5/§3.6 (XML body); an empty list means the
stock client would accept the answer.  It is deliberately independent of our codec
(it parses with the standard library through defusedxml), so that a codec bug cannot
hide itself.  Other test modules import it::

    from tests.unit.osp_checker import check_osp_response, split_http
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import defusedxml.ElementTree as DET

from osp_server.osp.messages import (
    SIGNALING_PROTOCOLS,
    AuthorizationRequest,
    CapabilitiesIndication,
    UsageIndicationMessage,
)

__all__ = ["KNOWN_CHILDREN", "check_osp_response", "split_http"]

# Message type names the client accepts for each expected answer.
_EXPECT_NAMES: dict[str, frozenset[str]] = {
    "AuthorizationResponse": frozenset({"AuthorizationResponse", "AuthorisationResponse"}),
    "UsageConfirmation": frozenset({"UsageConfirmation"}),
    "CapabilitiesConfirmation": frozenset({"CapabilitiesConfirmation"}),
}

_DESTINATION = frozenset(
    {
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
        "Service",
    }
)
# What the toolkit's decoder knows under each parent in the answers we send; anything
# else is fatal (13308) unless it says critical="false" (OSP.md §2.2).
KNOWN_CHILDREN: dict[str, frozenset[str]] = {
    "AuthorizationResponse": frozenset(
        {"Timestamp", "Status", "TransactionId", "Destination", "TerminationCause"}
    ),
    "Status": frozenset({"Code", "Description"}),
    "Destination": _DESTINATION,
    "UsageDetail": frozenset({"Amount", "Increment", "Unit", "Service"}),
    "Service": frozenset({"ServiceType"}),
    "TerminationCause": frozenset({"TCCode", "Description"}),
    "UsageConfirmation": frozenset({"Timestamp", "Status"}),
    "CapabilitiesConfirmation": frozenset({"Timestamp", "Status", "OSPVersion"}),
}
KNOWN_CHILDREN["AuthorisationResponse"] = KNOWN_CHILDREN["AuthorizationResponse"]

_TIME_ELEMENTS = frozenset({"Timestamp", "ValidAfter", "ValidUntil"})
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_DIGITS_RE = re.compile(r"[0-9]+")
_HEADER_RE = re.compile(r"([-!#$%&'*+.^_`|~0-9A-Za-z]+):(.*)")


def split_http(raw: bytes) -> tuple[bytes, bytes]:
    """Split raw HTTP bytes on the first CRLFCRLF into (head, body)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("no CRLFCRLF between head and body")
    return head, body


def _escaped_len(text: str) -> int:
    extra = sum(text.count(c) * n for c, n in (("&", 4), ("<", 3), (">", 3), ('"', 5), ("'", 5)))
    return len(text.encode("utf-8")) + extra


def _check_head(head: bytes, body: bytes) -> list[str]:
    errors: list[str] = []
    if head.endswith(b"\r\n\r\n"):
        head = head[:-4]
    if len(head) + 4 >= 1024:
        errors.append(f"HTTP head is {len(head) + 4} bytes; the client reads < 1024")
    if b" 200 " not in head.lower():
        errors.append('status line lacks " 200 " (the client searches the lower-cased head)')
    text = head.decode("latin-1")
    if "\n" in text.replace("\r\n", "") or "\r" in text.replace("\r\n", ""):
        errors.append("HTTP head has a bare LF or CR (CRLF line ends required)")
    lines = text.split("\r\n")
    status = lines[0].split(" ")
    if len(status) < 3 or not status[0].startswith("HTTP/1.") or status[1] != "200":
        errors.append(f"status line {lines[0]!r} is not 'HTTP/1.x 200 <reason>'")
    content_type: list[str] = []
    content_length: list[str] = []
    for line in lines[1:]:
        m = _HEADER_RE.fullmatch(line)
        if m is None:
            errors.append(f"malformed header line {line!r}")
            continue
        name, rest = m.group(1).lower(), m.group(2)
        if not rest.startswith(" ") or rest.startswith("  ") or rest.strip() == "":
            errors.append(f"header {line!r} needs exactly one space after the colon")
        value = rest.strip()
        if name == "content-type":
            content_type.append(value)
        elif name == "content-length":
            content_length.append(value)
        elif name == "transfer-encoding":
            errors.append(f"Transfer-Encoding {value!r} present (chunked fails: 14220)")
    if not content_type:
        errors.append("Content-Type missing (14220)")
    elif len(content_type) > 1 or not content_type[0].startswith("text/plain"):
        errors.append(f"Content-Type {content_type} is not text/plain (13311)")
    if len(content_length) != 1:
        errors.append(f"need exactly one Content-Length, got {len(content_length)}")
    elif _DIGITS_RE.fullmatch(content_length[0]) is None:
        errors.append(f"Content-Length {content_length[0]!r} is not a number")
    elif int(content_length[0]) != len(body):
        errors.append(f"Content-Length {content_length[0]} but body is {len(body)} bytes")
    return errors


def _is_noncritical(el: ET.Element) -> bool:
    return (el.get("critical") or "").lower() == "false"


def _walk(el: ET.Element, path: str) -> Iterator[tuple[ET.Element, str]]:
    for child in el:
        cpath = f"{path}/{child.tag}"
        yield child, cpath
        if not _is_noncritical(child):
            yield from _walk(child, cpath)


def _check_tree(comp: ET.Element, errors: list[str]) -> None:
    """Generic rules for every element under a message component."""
    for el, path in _walk(comp, comp.tag):
        parent_path = path.rsplit("/", 1)[0]
        parent_tag = parent_path.rsplit("/", 1)[-1]
        known = KNOWN_CHILDREN.get(parent_tag, frozenset())
        if el.tag not in known and not _is_noncritical(el):
            errors.append(f'{path}: element unknown to the toolkit without critical="false"')
        if len(el):
            continue
        text = el.text or ""
        if any(ch.isspace() for ch in text):
            errors.append(f"{path}: whitespace inside leaf value {text[:40]!r}")
        if _escaped_len(text) >= 4096:
            errors.append(f"{path}: leaf value of {_escaped_len(text)} bytes (>= 4096 crashes)")
        if el.tag in _TIME_ELEMENTS and _TIME_RE.fullmatch(text) is None:
            errors.append(f"{path}: time {text!r} is not YYYY-MM-DDThh:mm:ssZ")
        if el.tag == "TransactionId" and (
            _DIGITS_RE.fullmatch(text) is None or int(text) >= 1 << 63
        ):
            errors.append(f"{path}: TransactionId {text!r} is not a decimal below 2^63")


def _check_status(comp: ET.Element, errors: list[str]) -> None:
    status = comp.find("Status")
    code = status.find("Code") if status is not None else None
    if code is None:
        errors.append(f"{comp.tag}: Status/Code missing (the client dereferences it)")
    elif _DIGITS_RE.fullmatch(code.text or "") is None:
        errors.append(f"{comp.tag}: Status/Code {code.text!r} is not a number")


def _check_destination(dest: ET.Element, where: str, request: object, errors: list[str]) -> None:
    def need(tag: str) -> ET.Element | None:
        el = dest.find(tag)
        if el is None:
            errors.append(f"{where}: {tag} missing")
        return el

    call_id = need("CallId")
    if (
        call_id is not None
        and isinstance(request, AuthorizationRequest)
        and (call_id.text or "") not in request.call_ids_b64
    ):
        errors.append(f"{where}: CallId {call_id.text!r} is not one of the request's CallIds")
    need("DestinationSignalAddress")
    is_query = dest.find("Service/ServiceType") is not None or (
        dest.find("UsageDetail/Service/ServiceType") is not None
    )
    token = dest.find("Token")
    if token is None and not is_query:
        errors.append(f"{where}: Token missing (required unless Service/ServiceType)")
    if token is not None and len(token.text or "") >= 4096:
        errors.append(f"{where}: Token is {len(token.text or '')} characters (>= 4096)")
    usage = need("UsageDetail")
    if usage is not None:
        for tag in ("Amount", "Increment", "Unit"):
            if usage.find(tag) is None:
                errors.append(f"{where}: UsageDetail/{tag} missing (13308)")
        unit = usage.find("Unit")
        if unit is not None and unit.text != "s":
            errors.append(f"{where}: UsageDetail/Unit is {unit.text!r}, must be 's'")
    proto = need("SignalingProtocol")
    if proto is not None and proto.text not in SIGNALING_PROTOCOLS:
        errors.append(f"{where}: SignalingProtocol {proto.text!r} is not one the toolkit knows")


def check_osp_response(
    head: bytes,
    body: bytes,
    *,
    expect: str,
    request: AuthorizationRequest | UsageIndicationMessage | CapabilitiesIndication | None = None,
) -> list[str]:
    """Return every rule of OSP.md §1.2/§3 that this HTTP answer breaks ([] = accepted).

    ``expect`` is the message type the answer must carry: ``"AuthorizationResponse"``
    (``AuthorisationResponse`` accepted too), ``"UsageConfirmation"`` or
    ``"CapabilitiesConfirmation"``.  With ``request``, also check that ids are echoed,
    the Destination count and CallIds match an AuthorizationRequest, and there is one
    confirmation per UsageIndication component in order.
    """
    if expect not in _EXPECT_NAMES:
        raise ValueError(f"unknown expect {expect!r}")
    errors = _check_head(head, body)
    if body.startswith(b"\xef\xbb\xbf"):
        errors.append("body starts with a BOM (13304)")
    if not body.startswith(b"<?xml"):
        errors.append("body does not start with <?xml")
    for marker, what in ((b"<!DOCTYPE", "DOCTYPE"), (b"<![CDATA[", "CDATA"), (b"xmlns", "ns")):
        if marker in body:
            errors.append(f"body contains {what} (the toolkit reads none)")
    try:
        root = DET.fromstring(body, forbid_dtd=True, forbid_entities=True)
    except Exception as exc:  # any parse failure is a rule violation, not a test crash
        errors.append(f"body is not well-formed XML: {exc}")
        return errors
    if root.tag != "Message":
        errors.append(f"root is <{root.tag}>, not <Message>")
        return errors
    for attr in ("messageId", "random"):
        if root.get(attr) is None:
            errors.append(f"Message lacks the {attr} attribute")
    comps = list(root)
    if not comps:
        errors.append("Message has no component (13317)")
        return errors
    names = _EXPECT_NAMES[expect]
    for comp in comps:
        if comp.tag not in names:
            errors.append(f"component <{comp.tag}> where {expect} expected")
            continue
        if comp.get("componentId") is None:
            errors.append(f"{comp.tag} lacks componentId")
        _check_status(comp, errors)
        _check_tree(comp, errors)
        if expect == "AuthorizationResponse":
            for i, dest in enumerate(comp.findall("Destination"), 1):
                _check_destination(dest, f"Destination[{i}]", request, errors)
    if expect != "UsageConfirmation" and len(comps) != 1:
        errors.append(f"{len(comps)} components; exactly one {expect} expected")
    if request is not None:
        _check_echo(root, comps, request, errors)
    return errors


def _check_echo(
    root: ET.Element,
    comps: list[ET.Element],
    request: AuthorizationRequest | UsageIndicationMessage | CapabilitiesIndication,
    errors: list[str],
) -> None:
    if root.get("messageId") != request.message_id:
        errors.append(f"messageId {root.get('messageId')!r} != {request.message_id!r}")
    if isinstance(request, UsageIndicationMessage):
        want = [c.component_id for c in request.components]
        got = [c.get("componentId") for c in comps]
        if got != want:
            errors.append(f"UsageConfirmation componentIds {got} != components {want}")
        return
    got_id = comps[0].get("componentId")
    if got_id != request.component_id:
        errors.append(f"componentId {got_id!r} != {request.component_id!r}")
    if isinstance(request, AuthorizationRequest):
        n = len(comps[0].findall("Destination"))
        if n > request.max_destinations:
            errors.append(f"{n} Destinations > MaximumDestinations {request.max_destinations}")
