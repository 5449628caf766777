"""``/osp``: OSP XML over HTTPS (twisted.web binding only).

Order: identify the client certificate → refuse (HTTP 403) unless it is a device
certificate we issued and still honour → cap and decode the body → one service call
→ the exact answer: ``200``, ``Content-Type: text/plain``, ``Content-Length``.
Reauthorization and other unimplemented messages get HTTP 501 (stock 4.33.1 clients
crash on any ReauthorizationResponse); overload and storage trouble get HTTP 503,
which makes devices fail over to their next service point.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.metrics import Metrics
from osp_server.osp.authn import DeviceAuthenticator, DeviceIdentity
from osp_server.osp.codec import (
    MAX_BODY_BYTES,
    OSPDecodeError,
    OSPEncodeError,
    decode_request,
    encode_authorization_response,
    encode_capabilities_confirmation,
    encode_reauthorization_response,
    encode_usage_confirmations,
)
from osp_server.osp.messages import (
    AuthorizationRequest,
    CapabilitiesIndication,
    ReauthorizationRequest,
    UnsupportedMessage,
    UsageIndicationMessage,
)
from osp_server.osp.service import IdentityMismatch, OSPService
from osp_server.osp.tokens import TokenError
from osp_server.storage.db import StorageError
from osp_server.tls.identity import PeerCertificate, peer_certificate
from osp_server.web.responses import Response, error_response, render_async
from osp_server.web.site import note_device

log = Logger()

MAX_IN_FLIGHT = 512
CONTENT_TYPE = b"text/plain"


def _ok(body: bytes) -> Response:
    return Response(200, body, CONTENT_TYPE)


def _no_abandon(service: OSPService, value: object) -> None:
    """Nothing to release when the answer cannot be encoded."""


@dataclass(frozen=True)
class MessageRoute:
    """How one OSP message type is answered: the service call, the encoder of its
    answer, the metrics label, the OSP status for the metrics, and what to release when
    the answer cannot be encoded. The one place a new message type is added (with its
    dataclass and decoder in messages.py / codec.py)."""

    label: str
    answer: Callable[[OSPService, DeviceIdentity, Any], Awaitable[Any]]
    encode: Callable[[Any], bytes]
    status: Callable[[Any], int] = lambda value: 200
    abandon: Callable[[OSPService, Any], None] = _no_abandon


MESSAGE_ROUTES: Final[Mapping[type, MessageRoute]] = {
    AuthorizationRequest: MessageRoute(
        label="authorization",
        answer=lambda service, identity, m: service.authorize(identity, m),
        encode=lambda result: encode_authorization_response(result.response),
        status=lambda result: result.status_code,
        abandon=lambda service, result: service.abandon(result),
    ),
    UsageIndicationMessage: MessageRoute(
        label="usage",
        answer=lambda service, identity, m: service.usage(identity, m),
        encode=lambda answer: encode_usage_confirmations(answer.message_id, answer.confirmations),
    ),
    CapabilitiesIndication: MessageRoute(
        label="capabilities",
        answer=lambda service, identity, m: service.capabilities(identity, m),
        encode=encode_capabilities_confirmation,
    ),
}
"""Message type → how it is answered. A type not here is answered HTTP 501."""

REAUTHORIZATION_ROUTE: Final = MessageRoute(
    label="reauthorization",
    answer=lambda service, identity, m: service.reauthorize(identity, m),
    encode=encode_reauthorization_response,
)
"""Only for patched clients: stock 4.33.1 clients crash on any ReauthorizationResponse."""


class OSPResource(Resource):
    """POST /osp for enrolled devices."""

    isLeaf = True

    def __init__(
        self,
        service: OSPService,
        authenticator: DeviceAuthenticator,
        *,
        metrics: Metrics | None = None,
        identify: Callable[[Request], PeerCertificate | None] = peer_certificate,
        max_in_flight: int = MAX_IN_FLIGHT,
        answer_reauthorization: bool = False,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__()
        # False until start-up work the answers depend on (the first route load) is
        # done: until then, HTTP 503 so that devices use their next service point.
        self._ready = ready
        self._service = service
        self._authenticator = authenticator
        self._metrics = metrics
        self._identify = identify
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        if metrics is not None:
            metrics.in_flight.set_function(lambda: self._in_flight)
        self._routes: dict[type, MessageRoute] = dict(MESSAGE_ROUTES)
        if answer_reauthorization:
            # Off by default: stock 4.33.1 clients crash on any ReauthorizationResponse.
            self._routes[ReauthorizationRequest] = REAUTHORIZATION_ROUTE

    def _observe(self, message: str, code: int, started: float) -> None:
        if self._metrics is not None:
            self._metrics.osp_messages.labels(message, str(code)).inc()
            self._metrics.osp_latency.labels(message).observe(time.perf_counter() - started)

    def render_POST(self, request: Request) -> int:
        """Answer one OSP message."""
        started = time.perf_counter()
        assert request.content is not None
        body = request.content.read(MAX_BODY_BYTES + 1)
        peer = self._identify(request)
        source = str(getattr(request.getClientAddress(), "host", "unknown"))

        async def handle() -> Response:
            if not self._ready():
                self._observe("starting", 503, started)
                return error_response(503, "starting")
            if self._in_flight >= self._max_in_flight:
                self._observe("overload", 503, started)
                return error_response(503, "overloaded")
            self._in_flight += 1
            try:
                return await self._handle(request, body, peer, source, started)
            except StorageError as e:  # timeouts included (Database.transact)
                log.error("OSP request from {source} failed: {error}", source=source, error=str(e))
                self._observe("storage", 503, started)
                return error_response(503, "temporarily unavailable")
            finally:
                self._in_flight -= 1

        return render_async(request, handle)

    async def _handle(
        self,
        request: Request,
        body: bytes,
        peer: PeerCertificate | None,
        source: str,
        started: float,
    ) -> Response:
        identity, reason = await self._authenticator.identify(peer)
        if identity is None:
            log.warn("OSP request from {source} refused: {reason}", source=source, reason=reason)
            self._observe("refused", 403, started)
            return error_response(403, "client certificate refused")
        note_device(request, identity.device_id)

        def internal_error(stage: str) -> Response:
            # A bug, never the device's fault: call only from an except block, so that
            # log.failure records the traceback (in the log, never in the answer).
            log.failure(
                "OSP message from device {device} failed while {stage}",
                device=identity.device_id,
                stage=stage,
            )
            self._observe("error", 500, started)
            return error_response(500, "internal error")

        try:
            message = decode_request(body)
        except OSPDecodeError as e:
            log.info(
                "OSP message from device {device} refused: {error}",
                device=identity.device_id,
                error=str(e),
            )
            self._observe("malformed", 400, started)
            return error_response(400, "malformed OSP message")
        except Exception:
            # Only OSPDecodeError means bad input; anything else is a decoder bug, and
            # answering it 400 would blame every device for it.
            return internal_error("decoding")
        route = self._routes.get(type(message))
        try:
            if route is not None:
                value = await route.answer(self._service, identity, message)
                try:
                    body = route.encode(value)
                except OSPEncodeError:
                    route.abandon(self._service, value)
                    raise
                self._observe(route.label, route.status(value), started)
                return _ok(body)
        except (TokenError, OSPEncodeError) as e:
            # A value the device sent cannot be echoed back or put in a token.
            log.info(
                "cannot answer device {device} with its own values: {error}",
                device=identity.device_id,
                error=str(e),
            )
            self._observe("malformed", 400, started)
            return error_response(400, "malformed OSP message")
        except IdentityMismatch as e:
            log.warn(
                "OSP message from device {device} refused: {error}",
                device=identity.device_id,
                error=str(e),
            )
            self._observe("identity", 403, started)
            return error_response(403, "message identity does not match the certificate")
        except (StorageError, CancelledError):
            # StorageError: render_POST answers 503 (devices fail over).  CancelledError:
            # the client went away; render_async drops the request without an answer.
            raise
        except Exception:
            return internal_error("answering")
        kind = (
            message.message_type
            if isinstance(message, UnsupportedMessage)
            else type(message).__name__
        )
        self._observe("unsupported", 501, started)
        return Response(
            501,
            b"not implemented: " + kind.encode("ascii", "replace") + b"\n",
            CONTENT_TYPE,
            b"Not Implemented",
        )
