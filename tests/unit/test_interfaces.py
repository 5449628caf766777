"""Integrator contracts: loading policies by name, the example policy and the fakes."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from osp_server.interfaces import (
    ENROLLMENT_AUTHORIZER_GROUP,
    ROUTING_POLICY_GROUP,
    ExtensionLoadError,
    IRoutingPolicy,
    IRoutingPolicyFactory,
    available_extensions,
    build_extension,
    find_extension_factory,
    load_enrollment_authorizer,
    load_routing_policy,
)
from osp_server.routing.example import StaticRoutingPolicy
from osp_server.routing.model import InvalidRouteField, RoutedDestination, RoutingDecision
from osp_server.routing.policy import DefaultRoutingPolicy
from osp_server.testing import (
    FakeEnrollmentAuthorizer,
    FakeRoutingPolicy,
    make_route,
    make_routing_request,
    verify_enrollment_authorizer,
    verify_routing_policy,
)

PLUGIN_MODULE = """
from zope.interface import implementer
from osp_server.interfaces import IRoutingPolicy, IEnrollmentAuthorizer


class NotAPolicy:
    name = "nope"

    def route(self, request):
        return None


@implementer(IRoutingPolicy)
class MissingCallEnded:
    name = "half"

    def route(self, request):
        return None


@implementer(IRoutingPolicy)
class WrongSignature:
    name = "wrong"

    def route(self):
        return None

    def call_ended(self, transaction_id):
        pass


@implementer(IRoutingPolicy)
class Good:
    def __init__(self, **kwargs):
        self.name = "good"
        self.kwargs = kwargs

    def route(self, request):
        return None

    def call_ended(self, transaction_id):
        pass


def explode(**kwargs):
    raise RuntimeError("database unreachable")


@implementer(IEnrollmentAuthorizer)
class Approver:
    def authorize(self, customer_id, device_id, csr_sha256):
        return "pending"


NOT_CALLABLE = 42
"""

ENTRY_POINTS = """
[osp_server.routing_policies]
good = {mod}:Good
nope = {mod}:NotAPolicy
half = {mod}:MissingCallEnded
wrong = {mod}:WrongSignature
explode = {mod}:explode
missing = {mod}_absent:Thing
number = {mod}:NOT_CALLABLE
static = osp_server.routing.example:StaticRoutingPolicy
lcr = osp_server.routing.policy:DefaultRoutingPolicy

[osp_server.enrollment_authorizers]
approver = {mod}:Approver
wrongkind = {mod}:Good
"""


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed-looking distribution (a dist-info with entry points) on sys.path,
    so the real importlib.metadata lookup is exercised."""
    mod = f"osp_fake_policies_{uuid.uuid4().hex}"
    (tmp_path / f"{mod}.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / f"{mod}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS.format(mod=mod))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield mod
    sys.modules.pop(mod, None)


# --- lookup by name ------------------------------------------------------------------


def test_unknown_policy_names_itself_and_the_known_ones(fake_distribution: str) -> None:
    with pytest.raises(ExtensionLoadError) as caught:
        load_routing_policy("no-such-policy")
    message = str(caught.value)
    assert message.startswith("unknown routing policy 'no-such-policy' (known: ")
    assert "good" in message and "static" in message


def test_unknown_without_any_registered(tmp_path: Path) -> None:
    package = _plugin_package(tmp_path, "")
    with pytest.raises(ExtensionLoadError, match="unknown enrollment authorizer 'x'"):
        find_extension_factory(
            ENROLLMENT_AUTHORIZER_GROUP, "x", IRoutingPolicyFactory, plugin_package=package
        )


def test_good_policy_gets_kwargs(fake_distribution: str) -> None:
    policy: Any = load_routing_policy("good", answer=42)
    assert policy.kwargs == {"answer": 42}
    assert IRoutingPolicy.providedBy(policy)


