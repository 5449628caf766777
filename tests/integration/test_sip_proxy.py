"""A SIP proxy's OSP module (OpenSIPS 3.6.8 on toolkit 4.33.1), replayed to the server.

The captured bytes go to the real server built in memory (tests/memory.py), presented
with the client certificate the device enrolled for, as mutual TLS presents it.

The module reports each call leg twice: a UsageIndication at answer (RoleInfo State
``start``) and another at BYE (``stop``, with the end time and an Amount in thousandths
of the duration). The captured bytes are in tests/vectors/osp/opensips-3.6/.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted
from defusedxml import ElementTree

from twisted.logger import LogLevel, capturedLogs, formatEvent

from osp_server.admin.cli import main as admin_main
from osp_server.osp.codec import decode_request
from osp_server.osp.messages import AuthorizationRequest
from osp_server.routing.table import RouteTables
from osp_server.storage import calls
from tests.conftest import VECTORS, make_config
from tests.integration.test_osp import ROUTES, add_device_db, spy_call_ended
from tests.integration.wire import split_vector
from tests.memory import MemoryEnv as Env
from tests.memory import enroll_in_memory, memory_server
from tests.unit.osp_checker import check_osp_response

OPENSIPS = VECTORS / "osp" / "opensips-3.6"
CAPTURED_TRANSACTION_ID = b"334908090253103860"


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> Iterator[Env]:
    """The server in memory, with routes and an enrolled device 1000/1000."""
    config = make_config(tmp_path, database_url)
    for server in memory_server(config):
        add_device_db(server.core.db, "1000", "1000")
        server.components.policy.replace(RouteTables(routes=ROUTES))  # type: ignore[attr-defined]
        yield Env(server, tmp_path, enroll_in_memory(server, "1000", "1000"))


def _usage(name: str, transaction_id: bytes = CAPTURED_TRANSACTION_ID) -> tuple[bytes, bytes]:
    head, body = split_vector(OPENSIPS / name)
    return head, body.replace(
        b"\n" + CAPTURED_TRANSACTION_ID + b"</TransactionId>",
        b"\n" + transaction_id + b"</TransactionId>",
    )


async def _report(env: Env, name: str, transaction_id: bytes = CAPTURED_TRANSACTION_ID) -> None:
    head, body = _usage(name, transaction_id)
    answer = await env.post(body, head=head)
    assert answer.code == 200, answer.body
    root = ElementTree.fromstring(answer.body)
    confirmation = root.find("UsageConfirmation")
    assert confirmation is not None
    assert confirmation.get("componentId") == "3349080902531038602"
    assert confirmation.findtext("Status/Code") == "200"


def _legs(env: Env, transaction_id: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = env.core.db.transact_sync(
        calls.usage_for_transaction, transaction_id
    )
    return rows


def _export(tmp_path: Path, database_url: str, *argv: str) -> list[dict[str, str]]:
    config = tmp_path / "admin.toml"
    config.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    out, err = io.StringIO(), io.StringIO()
    code = admin_main(["--config", str(config), "usage", "export", *argv], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return list(csv.DictReader(io.StringIO(out.getvalue())))


@pytest_twisted.ensureDeferred
async def test_start_then_stop_keeps_one_leg_with_the_stop_duration(
    env: Env, database_url: str
) -> None:
    await _report(env, "usage-indication-start.http")
    (leg,) = _legs(env, int(CAPTURED_TRANSACTION_ID))
    assert leg["state"] == "start" and leg["end_time"] is None

    await _report(env, "usage-indication-stop.http")
    (leg,) = _legs(env, int(CAPTURED_TRANSACTION_ID))
    assert leg["state"] == "stop"
    assert leg["duration"] == Decimal("2.000") and leg["duration_source"] == "times"
    assert leg["reported_amount"] == Decimal("0.002")  # what the module sent, kept
    assert leg["end_time"] is not None and leg["connect_time"] is not None
    assert leg["termination_cause_code"] == "10016" and leg["release_source"] == "source"
    assert leg["reports"] == 2

    (row,) = _export(env.tmp_path, database_url)
    assert row["state"] == "stop"
    assert row["duration"] == "2.000" and row["reported_amount"] == "0.002"
    assert row["end_time"] == "2026-11-29T21:27:05Z"
    assert row["connect_time"] == "2026-11-29T21:27:03Z"
    assert row["termination_cause_code"] == "10016"
    assert _export(env.tmp_path, database_url, "--unfinished", "--older-than", "0") == []


@pytest_twisted.ensureDeferred
async def test_repeats_and_a_late_start_change_nothing(env: Env) -> None:
    await _report(env, "usage-indication-stop.http")
    (after_stop,) = _legs(env, int(CAPTURED_TRANSACTION_ID))
    await _report(env, "usage-indication-stop.http")  # exact repeat: confirmed again
    await _report(env, "usage-indication-start.http")  # late: fills gaps only
    await _report(env, "usage-indication-start.http")
    (leg,) = _legs(env, int(CAPTURED_TRANSACTION_ID))
    assert leg["state"] == "stop"
    assert leg["end_time"] == after_stop["end_time"]
    assert leg["termination_cause_code"] == "10016"
    assert leg["connect_time"] is not None  # only the start carried it
    assert leg["duration"] == Decimal("2.000")
    assert leg["reports"] == 2


@pytest_twisted.ensureDeferred
async def test_a_leg_without_its_stop_is_listed_as_unfinished(env: Env, database_url: str) -> None:
    await _report(env, "usage-indication-start.http")
    (row,) = _export(env.tmp_path, database_url, "--unfinished", "--older-than", "0")
    assert row["state"] == "start" and row["end_time"] == ""
    assert _export(env.tmp_path, database_url, "--unfinished") == []  # within the limit


@pytest_twisted.ensureDeferred
async def test_the_call_limit_slot_is_released_at_stop_not_at_answer(env: Env) -> None:
    ended = spy_call_ended(env)
    head, body = split_vector(OPENSIPS / "authorization-request.http")
    answer = await env.post(body, head=head)
    assert answer.code == 200
    request = decode_request(body)
    assert isinstance(request, AuthorizationRequest)
    problems = check_osp_response(
        answer.head + b"\r\n\r\n", answer.body, expect="AuthorizationResponse", request=request
    )
    assert problems == []
    transaction_id = ElementTree.fromstring(answer.body).findtext(
        "AuthorizationResponse/TransactionId"
    )
    assert transaction_id
    await _report(env, "usage-indication-start.http", transaction_id.encode())
    (leg,) = _legs(env, int(transaction_id))
    assert leg["state"] == "start"
    assert ended == []  # answered: the call goes on
    await _report(env, "usage-indication-stop.http", transaction_id.encode())
    assert ended == [int(transaction_id)]


@pytest_twisted.ensureDeferred
async def test_hostile_amounts_are_stored_verbatim_never_a_5xx(env: Env) -> None:
    head, body = _usage("usage-indication-stop.http")
    with capturedLogs() as events:
        for amount in (b"1E+1000000", b"-1E+999999999", b"NaN", b"0x10"):
            hostile = re.sub(rb"<Amount>\s*[^<]*", b"<Amount>\n" + amount, body)
            answer = await env.post(hostile, head=head)
            assert answer.code == 200, amount
    # Each one named in a warning: the operator sees which device sends what.
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 4
    assert "UsageDetail/Amount '1E+1000000' is not a number in 0..999999999.999" in warnings[0]
    assert "stored without the value(s), kept verbatim" in warnings[0]
    (leg,) = _legs(env, int(CAPTURED_TRANSACTION_ID))
    assert leg["reported_amount"] is None  # unusable: kept only in the fields
    assert leg["duration"] == Decimal("2.000")  # from the times
    assert '"UsageDetail/Amount": "0x10"' in str(leg["fields"])
