"""Fraud and abuse control: allow and deny lists, premium-rate ranges, call limits.

Lists (`NumberListEntry`) match calling numbers or destination prefixes:

* ``deny``: refused with 9603 NETWORK_BLOCKED;
* ``premium``: premium-rate destinations, refused with 603 DECLINE;
* ``allow``: exempts a call whose calling number or destination matches from the deny
  and premium lists (a customer's hotline inside a premium range). Limits still apply:
  a calling number is the caller's to choose.

Destination lists apply to the dialled number and, for a ported number, to its
routing number too (`FraudGuard.refuse_destination`), so that a routing number a
device sends cannot reach a blocked range.

Limits (`FraudLimit`) count calls per minute and concurrent calls, per calling number
(each number under the prefix counted on its own; callers without digits, such as
``anonymous``, share one count under a limit for any number), per device (one or
each), or per destination prefix (every call to it together). A limit that trips
refuses with its ``answer`` code (603 or 9603) and TerminationCause of the same code
(OSP.md §3.3) and raises an alert (once per key and minute): a log event and a metric.

Calls per minute are an exact sliding window: the calls admitted in the last 60
seconds (refused attempts are not counted, so a caller at the limit's rate is served
and one above it gets the limit's rate). A limit for every customer (customer empty)
counts each customer's calls on its own. Counters live in each node's memory: with N
nodes behind a load balancer that spreads a customer's calls evenly, a limit allows
up to N times its value in total (set limits per node accordingly).
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict, deque
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
"""Memory bound for the per-minute counters: beyond it the least recently used keys
are forgotten (keys idle for a minute are dropped anyway)."""
MAX_LIST_DESCRIPTION_CHARS: Final = 64
"""``number_lists.description`` is ``String(64)``."""
WINDOW_SECONDS: Final = 60.0
ANONYMOUS: Final = "anonymous"
"""The calling-number counter of callers without digits."""
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
        if len(self.description) > MAX_LIST_DESCRIPTION_CHARS:
            raise InvalidRouteField(
                "description", self.description, f"at most {MAX_LIST_DESCRIPTION_CHARS} characters"
            )

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
    """Admitted calls per key over the last `WINDOW_SECONDS`, exactly.

    Each key keeps the times of its last ``limit`` admitted calls (a deque bounded by
    the limit): a call is over the limit when the oldest of them is less than a
    window ago. Keys are kept in use order; every `_SWEEP_EVERY` counted calls those
    idle for a whole window are dropped from the front, and beyond `MAX_COUNTER_KEYS`
    the least recently used go.
    """

    __slots__ = ("_counted", "_times")
    _SWEEP_EVERY: Final = 64

    def __init__(self) -> None:
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._counted = 0

    def full(self, key: str, limit: int, now: float) -> bool:
        """True when ``key`` already had ``limit`` calls in the window."""
        found = self._times.get(key)
        return (
            found is not None
            and len(found) >= limit
            and found.maxlen == limit
            and now - found[0] < WINDOW_SECONDS
        )

    def count(self, key: str, limit: int, now: float) -> None:
        """Count one admitted call of ``key`` now."""
        times = self._times
        found = times.get(key)
        if found is None or found.maxlen != limit:
            found = times[key] = deque(found or (), maxlen=limit)
        else:
            times.move_to_end(key)
        found.append(now)
        self._counted += 1
        if self._counted % self._SWEEP_EVERY == 0 or len(times) > MAX_COUNTER_KEYS:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        times = self._times
        while times:
            key, found = times.popitem(last=False)
            if now - found[-1] < WINDOW_SECONDS and len(times) < MAX_COUNTER_KEYS:
                times[key] = found
                times.move_to_end(key, last=False)  # the least recent is in use: stop
                return

    def __len__(self) -> int:
        return len(self._times)


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
        refusal = self._listed(rules, customer_id, device_id, calling_digits, called_digits)
        if refusal is not None:
            return refusal, ()
        limits = rules.limits_for(customer_id)
        if not limits:
            return None, ()
        now = self._clock()
        held: list[str] = []
        counted: list[tuple[str, int]] = []
        for limit, tag in limits:
            key = _counter_key(limit, tag, customer_id, device_id, calling_digits, called_digits)
            if key is None:
                continue
            per_minute = limit.per_minute
            if per_minute is not None:
                if self._rates.full(key, per_minute, now):
                    return self._refuse_limit(
                        "calls-per-minute", limit, key, customer_id, device_id
                    ), ()
                counted.append((key, per_minute))
            if limit.concurrent is not None:
                if self._active.active_count(key) >= limit.concurrent:
                    return self._refuse_limit(
                        "concurrent-calls", limit, key, customer_id, device_id
                    ), ()
                held.append(key)
        # Only a call every limit admits is counted: refused attempts use no quota.
        for key, per_minute in counted:
            self._rates.count(key, per_minute, now)
        return None, tuple(held)

    def _listed(
        self,
        rules: FraudRules,
        customer_id: str,
        device_id: str,
        calling_digits: str | None,
        called_digits: str | None,
    ) -> RoutingDecision | None:
        allow = rules.allow_calling
        if allow is not None and allow.match(customer_id, calling_digits) is not None:
            return None
        deny = rules.deny_calling
        entry = None if deny is None else deny.match(customer_id, calling_digits)
        if entry is not None:
            return self._refuse(
                "deny-list", "calling", entry, NETWORK_BLOCKED, customer_id, device_id
            )
        return self.refuse_destination(rules, customer_id, device_id, called_digits)

    def refuse_destination(
        self, rules: FraudRules, customer_id: str, device_id: str, digits: str | None
    ) -> RoutingDecision | None:
        """The deny or premium refusal of a destination number, unless allowed; for
        the dialled number and again for a ported number's routing number."""
        allow = rules.allow_destination
        if allow is not None and allow.match(customer_id, digits) is not None:
            return None
        deny = rules.deny_destination
        entry = None if deny is None else deny.match(customer_id, digits)
        if entry is not None:
            return self._refuse(
                "deny-list", "destination", entry, NETWORK_BLOCKED, customer_id, device_id
            )
        premium = None if rules.premium is None else rules.premium.match(customer_id, digits)
        if premium is not None:
            return self._refuse(
                "premium-rate", "destination", premium, DECLINE, customer_id, device_id
            )
        return None

    def admit(self, transaction_id: int, keys: tuple[str, ...]) -> None:
        """Hold a concurrent-call slot on each key for ``transaction_id``."""
        if keys:
            self._active.start_keys(transaction_id, keys)

    def release(self, transaction_id: int) -> None:
        """Free what ``transaction_id`` holds (nothing if unknown)."""
        self._active.end(transaction_id)

    def _refuse(
        self,
        reason: str,
        kind: str,
        entry: NumberListEntry,
        answer: int,
        customer_id: str,
        device_id: str,
    ) -> RoutingDecision:
        """Refuse a listed number with ``answer`` and the entry's description."""
        self._alert(reason, kind, entry.prefix, answer, customer_id, device_id)
        return RoutingDecision.refused(answer, entry.description)

    def _refuse_limit(
        self, reason: str, limit: FraudLimit, key: str, customer_id: str, device_id: str
    ) -> RoutingDecision:
        """Refuse a call over ``limit`` with the limit's answer."""
        self._alert(reason, limit.scope, key, limit.answer, customer_id, device_id)
        description = "Call-rate-limit" if limit.answer == DECLINE else "Network-blocked"
        return RoutingDecision.refused(limit.answer, description)

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


def _counter_key(
    limit: FraudLimit,
    tag: str,
    customer_id: str,
    device_id: str,
    calling_digits: str | None,
    called_digits: str | None,
) -> str | None:
    """The counter a call counts in under ``limit`` (None: the limit does not apply).
    Counters are per customer: a rule for everyone counts each one's calls."""
    scope = limit.scope
    if scope == "calling":
        if calling_digits is None:
            # Callers without digits (anonymous, a SIP URI) share one counter under a
            # limit for any number: hiding the number must not escape it.
            return f"{customer_id}|{tag}:{ANONYMOUS}" if not limit.match else None
        if not calling_digits.startswith(limit.match):
            return None
        return f"{customer_id}|{tag}:{calling_digits}"
    if scope == "device":
        if limit.match and limit.match != device_id:
            return None
        return f"{customer_id}|{tag}:{device_id}"
    if called_digits is None or not called_digits.startswith(limit.match):
        return None
    return f"{customer_id}|{tag}"
