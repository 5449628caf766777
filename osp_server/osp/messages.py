"""Typed OSP messages: what the server reads from devices and what it answers.

Pure data, no parsing here (see :mod:`osp_server.osp.codec`).  Request models carry
stripped values exactly as the device sent them; response models carry what the
codec needs to write the exact bytes the OSP Toolkit 4.33.1 accepts (OSP.md §3).

Pairs written as ``tuple[tuple[str, str], ...]`` are ``(type attribute, value)`` in
document order, e.g. ``(("network", "TG1"), ("transport", "[10.0.0.1]:5060"))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

TypedValues = tuple[tuple[str, str], ...]

# The numbers types a SourceInfo/DestinationInfo may carry for the calling or called party;
# any other DestinationInfo type (routingnumber, cic, npdi, spid ...) is extra data.
NUMBER_TYPES = frozenset({"e164", "sip", "url"})

MAX_DESTINATIONS = 12
"""Devices ask for 1..12 destinations (MaximumDestinations, OSP.md §3.1)."""

# SignalingProtocol values the toolkit accepts in a Destination (OSP.md §3.2 [7]).
SIGNALING_PROTOCOLS = frozenset(
    {"sip", "h323-Q931", "h323-LRQ", "iax", "fax-T37", "fax-T38", "skype", "smpp", "xmpp", "sms"}
)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRequest:
    """An AuthorizationRequest component (OSP.md §3.1).

    ``call_ids`` are the raw Call-IDs (base64-decoded when the device said
    ``encoding="base64"``); ``call_ids_b64`` are the matching texts to echo in each
    Destination's ``CallId encoding="base64"`` (the device's own text when it sent
    base64).  ``destination_infos`` holds every DestinationInfo that is not the called
    number (NP and operator data: routingnumber, cic, npdi, spid ...).  ``extra`` keeps
    every other leaf as ``(path, value)``, path-like keys as in
    :attr:`UsageIndication.fields`.
    """

    message_id: str
    component_id: str
    timestamp: datetime | None
    call_ids: tuple[bytes, ...]
    call_ids_b64: tuple[str, ...]
    calling: str
    calling_type: str
    called: str
    called_type: str
    source_alternates: TypedValues = ()
    destination_infos: TypedValues = ()
    destination_alternates: TypedValues = ()
    device_info: str | None = None
    max_destinations: int = 1
    customer_id: str | None = None
    device_id: str | None = None
    service_type: str | None = None
    signaling_protocol: str | None = None
    custom_info: tuple[tuple[int, bytes], ...] = ()
    extra: TypedValues = ()

    def source_alternate(self, type_: str) -> str | None:
        """Return the first SourceAlternate value of ``type_`` (e.g. "network"), if any."""
        for t, v in self.source_alternates:
            if t == type_:
                return v
        return None

    def destination_info(self, type_: str) -> str | None:
        """Return the first extra DestinationInfo value of ``type_`` (e.g. "routingnumber")."""
        for t, v in self.destination_infos:
            if t == type_:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminationCause:
    """A termination cause: ``type`` q850/sip/h323/xmpp, ``code`` as text (OSP.md §3.3-3.4)."""

    type: str
    code: str
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageIndication:
    """One UsageIndication component: one attempted destination of a call (OSP.md §3.4).

    ``role_state`` is ``RoleInfo/State`` as sent (``start``, ``interim``, ``stop``; absent
    when the device reports each leg once) and ``timestamp`` the report's Timestamp.

    ``destination`` is the destination tried (``DestinationAlternate type="transport"``);
    ``destination_alternates`` holds the other alternates (network, switchId,
    deviceId ...).  Times are aware UTC datetimes; a time, amount or number the
    device wrote in a form we cannot read is ``None`` here but still present verbatim
    in ``fields``.  ``fields`` maps a path-like key to EVERY leaf value and attribute
    the device sent in this component (``critical`` attributes excepted), so storage
    can keep everything: ``"UsageDetail/TerminationCause/TCCode" -> "41"``,
    ``"UsageDetail/TerminationCause@type" -> "q850"``; a repeated sibling gets an
    XPath-like 1-based position from the second one on
    (``"UsageDetail/TerminationCause[2]/TCCode"``).  ``statistics`` is the
    ``UsageDetail/Statistics`` subtree flattened the same way, keys relative to it.
    """

    message_id: str
    component_id: str
    timestamp: datetime | None = None
    role: str | None = None
    role_state: str | None = None
    transaction_id: int | None = None
    call_id: bytes | None = None
    call_id_b64: str | None = None
    calling: str | None = None
    calling_type: str | None = None
    called: str | None = None
    called_type: str | None = None
    device_info: str | None = None
    source_alternates: TypedValues = ()
    destination_infos: TypedValues = ()
    destination: str | None = None
    destination_alternates: TypedValues = ()
    setup_attempt: int | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    alert_time: datetime | None = None
    connect_time: datetime | None = None
    amount: Decimal | None = None
    increment: int | None = None
    unit: str | None = None
    post_dial_delay: Decimal | None = None
    termination_causes: tuple[TerminationCause, ...] = ()
    release_source: str | None = None
    signaling_protocols: TypedValues = ()
    codecs: TypedValues = ()
    customer_id: str | None = None
    device_id: str | None = None
    statistics: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    """One line per number out of its field's range (osp_server.osp.numbers): that
    value is ``None`` above and verbatim in ``fields``; the report is still stored."""

    @property
    def termination_cause(self) -> TerminationCause | None:
        """The first termination cause the device reported (devices send q850 first)."""
        return self.termination_causes[0] if self.termination_causes else None

    @property
    def signaling_protocol(self) -> str | None:
        """The destination-side signaling protocol, else the first one reported."""
        for t, v in self.signaling_protocols:
            if t == "destination":
                return v
        return self.signaling_protocols[0][1] if self.signaling_protocols else None

    @property
    def codec(self) -> str | None:
        """The first codec reported (``codecs`` keeps ``(type, value)`` for all)."""
        return self.codecs[0][1] if self.codecs else None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageIndicationMessage:
    """A UsageIndication message: its components in document order (duplicates kept)."""

    message_id: str
    components: tuple[UsageIndication, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesIndication:
    """A CapabilitiesIndication component (OSP.md §3.6); it has no Timestamp."""

    message_id: str
    component_id: str
    device_info: str | None = None
    source_alternates: TypedValues = ()
    osp_version: str | None = None
    almost_out_of_resources: bool | None = None
    customer_id: str | None = None
    device_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReauthorizationRequest:
    """A ReauthorizationRequest (OSP.md §3.7); ids are often ``"NULL"``.

    By default the server answers it with HTTP 501: any parseable
    ReauthorizationResponse crashes the stock 4.33.1 client.  Only when the operator
    declares patched clients (``[osp] reauthorization_fixed_clients``) is it answered
    with a :class:`ReauthorizationResponse`, built from the fields below.

    Decoding is lenient, so that the request always gets an answer: a field that is
    absent or unreadable is ``None`` here.  ``call_id`` is the raw Call-ID and
    ``call_id_b64`` the text to echo in ``CallId encoding="base64"`` (the device's own
    text when it sent base64).  ``token`` is the raw token the device holds (base64
    decoded).  ``usage_amount``/``usage_increment`` come from ``UsageDetail`` (the
    time used so far, e.g. ``Decimal("0.010")``).
    """

    message_id: str
    component_id: str
    transaction_id: int | None = None
    call_id: bytes | None = None
    call_id_b64: str | None = None
    calling: str | None = None
    calling_type: str | None = None
    called: str | None = None
    called_type: str | None = None
    token: bytes | None = None
    usage_amount: Decimal | None = None
    usage_increment: int | None = None
    customer_id: str | None = None
    device_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsupportedMessage:
    """A known ETSI message type the server does not implement (answer HTTP 501)."""

    message_type: str
    message_id: str = ""


OSPRequest = (
    AuthorizationRequest
    | UsageIndicationMessage
    | CapabilitiesIndication
    | ReauthorizationRequest
    | UnsupportedMessage
)

# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """``Status{Code, Description}``: 2xx success, above 299 the device fails (§3.3)."""

    code: int
    description: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """One route in an AuthorizationResponse, best first (OSP.md §3.2).

    ``token`` is the raw token (the codec base64-encodes it); it may be ``None`` only
    for query services, i.e. with ``service_type`` set (written as
    ``UsageDetail/Service/ServiceType``).  ``usage_amount`` times ``usage_increment`` is the
    call time limit in seconds.  ``alternates`` become ``DestinationAlternate`` (network,
    switchId), ``destination_infos`` extra ``DestinationInfo`` (routingnumber, cic,
    npdi, spid ...).
    """

    call_id_b64: str
    signal_address: str
    token: bytes | None
    valid_after: datetime
    valid_until: datetime
    calling: str | None = None
    calling_type: str = "e164"
    called: str | None = None
    called_type: str = "e164"
    usage_amount: int = 3600
    usage_increment: int = 1
    protocol: str = "sip"
    osp_version: str | None = None
    alternates: TypedValues = ()
    destination_infos: TypedValues = ()
    service_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationResponse:
    """An AuthorizationResponse; on a block set ``termination_cause`` too (§3.3)."""

    message_id: str
    component_id: str
    timestamp: datetime
    status: Status
    transaction_id: int | None = None
    destinations: tuple[Destination, ...] = ()
    termination_cause: TerminationCause | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageConfirmation:
    """One UsageConfirmation per UsageIndication component, same order (§3.5)."""

    component_id: str
    timestamp: datetime
    status: Status


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageConfirmationMessage:
    """The answer to a UsageIndication message: one confirmation per component."""

    message_id: str
    confirmations: tuple[UsageConfirmation, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesConfirmation:
    """A CapabilitiesConfirmation: Timestamp + Status only (the device ignores the rest)."""

    message_id: str
    component_id: str
    timestamp: datetime
    status: Status


@dataclass(frozen=True, slots=True, kw_only=True)
class ReauthorizationResponse:
    """A ReauthorizationResponse, for patched clients only (OSP.md §3.7).

    Never send one to a stock 4.33.1 client: it crashes on any of them.  A patched
    client accepts a 2xx ``status`` with the original ``transaction_id`` and one
    ``destination`` carrying a Token and UsageDetail.  Only the Destination fields the
    toolkit writes in this message are encoded (numbers, signal address, token,
    validity, usage, CallId); ``protocol`` is not written.
    """

    message_id: str
    component_id: str
    timestamp: datetime
    status: Status
    transaction_id: int | None = None
    destination: Destination | None = None
