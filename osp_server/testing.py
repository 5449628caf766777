"""Test doubles for integrators (and for osp-server's own tests).

``FakeRoutingPolicy`` and ``FakeEnrollmentAuthorizer`` record what they are asked and
answer what they are told, synchronously, through an already-fired Deferred, or through
a Deferred the test fires later. ``verify_routing_policy`` checks your own policy
against the contract the server enforces at start-up::

    from osp_server.testing import make_routing_request, verify_routing_policy

    def test_my_policy() -> None:
        policy = verify_routing_policy(MyPolicy())
        decision = policy.route(make_routing_request(called="4420..."))
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from osp_server.interfaces import (
    EnrollmentVerdict,
    IEnrollmentAuthorizer,
    IRoutingPolicy,
)
from osp_server.routing.model import (
    DEFAULT_TABLE,
    Route,
    RoutedDestination,
    RoutingDecision,
    RoutingRequest,
)

_REQUEST_DEFAULTS = RoutingRequest(
    customer_id="1000",
    device_id="1000",
    calling="14048724799",
    called="1678",
    max_destinations=8,
)


def make_routing_request(**overrides: Any) -> RoutingRequest:
    """A `RoutingRequest` like the one in the captured test_app request (customer and
    device ``1000``, ``14048724799`` → ``1678``, 8 destinations), with ``overrides``."""
    return replace(_REQUEST_DEFAULTS, **overrides)


def make_route(**overrides: Any) -> Route:
    """A valid `Route` (default table, prefix ``1``, ``[127.0.0.1]:5060``) with
    ``overrides``."""
    fields: dict[str, Any] = {
        "table": DEFAULT_TABLE,
        "prefix": "1",
        "destination": "[127.0.0.1]:5060",
        "cost": Decimal(0),
    }
    fields.update(overrides)
    return Route(**fields)


def _default_decision() -> RoutingDecision:
    return RoutingDecision.routed([RoutedDestination("[127.0.0.1]:5060", "sip")])


@implementer(IRoutingPolicy)
class FakeRoutingPolicy:
    """A routing policy that records requests and returns ``decision``.

    ``mode``: ``"sync"`` returns the decision; ``"deferred"`` returns an already-fired
    Deferred; ``"hold"`` returns an unfired Deferred, appended to ``pending`` for the
    test to fire (or to check cancellation). With ``error`` set, route raises it
    (``"sync"``) or fails the Deferred. ``requests`` and ``ended`` record the calls.
    """

    def __init__(
        self,
        decision: RoutingDecision | None = None,
        *,
        mode: str = "sync",
        error: Exception | None = None,
        name: str = "fake",
    ) -> None:
        if mode not in ("sync", "deferred", "hold"):
            raise ValueError(f"mode must be 'sync', 'deferred' or 'hold', not {mode!r}")
        self.name = name
        self.decision = decision if decision is not None else _default_decision()
        self.mode = mode
        self.error = error
        self.requests: list[RoutingRequest] = []
        self.ended: list[int] = []
        self.pending: list[Deferred[RoutingDecision]] = []

    def route(self, request: RoutingRequest) -> RoutingDecision | Deferred[RoutingDecision]:
        """Record ``request``; answer as configured."""
        self.requests.append(request)
        if self.mode == "hold":
            d: Deferred[RoutingDecision] = Deferred()
            self.pending.append(d)
            return d
        if self.error is not None:
            if self.mode == "sync":
                raise self.error
            return fail(self.error)
        if self.mode == "deferred":
            return succeed(self.decision)
        return self.decision

    def call_ended(self, transaction_id: int) -> None:
        """Record ``transaction_id``."""
        self.ended.append(transaction_id)


@implementer(IEnrollmentAuthorizer)
class FakeEnrollmentAuthorizer:
    """An enrollment authorizer answering ``verdict`` (optionally via a fired
    Deferred); ``calls`` records (customer_id, device_id, csr_sha256)."""

    def __init__(self, verdict: EnrollmentVerdict = "issue", *, deferred: bool = False) -> None:
        self.verdict: EnrollmentVerdict = verdict
        self.deferred = deferred
        self.calls: list[tuple[str, str, str]] = []

    def authorize(
        self, customer_id: str, device_id: str, csr_sha256: str
    ) -> EnrollmentVerdict | Deferred[EnrollmentVerdict]:
        """Record the call; answer ``verdict``."""
        self.calls.append((customer_id, device_id, csr_sha256))
        if self.deferred:
            return succeed(self.verdict)
        return self.verdict


def verify_routing_policy(obj: object) -> IRoutingPolicy:
    """Return ``obj`` if it provides `IRoutingPolicy` as the server checks at start-up
    (declared with ``@implementer``, ``name``, ``route`` and ``call_ended`` present with
    compatible signatures); raise ``AssertionError`` naming what is wrong otherwise."""
    _verify(IRoutingPolicy, obj)
    return obj  # type: ignore[return-value]


def verify_enrollment_authorizer(obj: object) -> IEnrollmentAuthorizer:
    """Like `verify_routing_policy`, for `IEnrollmentAuthorizer`."""
    _verify(IEnrollmentAuthorizer, obj)
    return obj  # type: ignore[return-value]


def _verify(interface: Any, obj: object) -> None:
    try:
        verifyObject(interface, obj)
    except Invalid as e:
        detail = " ".join(str(e).split())
        raise AssertionError(
            f"{type(obj).__name__} does not implement {interface.__name__}: {detail}"
        ) from None
