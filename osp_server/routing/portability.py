"""Number portability: the operator's ported-number table and the NP answer.

A ported number keeps its digits but moved to another network: calls to it must be
routed on its *routing number* (LRN), and the device signals the dialled number with
``rn``/``cic``/``npdi`` (OSP.md §7), which it reads from the Destination's
``DestinationInfo`` of types ``routingnumber``, ``cic`` and ``npdi``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from osp_server.routing.model import InvalidRouteField

MAX_NUMBER_DIGITS: Final = 32
_NUMBER_RE: Final = re.compile(rf"[0-9]{{1,{MAX_NUMBER_DIGITS}}}")
_CIC_RE: Final = re.compile(r"[0-9]{1,8}")

NP_QUERY_SERVICE: Final = "portedNumberQuery"
"""``ServiceType`` of a number-portability query (OSP.md §3.1, §7)."""


def validate_number(value: str, field: str = "number") -> str:
    """Return a full number in digits (no ``+``), or raise `InvalidRouteField`."""
    if not isinstance(value, str) or not _NUMBER_RE.fullmatch(value):
        raise InvalidRouteField(field, value, f"1-{MAX_NUMBER_DIGITS} digits")
    return value


def validate_cic(value: str | None) -> str | None:
    """Return a carrier identification code (1-8 digits) or None."""
    if value is not None and (not isinstance(value, str) or not _CIC_RE.fullmatch(value)):
        raise InvalidRouteField("cic", value, "1-8 digits")
    return value


@dataclass(frozen=True, slots=True)
class PortedNumber:
    """``number`` is served by the network of ``routing_number`` (``cic``: its carrier)."""

    number: str
    routing_number: str
    cic: str | None = None

    def __post_init__(self) -> None:
        validate_number(self.number)
        validate_number(self.routing_number, "routing_number")
        validate_cic(self.cic)


@dataclass(frozen=True, slots=True)
class PortingAnswer:
    """What routing learned about the called number: ``routing_number`` is None when
    the number is not ported (``npdi`` still says that the dip was done)."""

    routing_number: str | None
    cic: str | None
    from_request: bool = False
    """True when the device had already done the dip (it sent npdi or rn)."""

    def destination_infos(self) -> tuple[tuple[str, str], ...]:
        """``DestinationInfo`` (type, value) pairs for a Destination."""
        infos: list[tuple[str, str]] = []
        if self.routing_number is not None:
            infos.append(("routingnumber", self.routing_number))
        if self.cic is not None:
            infos.append(("cic", self.cic))
        infos.append(("npdi", "true"))
        return tuple(infos)


class PortedNumbers:
    """Immutable ported-number table: one dict lookup per call."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[PortedNumber] = ()) -> None:
        self._entries: Mapping[str, tuple[str, str | None]] = MappingProxyType(
            {e.number: (e.routing_number, e.cic) for e in entries}
        )

    def lookup(self, digits: str) -> PortingAnswer:
        """The dip result for the called ``digits`` (a miss is "not ported")."""
        found = self._entries.get(digits)
        if found is None:
            return PortingAnswer(None, None)
        return PortingAnswer(found[0], found[1])

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)


def answer_from_request(infos: Iterable[tuple[str, str]]) -> PortingAnswer | None:
    """The dip a device already did (``npdi`` true or a routing number in its
    DestinationInfo), or None when it did not."""
    values = {t.lower(): v.strip() for t, v in infos}
    rn = values.get("routingnumber") or None
    npdi = values.get("npdi", "").lower() in {"true", "yes", "1"}
    if rn is None and not npdi:
        return None
    if rn is not None and not _NUMBER_RE.fullmatch(rn.removeprefix("+")):
        rn = None  # not digits: unusable for routing, treated as "dipped, not ported"
    cic = values.get("cic") or None
    if cic is not None and not _CIC_RE.fullmatch(cic):
        cic = None
    return PortingAnswer(rn.removeprefix("+") if rn else None, cic, from_request=True)
