"""Extensions get their keyword arguments from ``[plugins.NAME]``; route tables reach any
policy that provides IRouteTablesConsumer, not only the default one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twisted.application.service import MultiService
from zope.interface import implementer

from osp_server.app import CoreService, build_service
from osp_server.config import ConfigError, parse_config
from osp_server.endpoints import StartupError
from osp_server.interfaces import IRouteTablesConsumer, IRoutingPolicy
from osp_server.reactor import global_reactor
from osp_server.routing.example import StaticRoutingPolicy
from osp_server.routing.model import RoutingDecision, RoutingRequest
from osp_server.routing.refresh import RouteRefresher
from osp_server.routing.table import RouteTables
from tests.conftest import make_config


@implementer(IRoutingPolicy, IRouteTablesConsumer)
class TablePolicy:
    """An integrator's policy that wants the stored route tables."""

    name = "tables"

    def __init__(self, *, margin: int = 0) -> None:
        self.margin = margin
        self.tables: RouteTables | None = None

    def route(self, request: RoutingRequest) -> RoutingDecision:
        return RoutingDecision.no_route()

    def call_ended(self, transaction_id: int) -> None:
        pass

    def replace(self, tables: Any) -> None:
        self.tables = tables


@pytest.fixture
def built() -> Iterator[list[MultiService]]:
    services: list[MultiService] = []
    yield services
    for top in services:
        core = top.getServiceNamed("core")
        assert isinstance(core, CoreService)
        core.components.core.db.stop()


def _build(tmp_path: Path, built: list[MultiService], **sections: Any) -> MultiService:
    top = build_service(make_config(tmp_path, **sections), global_reactor())
    built.append(top)
    return top


def _policy(top: MultiService) -> object:
    core = top.getServiceNamed("core")
    assert isinstance(core, CoreService)
    return core.components.policy


def test_plugin_tables_are_parsed() -> None:
    config = parse_config(
        {"plugins": {"static": {"destinations": ["[10.0.0.1]:5060"], "protocol": "sip"}}},
        source="osp.toml",
        base=Path("."),
    )
    assert config.plugin_options("static") == {
        "destinations": ["[10.0.0.1]:5060"],
        "protocol": "sip",
    }
    assert config.plugin_options("other") == {}


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ("not a table", "[plugins] must hold one table per extension"),
        ({"static": 3}, "plugins.static: must be a table"),
        ({"static": {"bad-key": 1}}, "plugins.static.bad-key: not a valid option name"),
    ],
)
def test_bad_plugin_tables_name_the_key(plugins: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config({"plugins": plugins}, source="osp.toml", base=Path("."))


def test_the_static_example_starts_with_its_options(
    tmp_path: Path, built: list[MultiService]
) -> None:
    top = _build(
        tmp_path,
        built,
        osp={"routing_policy": "static"},
        plugins={"static": {"destinations": ["[10.0.0.1]:5060", "gw.example.net:5060"]}},
    )
    policy = _policy(top)
    assert isinstance(policy, StaticRoutingPolicy)
    names = {service.name for service in top}
    assert "routes" not in names  # it does not consume stored route tables


def test_missing_or_bad_options_stop_start_up_naming_the_table(
    tmp_path: Path, built: list[MultiService]
) -> None:
    with pytest.raises(StartupError, match=r"\[plugins\.static\].*TypeError"):
        _build(tmp_path / "a", built, osp={"routing_policy": "static"})
    with pytest.raises(StartupError, match=r"\[plugins\.static\].*ValueError"):
        _build(
            tmp_path / "b",
            built,
            osp={"routing_policy": "static"},
            plugins={"static": {"destinations": []}},
        )


def test_route_tables_reach_any_policy_that_asks(
    tmp_path: Path, built: list[MultiService], monkeypatch: pytest.MonkeyPatch
) -> None:
    from osp_server import app

    def load(name: str, /, **kwargs: Any) -> TablePolicy:
        assert name == "tables"
        return TablePolicy(**kwargs)

    monkeypatch.setattr(app, "load_routing_policy", load)
    top = _build(
        tmp_path, built, osp={"routing_policy": "tables"}, plugins={"tables": {"margin": 3}}
    )
    policy = _policy(top)
    assert isinstance(policy, TablePolicy) and policy.margin == 3
    refresher = top.getServiceNamed("routes")
    assert isinstance(refresher, RouteRefresher)


def test_twistd_freezes_each_new_route_table_out_of_the_collector(tmp_path: Path) -> None:
    """Only the twistd process service (not in-process users) adds the GC freeze."""
    from osp_server.app import build_process_service
    from osp_server.services import freeze_long_lived_objects
    from tests.memory import MemoryReactor

    config = make_config(tmp_path)
    for build, frozen in ((build_service, False), (build_process_service, True)):
        top = build(config, MemoryReactor())
        refresher = top.getServiceNamed("routes")
        assert isinstance(refresher, RouteRefresher)
        assert (freeze_long_lived_objects in refresher.after_load) is frozen
        core = top.getServiceNamed("core")
        assert isinstance(core, CoreService)
        core.components.core.db.stop()
