"""Fraud and abuse control: allow and deny lists, premium-rate ranges, call limits.

Lists (`NumberListEntry`) match calling numbers or destination prefixes:

* ``allow``: a call whose calling number or destination matches is trusted: no deny
  list, premium range or limit applies to it;
* ``deny``: refused with 9603 NETWORK_BLOCKED;
* ``premium``: premium-rate destinations, refused with 603 DECLINE (allow what a
  customer may call).

Limits (`FraudLimit`) count calls per minute and concurrent calls, per calling number
(each number under the prefix counted on its own), per device (one or each), or per
destination prefix (every call to it together). A limit that trips refuses with its
``answer`` code (603 or 9603) and TerminationCause of the same code (OSP.md §3.3) and
raises an alert (once per key and minute): a log event and a metric.

A limit for every customer (customer empty) counts each customer's calls on its own.
Counters live in each node's memory: with N nodes behind a load balancer that spreads
a customer's calls evenly, a limit allows up to N times its value in total (set limits
per node accordingly). Calls per minute are a sliding window estimated from the
current and the previous minute's counts (exact for steady rates, within one
minute's count of a burst).
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from osp_server.routing.calls import CallCounter
from osp_server.routing.model import (
    InvalidRouteField,
    RoutingDecision,
    validate_description,
    validate_int,
    validate_prefix,
)

ListName = Literal["allow", "deny", "premium"]
ListKind = Literal["calling", "destination"]
LimitScope = Literal["calling", "device", "destination"]

LIST_NAMES: Final = ("allow", "deny", "premium")
LIST_KINDS: Final = ("calling", "destination")
LIMIT_SCOPES: Final = ("calling", "device", "destination")
ANSWERS: Final = (603, 9603)
DECLINE: Final = 603
NETWORK_BLOCKED: Final = 9603
MAX_COUNTER_KEYS: Final = 1_000_000
"""Memory bound per counter kind: the least recently used keys are forgotten."""
_CUSTOMER_RE: Final = re.compile(r"[0-9]{1,20}")
_DEVICE_RE: Final = re.compile(r"[0-9]{1,20}")


def validate_customer_or_all(value: str | None, field: str = "customer") -> str | None:
    """A customer id (digits) or None for every customer."""
    if value is not None and (not isinstance(value, str) or not _CUSTOMER_RE.fullmatch(value)):
        raise InvalidRouteField(field, value, "a customer id (1-20 digits), or empty for all")
    return value


@dataclass(frozen=True, slots=True)
class NumberListEntry:
    """One allow / deny / premium entry (see the module docstring)."""

    list: ListName
    kind: ListKind
    prefix: str
    customer_id: str | None = None
    description: str = "Blocked"

    def __post_init__(self) -> None:
        if self.list not in LIST_NAMES:
            raise InvalidRouteField("list", self.list, "allow, deny or premium")
        if self.kind not in LIST_KINDS:
            raise InvalidRouteField("kind", self.kind, "calling or destination")
        validate_prefix(self.prefix)
        validate_customer_or_all(self.customer_id)
        validate_description(self.description)

    @property
    def key(self) -> tuple[str | None, str, str, str]:
        """Identity: (customer, list, kind, prefix)."""
        return (self.customer_id, self.list, self.kind, self.prefix)


@dataclass(frozen=True, slots=True)
class FraudLimit:
    """Calls per minute and/or concurrent calls allowed for one scope.

    ``match``: for ``calling`` and ``destination`` a number prefix ('' = any); for
    ``device`` a device id ('' = each device on its own).
    """

    scope: LimitScope
    match: str = ""
    customer_id: str | None = None
    per_minute: int | None = None
    concurrent: int | None = None
    answer: int = DECLINE

    def __post_init__(self) -> None:
        if self.scope not in LIMIT_SCOPES:
            raise InvalidRouteField("scope", self.scope, "calling, device or destination")
        if self.scope == "device":
            if self.match and not _DEVICE_RE.fullmatch(self.match):
                raise InvalidRouteField("match", self.match, "a device id, or empty for each")
        else:
            validate_prefix(self.match, "match")
        validate_customer_or_all(self.customer_id)
        if self.per_minute is None and self.concurrent is None:
            raise InvalidRouteField("per_minute", None, "set per_minute, concurrent or both")
        for name in ("per_minute", "concurrent"):
            value = getattr(self, name)
            if value is not None:
                validate_int(name, value, minimum=1)
        if self.answer not in ANSWERS:
            raise InvalidRouteField("answer", self.answer, "603 or 9603")

    @property
    def key(self) -> tuple[str | None, str, str]:
        """Identity: (customer, scope, match)."""
        return (self.customer_id, self.scope, self.match)


class _ListIndex:
    """Entries of one (list, kind) for longest-prefix match, per customer and for all."""

    __slots__ = ("_by_customer", "_lengths")

    def __init__(self, entries: Iterable[NumberListEntry]) -> None:
        self._by_customer: dict[str | None, dict[str, NumberListEntry]] = {}
        lengths: set[int] = set()
        for entry in entries:
            self._by_customer.setdefault(entry.customer_id, {})[entry.prefix] = entry
            lengths.add(len(entry.prefix))
        self._lengths = sorted(lengths, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._by_customer)

    def match(self, customer_id: str, digits: str | None) -> NumberListEntry | None:
        """The entry with the longest prefix of ``digits``: the customer's own first."""
        if digits is None or not self._by_customer:
            return None
        for scope in (customer_id, None):
            table = self._by_customer.get(scope)
            if table is None:
                continue
            for length in self._lengths:
                if length <= len(digits):
                    found = table.get(digits[:length])
                    if found is not None:
                        return found
        return None


