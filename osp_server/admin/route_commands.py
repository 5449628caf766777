"""``osp-admin route``: import, export, list and delete routes and block rules.

Files are the CSV formats of `osp_server.routing.csvio`; an import is applied in one
transaction (the file read line by line within it), so a bad file changes
nothing. Every change bumps the route version, and each server node reloads its
tables within ``osp.route_refresh_seconds``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, cast

from osp_server.admin.context import (
    AdminError,
    Context,
    Subparsers,
    emit,
    emit_one,
    write_json,
)
from osp_server.admin.progress import counting_bytes, progress_bar
from osp_server.routing.csvio import (
    BLOCK_COLUMNS,
    ROUTE_COLUMNS,
    RouteFileError,
    iter_blocks_csv,
    iter_routes_csv,
    render_blocks_csv,
    render_routes_csv,
)
from osp_server.routing.model import BlockRule, Route
from osp_server.storage import routes as route_store

MAX_IMPORT_BYTES: Final = 4 * 1024 * 1024 * 1024
"""Route and block-rule files (read line by line) larger than this are refused before
they are read: about 50 million rows, beyond `MAX_STREAM_ROWS` anyway."""


def route_row(route: Route) -> dict[str, Any]:
    """A route as a dict (the cost an exact `Decimal`: a JSON number as stored)."""
    return {
        "table": route.table,
        "prefix": route.prefix,
        "destination": route.destination,
        "protocol": route.protocol,
        "priority": route.priority,
        "weight": route.weight,
        "cost": route.cost,
        "network_id": route.network_id,
        "call_limit": route.call_limit,
        "carrier": route.carrier,
        "strip_digits": route.strip_digits,
        "add_prefix": route.add_prefix,
        "schedule": route.schedule,
    }


def block_row(rule: BlockRule) -> dict[str, Any]:
    """A block rule as a dict."""
    return {
        "table": rule.table,
        "kind": rule.kind,
        "prefix": rule.prefix,
        "description": rule.description,
        "schedule": rule.schedule,
    }


def _result_row(name: str, count: int, result: route_store.ImportResult) -> dict[str, Any]:
    return {
        "file": name,
        "rows": count,
        "inserted": result.inserted,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "deleted": result.deleted,
        "version": result.version,
    }


def cmd_route_import(ctx: Context, args: argparse.Namespace) -> None:
    """Import a routes file (upsert; ``--replace`` also drops routes of the tables it
    names that it does not list).

    The file is read line by line inside the import transaction (millions of rows
    are fine); any bad line rolls the whole import back.
    """
    _import_file(ctx, args, "routes", iter_routes_csv, route_store.import_routes)


def cmd_route_import_blocks(ctx: Context, args: argparse.Namespace) -> None:
    """Import a block-rule file (upsert; ``--replace`` as for routes), streamed as
    routes files are."""
    _import_file(ctx, args, "block rules", iter_blocks_csv, route_store.import_blocks)


def _import_file(
    ctx: Context,
    args: argparse.Namespace,
    what: str,
    parse: Callable[[Iterable[bytes] | Iterable[str]], Iterable[Any]],
    store: Callable[..., route_store.ImportResult],
) -> None:
    action = "routes.imported" if what == "routes" else "route_blocks.imported"
    import_file(ctx, args.file, what, action, parse, store, replace=args.replace)


def import_file(
    ctx: Context,
    name: str,
    what: str,
    action: str,
    parse: Callable[[Iterable[bytes] | Iterable[str]], Iterable[Any]],
    store: Callable[..., route_store.ImportResult],
    *args: Any,
    replace: bool | None,
    max_bytes: int = MAX_IMPORT_BYTES,
) -> None:
    """Stream file ``name`` (``-``: standard input) through ``parse`` into
    ``store(conn, *args, items[, replace=replace])`` in one audited transaction
    (``action``), with a progress bar on a terminal; print the counts. ``replace``
    None: ``store`` takes no such option (it replaces everything)."""
    options = {} if replace is None else {"replace": replace}
    with _route_lines(ctx, name, max_bytes) as opened:
        bar = progress_bar(total=_size(opened), unit="B", description=f"importing {what}")
        lines = cast("Iterable[bytes] | Iterable[str]", counting_bytes(opened, bar))
        try:
            result = ctx.change(
                action,
                f"{what} file {_label(name)}",
                store,
                *args,
                parse(lines),
                detail=options or None,
                **options,
            )
        except (RouteFileError, route_store.RouteStoreError) as e:
            raise AdminError(f"{_label(name)}: {e}") from None
        except OSError as e:
            raise AdminError(f"{_label(name)}: cannot read: {e.strerror or e}") from None
        finally:
            bar.close()
    rows = result.inserted + result.updated + result.unchanged
    emit_one(ctx, _result_row(name, rows, result))


def _size(opened: object) -> int | None:
    """The size of a regular file being read, for the progress bar (None: a pipe)."""
    try:
        return os.fstat(opened.fileno()).st_size or None  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def _route_lines(
    ctx: Context, name: str, max_bytes: int
) -> Iterator[Iterable[bytes] | Iterable[str]]:
    """The lines of a routes file (``-``: standard input), opened for streaming; a
    regular file over ``max_bytes`` is refused before anything is read."""
    if name == "-":
        yield ctx.stdin
        return
    try:
        f = Path(name).open("rb")
    except OSError as e:
        raise AdminError(f"{name}: cannot read: {e.strerror or e}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise AdminError(f"{name}: cannot read: {e.strerror or e}") from None
        if size > max_bytes:
            raise AdminError(f"{name}: larger than {max_bytes} bytes")
        yield f


def _label(name: str) -> str:
    return "<stdin>" if name == "-" else name


def cmd_route_export(ctx: Context, args: argparse.Namespace) -> None:
    """Print routes (or block rules) as the CSV `route import` reads, or JSON."""
    if args.blocks:
        rules = ctx.db.transact_sync(route_store.list_blocks, table=args.table)
        if ctx.as_json:
            write_json(ctx.out, [block_row(r) for r in rules])
        else:
            ctx.out.write(render_blocks_csv(rules))
        return
    routes = ctx.db.transact_sync(route_store.list_routes, table=args.table)
    if ctx.as_json:
        write_json(ctx.out, [route_row(r) for r in routes])
    else:
        ctx.out.write(render_routes_csv(routes))


def cmd_route_list(ctx: Context, args: argparse.Namespace) -> None:
    """List routes (or block rules) as a table, or JSON."""
    if args.blocks:
        rules = ctx.db.transact_sync(route_store.list_blocks, table=args.table)
        emit(ctx, [block_row(r) for r in rules], BLOCK_COLUMNS)
        return
    routes = ctx.db.transact_sync(route_store.list_routes, table=args.table)
    emit(ctx, [route_row(r) for r in routes], ROUTE_COLUMNS)


def _report_delete(ctx: Context, delete: Callable[..., int], **where: Any) -> None:
    """Run one delete and print how many rows went and the route version after it."""

    def work(conn: Any) -> tuple[int, int]:
        return delete(conn, **where), route_store.current_version_txn(conn)

    action = "route_blocks.deleted" if delete is route_store.delete_blocks else "routes.deleted"
    count, version = ctx.change(
        action,
        f"route table {where.get('table')}",
        work,
        detail={k: v for k, v in where.items() if v is not None},
    )
    emit_one(ctx, {"deleted": count, "version": version})


def cmd_route_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Delete routes of a table (all, or those matching --prefix / --destination)."""

    _report_delete(
        ctx,
        route_store.delete_routes,
        table=args.table,
        prefix=args.prefix,
        destination=args.destination,
    )


