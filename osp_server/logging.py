"""Log observers for ``twistd --logger``.

``twistd -n --pidfile= --logger osp_server.logging.json_stdout osp`` writes one JSON
object per line (NDJSON) on stdout, for journald or a log shipper.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_stdout() -> ILogObserver:
    """NDJSON on stdout (no RFC 7464 record separator)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
