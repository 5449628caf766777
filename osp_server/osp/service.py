"""The OSP use cases: authorization (routes + tokens), usage, capabilities.

Input is a decoded message and the authenticated device; output is the response
message (a domain value: the resource encodes it).  Routing comes from the configured
:class:`IRoutingPolicy`; tokens from the :class:`TokenFactory`; storage through the
database pool.  A message that claims to
come from another device than its certificate is refused (SECURITY.md P14).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from osp_server.cdr.legs import LegReport
from osp_server.config import OSPConfig
from osp_server.interfaces import IRoutingPolicy, IUsageObserver
from osp_server.osp.authn import DeviceIdentity
from osp_server.osp.messages import (
    AuthorizationRequest,
    AuthorizationResponse,
    CapabilitiesConfirmation,
    CapabilitiesIndication,
    Destination,
    ReauthorizationRequest,
    ReauthorizationResponse,
    Status,
    TerminationCause,
    UsageConfirmation,
    UsageConfirmationMessage,
    UsageIndicationMessage,
)
from osp_server.osp.tokens import TokenClaims, TokenError, TokenFactory, TokenFormat
from osp_server.osp.usage_reports import leg_report
from osp_server.routing.model import RoutingDecision, RoutingRequest
from osp_server.storage import calls
from osp_server.storage.db import Database, StorageError
from osp_server.storage.routing_data import rating_rows

log = Logger()

OK = Status(code=200, description="OK")
UNDEFINED_CALL_ID_B64 = base64.b64encode(b"UNDEFINED").decode("ascii")
OSP_VERSION = "2.1.1"
MAX_TRANSACTION_ID_ATTEMPTS = 5


class IdentityMismatch(Exception):
    """The message names a device or customer other than its client certificate's."""


def _single_word(text: str) -> str:
    # Leaf values must not contain whitespace (OSP.md §2.2), descriptions included.
    return "-".join(text.split()) or "-"


def _call_id(request: AuthorizationRequest, index: int) -> tuple[bytes | None, str]:
    """(Call-ID, its base64 text) to echo in the ``index``-th Destination: the
    request's ``index``-th CallId, its first when it sent fewer, ``UNDEFINED`` when
    none (FreeSWITCH)."""
    if not request.call_ids:
        return None, UNDEFINED_CALL_ID_B64
    i = index if index < len(request.call_ids) else 0
    return request.call_ids[i], request.call_ids_b64[i]


def check_claimed_identity(
    identity: DeviceIdentity, customer_id: str | None, device_id: str | None
) -> None:
    """Refuse a message whose CustomerId/DeviceId contradict the certificate."""
    if customer_id is not None and customer_id != identity.customer_id:
        raise IdentityMismatch(
            f"CustomerId {customer_id!r} is not the certificate's {identity.customer_id}"
        )
    if device_id is not None and device_id != identity.device_id:
        raise IdentityMismatch(
            f"DeviceId {device_id!r} is not the certificate's {identity.device_id}"
        )


@dataclass(frozen=True)
class AuthorizationResult:
    """The answer to encode, plus what the metrics and logs want."""

    response: AuthorizationResponse
    status_code: int
    transaction_id: int | None
    destinations: int


