"""The default routing policy.

In order, for each authorization (each step switchable per customer through its
routing profile, `osp_server.routing.profiles`):

1. fraud control: allow/deny lists, premium ranges, calls per minute and concurrent
   calls (`osp_server.routing.fraud`): 603 or 9603;
2. block rules (in force at the customer's local time): 403;
3. number portability: the device's own dip (rn/npdi it sent) or the ported-number
   table; routing then uses the routing number;
4. longest-prefix match on the (routing) number among the routes in force now;
5. least-cost order: a route with a carrier costs what that carrier's rate deck in
   force now says for the number (no rate: the carrier does not take the call);
6. order: routes demoted for bad quality last; then priority, cost, quality band (ASR
   in 5 % steps), weighted random;
7. per destination: number translation, NP data, and the rating (cost and price) that
   is recorded with the transaction.

Pure and synchronous: no reactor, no I/O. Route changes arrive as a new `RouteTables`
snapshot through `DefaultRoutingPolicy.replace` and apply to the next request.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from twisted.logger import Logger
from zope.interface import implementer

from osp_server.cdr.legs import LegReport
from osp_server.interfaces import IRouteTablesConsumer, IRoutingPolicy, IUsageObserver
from osp_server.osp.messages import MAX_DESTINATIONS
from osp_server.routing.calls import (
    MAX_CALL_HOLD_SECONDS,
    MAX_TRACKED_CALLS,
    CallCounter,
)
from osp_server.routing.fraud import FraudAlert, FraudGuard
from osp_server.routing.model import (
    Rating,
    Route,
    RoutedDestination,
    RoutingDecision,
    RoutingRequest,
    translate_number,
)
from osp_server.routing.portability import NP_QUERY_SERVICE, PortingAnswer, answer_from_request
from osp_server.routing.profiles import RoutingProfile
from osp_server.routing.quality import (
    QualityThresholds,
    QualityTracker,
    carrier_key,
    destination_key,
    network_key,
    outcome_of,
)
from osp_server.routing.schedule import LocalClock, parse_schedule, schedule_allows
from osp_server.routing.table import RouteTables, number_digits

__all__ = [
    "CALL_LIMIT_DESCRIPTION",
    "MAX_CALL_HOLD_SECONDS",
    "MAX_TRACKED_CALLS",
    "CallCounter",
    "DefaultRoutingPolicy",
    "order_routes",
]

log = Logger()

CALL_LIMIT_DESCRIPTION: Final = "All routes at call limit"
_FIXED_COST_BILLING: Final = (1, 1)
"""A route's fixed cost is a price per minute billed by the second."""


@dataclass(slots=True)
class _Candidate:
    route: Route
    cost: Decimal
    rating: Rating | None
    demoted: bool = False
    band: int = 0


def order_routes(routes: Sequence[Route], rng: random.Random) -> list[Route]:
    """Priority ascending, then cost ascending, then weighted random order.

    Among routes of equal priority and cost, the order is a weighted sample without
    replacement (each next route is picked with probability weight / remaining
    weight): exponential keys ``Exp(weight)`` sorted ascending do exactly that.
    Weight-0 routes come last in their group, in table order.
    """
    candidates = [_Candidate(route, route.cost, None) for route in routes]
    return [candidate.route for candidate in _order(candidates, rng)]


def _order(candidates: list[_Candidate], rng: random.Random) -> list[_Candidate]:
    """`order_routes` with the policy's extra keys: demoted routes after the others,
    and the quality band between cost and weights."""
    groups: dict[tuple[bool, int, Decimal, int], list[_Candidate]] = {}
    for c in candidates:
        groups.setdefault((c.demoted, c.route.priority, c.cost, c.band), []).append(c)
    ordered: list[_Candidate] = []
    for group_key in sorted(groups):
        group = groups[group_key]
        if len(group) == 1:
            ordered.extend(group)
            continue
        weighted = [c for c in group if c.route.weight > 0]
        keyed = sorted((rng.expovariate(c.route.weight), i) for i, c in enumerate(weighted))
        ordered.extend(weighted[i] for _key, i in keyed)
        ordered.extend(c for c in group if c.route.weight == 0)
    return ordered


