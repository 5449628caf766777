"""``osp-admin usage export``: call detail records (one row per call leg) for billing.

A leg reported at answer and again at BYE is one row with its final values and the
state it reached; ``--unfinished`` lists the legs whose ``stop`` never came.
"""

from __future__ import annotations

import argparse
import base64
import csv
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from osp_server.admin.context import AdminError, Context, Subparsers, write_json
from osp_server.admin.progress import progress_bar
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


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def cmd_usage_export(ctx: Context, args: argparse.Namespace) -> None:
    """Write usage records as CSV (default) or JSON lines, oldest first, page by page."""
    since = _time(args.since, "--since")
    until = _time(args.until, "--until")
    unfinished_before = None
    if args.unfinished:
        older_than = (
            args.older_than
            if args.older_than is not None
            else ctx.config.osp.call_time_limit_seconds
        )
        if older_than < 0:
            raise AdminError(f"--older-than: must not be negative, not {older_than}")
        unfinished_before = ctx.now() - timedelta(seconds=older_than)
    elif args.older_than is not None:
        raise AdminError("--older-than: only with --unfinished")
    if args.device is not None and args.customer is None:
        raise AdminError("--device: only with --customer (device ids are per customer)")
    as_json = ctx.as_json or args.format == "json"
    writer = None if as_json else csv.writer(ctx.out, lineterminator="\n")
    if writer is not None:
        writer.writerow(calls.USAGE_EXPORT_COLUMNS)
    bar = progress_bar(total=args.limit, unit=" records", description="exporting usage")
    try:
        _export_pages(ctx, args, writer, bar, since, until, unfinished_before)
    finally:
        bar.close()


def _export_pages(
    ctx: Context,
    args: argparse.Namespace,
    writer: Any,
    bar: Any,
    since: datetime | None,
    until: datetime | None,
    unfinished_before: datetime | None,
) -> int:
    """Write the records page by page (keyset pagination); how many were written."""
    after, written = 0, 0
    while args.limit is None or written < args.limit:
        page_size = PAGE_ROWS if args.limit is None else min(PAGE_ROWS, args.limit - written)
        rows = ctx.db.transact_sync(
            calls.usage_page,
            after_id=after,
            since=since,
            until=until,
            limit=page_size,
            unfinished_before=unfinished_before,
            customer_id=args.customer,
            device_id=args.device,
        )
        if not rows:
            break
        for row in rows:
            if writer is not None:
                writer.writerow([_cell(row[c]) for c in calls.USAGE_EXPORT_COLUMNS])
            else:
                # Typed as every command's JSON: numbers, null, ISO 8601 times; the
                # call id in base64 as in the CSV (it is the device's bytes).
                record = {c: _json_value(row[c]) for c in calls.USAGE_EXPORT_COLUMNS}
                write_json(ctx.out, record, indent=None)
        written += len(rows)
        bar.update(len(rows))
        after = rows[-1]["id"]
    return written


def register(subparsers: Subparsers) -> None:
    """Add the ``usage`` command group."""
    usage = subparsers.add_parser("usage", help="usage records (CDRs)").add_subparsers(
        dest="command", required=True
    )
    p = usage.add_parser(
        "export", help="export call legs with their final values (CSV, or JSON lines)"
    )
    p.add_argument("--since", help="legs last changed at or after this ISO 8601 time (UTC default)")
    p.add_argument("--until", help="legs last changed before this ISO 8601 time")
    p.add_argument(
        "--unfinished",
        action="store_true",
        help="only legs whose stop report never came (see --older-than)",
    )
    p.add_argument(
        "--older-than",
        type=int,
        metavar="SECONDS",
        help="with --unfinished: unchanged for this long (default: [osp] call_time_limit_seconds)",
    )
    p.add_argument("--customer", help="only the legs of this customer's devices")
    p.add_argument("--device", help="with --customer: only this device's legs")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--limit", type=int, help="at most this many records")
    p.set_defaults(func=cmd_usage_export)
