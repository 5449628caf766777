"""``/tep``: the TEP enrollment endpoint (twisted.web binding only).

Reads the raw body (TEP bodies are not form-encoded), parses it strictly, calls the
service and writes the exact answer: HTTP 200, ``Content-Type: text/html``,
``Content-Length``, body ``status=N…\\n``.  Enrollment outcomes always travel as a
TEP status inside a 200; HTTP errors are only for broken HTTP.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.enrollment.service import EnrollmentService
from osp_server.enrollment.wire import (
    CONTENT_TYPE,
    MAX_BODY_BYTES,
    CACertRequest,
    TepFormatError,
    TepOperation,
    TepStatus,
    parse_body,
    render_certificate,
    render_status,
)
from osp_server.metrics import Metrics
from osp_server.tls.identity import peer_certificate
from osp_server.web.responses import Response, render_async
from osp_server.web.site import note_device

log = Logger()


# The media types the OSP Toolkit's enroll sends (TEP.md §3); anything else is not a
# TEP client and gets status 4 with a log line that says why.
EXPECTED_MEDIA_TYPE = {
    TepOperation.GETCACERT: b"text/plain",
    TepOperation.REQUEST: b"text/html",
    TepOperation.RETRIEVE: b"text/html",
}


def _media_type(request: Request) -> bytes:
    raw = request.getHeader(b"content-type") or b""
    return raw.split(b";", 1)[0].strip().lower()


def _answer(body: bytes) -> Response:
    return Response(200, body, CONTENT_TYPE)


class TepResource(Resource):
    """POST /tep: getcacert (always), request and retrieve (where enrollment is allowed)."""

    isLeaf = True

    def __init__(
        self,
        service: EnrollmentService,
        *,
        allow_enrollment: bool,
        listener: str,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self._service = service
        self._allow_enrollment = allow_enrollment
        self._listener = listener
        self._metrics = metrics

    def _count(self, operation: str, status: TepStatus) -> None:
        if self._metrics is not None:
            self._metrics.enrollments.labels(operation, str(int(status))).inc()

    def render_POST(self, request: Request) -> int:
        """Answer one TEP operation."""
        assert request.content is not None
        body = request.content.read(MAX_BODY_BYTES + 1)
        peer = request.getClientAddress()
        source = str(getattr(peer, "host", "unknown"))

        async def handle() -> Response:
            try:
                parsed = parse_body(body)
            except TepFormatError as e:
                log.info(
                    "TEP malformed request from {source}: {error}", source=source, error=str(e)
                )
                self._count("unknown", TepStatus.MALFORMED)
                return _answer(render_status(TepStatus.MALFORMED))
            media = _media_type(request)
            if media != EXPECTED_MEDIA_TYPE[parsed.operation]:
                log.info(
                    "TEP {operation} from {source} refused: content-type {media!r}, "
                    "expected {expected!r}",
                    operation=parsed.operation.value,
                    source=source,
                    media=media.decode("latin-1")[:64],
                    expected=EXPECTED_MEDIA_TYPE[parsed.operation].decode(),
                )
                self._count(parsed.operation.value, TepStatus.MALFORMED)
                return _answer(render_status(TepStatus.MALFORMED))
            if isinstance(parsed, CACertRequest):
                self._count("getcacert", TepStatus.ISSUED)
                return _answer(render_certificate(self._service.ca_certificate_der))
            note_device(request, parsed.device_id)
            if not self._allow_enrollment:
                log.warn(
                    "TEP {operation} from {source} refused on the {listener} listener: "
                    "passwords must travel over TLS (enrollment.allow_plain_http is off)",
                    operation=parsed.operation.value,
                    source=source,
                    listener=self._listener,
                )
                self._count(parsed.operation.value, TepStatus.MALFORMED)
                return _answer(render_status(TepStatus.MALFORMED))
            # A renewal is authenticated by the TLS client certificate (read only then:
            # the stock enroll client sends none).
            client = peer_certificate(request) if parsed.renewal else None
            outcome = await self._service.enroll(
                parsed, source=source, client_certificate=None if client is None else client.der
            )
            self._count(parsed.operation.value, outcome.status)
            if outcome.status is TepStatus.ISSUED and outcome.certificate_der is not None:
                return _answer(render_certificate(outcome.certificate_der))
            return _answer(render_status(outcome.status))

        return render_async(request, handle)
