"""Public contracts for integrators: routing policies and enrollment authorizers.

Write a class that declares ``@implementer(IRoutingPolicy)``, register its factory
(usually the class itself) under the entry-point group ``osp_server.routing_policies``::

    [project.entry-points."osp_server.routing_policies"]
    mypolicy = "mypackage.routing:MyPolicy"

and select it by name in the config. At start-up the server calls the factory with
the keyword arguments from the config's ``[plugins.NAME]`` table (the factory checks
them: raise ``TypeError`` or ``ValueError`` for a bad one, and start-up stops with a
line naming the table) and checks the result with ``verifyObject``. A policy that
also provides `IRouteTablesConsumer` gets the route tables from storage, reloaded live.
A Twisted plugin (an object in a ``twisted/plugins/`` module providing ``IPlugin``
and `IRoutingPolicyFactory`) works too. `osp_server.testing` has fakes and a
verification helper for your tests; `osp_server.routing.example` is a small example.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from importlib import metadata
from typing import Any, Final, Literal, cast

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from osp_server.routing.model import RoutingDecision, RoutingRequest

ROUTING_POLICY_GROUP: Final = "osp_server.routing_policies"
ENROLLMENT_AUTHORIZER_GROUP: Final = "osp_server.enrollment_authorizers"
_KINDS: Final = {
    ROUTING_POLICY_GROUP: "routing policy",
    ENROLLMENT_AUTHORIZER_GROUP: "enrollment authorizer",
}

EnrollmentVerdict = Literal["issue", "pending", "reject"]
ENROLLMENT_VERDICTS: Final = frozenset({"issue", "pending", "reject"})


class IRoutingPolicy(Interface):
    """Decides where a call goes. Called on the reactor thread: return quickly, or
    return a Deferred for slow work (a database, a remote service)."""

    name = Attribute("Short name of the policy, used in logs and metrics.")

    def route(request: RoutingRequest) -> RoutingDecision | Deferred[RoutingDecision]:
        """Answer an authorization request: destinations (best first, at most
        ``request.max_destinations``) or a refusal. Never raise for an ordinary
        "no": return `RoutingDecision.no_route`, `.blocked` or `.refused`."""

    def call_ended(transaction_id: int) -> None:
        """The call of ``transaction_id`` is over: release anything held for it (e.g.
        call-limit slots). Called when the originating device reports the leg's end,
        and at once when an authorization does not end in a recorded transaction (a
        refusal, a value that cannot go into a token, a storage failure, a cancelled
        request). May be called more than once, or for ids the policy never saw."""


class IUsageObserver(Interface):
    """A routing policy that learns from the calls devices report (e.g. route quality).
    Declare it beside `IRoutingPolicy`; the server then calls `leg_reported` for each
    usage report it stored, on the reactor thread (must not block)."""

    def leg_reported(report: Any, network_id: str | None, carrier: str | None) -> None:
        """A device reported a call leg (an `osp_server.cdr.legs.LegReport`: its key,
        state and values) of a call this server authorized, to a destination the call
        was given; ``network_id`` and ``carrier`` are what the server recorded for
        that destination when it authorized the call."""


class IEnrollmentAuthorizer(Interface):
    """An extra approval step for certificate enrollment, after the device's
    credentials and CSR were checked."""

    def authorize(
        customer_id: str, device_id: str, csr_sha256: str
    ) -> EnrollmentVerdict | Deferred[EnrollmentVerdict]:
        """Return ``"issue"``, ``"pending"`` (an operator decides later) or
        ``"reject"``. ``csr_sha256`` is the hex SHA-256 of the CSR DER."""


class IRouteTablesConsumer(Interface):
    """A routing policy that routes on the route tables kept in storage (``osp-admin
    route ...``). Declare it beside `IRoutingPolicy` and the server loads the tables
    at start, then hands every new version to `replace` (within
    ``[osp] route_refresh_seconds``, on every node)."""

    def replace(tables: Any) -> None:
        """Use ``tables`` (an `osp_server.routing.table.RouteTables` snapshot) from
        the next request on. Called on the reactor thread; must not block."""


class IRoutingPolicyFactory(Interface):
    """A Twisted plugin that makes routing policies (also provide ``IPlugin``)."""

    name = Attribute("The name the config selects the policy by.")

    def build(**kwargs: Any) -> IRoutingPolicy:
        """Make a policy from the config's keyword arguments."""


class IEnrollmentAuthorizerFactory(Interface):
    """A Twisted plugin that makes enrollment authorizers (also provide ``IPlugin``)."""

    name = Attribute("The name the config selects the authorizer by.")

    def build(**kwargs: Any) -> IEnrollmentAuthorizer:
        """Make an authorizer from the config's keyword arguments."""


