"""The JSON log: one readable object per event, without Twisted's internal keys."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from osp_server.logging import json_observer


def _logged(emit: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    log = Logger(namespace="osp_server.example", observer=json_observer(stream))
    emit(log)  # type: ignore[operator]
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_is_time_level_namespace_message_and_its_fields() -> None:
    (document,) = _logged(
        lambda log: log.info("http GET {path} {code}", path="/health", code=200, peer="10.0.0.1")
    )
    assert list(document)[:4] == ["time", "level", "namespace", "message"]
    assert document["level"] == "info" and document["namespace"] == "osp_server.example"
    assert document["message"] == "http GET /health 200"
    assert document["path"] == "/health" and document["code"] == 200
    assert str(document["time"]).endswith("Z") and "T" in str(document["time"])
    assert not [key for key in document if str(key).startswith("log_")]


def test_a_failure_carries_its_error_and_traceback() -> None:
    def emit(log: Logger) -> None:
        try:
            raise ValueError("bad thing")
        except ValueError:
            log.failure("could not {what}", Failure(), what="work", level=LogLevel.error)

    (document,) = _logged(emit)
    assert document["level"] == "error" and document["message"] == "could not work"
    assert document["error"] == "bad thing"
    assert "ValueError: bad thing" in str(document["traceback"])


def test_fields_of_any_type_serialize() -> None:
    from pathlib import Path

    (document,) = _logged(lambda log: log.info("data in {path}", path=Path("/var/lib/osp")))
    assert document["path"] == "/var/lib/osp"


def test_no_field_twice_and_big_numbers_as_text() -> None:
    (document,) = _logged(
        lambda log: log.info("{access_line}", access_line="http GET / 200", serial=2**70, n=5)
    )
    assert document["message"] == "http GET / 200" and "access_line" not in document
    assert document["serial"] == str(2**70) and document["n"] == 5
