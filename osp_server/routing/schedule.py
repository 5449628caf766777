"""Time-of-day and day-of-week validity of routes and block rules.

A schedule is written as clauses separated by ``;``, each ``[days] [HH:MM-HH:MM]``::

    mon-fri 08:00-18:00;sat 09:00-13:00
    sat-sun                 (all day on weekends)
    22:00-06:00             (every night: a range may cross midnight)

Days are ``mon tue wed thu fri sat sun``, single or as a range (``fri-mon`` wraps);
``24:00`` ends a range at midnight. Times are the customer's local time (its routing
profile's time zone); `LocalClock` turns a UTC instant into the minute of the local
week once per minute and time zone, so a route check is one bit test.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MINUTES_PER_DAY: Final = 24 * 60
MINUTES_PER_WEEK: Final = 7 * MINUTES_PER_DAY
MAX_SCHEDULE_CHARS: Final = 200
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_CLAUSE_RE: Final = re.compile(
    r"(?:(?P<first>[a-z]{3})(?:-(?P<last>[a-z]{3}))?)?\s*"
    r"(?:(?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2}))?"
)


class InvalidSchedule(ValueError):
    """A schedule or time zone text the server cannot use; the message says why."""


def _minute(text: str, *, end: bool) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise InvalidSchedule(f"{text!r} is not a time of day (00:00-23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def _day(text: str) -> int:
    try:
        return DAYS.index(text)
    except ValueError:
        raise InvalidSchedule(f"{text!r} is not a day ({' '.join(DAYS)})") from None


@lru_cache(maxsize=1024)
def parse_schedule(text: str) -> int:
    """The minutes of the week (Monday 00:00 = bit 0) that ``text`` covers, as a bit
    mask; raise `InvalidSchedule`. Cached: a million routes share a few schedules."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSchedule("empty schedule")
    if len(text) > MAX_SCHEDULE_CHARS:
        raise InvalidSchedule(f"longer than {MAX_SCHEDULE_CHARS} characters")
    mask = 0
    for raw in text.lower().split(";"):
        clause = raw.strip()
        match = _CLAUSE_RE.fullmatch(clause)
        if not clause or match is None or not (match["first"] or match["start"]):
            raise InvalidSchedule(
                f"clause {raw.strip()!r}: expected '[day[-day]] [HH:MM-HH:MM]', e.g. "
                "'mon-fri 08:00-18:00'"
            )
        if match["first"]:
            first = _day(match["first"])
            last = _day(match["last"]) if match["last"] else first
            days = [(first + i) % 7 for i in range((last - first) % 7 + 1)]
        else:
            days = list(range(7))
        if match["start"]:
            start = _minute(match["start"], end=False)
            stop = _minute(match["end"], end=True)
            if start == stop:
                raise InvalidSchedule(f"clause {clause!r}: empty time range")
        else:
            start, stop = 0, MINUTES_PER_DAY
        length = (stop - start) % MINUTES_PER_DAY or MINUTES_PER_DAY
        for day in days:
            begin = day * MINUTES_PER_DAY + start
            for chunk_start, chunk_length in _wrapped(begin, length):
                mask |= ((1 << chunk_length) - 1) << chunk_start
    return mask


def _wrapped(begin: int, length: int) -> list[tuple[int, int]]:
    """A range of the week that may run past Sunday midnight, as one or two pieces."""
    end = begin + length
    if end <= MINUTES_PER_WEEK:
        return [(begin, length)]
    return [(begin, MINUTES_PER_WEEK - begin), (0, end - MINUTES_PER_WEEK)]


def validate_schedule(value: str | None) -> str | None:
    """Return ``value`` (None: always valid) when it parses; raise `InvalidSchedule`."""
    if value is None:
        return None
    parse_schedule(value)
    return value


def schedule_allows(mask: int, minute_of_week: int) -> bool:
    """True when ``minute_of_week`` (local) is inside the schedule ``mask``."""
    return (mask >> minute_of_week) & 1 == 1


@lru_cache(maxsize=512)
def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Europe/Paris``); raise `InvalidSchedule`."""
    if not isinstance(name, str) or not name or len(name) > 64 or ".." in name:
        raise InvalidSchedule(f"{name!r} is not a time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris)"
        ) from None


class LocalClock:
    """Minute of the local week for a UTC instant, computed once per minute and zone."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, int]] = {}

    def minute_of_week(self, zone: str, now: datetime) -> int:
        """Local minute of the week (Monday 00:00 = 0) of ``now`` (aware) in ``zone``."""
        utc_minute = int(now.timestamp()) // 60
        cached = self._cache.get(zone)
        if cached is not None and cached[0] == utc_minute:
            return cached[1]
        local = datetime.fromtimestamp(utc_minute * 60, UTC).astimezone(time_zone(zone))
        value = local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[zone] = (utc_minute, value)
        return value