def cmd_route_delete_blocks(ctx: Context, args: argparse.Namespace) -> None:
    """Delete block rules of a table (all, or those matching --kind / --prefix)."""

    _report_delete(
        ctx, route_store.delete_blocks, table=args.table, kind=args.kind, prefix=args.prefix
    )


def cmd_route_version(ctx: Context, _args: argparse.Namespace) -> None:
    """Show the route version every node compares against."""
    emit_one(ctx, {"version": ctx.db.transact_sync(route_store.current_version_txn)})


def cmd_route_stats(ctx: Context, args: argparse.Namespace) -> None:
    """Route quality as the nodes last saved it (every minute): attempts, ASR, ACD,
    PDD and NER over the window, per destination, network id and carrier, with the
    cool-down left where a key is demoted. Several nodes' figures are added up."""
    import time

    from osp_server.routing.policy import DefaultRoutingPolicy
    from osp_server.storage import routing_data

    options = (
        ctx.config.plugin_options("default") if ctx.config.osp.routing_policy == "default" else {}
    )
    quality_options = {k: v for k, v in options.items() if k.startswith("quality_")}
    try:
        tracker = DefaultRoutingPolicy(**quality_options).quality
    except (TypeError, ValueError) as e:
        raise AdminError(f"[plugins.default] quality options: {e}") from None
    now = time.monotonic()
    wall = ctx.now().timestamp()
    saved = ctx.db.transact_sync(routing_data.load_quality_txn)
    for _node, data, _at in saved:
        tracker.restore(data, now, wall)
    rows = []
    for key in sorted(tracker.keys()):
        kind, _, name = key.partition(":")
        if args.key is not None and args.key not in key:
            continue
        rows.append({"kind": kind, "key": name, **tracker.stats(key, now).as_dict()})
    emit(
        ctx,
        rows,
        (
            "kind",
            "key",
            "attempts",
            "answered",
            "asr_percent",
            "acd_seconds",
            "pdd_seconds",
            "ner_percent",
            "demoted_seconds_left",
        ),
    )


