"""OSPService releases every call-limit slot that routing reserved unless the transaction
is recorded: refusals, bad token values, storage failures, taken TransactionIds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from twisted.internet.defer import Deferred, fail, succeed

from osp_server.config import OSPConfig
from osp_server.osp import service as service_module
from osp_server.osp.authn import DeviceIdentity
from osp_server.osp.messages import AuthorizationRequest
from osp_server.osp.service import AuthorizationResult, OSPService
from osp_server.osp.tokens import TokenFactory
from osp_server.routing.policy import CALL_LIMIT_DESCRIPTION, DefaultRoutingPolicy
from osp_server.routing.table import RouteTables
from osp_server.storage.db import Database, StorageError
from osp_server.testing import make_route

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
IDENTITY = DeviceIdentity(
    device_pk=1,
    customer_id="1000",
    device_id="1000",
    serial="01",
    route_table=None,
    token_format=None,
)


class FakeDatabase:
    """``transact`` answers from a script: True/False (transaction id free or taken) or
    an exception, one per call; then True."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def transact(
        self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def group_commit(
        self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        return self.transact(desc, fn, *args, **kwargs)


def _service(db: FakeDatabase, policy: DefaultRoutingPolicy) -> OSPService:
    return OSPService(
        db=cast(Database, db),
        policy=policy,
        tokens=TokenFactory(default_format="xml", signer=None),
        config=OSPConfig(token_format="xml"),
        clock=lambda: NOW,
    )


def _policy() -> DefaultRoutingPolicy:
    route = make_route(prefix="1", destination="[10.0.0.1]:5060", call_limit=1)
    return DefaultRoutingPolicy(RouteTables(routes=[route]))


def _request(calling: str = "14085551000") -> AuthorizationRequest:
    return AuthorizationRequest(
        message_id="1",
        component_id="2",
        timestamp=NOW,
        call_ids=(b"call-1",),
        call_ids_b64=("Y2FsbC0x",),
        calling=calling,
        calling_type="e164",
        called="15551234567",
        called_type="e164",
        max_destinations=1,
    )


def _authorize(service: OSPService, request: AuthorizationRequest) -> AuthorizationResult:
    d = Deferred.fromCoroutine(service.authorize(IDENTITY, request))
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results  # every fake answers at once
    if isinstance(result, Exception):
        raise result
    if hasattr(result, "raiseException"):
        result.raiseException()
    return cast(AuthorizationResult, result)


def _routable(policy: DefaultRoutingPolicy) -> AuthorizationResult:
    """A normal call on the one-slot route, recorded: proves the slot was free."""
    result = _authorize(_service(FakeDatabase(), policy), _request())
    assert result.status_code == 200 and result.destinations == 1, result.response
    return result


def test_a_recorded_call_holds_its_slot_until_it_ends() -> None:
    policy = _policy()
    first = _routable(policy)
    second = _authorize(_service(FakeDatabase(), policy), _request())
    assert second.status_code == 404
    assert second.response.status.description == CALL_LIMIT_DESCRIPTION.replace(" ", "-")
    assert first.transaction_id is not None
    policy.call_ended(first.transaction_id)
    _routable(policy)


def test_a_storage_failure_releases_the_slot() -> None:
    policy = _policy()
    with pytest.raises(StorageError):
        _authorize(
            _service(FakeDatabase(StorageError("database did not answer")), policy), _request()
        )
    _routable(policy)


def test_a_value_that_cannot_go_into_a_token_releases_the_slot() -> None:
    policy = _policy()
    result = _authorize(_service(FakeDatabase(), policy), _request(calling="1" + "5" * 200))
    assert result.status_code == 400 and result.transaction_id is None
    _routable(policy)


def test_a_taken_transaction_id_is_retried_and_only_the_recorded_one_holds() -> None:
    policy = _policy()
    db = FakeDatabase(False, False)
    result = _authorize(_service(db, policy), _request())
    assert db.calls == 3 and result.status_code == 200
    assert len(policy.calls) == 1  # the two taken ids were released
    assert result.transaction_id is not None
    policy.call_ended(result.transaction_id)
    _routable(policy)


def test_transaction_id_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _policy()
    attempts = service_module.MAX_TRANSACTION_ID_ATTEMPTS
    db = FakeDatabase(*([False] * attempts))
    with pytest.raises(StorageError, match="no free TransactionId"):
        _authorize(_service(db, policy), _request())
    assert db.calls == attempts
    assert len(policy.calls) == 0
    _routable(policy)


def test_a_cancelled_authorization_releases_the_slot() -> None:
    policy = _policy()
    pending: Deferred[bool] = Deferred()

    class StalledDatabase(FakeDatabase):
        def transact(
            self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Deferred[Any]:
            return pending

    service = _service(StalledDatabase(), policy)
    d = Deferred.fromCoroutine(service.authorize(IDENTITY, _request()))
    assert len(policy.calls) == 1  # routed, waiting for storage
    d.cancel()  # the device went away (render_async cancels on disconnect)
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and len(policy.calls) == 0
    _routable(policy)


def test_an_answer_that_cannot_be_encoded_releases_the_slot() -> None:
    """A recorded authorization whose answer cannot echo the device's values: the
    resource's dispatch table answers 400 and abandons the transaction."""
    from osp_server.osp.codec import OSPEncodeError
    from osp_server.osp.resource import MESSAGE_ROUTES

    policy = _policy()
    service = _service(FakeDatabase(), policy)
    request = replace(_request(), calling_type="e 164")  # not echoable as an attribute
    result = _authorize(service, request)
    assert result.transaction_id is not None and len(policy.calls) == 1
    route = MESSAGE_ROUTES[AuthorizationRequest]
    with pytest.raises(OSPEncodeError):
        route.encode(result)
    route.abandon(service, result)
    _routable(policy)
