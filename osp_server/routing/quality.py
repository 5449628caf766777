"""Route quality from our own usage records: ASR, ACD, PDD, NER over sliding windows.

Each finished call leg a device reports becomes a `CallOutcome` of the destination it
tried (and of that destination's network id and carrier). `QualityTracker` keeps, per
key, one bucket per ``bucket_seconds`` over the last ``window_seconds``:

* attempts;
* ASR (answer-seizure ratio): answered / attempts;
* ACD (average call duration) of the answered calls, in seconds;
* PDD (average post-dial delay) of the calls that reported one, in seconds;
* NER (network effectiveness ratio, ITU-T E.425): calls that were answered or that
  the *user* ended (busy, no answer, rejected) / attempts; network failures lower it.

A key whose statistics fall below `QualityThresholds` (once it has ``min_attempts``)
is *demoted* for ``cooldown_seconds``: routing moves its routes after the others, it
never removes them. After the cool-down it is judged on the calls since its
demotion only, so that a route that recovered is not demoted again by old failures.

Pure and synchronous; the clock is passed in (seconds, any monotonic origin).
Statistics are per node; `snapshot`/`restore` let the service persist them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from osp_server.cdr.legs import LegReport, account_duration

# Q.850 causes and SIP codes where the network did its job and the user said no.
_USER_Q850: Final = frozenset({"16", "17", "18", "19", "21", "31"})
_USER_SIP: Final = frozenset({"200", "480", "486", "487", "600", "603"})
MAX_KEYS: Final = 100_000
"""Memory bound: the least recently updated keys are forgotten beyond it."""
MAX_COUNTED_LEGS: Final = 200_000
"""Attempts remembered to count a call once when both of its legs report it."""
MAX_DURATION_SECONDS: Final = 7 * 86400
MAX_PDD_SECONDS: Final = 3600


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One attempt to a destination: answered or not, why it ended, its timings."""

    answered: bool
    network_ok: bool
    duration: float = 0.0
    post_dial_delay: float | None = None


def outcome_of(report: LegReport) -> CallOutcome:
    """The attempt a finished leg report describes (see the module docstring)."""
    values = report.values
    duration, _source = account_duration(values)
    seconds = float(duration) if duration is not None else 0.0
    seconds = min(max(seconds, 0.0), MAX_DURATION_SECONDS)
    # Start to end without a ConnectTime is ringing time: only a connect time or a
    # positive Amount says the call was answered.
    answered = values.connect_time is not None or (values.amount is not None and values.amount > 0)
    cause_type = (values.termination_cause_type or "").lower()
    code = (values.termination_cause_code or "").strip()
    user_ended = (cause_type == "q850" and code in _USER_Q850) or (
        cause_type == "sip" and code in _USER_SIP
    )
    pdd: float | None = None
    if values.post_dial_delay is not None and values.post_dial_delay >= 0:
        pdd = min(float(values.post_dial_delay), MAX_PDD_SECONDS)
    return CallOutcome(
        answered=answered,
        network_ok=answered or user_ended,
        duration=seconds if answered else 0.0,
        post_dial_delay=pdd,
    )


