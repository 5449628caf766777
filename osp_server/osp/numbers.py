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
from typing import ClassVar, Final, Generic, TypeVar

from osp_server.osp.messages import MAX_DESTINATIONS

MAX_NUMBER_CHARS: Final = 40
"""Longer numeric text is refused unread (40 characters hold any value we accept)."""

_THOUSANDTHS: Final = Decimal("0.001")


class NumberOutOfRange(ValueError):
    """A numeric element's text is not a number in its field's range; the message
    names the field, the text (cut) and the range."""

    def __init__(self, field: NumericField[int] | NumericField[Decimal], text: str) -> None:
        shown = text if len(text) <= 30 else text[:30] + "…"
        super().__init__(f"{field.name} {shown!r} is not {field.describe()}")
        self.field = field
        self.text = text


N = TypeVar("N", int, Decimal)
"""What a field parses to: ``int`` for an :class:`IntegerField`, else ``Decimal``."""


@dataclass(frozen=True, slots=True)
class NumericField(Generic[N]):
    """One numeric element: its name (for messages) and its inclusive range.

    An :class:`IntegerField` parses to ``int`` (``"3"``, ``"3.0"`` and ``"3E0"``
    alike); a :class:`DecimalField` to a ``Decimal`` rounded to thousandths, the
    precision storage keeps.
    """

    name: str
    low: Decimal
    high: Decimal
    integral: ClassVar[bool]

    def describe(self) -> str:
        """The range in words: ``an integer in 1..12``, ``a number in 0..86400``."""
        kind = "an integer" if self.integral else "a number"
        return f"{kind} in {self.low}..{self.high}"

    def parse(self, text: str) -> N:
        """``text`` as a value in range, or :class:`NumberOutOfRange`."""
        value = _finite_decimal(text)
        # Decimal comparisons are exact and never round, so they are safe on any
        # exponent; quantize and int() come only after the range is known.
        if value is None or not self.low <= value <= self.high:
            raise NumberOutOfRange(self, text)
        return self._finish(value, text)

    def _finish(self, value: Decimal, text: str) -> N:
        raise NotImplementedError


class IntegerField(NumericField[int]):
    """A field whose values are whole numbers."""

    __slots__ = ()
    integral = True

    def _finish(self, value: Decimal, text: str) -> int:
        if value != value.to_integral_value():
            raise NumberOutOfRange(self, text)
        return int(value)


class DecimalField(NumericField[Decimal]):
    """A field of seconds, kept to thousandths."""

    __slots__ = ()
    integral = False

    def _finish(self, value: Decimal, text: str) -> Decimal:
        return value.quantize(_THOUSANDTHS)


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

MAXIMUM_DESTINATIONS: Final = IntegerField(
    "MaximumDestinations", Decimal(1), Decimal(MAX_DESTINATIONS)
)
CUSTOM_INFO_INDEX: Final = IntegerField("CustomInfo index", Decimal(1), Decimal(32))
SETUP_ATTEMPT: Final = IntegerField("SetupAttempt", Decimal(0), _INT32)
USAGE_AMOUNT: Final = DecimalField("UsageDetail/Amount", Decimal(0), _LONGEST_CALL)
"""A call duration in seconds (OpenSIPS sends thousandths of the real value, §3.4)."""
USAGE_INCREMENT: Final = IntegerField("UsageDetail/Increment", Decimal(0), _INT32)
POST_DIAL_DELAY: Final = DecimalField("PostDialDelay", Decimal(0), Decimal(86_400))
"""Seconds from the call's setup to its alerting: more than a day is not a delay."""