class OSPService:
    """Answers decoded OSP requests for an authenticated device."""

    def __init__(
        self,
        *,
        db: Database,
        policy: IRoutingPolicy,
        tokens: TokenFactory,
        config: OSPConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._policy = policy
        self._tokens = tokens
        self._config = config
        self._clock = clock

    def _token_format(self, identity: DeviceIdentity) -> TokenFormat:
        fmt = identity.token_format or self._config.token_format
        return cast(TokenFormat, fmt)

    async def authorize(
        self, identity: DeviceIdentity, request: AuthorizationRequest
    ) -> AuthorizationResult:
        """Route the call, make a token per destination, record the transaction.

        Routing may reserve call-limit slots for the transaction; every path that does
        not end in a recorded transaction releases them at once (``call_ended``):
        refusals, values that cannot go into a token or the answer, storage failures,
        cancellation, and a TransactionId that was already taken (retried with a new
        one, at most :data:`MAX_TRANSACTION_ID_ATTEMPTS` times).
        """
        check_claimed_identity(identity, request.customer_id, request.device_id)
        now = self._clock().replace(microsecond=0)
        for _attempt in range(MAX_TRANSACTION_ID_ATTEMPTS):
            transaction_id = secrets.randbits(63) or 1
            result: AuthorizationResult | None = None
            try:
                result = await self._authorize_as(identity, request, transaction_id, now)
            finally:
                if result is None or result.transaction_id is None:
                    self._policy.call_ended(transaction_id)
            if result is not None:
                return result
        # 63 random bits: only a broken random source or storage gets here.
        raise StorageError(f"no free TransactionId after {MAX_TRANSACTION_ID_ATTEMPTS} attempts")

    async def _authorize_as(
        self,
        identity: DeviceIdentity,
        request: AuthorizationRequest,
        transaction_id: int,
        now: datetime,
    ) -> AuthorizationResult | None:
        """Authorize under ``transaction_id``; ``None`` when that id is already taken.

        The result carries a TransactionId only when the transaction was recorded.
        """
        routing_request = RoutingRequest(
            customer_id=identity.customer_id,
            device_id=identity.device_id,
            calling=request.calling,
            called=request.called,
            max_destinations=request.max_destinations,
            source_network_id=request.source_alternate("network"),
            route_table=identity.route_table,
            transaction_id=transaction_id,
            destination_infos=request.destination_infos,
            service_type=request.service_type,
        )
        routed_or_deferred = self._policy.route(routing_request)
        decision: RoutingDecision = (
            await routed_or_deferred
            if isinstance(routed_or_deferred, Deferred)
            else routed_or_deferred
        )
        if not decision.ok or not decision.destinations:
            return self._refusal(request, decision, now)
        if decision.service_type is not None:
            return self._query_answer(request, decision, now)
        valid_after, valid_until = self._validity(now)
        amount = self._config.call_time_limit_seconds
        token_format = self._token_format(identity)
        destinations: list[Destination] = []
        for index, routed in enumerate(decision.destinations[: request.max_destinations]):
            call_id, call_id_b64 = _call_id(request, index)
            calling = routed.calling or request.calling
            called = routed.called or request.called
            try:
                token = self._tokens.build(
                    TokenClaims(
                        calling=calling,
                        called=called,
                        call_id=call_id,
                        valid_after=valid_after,
                        valid_until=valid_until,
                        transaction_id=transaction_id,
                        amount=amount,
                        increment=1,
                        destination_network_id=routed.network_id,
                    ),
                    token_format=token_format,
                )
            except TokenError as e:
                # A value the device sent cannot go into a token (e.g. a 5000-digit
                # number): that is a bad request, not a server failure.
                log.info("cannot build a token: {error}", error=str(e))
                return self._status_only(request, Status(code=400, description="Bad-Request"), now)
            alternates = (("network", routed.network_id),) if routed.network_id else ()
            destinations.append(
                Destination(
                    call_id_b64=call_id_b64,
                    signal_address=routed.signal_address,
                    token=token,
                    valid_after=valid_after,
                    valid_until=valid_until,
                    calling=calling,
                    calling_type=request.calling_type,
                    called=called,
                    called_type=request.called_type,
                    usage_amount=amount,
                    usage_increment=1,
                    protocol=routed.protocol,
                    osp_version=OSP_VERSION,
                    alternates=alternates,
                    destination_infos=routed.destination_infos,
                )
            )
        response = AuthorizationResponse(
            message_id=request.message_id,
            component_id=request.component_id,
            timestamp=now,
            status=OK,
            transaction_id=transaction_id,
            destinations=tuple(destinations),
        )
        if not await self._record(identity, request, decision, transaction_id, now):
            return None
        return AuthorizationResult(response, 200, transaction_id, len(destinations))

    def _validity(self, now: datetime) -> tuple[datetime, datetime]:
        """ValidAfter and ValidUntil of the tokens and Destinations answered ``now``."""
        return (
            now - timedelta(seconds=self._config.token_backdate_seconds),
            now + timedelta(seconds=self._config.token_validity_seconds),
        )

    def _query_answer(
        self, request: AuthorizationRequest, decision: RoutingDecision, now: datetime
    ) -> AuthorizationResult:
        """A query service's answer (``portedNumberQuery``): one Destination with the
        NP data and no token; no call is authorized, so nothing is recorded."""
        routed = decision.destinations[0]
        valid_after, valid_until = self._validity(now)
        destination = Destination(
            call_id_b64=_call_id(request, 0)[1],
            signal_address=routed.signal_address,
            token=None,
            valid_after=valid_after,
            valid_until=valid_until,
            calling=request.calling,
            calling_type=request.calling_type,
            called=routed.called or request.called,
            called_type=request.called_type,
            usage_amount=self._config.call_time_limit_seconds,
            usage_increment=1,
            protocol=routed.protocol,
            osp_version=OSP_VERSION,
            destination_infos=routed.destination_infos,
            service_type=decision.service_type,
        )
        response = AuthorizationResponse(
            message_id=request.message_id,
            component_id=request.component_id,
            timestamp=now,
            status=OK,
            destinations=(destination,),
        )
        return AuthorizationResult(response, 200, None, 1)

    def abandon(self, result: AuthorizationResult) -> None:
        """The recorded authorization could not be answered (a value the device sent
        cannot be echoed back): release what routing holds for it now."""
        if result.transaction_id is not None:
            self._policy.call_ended(result.transaction_id)

    async def _record(
        self,
        identity: DeviceIdentity,
        request: AuthorizationRequest,
        decision: RoutingDecision,
        transaction_id: int,
        now: datetime,
    ) -> bool:
        """Record the authorization; False when ``transaction_id`` is already taken."""
        expires = now + timedelta(seconds=self._config.transaction_ttl_seconds)
        summary = [
            {
                "address": d.signal_address,
                "protocol": d.protocol,
                "network_id": d.network_id,
                "carrier": None if d.rating is None else d.rating.carrier,
            }
            for d in decision.destinations
        ]
        stored: bool = await self._db.group_commit(
            "osp_insert_transaction",
            calls.insert_transaction_txn,
            transaction_id=transaction_id,
            device_pk=identity.device_pk,
            call_id=request.call_ids[0] if request.call_ids else None,
            calling=request.calling,
            called=request.called,
            status_code=decision.status_code,
            destinations=summary,
            now=now,
            expires_at=expires,
            ratings=rating_rows(transaction_id, decision.destinations, now),
        )
        return stored

    def _refusal(
        self, request: AuthorizationRequest, decision: RoutingDecision, now: datetime
    ) -> AuthorizationResult:
        cause = None
        if decision.termination_cause is not None:
            code, description = decision.termination_cause
            cause = TerminationCause(type="sip", code=code, description=_single_word(description))
        status = Status(code=decision.status_code, description=_single_word(decision.description))
        return self._status_only(request, status, now, cause)

    def _status_only(
        self,
        request: AuthorizationRequest,
        status: Status,
        now: datetime,
        cause: TerminationCause | None = None,
    ) -> AuthorizationResult:
        response = AuthorizationResponse(
            message_id=request.message_id,
            component_id=request.component_id,
            timestamp=now,
            status=status,
            termination_cause=cause,
        )
        return AuthorizationResult(response, status.code, None, 0)

    async def reauthorize(
        self, identity: DeviceIdentity, request: ReauthorizationRequest
    ) -> ReauthorizationResponse:
        """Extend a call's authorization: for patched clients only (the caller checks the
        switch; stock 4.33.1 clients crash on any ReauthorizationResponse)."""
        check_claimed_identity(identity, request.customer_id, request.device_id)
        now = self._clock().replace(microsecond=0)
        stored = None
        if request.transaction_id:
            stored = await self._db.transact(
                "osp_get_transaction", calls.get_transaction_txn, request.transaction_id
            )
        if stored is None or stored.device_pk != identity.device_pk or not stored.destinations:
            response = ReauthorizationResponse(
                message_id=request.message_id,
                component_id=request.component_id,
                timestamp=now,
                status=Status(code=404, description="Transaction-not-found"),
            )
            return response
        valid_after, valid_until = self._validity(now)
        calling = request.calling or stored.calling
        called = request.called or stored.called
        amount = self._config.call_time_limit_seconds
        token = self._tokens.build(
            TokenClaims(
                calling=calling,
                called=called,
                call_id=request.call_id,
                valid_after=valid_after,
                valid_until=valid_until,
                transaction_id=stored.transaction_id,
                amount=amount,
                increment=1,
            ),
            token_format=self._token_format(identity),
        )
        destination = Destination(
            call_id_b64=request.call_id_b64 or UNDEFINED_CALL_ID_B64,
            signal_address=str(stored.destinations[0]["address"]),
            token=token,
            valid_after=valid_after,
            valid_until=valid_until,
            calling=calling,
            calling_type=request.calling_type or "e164",
            called=called,
            called_type=request.called_type or "e164",
            usage_amount=amount,
            usage_increment=1,
        )
        response = ReauthorizationResponse(
            message_id=request.message_id,
            component_id=request.component_id,
            timestamp=now,
            status=OK,
            transaction_id=stored.transaction_id,
            destination=destination,
        )
        return response

    async def usage(
        self, identity: DeviceIdentity, message: UsageIndicationMessage
    ) -> UsageConfirmationMessage:
        """Store every component into its call leg's record, then confirm each, in order.

        A leg reported at answer (``start``) and again at BYE (``stop``) keeps one record
        that the later report completes; an exact repeat is confirmed and stores nothing.
        """
        for component in message.components:
            check_claimed_identity(identity, component.customer_id, component.device_id)
        now = self._clock().replace(microsecond=0)
        reports = [leg_report(component) for component in message.components]
        stored: calls.StoredUsage = await self._db.group_commit(
            "osp_store_usage",
            calls.store_usage_txn,
            device_pk=identity.device_pk,
            reports=reports,
            now=now,
        )
        for component in message.components:
            if component.problems:
                # Stored all the same: devices never resend a report we refuse.
                log.warn(
                    "usage from device {device}, transaction {transaction}, component "
                    "{component}: {problems}; stored without the value(s), kept verbatim",
                    device=identity.device_id,
                    transaction=component.transaction_id,
                    component=component.component_id[:64],
                    problems="; ".join(component.problems),
                )
        if stored.repeated:
            log.info(
                "usage from device {device}: {repeated} repeated report(s) confirmed again",
                device=identity.device_id,
                repeated=stored.repeated,
            )
        if IUsageObserver.providedBy(self._policy):
            self._observe(cast(IUsageObserver, self._policy), message, reports, stored)
        for component, report in zip(message.components, reports, strict=True):
            # Only the device that was authorized may end its call (a terminating device
            # also sees the TransactionId, in the token), and only when the leg ends:
            # a `start` report means the call was answered and goes on.
            if (
                component.role == "source"
                and report.state == "stop"
                and component.transaction_id in stored.own_transactions
            ):
                self._policy.call_ended(component.transaction_id)
        return UsageConfirmationMessage(
            message_id=message.message_id,
            confirmations=tuple(
                UsageConfirmation(component_id=c.component_id, timestamp=now, status=OK)
                for c in message.components
            ),
        )

    @staticmethod
    def _observe(
        observer: IUsageObserver,
        message: UsageIndicationMessage,
        reports: list[LegReport],
        stored: calls.StoredUsage,
    ) -> None:
        """Hand the routing policy the legs of calls we authorized, with the network
        id and carrier we recorded for the destination they tried: the originating
        device's own legs and any device's terminating legs. A leg to a destination
        the call was not given is ignored, so invented reports demote nothing."""
        for component, report in zip(message.components, reports, strict=True):
            tid = component.transaction_id
            if tid is None or not (
                component.role == "destination"
                or (component.role == "source" and tid in stored.own_transactions)
            ):
                continue
            routed = stored.routed.get(tid, {}).get(report.key.destination)
            if routed is None:
                continue
            try:
                observer.leg_reported(report, *routed)
            except Exception:
                # The reports are stored: a policy's statistics must not turn their
                # confirmation into an error (devices never resend).
                log.failure("routing policy failed to take a usage report")

    async def capabilities(
        self, identity: DeviceIdentity, indication: CapabilitiesIndication
    ) -> CapabilitiesConfirmation:
        """Store the device's availability and confirm."""
        check_claimed_identity(identity, indication.customer_id, indication.device_id)
        now = self._clock().replace(microsecond=0)
        await self._db.group_commit(
            "osp_store_capabilities",
            calls.store_capabilities_txn,
            device_pk=identity.device_pk,
            almost_out_of_resources=indication.almost_out_of_resources,
            details={
                "device_info": indication.device_info,
                "source_alternates": [list(p) for p in indication.source_alternates],
                "osp_version": indication.osp_version,
            },
            now=now,
        )
        return CapabilitiesConfirmation(
            message_id=indication.message_id,
            component_id=indication.component_id,
            timestamp=now,
            status=OK,
        )