@implementer(IRoutingPolicy, IRouteTablesConsumer, IUsageObserver)
class DefaultRoutingPolicy:
    """Fraud control, block rules, number portability, longest-prefix match, least
    cost, quality, priority and weights (the module docstring has the order),
    skipping routes at their call limit.

    ``count_all_destinations`` chooses which routes a call holds a slot on: only the
    first destination (default: the one the device tries first; failover calls are
    not counted against later routes) or every destination returned (never exceeds a
    limit, but reserves capacity on alternatives that are rarely used).

    ``quality_*`` options set the `QualityThresholds` (``[plugins.default]`` in the
    configuration). ``clock`` is monotonic seconds; ``wall_clock`` the time of the
    call (rate decks in force, schedules).
    """

    name = "default"

    def __init__(
        self,
        tables: RouteTables | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
        max_hold_seconds: float = MAX_CALL_HOLD_SECONDS,
        count_all_destinations: bool = False,
        quality_window_seconds: int = 3600,
        quality_bucket_seconds: int = 60,
        quality_min_attempts: int = 20,
        quality_min_asr: float = 0.2,
        quality_min_ner: float = 0.5,
        quality_max_pdd: float = 0.0,
        quality_cooldown_seconds: int = 900,
    ) -> None:
        self._tables = tables if tables is not None else RouteTables()
        self._rng = rng if rng is not None else random.SystemRandom()
        self.clock = clock
        """Monotonic seconds for counters and statistics (replaceable in tests)."""
        self.wall_clock = wall_clock or (lambda: datetime.now(UTC))
        """The time of a call: rate decks in force and schedules (replaceable in tests)."""
        self.calls = CallCounter(lambda: self.clock(), max_hold_seconds=max_hold_seconds)
        self._count_all = count_all_destinations
        # Without a transaction id a counted call can only expire; give it a key that
        # cannot collide with real (non-negative) transaction ids.
        self._anonymous = itertools.count(-1, -1)
        self.quality = QualityTracker(
            QualityThresholds(
                window_seconds=_whole("quality_window_seconds", quality_window_seconds),
                bucket_seconds=_whole("quality_bucket_seconds", quality_bucket_seconds),
                min_attempts=_whole("quality_min_attempts", quality_min_attempts),
                min_asr=_number("quality_min_asr", quality_min_asr),
                min_ner=_number("quality_min_ner", quality_min_ner),
                max_pdd=_number("quality_max_pdd", quality_max_pdd),
                cooldown_seconds=_whole("quality_cooldown_seconds", quality_cooldown_seconds),
            )
        )
        self.fraud = FraudGuard(
            lambda: self.clock(), max_hold_seconds=max_hold_seconds, on_alert=_log_alert
        )
        self._local = LocalClock()

    @property
    def tables(self) -> RouteTables:
        """The current snapshot."""
        return self._tables

    def replace(self, tables: RouteTables) -> None:
        """Use ``tables`` from the next request on (call counts are kept)."""
        self._tables = tables

    def route(self, request: RoutingRequest) -> RoutingDecision:
        """Decide where a call goes (see the module docstring)."""
        tables = self._tables
        profile = tables.profile(request.customer_id)
        now = self.wall_clock()
        in_force: Callable[[str | None], bool] | None = None
        if profile.schedules and tables.has_schedules:
            minute = self._local.minute_of_week(profile.time_zone, now)

            def in_force(schedule: str | None) -> bool:
                return schedule is None or schedule_allows(parse_schedule(schedule), minute)

        called_digits = number_digits(request.called)
        calling_digits = number_digits(request.calling)
        # An NP query is not a call: it neither counts against nor holds any limit.
        query = request.service_type == NP_QUERY_SERVICE
        fraud_keys: tuple[str, ...] = ()
        if profile.fraud and tables.fraud and not query:
            refusal, fraud_keys = self.fraud.check(
                tables.fraud,
                customer_id=request.customer_id,
                device_id=request.device_id,
                calling_digits=calling_digits,
                called_digits=called_digits,
            )
            if refusal is not None:
                return refusal
        block = tables.find_block_digits(
            request.route_table, calling_digits, called_digits, in_force
        )
        if block is not None:
            return RoutingDecision.blocked(block.description)
        if called_digits is None:
            return RoutingDecision.no_route()
        porting = self._porting(tables, profile, request, called_digits)
        routing_digits = called_digits
        if porting is not None and porting.routing_number is not None:
            routing_digits = porting.routing_number
            if routing_digits != called_digits:
                # The routing number, maybe the device's own, must not reach what the
                # dialled number could not: blocks and destination lists apply to it too.
                refusal = self._refuse_routing_number(
                    tables, profile, request, routing_digits, in_force
                )
                if refusal is not None:
                    return refusal
        priced, at_limit = self._candidates(tables, profile, request, routing_digits, in_force, now)
        if not priced:
            if at_limit:
                return RoutingDecision.no_route(CALL_LIMIT_DESCRIPTION)
            return RoutingDecision.no_route()
        if profile.quality:
            self._judge(priced)
        limit = 1 if query else max(1, min(request.max_destinations, MAX_DESTINATIONS))
        chosen = _order(priced, self._rng)[:limit]
        counted = () if query else chosen if self._count_all else chosen[:1]
        limited = [c.route for c in counted if c.route.call_limit is not None]
        transaction_id = request.transaction_id
        if limited or fraud_keys:
            if transaction_id is None:
                transaction_id = next(self._anonymous)
            if limited:
                self.calls.start(transaction_id, limited)
            self.fraud.admit(transaction_id, fraud_keys)
        infos = porting.destination_infos() if porting is not None else ()
        destinations = tuple(self._destination(request, c, infos, query) for c in chosen)
        if query:
            return RoutingDecision(200, "OK", destinations, service_type=NP_QUERY_SERVICE)
        return RoutingDecision.routed(destinations)

    def _refuse_routing_number(
        self,
        tables: RouteTables,
        profile: RoutingProfile,
        request: RoutingRequest,
        routing_digits: str,
        in_force: Callable[[str | None], bool] | None,
    ) -> RoutingDecision | None:
        if profile.fraud and tables.fraud:
            refusal = self.fraud.refuse_destination(
                tables.fraud, request.customer_id, request.device_id, routing_digits
            )
            if refusal is not None:
                return refusal
        block = tables.find_destination_block(request.route_table, routing_digits, in_force)
        return None if block is None else RoutingDecision.blocked(block.description)

    def _candidates(
        self,
        tables: RouteTables,
        profile: RoutingProfile,
        request: RoutingRequest,
        digits: str,
        in_force: Callable[[str | None], bool] | None,
        now: datetime,
    ) -> tuple[list[_Candidate], bool]:
        """The priced routes of the longest prefix that has any, and whether routes
        were left out for their call limit.

        A prefix whose routes are all at their call limit answers "at call limit" (no
        overflow to a shorter prefix); a prefix whose carrier routes have no rate in
        force now (and no other route) does not exist at this time, like a route out
        of its schedule, and a shorter prefix answers. An NP query ignores call
        limits: it is not a call.
        """
        query = request.service_type == NP_QUERY_SERVICE
        for group in tables.route_groups(request.route_table, digits, in_force):
            usable = group if query else [r for r in group if not self.calls.at_limit(r)]
            if not usable:
                return [], True
            priced = self._price(tables, profile, usable, digits, now)
            if priced:
                return priced, False
        return [], False

    @staticmethod
    def _porting(
        tables: RouteTables, profile: RoutingProfile, request: RoutingRequest, digits: str
    ) -> PortingAnswer | None:
        if not profile.portability:
            return None
        if request.destination_infos:
            dipped = answer_from_request(request.destination_infos)
            if dipped is not None:
                return dipped
        if tables.ported or request.service_type == NP_QUERY_SERVICE:
            return tables.ported.lookup(digits)
        return None

    def _price(
        self,
        tables: RouteTables,
        profile: RoutingProfile,
        routes: Sequence[Route],
        digits: str,
        now: datetime,
    ) -> list[_Candidate]:
        """Each route with what it costs now (for the number routed on: the routing
        number of a ported number, for our cost and the customer's price alike).

        A carrier route is rated from its carrier's deck in force; without a rate the
        carrier does not take the call and the route is left out. With least-cost
        routing off for the customer, carrier routes are still rated (for the record
        and the carrier's quality) but ordered by their fixed cost, and kept when
        their deck has no rate.
        """
        deck_price = None  # the same for every route: the customer's deck prices the number
        if profile.price_deck is not None:
            price_rate = tables.rates.rate_at(profile.price_deck, digits, now)
            deck_price = None if price_rate is None else price_rate.plan
        markup = profile.markup_percent
        priced: list[_Candidate] = []
        for route in routes:
            rate = None
            if route.carrier is not None:
                rate = tables.rates.rate_at(route.carrier, digits, now)
                if rate is None and profile.lcr:
                    continue  # the carrier's deck does not reach this number now
            if rate is not None:
                cost = rate.plan
            else:
                cost = (route.cost, Decimal(0), *_FIXED_COST_BILLING)
            price = deck_price
            if price is None and markup is not None:
                factor = 1 + markup / 100
                price = (cost[0] * factor, cost[1] * factor, cost[2], cost[3])
            order_cost = cost[0] if profile.lcr else route.cost
            priced.append(_Candidate(route, order_cost, Rating(route.carrier, cost, price)))
        return priced

    def _judge(self, candidates: list[_Candidate]) -> None:
        quality = self.quality
        now = self.clock()
        check_demoted = quality.any_demoted
        for c in candidates:
            route = c.route
            key = destination_key(route.destination)
            c.band = quality.band(key, now)
            if check_demoted:
                c.demoted = (
                    quality.is_demoted(key, now)
                    or (
                        route.network_id is not None
                        and quality.is_demoted(network_key(route.network_id), now)
                    )
                    or (
                        c.rating is not None
                        and c.rating.carrier is not None
                        and quality.is_demoted(carrier_key(c.rating.carrier), now)
                    )
                )

    @staticmethod
    def _destination(
        request: RoutingRequest, c: _Candidate, infos: tuple[tuple[str, str], ...], query: bool
    ) -> RoutedDestination:
        route = c.route
        # An NP query answers about the dialled number: no translation for a next hop.
        called = (
            None
            if query
            else translate_number(request.called, route.strip_digits, route.add_prefix)
        )
        return RoutedDestination(
            signal_address=route.destination,
            protocol=route.protocol,
            network_id=route.network_id,
            called=called,
            route=route,
            destination_infos=infos,
            rating=c.rating,
        )

    def call_ended(self, transaction_id: int) -> None:
        """Release the call-limit and fraud slots held by ``transaction_id``."""
        self.calls.end(transaction_id)
        self.fraud.release(transaction_id)

    def leg_reported(
        self, report: LegReport, network_id: str | None, carrier: str | None = None
    ) -> None:
        """Count a finished call leg a device reported in the quality statistics of the
        destination it tried, and of its network id and carrier (as the server
        recorded them when it authorized the call). The originating and the
        terminating leg of one attempt count once."""
        if report.state != "stop" or not report.key.destination:
            return
        destination = report.key.destination
        if not self.quality.first_report(report.key.transaction_id, destination):
            return
        keys = [destination_key(destination)]
        if network_id:
            keys.append(network_key(network_id))
        if carrier:
            keys.append(carrier_key(carrier))
        for key in self.quality.record(keys, outcome_of(report), self.clock()):
            log.warn(
                "route quality: {key} demoted for {seconds}s (below the thresholds)",
                key=key,
                seconds=self.quality.thresholds.cooldown_seconds,
                event="route_demoted",
            )


def _whole(name: str, value: object) -> int:
    """An integer option (a TOML integer; not a boolean, not a float)."""
    if type(value) is not int:
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return value


def _number(name: str, value: object) -> float:
    """A number option (a TOML integer or float; not a boolean)."""
    if type(value) not in (int, float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def _log_alert(alert: FraudAlert) -> None:
    log.warn(
        "fraud control: {reason} ({scope} {key}) for customer {customer} device {device}:"
        " answering {answer}",
        reason=alert.reason,
        scope=alert.scope,
        key=alert.key,
        customer=alert.customer_id,
        device=alert.device_id,
        answer=alert.answer,
        event="fraud_alert",
    )
