"""Routing data model: routes, block rules, routing requests and decisions.

Everything here is immutable and validated on construction, so a ``Route`` that exists
is one the wire can carry (OSP.md §2.2: no whitespace in leaf values, values far below
the 4096-byte element limit, §3.2 signalling protocols). The validators are public so
that the CSV importer, the admin CLI and the storage layer share one set of rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal

from osp_server.osp.messages import SIGNALING_PROTOCOLS
from osp_server.routing.schedule import InvalidSchedule, validate_schedule

DEFAULT_TABLE: Final = "default"
"""The table every customer falls back to (and the table of customers without one)."""

MAX_PREFIX_DIGITS: Final = 32
MAX_DESTINATION_CHARS: Final = 255
MAX_NETWORK_ID_CHARS: Final = 64
MAX_DESCRIPTION_CHARS: Final = 128
MAX_INT_FIELD: Final = 2**31 - 1
"""Priority, weight and call limits fit a signed 32-bit database column."""
MAX_COST: Final = Decimal(10) ** 12
MAX_COST_FRACTION_DIGITS: Final = 8

PROTOCOLS: Final = SIGNALING_PROTOCOLS
"""``SignalingProtocol`` values the OSP Toolkit accepts (OSP.md §3.2 note 7)."""

BLOCK_KINDS: Final = frozenset({"source", "destination"})

BlockKind = Literal["source", "destination"]

_TABLE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PREFIX_RE: Final = re.compile(rf"[0-9]{{0,{MAX_PREFIX_DIGITS}}}")
# First character alphanumeric: keeps values out of spreadsheet formula syntax on export.
_NETWORK_ID_RE: Final = re.compile(
    rf"[A-Za-z0-9][A-Za-z0-9_.:@#+-]{{0,{MAX_NETWORK_ID_CHARS - 1}}}"
)
_DESCRIPTION_RE: Final = re.compile(rf"[A-Za-z0-9(\[][\x20-\x7e]{{0,{MAX_DESCRIPTION_CHARS - 1}}}")
_HOSTNAME_LABEL_RE: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_CARRIER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ADD_PREFIX_RE: Final = re.compile(rf"\+?[0-9]{{1,{MAX_PREFIX_DIGITS}}}")


class InvalidRouteField(ValueError):
    """A route, block rule or destination field has a value the server cannot use.

    ``field`` names the field, ``value`` is the offending value and the message says
    what is wrong, so importers can add their own location (file line, API field).
    """

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}: {problem} (got {_show(value)})")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_table(value: str) -> str:
    """Return a route table name, or raise `InvalidRouteField`."""
    if not isinstance(value, str) or not _TABLE_RE.fullmatch(value):
        raise InvalidRouteField(
            "table", value, "1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return value


def validate_prefix(value: str, field: str = "prefix") -> str:
    """Return a number prefix (digits only, may be empty), or raise `InvalidRouteField`."""
    if not isinstance(value, str) or not _PREFIX_RE.fullmatch(value):
        raise InvalidRouteField(field, value, f"digits only, at most {MAX_PREFIX_DIGITS}")
    return value


def validate_destination(value: str, field: str = "destination") -> str:
    """Return a signal address: ``[IPv4]:port``, ``[IPv6]:port`` or ``host[:port]``.

    Raises `InvalidRouteField` for anything else: whitespace, empty host, bad port,
    bare IPv6 without brackets, over-long values.
    """
    if type(value) is str and value in _VALID.destinations:
        return value  # a route's destination, checked when its table was loaded
    if not isinstance(value, str) or not value:
        raise InvalidRouteField(field, value, "empty")
    if len(value) > MAX_DESTINATION_CHARS:
        raise InvalidRouteField(field, value, f"longer than {MAX_DESTINATION_CHARS} characters")
    if any(ch.isspace() for ch in value) or not value.isascii() or not value.isprintable():
        raise InvalidRouteField(field, value, "whitespace or non-printable characters")
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise InvalidRouteField(field, value, "unclosed '['")
        inner, rest = value[1:close], value[close + 1 :]
        if not rest.startswith(":"):
            raise InvalidRouteField(field, value, "expected ':port' after ']'")
        _check_port(field, value, rest[1:])
        try:
            ipaddress.ip_address(inner)
        except ValueError:
            raise InvalidRouteField(field, value, "not an IP address inside [ ]") from None
        if "%" in inner:
            raise InvalidRouteField(field, value, "IPv6 zone ids are not allowed")
        return value
    host, sep, port = value.partition(":")
    if sep:
        if ":" in port:
            raise InvalidRouteField(field, value, "IPv6 addresses need brackets: [addr]:port")
        _check_port(field, value, port)
    _check_host(field, value, host)
    return value


def _check_port(field: str, value: str, port: str) -> None:
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise InvalidRouteField(field, value, "port must be 1-65535")


def _check_host(field: str, value: str, host: str) -> None:
    if not host:
        raise InvalidRouteField(field, value, "empty host")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_HOSTNAME_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidRouteField(field, value, "not a host name or IPv4 address")
    if all(label.isdigit() for label in labels):
        # All-numeric names are addresses: refuse near-misses such as 10.0.0 or 300.1.1.1.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidRouteField(field, value, "not a valid IPv4 address") from None


def validate_protocol(value: str) -> str:
    """Return a signalling protocol from `PROTOCOLS`, or raise `InvalidRouteField`."""
    if value not in PROTOCOLS:
        raise InvalidRouteField("protocol", value, "one of " + " ".join(sorted(PROTOCOLS)))
    return value


def validate_int(field: str, value: int, *, minimum: int) -> int:
    """Return an int in ``minimum..MAX_INT_FIELD``, or raise `InvalidRouteField`."""
    if type(value) is not int or not minimum <= value <= MAX_INT_FIELD:
        raise InvalidRouteField(field, value, f"an integer from {minimum} to {MAX_INT_FIELD}")
    return value


def validate_cost(value: Decimal) -> Decimal:
    """Return a finite cost ``0 <= cost < 10**12`` with at most 8 decimals."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidRouteField("cost", value, "a finite decimal number")
    if value < 0 or value >= MAX_COST:
        raise InvalidRouteField("cost", value, f"from 0 to below {MAX_COST}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_COST_FRACTION_DIGITS:
        raise InvalidRouteField(
            "cost", value, f"at most {MAX_COST_FRACTION_DIGITS} digits after the point"
        )
    return value


def validate_network_id(value: str | None, field: str = "network_id") -> str | None:
    """Return a network id (trunk group) or None; refuse whitespace and odd characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not _NETWORK_ID_RE.fullmatch(value):
        raise InvalidRouteField(
            field,
            value,
            f"1-{MAX_NETWORK_ID_CHARS} characters of A-Z a-z 0-9 _ . : @ # + -,"
            " starting with a letter or digit",
        )
    return value


def validate_description(value: str, field: str = "description") -> str:
    """Return a status/termination description: printable ASCII, no edge whitespace."""
    if not isinstance(value, str) or not _DESCRIPTION_RE.fullmatch(value) or value != value.strip():
        raise InvalidRouteField(
            field,
            value,
            f"1-{MAX_DESCRIPTION_CHARS} printable ASCII characters starting with a letter,"
            " digit or bracket, no leading or trailing spaces",
        )
    return value


def validate_carrier(value: str, field: str = "carrier") -> str:
    """Return a carrier (rate deck) name, or raise `InvalidRouteField`."""
    if not isinstance(value, str) or not _CARRIER_RE.fullmatch(value):
        raise InvalidRouteField(
            field, value, "1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"
        )
    return value


def validate_add_prefix(value: str | None) -> str | None:
    """Return digits to put before a translated number (an optional leading ``+``)."""
    if value is not None and (not isinstance(value, str) or not _ADD_PREFIX_RE.fullmatch(value)):
        raise InvalidRouteField(
            "add_prefix", value, f"1-{MAX_PREFIX_DIGITS} digits, may start with +"
        )
    return value


def check_schedule(value: str | None, field: str = "schedule") -> str | None:
    """Return a validity schedule (see `osp_server.routing.schedule`), or raise
    `InvalidRouteField`."""
    try:
        return validate_schedule(value)
    except InvalidSchedule as e:
        raise InvalidRouteField(field, value, str(e)) from None


def translate_number(number: str, strip_digits: int | None, add_prefix: str | None) -> str | None:
    """``number`` with its first ``strip_digits`` digits removed and ``add_prefix`` put
    in front (None: not a plain number, or nothing to do). A leading ``+`` counts as
    part of the number's prefix: it goes with the stripped digits."""
    if not strip_digits and not add_prefix:
        return None
    digits = number.strip().removeprefix("+")
    if not digits.isascii() or not digits.isdigit():
        return None
    rest = digits[strip_digits or 0 :]
    translated = (add_prefix or "") + rest
    return translated if translated.removeprefix("+") else None


class _ValidatedValues:
    """Values a validator accepted, so that building many routes checks each distinct
    table, destination and network id once.  Bounded: cleared when large."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.tables: set[str] = set()
        self.destinations: set[str] = set()
        self.network_ids: set[str] = set()
        self.costs: dict[int, Decimal] = {}
        """id -> the Decimal object itself (held, so that its id is not reused)."""

    def trim(self) -> None:
        """Forget everything once a set is over the limit (called per route load)."""
        for known in (self.tables, self.destinations, self.network_ids, self.costs):
            if len(known) > self.LIMIT:
                known.clear()


_VALID = _ValidatedValues()


def forget_validated_values() -> None:
    """Bound the validated-value caches: called before each table load and file import
    (they are cleared once one of them is over its limit)."""
    _VALID.trim()


@dataclass(frozen=True, slots=True)
class Route:
    """One way to reach numbers starting with ``prefix``, in route table ``table``.

    Lower ``priority`` is tried first; within a priority, lower ``cost`` first; equal
    routes share calls in proportion to ``weight`` (0: only when nothing else is left).
    ``call_limit`` caps concurrent calls on this route (None: no cap).

    ``carrier`` prices the route from that carrier's rate deck in force at the time
    of the call instead of the fixed ``cost`` (LCR). ``strip_digits`` and
    ``add_prefix`` translate the called number sent to this destination.
    ``schedule`` limits the route to times of the week (customer's local time).
    """

    table: str
    prefix: str
    destination: str
    protocol: str = "sip"
    priority: int = 100
    weight: int = 100
    cost: Decimal = Decimal(0)
    network_id: str | None = None
    call_limit: int | None = None
    carrier: str | None = None
    strip_digits: int | None = None
    add_prefix: str | None = None
    schedule: str | None = None

    def __post_init__(self) -> None:
        # A million routes share a few tables, gateways and prices: values already
        # found valid are not checked again (see _ValidatedValues).
        valid = _VALID
        if self.table not in valid.tables:
            valid.tables.add(validate_table(self.table))
        prefix = self.prefix
        # Fast paths for the common values (plain digits, in-range ints); anything
        # else goes through the validator, which names the problem.
        if not (
            type(prefix) is str
            and len(prefix) <= MAX_PREFIX_DIGITS
            and ((prefix.isdigit() and prefix.isascii()) or prefix == "")
        ):
            validate_prefix(prefix)
        if self.destination not in valid.destinations:
            valid.destinations.add(validate_destination(self.destination))
        if self.protocol not in PROTOCOLS:
            validate_protocol(self.protocol)
        priority, weight = self.priority, self.weight
        if not (type(priority) is int and 0 <= priority <= MAX_INT_FIELD):
            validate_int("priority", priority, minimum=0)
        if not (type(weight) is int and 0 <= weight <= MAX_INT_FIELD):
            validate_int("weight", weight, minimum=0)
        # Cached by identity, not value (0.01 == 0.0100000000, digits differ): a table
        # load shares one Decimal object per distinct stored price.
        cost = self.cost
        if valid.costs.get(id(cost)) is not cost:
            validate_cost(cost)
            if len(valid.costs) >= valid.LIMIT:
                valid.costs.clear()  # a CSV import makes one Decimal per cell
            valid.costs[id(cost)] = cost
        if self.network_id is not None and self.network_id not in valid.network_ids:
            valid.network_ids.add(validate_network_id(self.network_id) or "")
        if self.call_limit is not None:
            validate_int("call_limit", self.call_limit, minimum=1)
        if self.carrier is not None and self.carrier not in valid.tables:
            valid.tables.add(validate_carrier(self.carrier))
        if self.strip_digits is not None:
            validate_int("strip_digits", self.strip_digits, minimum=0)
            if self.strip_digits > MAX_PREFIX_DIGITS:
                raise InvalidRouteField(
                    "strip_digits", self.strip_digits, f"at most {MAX_PREFIX_DIGITS}"
                )
        if self.add_prefix is not None:
            validate_add_prefix(self.add_prefix)
        if self.schedule is not None:
            check_schedule(self.schedule)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity of the route: (table, prefix, destination); unique within a set."""
        return (self.table, self.prefix, self.destination)


@dataclass(frozen=True)
class BlockRule:
    """Refuse calls whose calling (``source``) or called (``destination``) number
    starts with ``prefix``. An empty prefix blocks every call of the table."""

    table: str
    kind: BlockKind
    prefix: str
    description: str = "Blocked"
    schedule: str | None = None
    """When the rule applies (None: always), in the customer's local time."""

    def __post_init__(self) -> None:
        validate_table(self.table)
        if self.kind not in BLOCK_KINDS:
            raise InvalidRouteField("kind", self.kind, "'source' or 'destination'")
        validate_prefix(self.prefix)
        validate_description(self.description)
        check_schedule(self.schedule)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity of the rule: (table, kind, prefix)."""
        return (self.table, self.kind, self.prefix)


@dataclass(frozen=True)
class RoutingRequest:
    """What a routing policy sees of an AuthorizationRequest.

    Numbers are as received (stripped), e.g. ``14048724799``, ``+1404...`` or a SIP
    URI. ``route_table`` is the customer's table (None: ``"default"``).
    ``transaction_id`` is the id the server gives this call: policies that count calls
    release them when ``call_ended(transaction_id)`` is called (None: the server did
    not say, counted calls then only expire).
    """

    customer_id: str
    device_id: str
    calling: str
    called: str
    max_destinations: int
    source_network_id: str | None = None
    route_table: str | None = None
    transaction_id: int | None = None
    destination_infos: tuple[tuple[str, str], ...] = ()
    """The request's NP / operator DestinationInfo (routingnumber, cic, npdi ...)."""
    service_type: str | None = None
    """``ServiceType`` of the request (``portedNumberQuery``: answer the dip only)."""


@dataclass(frozen=True)
class RoutedDestination:
    """One destination of a decision, best first.

    ``calling``/``called`` are translated numbers to signal (None: unchanged); the
    token must carry the same numbers. ``route`` is the route it came from, if any.
    """

    signal_address: str
    protocol: str
    network_id: str | None = None
    calling: str | None = None
    called: str | None = None
    route: Route | None = None
    destination_infos: tuple[tuple[str, str], ...] = ()
    """Extra ``DestinationInfo`` (type, value): routingnumber, cic, npdi."""
    rating: Rating | None = None
    """What the call costs us and what we charge for it (None: not rated)."""

    def __post_init__(self) -> None:
        route = self.route
        if not (
            route is not None
            and self.signal_address is route.destination
            and self.protocol is route.protocol
            and self.network_id is route.network_id
        ):  # values taken from a route were checked when it was built
            validate_destination(self.signal_address, "signal_address")
            validate_protocol(self.protocol)
            validate_network_id(self.network_id)
        for name, number in (("calling", self.calling), ("called", self.called)):
            if number is not None and (
                not number
                or len(number) > MAX_DESTINATION_CHARS
                or not number.isascii()
                or not number.isprintable()
                or any(ch.isspace() for ch in number)
            ):
                raise InvalidRouteField(name, number, "a non-empty number without whitespace")

    @classmethod
    def from_route(cls, route: Route) -> RoutedDestination:
        """The destination a route describes, numbers unchanged."""
        return cls(
            signal_address=route.destination,
            protocol=route.protocol,
            network_id=route.network_id,
            route=route,
        )


@dataclass(frozen=True, slots=True)
class Rating:
    """The prices in force for one destination when the call was authorized, recorded
    with the transaction so that usage export can charge the call.

    ``cost_*`` is the carrier's price (carrier None: the route's fixed cost per
    minute); ``price_*`` what the customer pays (None: no price set).
    Each is (rate per minute, connection fee, first increment s, next increment s).
    """

    carrier: str | None
    cost: tuple[Decimal, Decimal, int, int]
    price: tuple[Decimal, Decimal, int, int] | None = None

    def as_json(self) -> dict[str, object]:
        """JSON-ready (decimals as strings)."""

        def plan(values: tuple[Decimal, Decimal, int, int] | None) -> list[object] | None:
            if values is None:
                return None
            rate, fee, first, following = values
            return [format(rate, "f"), format(fee, "f"), first, following]

        return {"carrier": self.carrier, "cost": plan(self.cost), "price": plan(self.price)}


@dataclass(frozen=True)
class RoutingDecision:
    """A policy's answer: an OSP status and 0..n destinations (best first).

    A 2xx status needs at least one destination (zero destinations with 200 breaks
    devices, OSP.md §3.2); any other status carries none. ``termination_cause`` is
    (TCCode, Description), sent as ``TerminationCause type="sip"`` (OSP.md §3.3).
    """

    status_code: int
    description: str
    destinations: tuple[RoutedDestination, ...] = field(default=())
    termination_cause: tuple[str, str] | None = None
    service_type: str | None = None
    """Set for a query answer (``portedNumberQuery``): Destinations without tokens."""

    def __post_init__(self) -> None:
        if type(self.status_code) is not int or not 200 <= self.status_code <= 9999:
            raise InvalidRouteField("status_code", self.status_code, "an integer 200-9999")
        validate_description(self.description)
        if not isinstance(self.destinations, tuple):
            raise InvalidRouteField("destinations", self.destinations, "a tuple")
        success = 200 <= self.status_code <= 299
        if success and not self.destinations:
            raise InvalidRouteField(
                "destinations", self.destinations, "a 2xx decision needs a destination"
            )
        if not success and self.destinations:
            raise InvalidRouteField(
                "destinations", len(self.destinations), "a refusal carries no destinations"
            )
        if self.termination_cause is not None:
            code, text = self.termination_cause
            if not (isinstance(code, str) and code.isdigit() and len(code) <= 4):
                raise InvalidRouteField("termination_cause", code, "a code of 1-4 digits")
            validate_description(text, "termination_cause")

    @property
    def ok(self) -> bool:
        """True for a 2xx decision."""
        return 200 <= self.status_code <= 299

    @classmethod
    def routed(cls, destinations: Iterable[RoutedDestination]) -> RoutingDecision:
        """200 OK with these destinations (at least one)."""
        return cls(200, "OK", tuple(destinations))

    @classmethod
    def no_route(cls, description: str = "Route not found") -> RoutingDecision:
        """404 (device error 11503) with TerminationCause 404."""
        return cls(404, description, (), ("404", description))

    @classmethod
    def blocked(cls, description: str = "Blocked") -> RoutingDecision:
        """403 ROUTE_BLOCKED (device error 11510) with TerminationCause 403."""
        return cls(403, description, (), ("403", description))

    @classmethod
    def refused(cls, status_code: int, description: str) -> RoutingDecision:
        """Any other refusal, e.g. 603 DECLINE or 9603 NETWORK_BLOCKED for fraud,
        with a TerminationCause of the same code."""
        return cls(status_code, description, (), (str(status_code), description))