def test_not_implementing_is_refused(fake_distribution: str) -> None:
    with pytest.raises(ExtensionLoadError) as caught:
        load_routing_policy("nope")
    message = str(caught.value)
    assert message.startswith("routing policy 'nope' does not implement IRoutingPolicy:")
    assert "Does not declaratively implement the interface" in message
    assert message.endswith("(declare it with @implementer(IRoutingPolicy))")


def test_missing_method_is_refused(fake_distribution: str) -> None:
    with pytest.raises(ExtensionLoadError, match=r"'half' does not implement.*call_ended"):
        load_routing_policy("half")


def test_wrong_signature_is_refused(fake_distribution: str) -> None:
    with pytest.raises(ExtensionLoadError, match=r"'wrong' does not implement.*route"):
        load_routing_policy("wrong")


def test_factory_failure_is_wrapped(fake_distribution: str) -> None:
    with pytest.raises(
        ExtensionLoadError,
        match=r"^routing policy 'explode' could not be created: RuntimeError: database unreach",
    ):
        load_routing_policy("explode")


def test_import_failure_is_wrapped(fake_distribution: str) -> None:
    with pytest.raises(
        ExtensionLoadError, match=r"^routing policy 'missing' \(.*\) failed to load"
    ):
        load_routing_policy("missing")


def test_not_callable_is_refused(fake_distribution: str) -> None:
    with pytest.raises(ExtensionLoadError, match=r"'number'.*not a factory"):
        load_routing_policy("number")


def test_bad_kwargs_are_wrapped(fake_distribution: str) -> None:
    with pytest.raises(ExtensionLoadError, match=r"'static' could not be created: TypeError"):
        load_routing_policy("static", destination="[1.1.1.1]:5060")


def test_shipped_policies_load_by_entry_point(fake_distribution: str) -> None:
    static: Any = load_routing_policy("static", destinations=["[1.1.1.1]:5060"])
    assert isinstance(static, StaticRoutingPolicy)
    lcr: Any = load_routing_policy("lcr")
    assert isinstance(lcr, DefaultRoutingPolicy)
    assert lcr.route(make_routing_request()).status_code == 404


def test_same_name_registered_twice(tmp_path: Path, fake_distribution: str) -> None:
    other = tmp_path / "other_dist-1.0.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: other-dist\nVersion: 1.0\n")
    (other / "entry_points.txt").write_text(
        "[osp_server.routing_policies]\ngood = somewhere.else:Policy\n"
    )
    importlib.invalidate_caches()
    with pytest.raises(ExtensionLoadError, match="'good' is registered more than once"):
        load_routing_policy("good")


def test_enrollment_authorizers(fake_distribution: str) -> None:
    authorizer = load_enrollment_authorizer("approver")
    assert authorizer.authorize("1000", "1000", "ab" * 32) == "pending"
    with pytest.raises(ExtensionLoadError, match="does not implement IEnrollmentAuthorizer"):
        load_enrollment_authorizer("wrongkind")


# --- Twisted plugins -----------------------------------------------------------------

PLUGIN_DROPIN = """
from zope.interface import provider
from twisted.plugin import IPlugin
from osp_server.interfaces import IRoutingPolicyFactory
from osp_server.routing.example import StaticRoutingPolicy


@provider(IPlugin, IRoutingPolicyFactory)
class plugged:
    name = "plugged"

    @staticmethod
    def build(**kwargs):
        return StaticRoutingPolicy(**kwargs)
"""


