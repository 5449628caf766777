"""Log observers for ``twistd --logger``.

``twistd -n --pidfile= --logger osp_server.logging.json_stdout osp`` writes one JSON
object per line (NDJSON) on stdout, for journald or a log shipper.  Each object reads
on its own: ``time`` (ISO 8601 UTC), ``level``, ``namespace``, ``message`` (rendered),
``error`` and ``traceback`` for a logged failure, then the event's own fields (the
access log's ``method``, ``path``, ``code`` …, a relayed worker's ``worker``).
Twisted's internal keys (``log_format``, ``log_logger``, ``log_source`` …) are left out.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python.failure import Failure

# Keys of the legacy twisted.python.log bridge that duplicate what the document says.
_INTERNAL = frozenset({"format", "isError", "message", "system", "time", "why", "failure"})
_WHOLE_FIELD = re.compile(r"\{(\w+)\}")
_SAFE_INT = 2**53


def event_as_document(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object written for one log event (module docstring)."""
    level = event.get("log_level")
    stamp = event.get("log_time")
    when = datetime.fromtimestamp(stamp if isinstance(stamp, int | float) else time.time(), UTC)
    document: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "message": _message(event),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        document["error"] = failure.getErrorMessage()
        document["traceback"] = failure.getTraceback()
    # An event logged as "{access_line}" carries its text twice: keep the message.
    whole = _WHOLE_FIELD.fullmatch(str(event.get("log_format") or ""))
    skipped = {whole.group(1)} if whole else set()
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in document or key in skipped:
            continue
        # Beyond 2**53 a JSON number loses digits in most readers (certificate serials).
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INT:
            value = str(value)
        document[key] = value
    return document


def _message(event: dict[str, Any]) -> str:
    text = formatEvent(event)
    if not text and isinstance(event.get("message"), tuple | list):
        text = " ".join(str(part) for part in event["message"])
    return text


def _line(event: dict[str, Any]) -> str:
    # default=str: a field of any type (a path, an address object) still serializes.
    return json.dumps(event_as_document(event), default=str, ensure_ascii=False) + "\n"


def json_observer(stream: TextIO) -> ILogObserver:
    """One readable JSON object per event on ``stream``."""
    return FileLogObserver(stream, _line)


def json_stdout() -> ILogObserver:
    """NDJSON on stdout."""
    return json_observer(sys.stdout)
