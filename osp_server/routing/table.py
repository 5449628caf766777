"""Route tables: immutable prefix indexes with longest-prefix match.

A `RouteTables` value is a snapshot. The storage layer builds a new one when routes
change and hands it to the policy (`DefaultRoutingPolicy.replace`); lookups in flight
keep the snapshot they started with, so nothing is ever mutated under a reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final, Generic, Protocol, TypeVar

from osp_server.routing.fraud import FraudRules
from osp_server.routing.model import (
    DEFAULT_TABLE,
    MAX_PREFIX_DIGITS,
    BlockRule,
    Route,
)
from osp_server.routing.portability import PortedNumbers
from osp_server.routing.profiles import ALL_CUSTOMERS, DEFAULT_PROFILE, RoutingProfile
from osp_server.routing.rates import RateDecks

MAX_NUMBER_CHARS: Final = 128
"""Longer numbers never match (the codec caps them earlier; this keeps lookups bounded)."""

_URI_SCHEMES: Final = ("sip:", "sips:", "tel:")


class RouteTableError(ValueError):
    """A set of routes or block rules cannot form a table (e.g. duplicate keys)."""


class _Prefixed(Protocol):
    @property
    def prefix(self) -> str: ...


T = TypeVar("T", bound=_Prefixed)


def number_digits(number: str) -> str | None:
    """The digits to match a number with, or None if it has none to match.

    Strips surrounding whitespace, ``<...>``, a ``sip:``/``sips:``/``tel:`` scheme
    (keeping the user part, without ``;parameters`` or ``:password``) and one leading
    ``+``. Returns None unless what remains is 1..`MAX_NUMBER_CHARS` ASCII digits.
    """
    if number.isdigit() and number.isascii() and len(number) <= MAX_NUMBER_CHARS:
        return number  # the common case: plain digits, as devices send E.164 numbers
    text = number.strip()
    if len(text) > MAX_NUMBER_CHARS * 4:
        return None
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    lowered = text[:5].lower()
    for scheme in _URI_SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            if scheme != "tel:":
                user, at, _host = text.partition("@")
                text = user if at else ""
            text = text.split(";", 1)[0]
            if scheme != "tel:":
                text = text.split(":", 1)[0]
            break
    if text.startswith("+"):
        text = text[1:]
    if not text or len(text) > MAX_NUMBER_CHARS or not (text.isascii() and text.isdigit()):
        return None
    return text


class PrefixIndex(Generic[T]):
    """Immutable index of items (routes or block rules) by digit prefix.

    `longest_match` walks the number's prefixes from the longest indexed length down
    to the empty prefix: at most ``MAX_PREFIX_DIGITS + 1`` dict lookups per number.
    Items sharing a prefix keep their input order.
    """

    __slots__ = ("_by_prefix", "_count", "_longest")

    def __init__(self, items: Iterable[T]) -> None:
        grouped: dict[str, list[T]] = {}
        count = 0
        for item in items:
            prefix = item.prefix
            if len(prefix) > MAX_PREFIX_DIGITS or not (prefix == "" or prefix.isdigit()):
                raise RouteTableError(f"bad prefix {prefix!r}")
            grouped.setdefault(prefix, []).append(item)
            count += 1
        # A plain dict (not a MappingProxyType): every lookup walks up to 33 prefixes
        # and a proxy's get costs twice as much; nothing outside this class writes it.
        self._by_prefix: dict[str, tuple[T, ...]] = {
            prefix: tuple(group) for prefix, group in grouped.items()
        }
        self._longest = max((len(p) for p in grouped), default=0)
        self._count = count

    def longest_match(self, digits: str) -> tuple[str, tuple[T, ...]] | None:
        """(prefix, items) for the longest indexed prefix of ``digits``, or None."""
        by_prefix = self._by_prefix
        for length in range(min(len(digits), self._longest), -1, -1):
            found = by_prefix.get(digits[:length])
            if found is not None:
                return digits[:length], found
        return None

    def matches(self, digits: str) -> Iterator[tuple[T, ...]]:
        """The item groups of every indexed prefix of ``digits``, longest first."""
        by_prefix = self._by_prefix
        for length in range(min(len(digits), self._longest), -1, -1):
            found = by_prefix.get(digits[:length])
            if found is not None:
                yield found

    def items(self) -> Iterator[T]:
        """Every item, grouped by prefix."""
        for group in self._by_prefix.values():
            yield from group

    @property
    def prefixes(self) -> frozenset[str]:
        """The indexed prefixes."""
        return frozenset(self._by_prefix)

    def __len__(self) -> int:
        return self._count


class RouteTables:
    """Immutable snapshot of every route table and block rule.

    A customer's table falls back to the ``"default"`` table when it does not exist
    or has no matching prefix. Blocks of the customer's table and of the default
    table both apply.

    The snapshot also carries the rest of the routing data, loaded and replaced with
    the routes: carriers' rate decks, the ported-number table, the fraud rules and
    the customers' routing profiles.
    """

    __slots__ = (
        "_destination_blocks",
        "_profiles",
        "_routes",
        "_source_blocks",
        "fraud",
        "has_schedules",
        "ported",
        "rates",
    )

    def __init__(
        self,
        routes: Iterable[Route] = (),
        blocks: Iterable[BlockRule] = (),
        *,
        rates: RateDecks | None = None,
        ported: PortedNumbers | None = None,
        fraud: FraudRules | None = None,
        profiles: Iterable[RoutingProfile] = (),
    ) -> None:
        self.rates = rates if rates is not None else RateDecks()
        self.ported = ported if ported is not None else PortedNumbers()
        self.fraud = fraud if fraud is not None else FraudRules()
        self._profiles: Mapping[str, RoutingProfile] = MappingProxyType(
            {profile.customer_id: profile for profile in profiles}
        )
        has_schedules = False
        by_table: dict[str, list[Route]] = {}
        seen: set[tuple[str, str, str]] = set()
        for route in routes:
            if route.key in seen:
                raise RouteTableError(f"duplicate route {route.key!r}")
            seen.add(route.key)
            by_table.setdefault(route.table, []).append(route)
            has_schedules = has_schedules or route.schedule is not None
        source: dict[str, list[BlockRule]] = {}
        destination: dict[str, list[BlockRule]] = {}
        seen.clear()
        for rule in blocks:
            if rule.key in seen:
                raise RouteTableError(f"duplicate block rule {rule.key!r}")
            seen.add(rule.key)
            has_schedules = has_schedules or rule.schedule is not None
            target = source if rule.kind == "source" else destination
            target.setdefault(rule.table, []).append(rule)
        self._routes: Mapping[str, PrefixIndex[Route]] = MappingProxyType(
            {name: PrefixIndex(items) for name, items in by_table.items()}
        )
        self._source_blocks: Mapping[str, PrefixIndex[BlockRule]] = MappingProxyType(
            {name: PrefixIndex(items) for name, items in source.items()}
        )
        self._destination_blocks: Mapping[str, PrefixIndex[BlockRule]] = MappingProxyType(
            {name: PrefixIndex(items) for name, items in destination.items()}
        )
        self.has_schedules = has_schedules
        """True when some route or block rule has a schedule (else no clock is read)."""

    def profile(self, customer_id: str) -> RoutingProfile:
        """The routing profile of ``customer_id`` (its own, else ``*``, else defaults)."""
        profiles = self._profiles
        if not profiles:
            return DEFAULT_PROFILE
        found = profiles.get(customer_id) or profiles.get(ALL_CUSTOMERS)
        return found if found is not None else DEFAULT_PROFILE

    def with_profiles(self, profiles: Iterable[RoutingProfile]) -> RouteTables:
        """The same snapshot with other routing profiles (every index shared)."""
        copy = object.__new__(RouteTables)
        for name in RouteTables.__slots__:
            setattr(copy, name, getattr(self, name))
        copy._profiles = MappingProxyType({p.customer_id: p for p in profiles})
        return copy

    def profiles(self) -> list[RoutingProfile]:
        """Every stored profile."""
        return list(self._profiles.values())

    @property
    def tables(self) -> Mapping[str, PrefixIndex[Route]]:
        """Read-only map of table name to its route index."""
        return self._routes

    @property
    def route_count(self) -> int:
        """How many routes, in all tables."""
        return sum(len(index) for index in self._routes.values())

    @property
    def block_count(self) -> int:
        """How many block rules, in all tables."""
        return sum(
            len(index)
            for kind in (self._source_blocks, self._destination_blocks)
            for index in kind.values()
        )

    def routes(self) -> list[Route]:
        """Every route, table by table (for export)."""
        return [route for index in self._routes.values() for route in index.items()]

    def blocks(self) -> list[BlockRule]:
        """Every block rule (for export)."""
        return [
            rule
            for kind in (self._source_blocks, self._destination_blocks)
            for index in kind.values()
            for rule in index.items()
        ]

    def lookup(
        self,
        table: str | None,
        called: str,
        in_force: Callable[[str | None], bool] | None = None,
    ) -> tuple[Route, ...]:
        """Routes of the longest prefix matching ``called`` (as received: ``+``,
        SIP/tel URIs handled by `number_digits`) in ``table``, else in the default
        table; empty when nothing matches.

        ``in_force(schedule)`` says whether a route's schedule allows it now (None:
        schedules are not checked); a prefix whose routes are all out of their
        schedule does not exist at that time, and a shorter one answers.
        """
        digits = number_digits(called)
        if digits is None:
            return ()
        return self.lookup_digits(table, digits, in_force)

    def route_groups(
        self,
        table: str | None,
        digits: str,
        in_force: Callable[[str | None], bool] | None = None,
    ) -> Iterator[tuple[Route, ...]]:
        """The route groups of every prefix of ``digits`` that has routes in force,
        longest first: the customer's table's, then the default table's. The first
        one is what `lookup_digits` answers; the policy moves on to the next when a
        group has nothing it can use (no rate in force)."""
        for name in _tables_to_search(table):
            index = self._routes.get(name)
            if index is None:
                continue
            for group in index.matches(digits):
                if in_force is not None:
                    group = tuple(
                        route
                        for route in group
                        if route.schedule is None or in_force(route.schedule)
                    )
                    if not group:
                        continue
                yield group

    def lookup_digits(
        self,
        table: str | None,
        digits: str,
        in_force: Callable[[str | None], bool] | None = None,
    ) -> tuple[Route, ...]:
        """`lookup` of a number already reduced to its digits."""
        return next(self.route_groups(table, digits, in_force), ())

    def find_block(
        self,
        table: str | None,
        calling: str,
        called: str,
        in_force: Callable[[str | None], bool] | None = None,
    ) -> BlockRule | None:
        """The block rule refusing this call, or None.

        Source rules match the calling number, destination rules the called number;
        the customer's table is checked before the default table, and within a table
        the longest matching prefix wins. An empty-prefix rule matches any number,
        even one without digits (a URI or ``anonymous``). ``in_force`` as in
        `lookup`: a rule outside its schedule does not apply.
        """
        return self.find_block_digits(
            table, number_digits(calling), number_digits(called), in_force
        )

    def find_destination_block(
        self,
        table: str | None,
        digits: str,
        in_force: Callable[[str | None], bool] | None = None,
    ) -> BlockRule | None:
        """The destination block rule refusing calls to ``digits`` (a ported number's
        routing number), as `find_block_digits` finds it for the called number."""
        for name in _tables_to_search(table):
            index = self._destination_blocks.get(name)
            rule = None if index is None else _rule_in_force(index, digits, in_force)
            if rule is not None:
                return rule
        return None

    def find_block_digits(
        self,
        table: str | None,
        calling_digits: str | None,
        called_digits: str | None,
        in_force: Callable[[str | None], bool] | None = None,
    ) -> BlockRule | None:
        """`find_block` of numbers already reduced to their digits (None: no digits)."""
        for name in _tables_to_search(table):
            for blocks, digits in (
                (self._source_blocks, calling_digits),
                (self._destination_blocks, called_digits),
            ):
                index = blocks.get(name)
                if index is None:
                    continue
                rule = _rule_in_force(index, digits if digits is not None else "", in_force)
                if rule is not None:
                    return rule
        return None


def _rule_in_force(
    index: PrefixIndex[BlockRule], digits: str, in_force: Callable[[str | None], bool] | None
) -> BlockRule | None:
    """The rule of the longest prefix of ``digits`` whose rule is in force now."""
    # The walk of `PrefixIndex.matches`, inlined: this runs on every call.
    by_prefix = index._by_prefix
    for length in range(min(len(digits), index._longest), -1, -1):
        group = by_prefix.get(digits[:length])
        if group is not None:
            rule = group[0]
            if rule.schedule is None or in_force is None or in_force(rule.schedule):
                return rule
    return None


def _tables_to_search(table: str | None) -> tuple[str, ...]:
    if table is None or table == DEFAULT_TABLE:
        return (DEFAULT_TABLE,)
    return (table, DEFAULT_TABLE)