@dataclass(frozen=True)
class QualityThresholds:
    """When a key is demoted, and for how long (see the module docstring).

    ``min_asr``/``min_ner`` are fractions (0.3 = 30 %); ``max_pdd`` seconds (0: no
    limit). The window is ``window_seconds`` long, in buckets of ``bucket_seconds``.
    """

    window_seconds: int = 3600
    bucket_seconds: int = 60
    min_attempts: int = 20
    min_asr: float = 0.2
    min_ner: float = 0.5
    max_pdd: float = 0.0
    cooldown_seconds: int = 900

    def __post_init__(self) -> None:
        if not 1 <= self.bucket_seconds <= self.window_seconds <= 7 * 86400:
            raise ValueError("need 1 <= bucket_seconds <= window_seconds <= 604800")
        if self.window_seconds // self.bucket_seconds > 10_080:
            raise ValueError("at most 10080 buckets per window")
        if self.min_attempts < 1:
            raise ValueError("min_attempts must be at least 1")
        for name in ("min_asr", "min_ner"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction from 0 to 1, not {value}")
        if self.max_pdd < 0 or self.cooldown_seconds < 0:
            raise ValueError("max_pdd and cooldown_seconds must not be negative")


@dataclass(frozen=True, slots=True)
class QualityStats:
    """A key's figures over the window (None where there is nothing to average)."""

    attempts: int
    answered: int
    asr: float | None
    acd: float | None
    pdd: float | None
    ner: float | None
    demoted_for: float = 0.0
    """Seconds of cool-down left (0: not demoted)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (ratios in percent, times in seconds, 1 decimal)."""

        def r(value: float | None, scale: float = 1.0) -> float | None:
            return None if value is None else round(value * scale, 1)

        return {
            "attempts": self.attempts,
            "answered": self.answered,
            "asr_percent": r(self.asr, 100),
            "acd_seconds": r(self.acd),
            "pdd_seconds": r(self.pdd),
            "ner_percent": r(self.ner, 100),
            "demoted_seconds_left": round(self.demoted_for),
        }


# attempts, answered, network_ok, duration sum, pdd sum, pdd count
_Bucket = list[float]


class QualityTracker:
    """Sliding-window statistics per key, with demotion (see the module docstring)."""

    def __init__(self, thresholds: QualityThresholds | None = None) -> None:
        self.thresholds = thresholds or QualityThresholds()
        self._buckets: OrderedDict[str, dict[int, _Bucket]] = OrderedDict()
        self._demoted_until: dict[str, float] = {}
        self._judged_from: dict[str, int] = {}
        self._counted: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._band_cache: dict[str, tuple[int, int]] = {}
        self.demotions = 0
        """Demotions since start (a metric)."""
        self.dirty = False
        """True when something changed since the last `snapshot`."""

    def _bucket_of(self, now: float) -> int:
        return int(now // self.thresholds.bucket_seconds)

    def _buckets_per_window(self) -> int:
        t = self.thresholds
        return max(1, t.window_seconds // t.bucket_seconds)

    def first_report(self, transaction_id: int, destination: str) -> bool:
        """True the first time an attempt (transaction, destination) is reported: the
        originating and the terminating leg of one call count once."""
        key = (transaction_id, destination)
        if transaction_id and key in self._counted:
            return False
        if transaction_id:
            self._counted[key] = None
            if len(self._counted) > MAX_COUNTED_LEGS:
                self._counted.popitem(last=False)
        return True

    def record(self, keys: Iterable[str], outcome: CallOutcome, now: float) -> list[str]:
        """Count ``outcome`` for each key; return the keys this call demoted."""
        index = self._bucket_of(now)
        oldest = index - self._buckets_per_window()
        tripped: list[str] = []
        for key in keys:
            series = self._buckets.get(key)
            if series is None:
                series = self._buckets[key] = {}
                if len(self._buckets) > MAX_KEYS:
                    forgotten, _ = self._buckets.popitem(last=False)
                    self._forget(forgotten)
            else:
                self._buckets.move_to_end(key)
            for old in [i for i in series if i <= oldest]:
                del series[old]
            bucket = series.setdefault(index, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
            bucket[0] += 1
            if outcome.answered:
                bucket[1] += 1
                bucket[3] += outcome.duration
            if outcome.network_ok:
                bucket[2] += 1
            if outcome.post_dial_delay is not None:
                bucket[4] += outcome.post_dial_delay
                bucket[5] += 1
            self._band_cache.pop(key, None)
            if self._judge(key, now):
                tripped.append(key)
        self.dirty = True
        return tripped

    def _forget(self, key: str) -> None:
        self._demoted_until.pop(key, None)
        self._judged_from.pop(key, None)
        self._band_cache.pop(key, None)

    def _judge(self, key: str, now: float) -> bool:
        if self.demoted_for(key, now) > 0:
            return False
        t = self.thresholds
        stats = self._stats(key, now, since=self._judged_from.get(key))
        if stats.attempts < t.min_attempts:
            return False
        below = (
            (stats.asr is not None and stats.asr < t.min_asr)
            or (stats.ner is not None and stats.ner < t.min_ner)
            or (t.max_pdd > 0 and stats.pdd is not None and stats.pdd > t.max_pdd)
        )
        if not below:
            return False
        self._demoted_until[key] = now + t.cooldown_seconds
        self._judged_from[key] = self._bucket_of(now) + 1
        self.demotions += 1
        return True

    def demoted_for(self, key: str, now: float) -> float:
        """Seconds of cool-down ``key`` has left (0: not demoted)."""
        until = self._demoted_until.get(key)
        if until is None:
            return 0.0
        if now >= until:
            del self._demoted_until[key]
            return 0.0
        return until - now

    def is_demoted(self, key: str, now: float) -> bool:
        """True while ``key`` is in its cool-down."""
        until = self._demoted_until.get(key)
        return until is not None and now < until

    @property
    def any_demoted(self) -> bool:
        """True when some key may be demoted (a cheap pre-check for routing)."""
        return bool(self._demoted_until)

    def band(self, key: str, now: float) -> int:
        """Quality rank for ties, 0 (best) to 20: ASR in 5 % steps, best first.

        A key without ``min_attempts`` in the window ranks 0, with the best: new routes
        keep getting calls until they have a record. Cached per bucket.
        """
        index = self._bucket_of(now)
        cached = self._band_cache.get(key)
        if cached is not None and cached[0] == index:
            return cached[1]
        stats = self._stats(key, now)
        if stats.attempts < self.thresholds.min_attempts or stats.asr is None:
            band = 0
        else:
            band = 20 - math.floor(stats.asr * 20 + 1e-9)
        self._band_cache[key] = (index, band)
        return band

    def stats(self, key: str, now: float) -> QualityStats:
        """``key``'s figures over the window."""
        return self._stats(key, now)

    def _stats(self, key: str, now: float, since: int | None = None) -> QualityStats:
        series = self._buckets.get(key, {})
        index = self._bucket_of(now)
        oldest = index - self._buckets_per_window()
        if since is not None:
            oldest = max(oldest, since - 1)
        total = [0.0] * 6
        for i, bucket in series.items():
            if oldest < i <= index:
                for n in range(6):
                    total[n] += bucket[n]
        attempts, answered, network_ok, duration, pdd_sum, pdd_count = total
        return QualityStats(
            attempts=int(attempts),
            answered=int(answered),
            asr=answered / attempts if attempts else None,
            acd=duration / answered if answered else None,
            pdd=pdd_sum / pdd_count if pdd_count else None,
            ner=network_ok / attempts if attempts else None,
            demoted_for=self.demoted_for(key, now),
        )

    def keys(self) -> list[str]:
        """Every key with statistics."""
        return list(self._buckets)

    def snapshot(self, now: float, wall_now: float) -> dict[str, Any]:
        """What to persist: the buckets in the window and the demotions, with times
        made absolute (``wall_now`` is the wall clock matching ``now``)."""
        self.dirty = False
        shift = wall_now - now
        oldest = self._bucket_of(now) - self._buckets_per_window()
        return {
            "bucket_seconds": self.thresholds.bucket_seconds,
            "keys": {
                key: {
                    "buckets": {
                        str(i + int(shift // self.thresholds.bucket_seconds)): bucket
                        for i, bucket in series.items()
                        if i > oldest
                    },
                    "demoted_until": (
                        self._demoted_until[key] + shift if key in self._demoted_until else None
                    ),
                }
                for key, series in self._buckets.items()
            },
        }

    def restore(self, data: Mapping[str, Any], now: float, wall_now: float) -> int:
        """Merge a `snapshot` (from an earlier run); return how many keys it had.

        Snapshots with another bucket size, and malformed entries, are skipped.
        """
        if not isinstance(data, Mapping) or data.get("bucket_seconds") != (
            self.thresholds.bucket_seconds
        ):
            return 0
        keys = data.get("keys")
        if not isinstance(keys, Mapping):
            return 0
        shift = int((wall_now - now) // self.thresholds.bucket_seconds)
        # Both clocks' rounding may put the newest bucket one ahead of now's: clamp.
        newest = self._bucket_of(now)
        restored = 0
        for key, entry in keys.items():
            if not isinstance(key, str) or not isinstance(entry, Mapping):
                continue
            buckets = entry.get("buckets")
            if not isinstance(buckets, Mapping):
                continue
            series = self._buckets.setdefault(key, {})
            for index_text, values in buckets.items():
                if (
                    not isinstance(values, list)
                    or len(values) != 6
                    or not all(isinstance(v, int | float) and v >= 0 for v in values)
                ):
                    continue
                try:
                    index = min(int(index_text) - shift, newest)
                except ValueError:
                    continue
                bucket = series.setdefault(index, [0.0] * 6)
                for n in range(6):
                    bucket[n] += float(values[n])
            until = entry.get("demoted_until")
            if isinstance(until, int | float) and until - (wall_now - now) > now:
                self._demoted_until[key] = until - (wall_now - now)
                self._judged_from[key] = self._bucket_of(now) + 1
            restored += 1
        self._band_cache.clear()
        return restored


def destination_key(address: str) -> str:
    """The statistics key of a destination (signal address)."""
    return "destination:" + address


def network_key(network_id: str) -> str:
    """The statistics key of a network id (trunk group)."""
    return "network:" + network_id


def carrier_key(carrier: str) -> str:
    """The statistics key of a carrier."""
    return "carrier:" + carrier
