"""The numbers devices send, each parsed into a bounded value at decode time.

Every numeric element the decoder reads has a :class:`NumericField` here with its range
(OSP.md §3; where the protocol gives none, what storage can hold).  Parsing compares
before it computes, so no text, however large its exponent, raises anything but
:class:`NumberOutOfRange`: nothing downstream of the decoder meets an unbounded value.

What an out-of-range number means depends on the message, and is the decoder's call:
in a request we must answer (MaximumDestinations, a CustomInfo index) it is a
malformed message; in a usage report it is one unusable value of a call record that
must still be stored (devices never resend a report answered with an error, OSP.md
§3.4), so the value is dropped from the typed columns and kept verbatim in the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from osp_server.osp.messages import MAX_DESTINATIONS

MAX_NUMBER_CHARS: Final = 40
"""Longer numeric text is refused unread (40 characters hold any value we accept)."""

_THOUSANDTHS: Final = Decimal("0.001")


class NumberOutOfRange(ValueError):
    """A numeric element's text is not a number in its field's range; the message
    names the field, the text (cut) and the range."""

    def __init__(self, field: NumericField, text: str) -> None:
        shown = text if len(text) <= 30 else text[:30] + "…"
        super().__init__(f"{field.name} {shown!r} is not {field.describe()}")
        self.field = field
        self.text = text


@dataclass(frozen=True, slots=True)
class NumericField:
    """One numeric element: its name (for messages) and its inclusive range.

    ``integral`` fields parse to ``int`` (``"3"``, ``"3.0"`` and ``"3E0"`` alike);
    the others to a ``Decimal`` rounded to thousandths, the precision storage keeps.
    """

    name: str
    low: Decimal
    high: Decimal
    integral: bool

    def describe(self) -> str:
        """The range in words: ``an integer in 1..12``, ``a number in 0..86400``."""
        kind = "an integer" if self.integral else "a number"
        return f"{kind} in {self.low}..{self.high}"

    def parse(self, text: str) -> int | Decimal:
        """``text`` as a value in range, or :class:`NumberOutOfRange`."""
        value = _finite_decimal(text)
        # Decimal comparisons are exact and never round, so they are safe on any
        # exponent; quantize and int() come only after the range is known.
        if value is None or not self.low <= value <= self.high:
            raise NumberOutOfRange(self, text)
        if self.integral:
            if value != value.to_integral_value():
                raise NumberOutOfRange(self, text)
            return int(value)
        return value.quantize(_THOUSANDTHS)

    def parse_int(self, text: str) -> int:
        """:meth:`parse` for an integral field."""
        assert self.integral, self.name
        value = self.parse(text)
        assert isinstance(value, int)
        return value

    def parse_decimal(self, text: str) -> Decimal:
        """:meth:`parse` for a decimal field."""
        assert not self.integral, self.name
        value = self.parse(text)
        assert isinstance(value, Decimal)
        return value


def _finite_decimal(text: str) -> Decimal | None:
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


_INT32: Final = Decimal(2**31 - 1)
_LONGEST_CALL: Final = Decimal("999999999.999")
"""Seconds (31 years): beyond, a duration is nonsense.  It also keeps every value inside
the 15 significant digits that survive SQLite, which stores Numeric columns as doubles
(10000000000000.2 reads back as 10000000000000.199)."""

MAXIMUM_DESTINATIONS: Final = NumericField(
    "MaximumDestinations", Decimal(1), Decimal(MAX_DESTINATIONS), True
)
CUSTOM_INFO_INDEX: Final = NumericField("CustomInfo index", Decimal(1), Decimal(32), True)
SETUP_ATTEMPT: Final = NumericField("SetupAttempt", Decimal(0), _INT32, True)
USAGE_AMOUNT: Final = NumericField("UsageDetail/Amount", Decimal(0), _LONGEST_CALL, False)
"""A call duration in seconds (OpenSIPS sends thousandths of the real value, §3.4)."""
USAGE_INCREMENT: Final = NumericField("UsageDetail/Increment", Decimal(0), _INT32, True)
POST_DIAL_DELAY: Final = NumericField("PostDialDelay", Decimal(0), Decimal(86_400), False)
"""Seconds from the call's setup to its alerting: more than a day is not a delay."""