class FraudRules:
    """Immutable lists and limits, as loaded from storage."""

    __slots__ = (
        "_limits_by_customer",
        "_lists",
        "allow_calling",
        "allow_destination",
        "deny_calling",
        "deny_destination",
        "entries",
        "limits",
        "premium",
    )

    def __init__(
        self, entries: Iterable[NumberListEntry] = (), limits: Iterable[FraudLimit] = ()
    ) -> None:
        self.entries = tuple(entries)
        self.limits = tuple(limits)
        by_customer: dict[str | None, list[tuple[FraudLimit, str]]] = {}
        for limit in self.limits:
            # The rule's identity goes into its counters' keys: two rules never share one.
            tag = f"{limit.customer_id or '*'}/{limit.scope}/{limit.match}"
            by_customer.setdefault(limit.customer_id, []).append((limit, tag))
        self._limits_by_customer = {c: tuple(found) for c, found in by_customer.items()}
        self._lists = {
            (name, kind): _ListIndex(e for e in self.entries if e.list == name and e.kind == kind)
            for name in LIST_NAMES
            for kind in LIST_KINDS
        }
        # The non-empty indexes, for the per-call checks (None: nothing to look up).
        lists = self._lists
        self.allow_calling = lists[("allow", "calling")] or None
        self.allow_destination = lists[("allow", "destination")] or None
        self.deny_calling = lists[("deny", "calling")] or None
        self.deny_destination = lists[("deny", "destination")] or None
        self.premium = lists[("premium", "destination")] or None

    def __bool__(self) -> bool:
        return bool(self.entries or self.limits)

    def listed(
        self, name: ListName, kind: ListKind, customer_id: str, digits: str | None
    ) -> NumberListEntry | None:
        """The entry of list ``name`` matching the number, or None."""
        return self._lists[(name, kind)].match(customer_id, digits)

    def limits_for(self, customer_id: str) -> tuple[tuple[FraudLimit, str], ...]:
        """(limit, its counter tag) that apply to ``customer_id``'s calls: its own,
        then everyone's."""
        by_customer = self._limits_by_customer
        return by_customer.get(customer_id, ()) + by_customer.get(None, ())


@dataclass(frozen=True)
class FraudAlert:
    """A limit tripped (or a listed number was refused): what the log event says."""

    reason: str
    scope: str
    key: str
    answer: int
    customer_id: str
    device_id: str


