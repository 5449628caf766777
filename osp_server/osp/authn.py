"""Which device is talking: the application half of mutual TLS.

TLS proves the certificate chains to our CA and is within its dates.  Here the
presented certificate must also be one we issued and recorded (exact SHA-256
match), a device certificate, unrevoked, within its validity, of an active device.
A certificate we did not issue never passes, even with a valid signature, which
keeps MD5-signed legacy certificates safe for authentication.  Answers are cached so
the hot path does not hit storage on every message.  A revocation or device change
made anywhere empties the cache of every node (:mod:`osp_server.change_watch`: at once
here, within ``[osp] access_poll_seconds`` elsewhere); the cache lifetime only bounds
how long a node cut off from those signals goes on trusting its answers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from osp_server.storage import certificates as cert_store
from osp_server.storage.db import Database
from osp_server.tls.identity import PeerCertificate

CACHE_SECONDS = 30.0
CACHE_ENTRIES = 50_000


@dataclass(frozen=True)
class DeviceIdentity:
    """An authenticated device, as the OSP service needs it."""

    device_pk: int
    customer_id: str
    device_id: str
    serial: str
    route_table: str | None
    token_format: str | None


@dataclass(frozen=True)
class _Record:
    identity: DeviceIdentity | None
    reason: str
    not_before: datetime | None
    not_after: datetime | None


def _judge(row: cert_store.PresentedCertificate | None) -> _Record:
    """Whether a presented certificate authenticates a device, and why not."""
    if row is None:
        return _Record(None, "certificate not issued by this server", None, None)
    if row.kind != "device":
        return _Record(None, "not a device certificate", None, None)
    if row.state != "valid":
        return _Record(None, f"certificate {row.serial} is revoked", None, None)
    if row.device_state != "active":
        return _Record(None, f"device {row.device_id} is disabled", None, None)
    identity = DeviceIdentity(
        device_pk=row.device_pk,
        customer_id=row.customer_id,
        device_id=row.device_id,
        serial=row.serial,
        route_table=row.route_table,
        token_format=row.token_format,
    )
    return _Record(identity, "ok", row.not_before, row.not_after)


class DeviceAuthenticator:
    """Maps a presented certificate to a :class:`DeviceIdentity`, or a refusal reason."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._db = db
        self._clock = clock
        self._monotonic = monotonic
        self._ttl = cache_seconds
        self._cache: OrderedDict[str, tuple[float, _Record]] = OrderedDict()
        # Moves on every invalidate(): an answer read before it is not cached after it
        # (a revocation would otherwise come back for a cache lifetime).
        self._generation = 0

    async def identify(self, peer: PeerCertificate | None) -> tuple[DeviceIdentity | None, str]:
        """The device behind ``peer``, or (None, why it is refused)."""
        if peer is None:
            return None, "no client certificate"
        now_m = self._monotonic()
        cached = self._cache.get(peer.sha256)
        if cached is not None and now_m - cached[0] < self._ttl:
            record = cached[1]
        else:
            generation = self._generation
            record = _judge(
                await self._db.transact(
                    "osp_peer_certificate", cert_store.presented_certificate_txn, peer.sha256
                )
            )
            if generation == self._generation:
                self._cache[peer.sha256] = (now_m, record)
                self._cache.move_to_end(peer.sha256)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        if record.identity is None:
            return None, record.reason
        now = self._clock()
        if record.not_before is not None and now < record.not_before:
            return None, "certificate not yet valid"
        if record.not_after is not None and now > record.not_after:
            return None, "certificate expired"
        return record.identity, "ok"

    def invalidate(self) -> None:
        """Forget every cached answer (after a revocation or device change anywhere), and
        every answer being read now."""
        self._generation += 1
        self._cache.clear()
