"""Per-customer routing profiles: which routing parts apply, time zone, customer price.

The profile of customer ``*`` applies to customers without their own; without either,
`DEFAULT_PROFILE` does (everything on, UTC, no price). Each part of the default policy
can be switched off per customer:

* ``lcr``: routes with a carrier are ordered by that carrier's rate deck;
* ``portability``: the ported-number table is dipped before routing;
* ``quality``: routes below the quality thresholds are demoted, ties broken by quality;
* ``fraud``: allow/deny lists, premium ranges and call limits;
* ``schedules``: time-of-day validity of routes and block rules.

The customer's price is either a markup in percent on our cost, or a deck of its own
(``price_deck``, a carrier name whose deck is that customer's price list).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from osp_server.routing.fraud import validate_customer_or_all
from osp_server.routing.model import InvalidRouteField, validate_carrier
from osp_server.routing.schedule import InvalidSchedule, time_zone

ALL_CUSTOMERS: Final = "*"
FEATURES: Final = ("lcr", "portability", "quality", "fraud", "schedules")
MAX_MARKUP: Final = Decimal(10000)


@dataclass(frozen=True, slots=True)
class RoutingProfile:
    """One customer's routing settings (see the module docstring)."""

    customer_id: str = ALL_CUSTOMERS
    time_zone: str = "UTC"
    lcr: bool = True
    portability: bool = True
    quality: bool = True
    fraud: bool = True
    schedules: bool = True
    markup_percent: Decimal | None = None
    price_deck: str | None = None

    def __post_init__(self) -> None:
        if self.customer_id != ALL_CUSTOMERS:
            validate_customer_or_all(self.customer_id, "customer_id")
        try:
            time_zone(self.time_zone)
        except InvalidSchedule as e:
            raise InvalidRouteField("time_zone", self.time_zone, str(e)) from None
        if self.markup_percent is not None:
            m = self.markup_percent
            if not isinstance(m, Decimal) or not m.is_finite() or not -100 < m < MAX_MARKUP:
                raise InvalidRouteField("markup_percent", m, "a percentage above -100")
            exponent = m.as_tuple().exponent
            if isinstance(exponent, int) and exponent < -4:
                raise InvalidRouteField("markup_percent", m, "at most 4 digits after the point")
        if self.price_deck is not None:
            validate_carrier(self.price_deck, "price_deck")
        if self.markup_percent is not None and self.price_deck is not None:
            raise InvalidRouteField(
                "price_deck", self.price_deck, "either a markup or a price deck, not both"
            )

    @property
    def enabled(self) -> tuple[str, ...]:
        """The parts switched on, in `FEATURES` order."""
        return tuple(name for name in FEATURES if getattr(self, name))


DEFAULT_PROFILE: Final = RoutingProfile()
