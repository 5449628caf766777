"""Exact, fixed-length HTTP responses and the async rendering bridge.

The OSP Toolkit's HTTP reader needs ``Content-Type`` and ``Content-Length`` on every
answer and fails on chunked bodies, which Twisted uses for a Deferred-rendered
response without an explicit length.  Every answer therefore goes through
:func:`write_response`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

log = Logger()


@dataclass(frozen=True)
class Response:
    """A complete answer: status, media type and the exact body bytes."""

    code: int
    body: bytes
    content_type: bytes = b"text/plain"
    reason: bytes | None = None


def error_response(code: int, message: str) -> Response:
    """A short text/plain error body (kept minimal: device readers search the head)."""
    return Response(code, message.encode("ascii", "replace") + b"\n")


def write_response(request: Request, response: Response) -> None:
    """Write ``response`` with explicit Content-Type and Content-Length, then finish."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.setResponseCode(response.code, response.reason)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [response.content_type])
    headers.setRawHeaders(b"content-length", [str(len(response.body)).encode("ascii")])
    if request.method != b"HEAD":
        request.write(response.body)
    request.finish()


def render_async(
    request: Request,
    handler: Callable[[], Coroutine[Any, Any, Response]],
) -> int:
    """Run an async handler for ``request``; returns NOT_DONE_YET for ``render``.

    Handlers return their error answers; an exception that escapes is a bug: it is
    logged with its traceback and answered with a bare 500 (never a traceback to the
    client).  When the client disconnects, the work is cancelled.
    """
    d: Deferred[Response] = Deferred.fromCoroutine(handler())

    def done(response: Response) -> None:
        write_response(request, response)

    def failed(failure: Failure) -> None:
        if failure.check(CancelledError) and getattr(request, "_disconnected", False):
            return
        log.failure(
            "unhandled error answering {method} {path}",
            failure,
            method=request.method,
            path=request.path,
        )
        write_response(request, error_response(500, "internal error"))

    d.addCallbacks(done, failed)

    def disconnected(_: object) -> None:
        if not d.called:
            d.cancel()

    if not request.finished:  # answered at once (e.g. a refusal): nothing to cancel
        request.notifyFinish().addErrback(disconnected)
    return NOT_DONE_YET