class _RateWindow:
    """Calls per minute per key: this minute's and the last minute's counts.

    Bounded: beyond `MAX_COUNTER_KEYS` the oldest keys are dropped (their count
    starts again from zero).
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}

    def hit(self, key: str, minute: int, fraction: float) -> float:
        """Count one call now; the estimated calls of the last 60 s, this one included."""
        counts = self._counts
        slot = counts.get(key)
        if slot is None:
            counts[key] = [minute, 1, 0]
            if len(counts) > MAX_COUNTER_KEYS:
                del counts[next(iter(counts))]
            return 1.0
        started = slot[0]
        if started != minute:
            slot[2] = slot[1] if started == minute - 1 else 0
            slot[0], slot[1] = minute, 0
        slot[1] += 1
        return slot[1] + slot[2] * (1.0 - fraction)


class FraudGuard:
    """Applies `FraudRules` to calls; holds the per-node counters.

    ``clock`` is monotonic seconds. `check` answers a refusal decision or None;
    `admit` then records the admitted call's concurrent slots, `release` frees them.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_hold_seconds: float,
        on_alert: Callable[[FraudAlert], None] | None = None,
    ) -> None:
        self._clock = clock
        self._rates = _RateWindow()
        self._active = CallCounter(clock, max_hold_seconds=max_hold_seconds)
        self._alerted: OrderedDict[str, int] = OrderedDict()
        self.on_alert = on_alert
        self.trips: Counter[str] = Counter()
        """Refusals by reason since start (a metric)."""

    def check(
        self,
        rules: FraudRules,
        *,
        customer_id: str,
        device_id: str,
        calling_digits: str | None,
        called_digits: str | None,
    ) -> tuple[RoutingDecision | None, tuple[str, ...]]:
        """(refusal or None, the concurrent-call keys an admitted call would hold)."""
        allow = rules.allow_calling
        if allow is not None and allow.match(customer_id, calling_digits) is not None:
            return None, ()
        allow = rules.allow_destination
        if allow is not None and allow.match(customer_id, called_digits) is not None:
            return None, ()
        deny = rules.deny_calling
        entry = None if deny is None else deny.match(customer_id, calling_digits)
        kind = "calling"
        if entry is None and rules.deny_destination is not None:
            entry = rules.deny_destination.match(customer_id, called_digits)
            kind = "destination"
        if entry is not None:
            self._alert("deny-list", kind, entry.prefix, NETWORK_BLOCKED, customer_id, device_id)
            return RoutingDecision.refused(NETWORK_BLOCKED, entry.description), ()
        premium = None if rules.premium is None else rules.premium.match(customer_id, called_digits)
        if premium is not None:
            self._alert(
                "premium-rate", "destination", premium.prefix, DECLINE, customer_id, device_id
            )
            return RoutingDecision.refused(DECLINE, premium.description), ()
        limits = rules.limits_for(customer_id)
        if not limits:
            return None, ()
        now = self._clock()
        minute, fraction = int(now // 60), (now % 60) / 60.0
        held: list[str] = []
        for limit, tag in limits:
            # Counters are per customer: a rule for everyone counts each one's calls.
            scope = limit.scope
            if scope == "calling":
                if calling_digits is None or not calling_digits.startswith(limit.match):
                    continue
                key = f"{customer_id}|{tag}:{calling_digits}"
            elif scope == "device":
                if limit.match and limit.match != device_id:
                    continue
                key = f"{customer_id}|{tag}:{device_id}"
            else:
                if called_digits is None or not called_digits.startswith(limit.match):
                    continue
                key = f"{customer_id}|{tag}"
            # Every attempt counts, refused ones too: a caller hammering a limit stays
            # refused until its rate falls.
            if limit.per_minute is not None and (
                self._rates.hit(key, minute, fraction) > limit.per_minute
            ):
                self._alert("calls-per-minute", scope, key, limit.answer, customer_id, device_id)
                return _limit_refusal(limit), ()
            if limit.concurrent is not None:
                if self._active.active_count(key) >= limit.concurrent:
                    self._alert(
                        "concurrent-calls", scope, key, limit.answer, customer_id, device_id
                    )
                    return _limit_refusal(limit), ()
                held.append(key)
        return None, tuple(held)

    def admit(self, transaction_id: int, keys: tuple[str, ...]) -> None:
        """Hold a concurrent-call slot on each key for ``transaction_id``."""
        if keys:
            self._active.start_keys(transaction_id, keys)

    def release(self, transaction_id: int) -> None:
        """Free what ``transaction_id`` holds (nothing if unknown)."""
        self._active.end(transaction_id)

    def _alert(
        self, reason: str, scope: str, key: str, answer: int, customer_id: str, device_id: str
    ) -> None:
        self.trips[reason] += 1
        minute = int(self._clock() // 60)
        alert_key = f"{reason}|{key}"
        if self._alerted.get(alert_key) == minute:
            return
        self._alerted[alert_key] = minute
        self._alerted.move_to_end(alert_key)
        if len(self._alerted) > 100_000:
            self._alerted.popitem(last=False)
        if self.on_alert is not None:
            self.on_alert(FraudAlert(reason, scope, key, answer, customer_id, device_id))


def _limit_refusal(limit: FraudLimit) -> RoutingDecision:
    description = "Call-rate-limit" if limit.answer == DECLINE else "Network-blocked"
    return RoutingDecision.refused(limit.answer, description)
