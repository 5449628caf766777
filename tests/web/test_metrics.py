"""/metrics renders the server's own registry in the Prometheus text format."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest_twisted

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


@pytest_twisted.ensureDeferred
async def test_operator_gauges(tmp_path: Path, database_url: str) -> None:
    """Devices enrolled or not, requests awaiting approval, certificates expiring within
    30 days, the certificates' expiry times, the route tables, requests in flight."""
    from datetime import UTC, datetime, timedelta

    from tests.conftest import make_config
    from tests.integration.test_osp import add_device_db
    from tests.memory import enroll_in_memory, memory_server

    for server in memory_server(make_config(tmp_path, database_url)):
        core = server.core
        add_device_db(core.db, "1000", "1000")
        add_device_db(core.db, "1000", "1001")
        device = enroll_in_memory(server, "1000", "1000")
        counted = await core.inventory_probe.refresh()
        assert counted is not None
        registry = core.metrics.registry
        assert registry.get_sample_value("osp_devices", {"state": "enrolled"}) == 1
        assert registry.get_sample_value("osp_devices", {"state": "not_enrolled"}) == 1
        assert registry.get_sample_value("osp_pending_enrollments") == 0
        _pending_request(core.db, "1000", "1001")
        await core.inventory_probe.refresh()
        assert registry.get_sample_value("osp_pending_enrollments") == 1
        assert registry.get_sample_value("osp_device_certificates_expiring_30d") == 0
        # Thirty days before the device certificate expires, it counts as expiring.
        later = device.cert.not_valid_after_utc - timedelta(days=29)
        core.inventory_probe._clock = lambda later=later: later
        await core.inventory_probe.refresh()
        assert registry.get_sample_value("osp_device_certificates_expiring_30d") == 1
        for certificate in ("ca", "server", "token_signer"):
            expiry = registry.get_sample_value(
                "osp_certificate_expiry_timestamp_seconds", {"certificate": certificate}
            )
            assert expiry is not None and expiry > datetime.now(UTC).timestamp()
        assert registry.get_sample_value("osp_requests_in_flight") == 0


def test_route_gauges_follow_each_load() -> None:
    from osp_server.app import _route_gauges

    class Loaded:
        version = 7
        loaded_counts: ClassVar[dict[str, int]] = {
            "routes": 1200,
            "block_rules": 3,
            "ported_numbers": 100_000,
        }

    metrics = Metrics()
    _route_gauges(metrics, Loaded())  # type: ignore[arg-type]
    assert metrics.registry.get_sample_value("osp_route_table_version") == 7
    assert metrics.registry.get_sample_value("osp_route_table_entries", {"kind": "routes"}) == 1200
    assert (
        metrics.registry.get_sample_value("osp_route_table_entries", {"kind": "block_rules"}) == 3
    )
    assert (
        metrics.registry.get_sample_value("osp_route_table_entries", {"kind": "ported_numbers"})
        == 100_000
    )


def _pending_request(db: object, customer: str, device: str) -> None:
    """A certificate request waiting for approval, as a manual-policy device leaves."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from osp_server.storage import devices as device_store
    from osp_server.storage.schema import enrollments

    def work(conn: object) -> None:
        pk = device_store.get_device(conn, customer, device).pk  # type: ignore[arg-type]
        conn.execute(  # type: ignore[attr-defined]
            insert(enrollments).values(
                device_pk=pk,
                csr_sha256="0" * 64,
                csr_der=b"csr",
                state="pending",
                created_at=datetime.now(UTC),
            )
        )

    db.transact_sync(work)  # type: ignore[attr-defined]


def test_a_failed_inventory_read_is_logged_once_even_without_a_message() -> None:
    """The warning took the first line of the error's text, and an error with none
    (TimeoutError()) raised IndexError out of the loop: the gauges stopped for good."""
    from datetime import UTC, datetime
    from typing import Any

    from twisted.internet.defer import Deferred, fail
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs

    from osp_server.inventory import InventoryProbe

    class FailingDatabase:
        def read(self, *_: Any, **__: Any) -> Deferred[Any]:
            return fail(TimeoutError())

    probe = InventoryProbe(
        FailingDatabase(),  # type: ignore[arg-type]
        Clock(),
        Metrics(),
        clock=lambda: datetime.now(UTC),
    )
    with capturedLogs() as events:
        for _ in range(2):
            outcome = Deferred.fromCoroutine(probe.refresh())
            results: list[object] = []
            outcome.addBoth(results.append)
            assert results == [None]
    warnings = [e for e in events if "inventory for metrics failed" in e["log_format"]]
    assert len(warnings) == 1 and warnings[0]["error"] == "TimeoutError: "
