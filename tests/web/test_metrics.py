"""/metrics renders the server's own registry in the Prometheus text format."""

from __future__ import annotations

from twisted.web.test.requesthelper import DummyRequest

from osp_server.metrics import Metrics, MetricsResource


def test_metrics_text_format() -> None:
    metrics = Metrics()
    metrics.enrollments.labels("request", "0").inc()
    metrics.osp_messages.labels("authorization", "200").inc(3)
    metrics.osp_latency.labels("authorization").observe(0.004)
    request = DummyRequest([b""])
    body = MetricsResource(metrics).render_GET(request)  # type: ignore[arg-type]
    text = body.decode()
    assert 'osp_enrollment_requests_total{operation="request",status="0"} 1.0' in text
    assert 'osp_messages_total{code="200",message="authorization"} 3.0' in text
    assert 'osp_message_seconds_bucket{le="0.005",message="authorization"} 1.0' in text
    content_type = request.responseHeaders.getRawHeaders(b"content-type")
    assert content_type is not None and content_type[0].startswith(b"text/plain")


def test_registries_are_separate() -> None:
    first, second = Metrics(), Metrics()
    first.enrollments.labels("request", "2").inc()
    body = MetricsResource(second).render_GET(DummyRequest([b""]))  # type: ignore[arg-type]
    assert b'status="2"' not in body