def register(subparsers: Subparsers) -> None:
    """Add the ``route`` command group to ``osp-admin``'s subparsers."""
    route = subparsers.add_parser("route", help="routes and block rules").add_subparsers(
        dest="command", required=True
    )
    for name, func, what in (
        ("import", cmd_route_import, "routes"),
        ("import-blocks", cmd_route_import_blocks, "block rules"),
    ):
        p = route.add_parser(name, help=f"import {what} from a CSV file ('-': stdin)")
        p.add_argument("file", metavar="FILE.csv")
        p.add_argument(
            "--replace",
            action="store_true",
            help=f"also delete {what} of the tables in the file that the file does not list",
        )
        p.set_defaults(func=func)
    for name, func, text in (
        ("export", cmd_route_export, "print CSV that `route import` reads (--json: a list)"),
        ("list", cmd_route_list, "list routes"),
    ):
        p = route.add_parser(name, help=text)
        p.add_argument("--table", help="only this route table")
        p.add_argument("--blocks", action="store_true", help="block rules instead of routes")
        p.set_defaults(func=func)
    p = route.add_parser("delete", help="delete routes of a table")
    p.add_argument("--table", required=True)
    p.add_argument("--prefix", help="only this prefix ('' is the catch-all prefix)")
    p.add_argument("--destination", help="only this destination")
    p.set_defaults(func=cmd_route_delete)
    p = route.add_parser("delete-blocks", help="delete block rules of a table")
    p.add_argument("--table", required=True)
    p.add_argument("--kind", choices=["source", "destination"])
    p.add_argument("--prefix")
    p.set_defaults(func=cmd_route_delete_blocks)
    route.add_parser("version", help="show the route version").set_defaults(func=cmd_route_version)
    p = route.add_parser("stats", help="route quality: attempts, ASR, ACD, PDD, NER")
    p.add_argument("--key", help="only keys containing this text (a destination, carrier ...)")
    p.set_defaults(func=cmd_route_stats)
