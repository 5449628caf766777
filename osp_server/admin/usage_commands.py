"""``osp-admin usage export``: call detail records for billing and analysis."""

from __future__ import annotations

import argparse
import base64
import csv
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from osp_server.admin.cli import AdminError, Context
from osp_server.storage import calls

PAGE_ROWS = 5000


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"{option}: not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def cmd_usage_export(ctx: Context, args: argparse.Namespace) -> None:
    """Write usage records as CSV (default) or JSON lines, oldest first, page by page."""
    since = _time(args.since, "--since")
    until = _time(args.until, "--until")
    as_json = ctx.as_json or args.format == "json"
    writer = None if as_json else csv.writer(ctx.out, lineterminator="\n")
    if writer is not None:
        writer.writerow(calls.USAGE_EXPORT_COLUMNS)
    after, written = 0, 0
    while args.limit is None or written < args.limit:
        page_size = PAGE_ROWS if args.limit is None else min(PAGE_ROWS, args.limit - written)
        rows = ctx.db.transact_sync(
            calls.usage_page, after_id=after, since=since, until=until, limit=page_size
        )
        if not rows:
            break
        for row in rows:
            cells = [_cell(row[c]) for c in calls.USAGE_EXPORT_COLUMNS]
            if writer is not None:
                writer.writerow(cells)
            else:
                ctx.out.write(json.dumps(dict(zip(calls.USAGE_EXPORT_COLUMNS, cells, strict=True))))
                ctx.out.write("\n")
        written += len(rows)
        after = rows[-1]["id"]


def register(groups: Any) -> None:
    """Add the ``usage`` command group."""
    usage = groups.add_parser("usage", help="usage records (CDRs)").add_subparsers(
        dest="command", required=True
    )
    p = usage.add_parser("export", help="export usage records (CSV, or JSON lines)")
    p.add_argument("--since", help="received at or after this ISO 8601 time (UTC default)")
    p.add_argument("--until", help="received before this ISO 8601 time")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--limit", type=int, help="at most this many records")
    p.set_defaults(func=cmd_usage_export)