def _plugin_package(tmp_path: Path, source: str) -> Any:
    name = f"osp_fake_dropins_{uuid.uuid4().hex}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    if source:
        (package / "dropin.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def test_twisted_plugin_found_by_name(tmp_path: Path) -> None:
    package = _plugin_package(tmp_path, PLUGIN_DROPIN)
    assert "plugged" in available_extensions(
        ROUTING_POLICY_GROUP, IRoutingPolicyFactory, plugin_package=package
    )
    policy: Any = build_extension(
        ROUTING_POLICY_GROUP,
        "plugged",
        IRoutingPolicy,
        IRoutingPolicyFactory,
        {"destinations": ["gw.example.net:5060"]},
        plugin_package=package,
    )
    assert isinstance(policy, StaticRoutingPolicy)
    assert policy.route(make_routing_request()).destinations[0].signal_address == (
        "gw.example.net:5060"
    )


# --- the example policy --------------------------------------------------------------


def test_static_policy() -> None:
    policy = verify_routing_policy(
        StaticRoutingPolicy(["[1.1.1.1]:5060", "[2.2.2.2]:5060", "gw.example.net"], "iax", "TG9")
    )
    decision = policy.route(make_routing_request(max_destinations=2))
    assert isinstance(decision, RoutingDecision)
    assert [(d.signal_address, d.protocol, d.network_id) for d in decision.destinations] == [
        ("[1.1.1.1]:5060", "iax", "TG9"),
        ("[2.2.2.2]:5060", "iax", "TG9"),
    ]
    policy.call_ended(1)


@pytest.mark.parametrize(
    ("destinations", "error"),
    [([], ValueError), ("[1.1.1.1]:5060", ValueError), (["[1.1.1.1] :5060"], InvalidRouteField)],
)
def test_static_policy_checks_config(destinations: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        StaticRoutingPolicy(destinations)


# --- fakes and verification ----------------------------------------------------------


def test_shipped_implementations_verify() -> None:
    for policy in (FakeRoutingPolicy(), StaticRoutingPolicy(["gw"]), DefaultRoutingPolicy()):
        assert verify_routing_policy(policy) is policy
    authorizer = FakeEnrollmentAuthorizer()
    assert verify_enrollment_authorizer(authorizer) is authorizer


def test_verify_explains_failures() -> None:
    class Plain:
        name = "plain"

    with pytest.raises(AssertionError, match="Plain does not implement IRoutingPolicy"):
        verify_routing_policy(Plain())
    with pytest.raises(AssertionError, match="does not implement IEnrollmentAuthorizer"):
        verify_enrollment_authorizer(FakeRoutingPolicy())


def test_fake_policy_sync_records() -> None:
    decision = RoutingDecision.blocked("Fraud")
    fake = FakeRoutingPolicy(decision)
    request = make_routing_request(called="4420")
    assert fake.route(request) is decision
    fake.call_ended(7)
    assert (fake.requests, fake.ended) == ([request], [7])


def _result(d: Any) -> list[object]:
    results: list[object] = []
    d.addBoth(results.append)
    return results


def test_fake_policy_deferred_and_hold() -> None:
    decision = RoutingDecision.routed([RoutedDestination("[9.9.9.9]:5060", "sip")])
    assert _result(FakeRoutingPolicy(decision, mode="deferred").route(make_routing_request())) == [
        decision
    ]
    held = FakeRoutingPolicy(decision, mode="hold")
    d = held.route(make_routing_request())
    assert isinstance(d, Deferred)
    results = _result(d)
    assert results == [] and held.pending == [d]
    held.pending[0].callback(decision)
    assert results == [decision]


def test_fake_policy_errors() -> None:
    with pytest.raises(RuntimeError):
        FakeRoutingPolicy(error=RuntimeError("boom")).route(make_routing_request())
    (failure,) = _result(
        FakeRoutingPolicy(mode="deferred", error=RuntimeError("boom")).route(make_routing_request())
    )
    assert isinstance(failure, Failure) and failure.check(RuntimeError)
    with pytest.raises(ValueError, match="mode"):
        FakeRoutingPolicy(mode="later")


def test_fake_authorizer() -> None:
    fake = FakeEnrollmentAuthorizer("reject", deferred=True)
    assert _result(fake.authorize("1000", "1000", "00" * 32)) == ["reject"]
    assert fake.calls == [("1000", "1000", "00" * 32)]


def test_request_and_route_builders() -> None:
    request = make_routing_request(route_table="gold", transaction_id=5)
    assert (request.customer_id, request.called, request.max_destinations) == ("1000", "1678", 8)
    assert (request.route_table, request.transaction_id) == ("gold", 5)
    assert make_route(prefix="44").prefix == "44"
    with pytest.raises(TypeError):
        make_routing_request(no_such_field=1)
