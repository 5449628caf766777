"""Prometheus metrics: a registry per server and a tiny synchronous resource.

``prometheus_client.twisted.MetricsResource`` imports the global reactor and answers
from a thread pool (CONVENTIONS P20); rendering the text format is cheap, so this
resource does it inline.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from twisted.web.resource import Resource
from twisted.web.server import Request


class Metrics:
    """The server's metrics, in a registry of its own (several servers per test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.enrollments = Counter(
            "osp_enrollment_requests",
            "TEP requests by operation and status",
            ["operation", "status"],
            registry=self.registry,
        )
        self.osp_messages = Counter(
            "osp_messages",
            "OSP messages by type and status code",
            ["message", "code"],
            registry=self.registry,
        )
        self.osp_latency = Histogram(
            "osp_message_seconds",
            "Time to answer an OSP message",
            ["message"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.db_seconds = Histogram(
            "osp_db_transaction_seconds",
            "Time a database transaction spent on its worker thread, commit included",
            ["desc"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.db_transactions = Counter(
            "osp_db_transactions",
            "Database transactions by call site and outcome: ok, error, or timeout (the "
            "caller stopped waiting; the late thread still counts its own outcome)",
            ["desc", "outcome"],
            registry=self.registry,
        )

        self.disk_free = Gauge(
            "osp_disk_free_bytes",
            "Free bytes on the file system where the data lives (measured by /ready's probe)",
            registry=self.registry,
        )
        self.last_write = Gauge(
            "osp_last_write_timestamp_seconds",
            "Unix time of the last heartbeat write that committed (0: none yet)",
            registry=self.registry,
        )

        # What operators ask for first (issue 11).  The inventory gauges come from a
        # periodic read (osp_server.inventory), the expiry times from the certificates
        # in use, the route gauges from each load, in-flight from the OSP resource.
        self.devices = Gauge(
            "osp_devices",
            "Devices by state of their certificate: enrolled (a valid device certificate) "
            "or not_enrolled",
            ["state"],
            registry=self.registry,
        )
        self.pending_enrollments = Gauge(
            "osp_pending_enrollments",
            "Certificate requests waiting for an operator's approval",
            registry=self.registry,
        )
        self.expiring_certificates = Gauge(
            "osp_device_certificates_expiring_30d",
            "Valid device certificates that expire within 30 days",
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "osp_certificate_expiry_timestamp_seconds",
            "Unix time at which the CA's, the server's TLS and the token signer's "
            "certificates expire",
            ["certificate"],
            registry=self.registry,
        )
        self.route_table = Gauge(
            "osp_route_table_entries",
            "Entries of the loaded routing snapshot, by kind (routes, block_rules, rate_rows, "
            "ported_numbers, fraud_rules, routing_profiles)",
            ["kind"],
            registry=self.registry,
        )
        self.route_version = Gauge(
            "osp_route_table_version",
            "Version of the loaded route tables",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "osp_requests_in_flight",
            "OSP requests being answered now",
            registry=self.registry,
        )

    def observe_transaction(self, desc: str, seconds: float, outcome: str) -> None:
        """The :class:`~osp_server.storage.db.TransactionObserver` the server installs
        (called from database worker threads; prometheus_client is thread-safe)."""
        if outcome != "timeout":
            self.db_seconds.labels(desc).observe(seconds)
        self.db_transactions.labels(desc, outcome).inc()


class MetricsResource(Resource):
    """``GET /metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        """The current values."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._metrics.registry)