class ExtensionLoadError(Exception):
    """A configured extension is unknown, fails to load or to build, or does not
    provide its interface. The message names the extension."""


def find_extension_factory(
    group: str,
    name: str,
    plugin_interface: InterfaceClass,
    *,
    plugin_package: types.ModuleType | None = None,
) -> Callable[..., object]:
    """The factory registered as ``name``: an entry point in ``group``, else a Twisted
    plugin providing ``plugin_interface`` (its ``build`` method) whose ``name`` matches.

    ``plugin_package`` defaults to ``twisted.plugins``. Raises `ExtensionLoadError`
    for an unknown or ambiguous name, or when loading fails.
    """
    kind = _KINDS.get(group, group)
    candidates = {ep.value: ep for ep in metadata.entry_points(group=group, name=name)}
    if len(candidates) > 1:
        raise ExtensionLoadError(
            f"{kind} {name!r} is registered more than once: {', '.join(sorted(candidates))}"
        )
    if candidates:
        (entry_point,) = candidates.values()
        try:
            loaded = entry_point.load()
        except Exception as e:
            raise ExtensionLoadError(
                f"{kind} {name!r} ({entry_point.value}) failed to load: {type(e).__name__}: {e}"
            ) from e
        if not callable(loaded):
            raise ExtensionLoadError(
                f"{kind} {name!r} ({entry_point.value}) is not a factory (not callable)"
            )
        return cast(Callable[..., object], loaded)
    for plugin in _plugins(plugin_interface, plugin_package):
        if getattr(plugin, "name", None) == name:
            build = getattr(plugin, "build", None)
            if not callable(build):
                raise ExtensionLoadError(f"{kind} plugin {name!r} has no build() method")
            return cast(Callable[..., object], build)
    known = available_extensions(group, plugin_interface, plugin_package=plugin_package)
    raise ExtensionLoadError(
        f"unknown {kind} {name!r} (known: {', '.join(known) if known else 'none'})"
    )


def available_extensions(
    group: str, plugin_interface: InterfaceClass, *, plugin_package: types.ModuleType | None = None
) -> list[str]:
    """Names registered in ``group`` or as Twisted plugins, sorted."""
    names = {ep.name for ep in metadata.entry_points(group=group)}
    for plugin in _plugins(plugin_interface, plugin_package):
        plugin_name = getattr(plugin, "name", None)
        if isinstance(plugin_name, str):
            names.add(plugin_name)
    return sorted(names)


def _plugins(interface: InterfaceClass, package: types.ModuleType | None) -> list[object]:
    # Imported here: scanning plugins is rare (start-up) and twisted.plugin is heavy.
    from twisted.plugin import getPlugins

    return list(getPlugins(interface, package))  # type: ignore[arg-type]


def build_extension(
    group: str,
    name: str,
    interface: InterfaceClass,
    plugin_interface: InterfaceClass,
    kwargs: dict[str, Any],
    *,
    plugin_package: types.ModuleType | None = None,
) -> object:
    """Find ``name`` in ``group``, call its factory with ``kwargs`` and check the
    result provides ``interface`` (``verifyObject``). Raises `ExtensionLoadError`."""
    kind = _KINDS.get(group, group)
    factory = find_extension_factory(group, name, plugin_interface, plugin_package=plugin_package)
    try:
        obj = factory(**kwargs)
    except Exception as e:
        raise ExtensionLoadError(
            f"{kind} {name!r} could not be created: {type(e).__name__}: {e}"
        ) from e
    try:
        verifyObject(interface, obj)
    except Invalid as e:
        detail = " ".join(str(e).split())
        if not interface.providedBy(obj):
            detail += f" (declare it with @implementer({interface.__name__}))"
        raise ExtensionLoadError(
            f"{kind} {name!r} does not implement {interface.__name__}: {detail}"
        ) from e
    return obj


def load_routing_policy(name: str, /, **kwargs: Any) -> IRoutingPolicy:
    """Build the routing policy registered as ``name`` with ``kwargs`` (from the
    config) and check it provides `IRoutingPolicy`. Raises `ExtensionLoadError`."""
    obj = build_extension(ROUTING_POLICY_GROUP, name, IRoutingPolicy, IRoutingPolicyFactory, kwargs)
    return cast(IRoutingPolicy, obj)


def load_enrollment_authorizer(name: str, /, **kwargs: Any) -> IEnrollmentAuthorizer:
    """Build the enrollment authorizer registered as ``name`` and check it provides
    `IEnrollmentAuthorizer`. Raises `ExtensionLoadError`."""
    obj = build_extension(
        ENROLLMENT_AUTHORIZER_GROUP,
        name,
        IEnrollmentAuthorizer,
        IEnrollmentAuthorizerFactory,
        kwargs,
    )
    return cast(IEnrollmentAuthorizer, obj)
