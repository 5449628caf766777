"""The database engine, its dedicated thread pool, and migrations.

Every database call runs on the pool and comes back as a Deferred, so nothing
touches a connection on the reactor thread.  SQLite (the embedded default) runs
with WAL and ``synchronous=FULL`` through one connection and one thread: a single
writer.  PostgreSQL (psycopg 3) gets a pool of connections and threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, NoReturn, ParamSpec, Protocol, TypeAlias, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from osp_server.config import DatabaseConfig
from osp_server.pki.files import make_private_directory, make_private_file, remove_world_access
from osp_server.reactor import IOSPReactor
from osp_server.storage.errors import (
    DurabilityError,
    StorageError,
    describe_error,
    storage_error,
)
from osp_server.storage.group_commit import GroupCommitWriter

__all__ = [
    "Database",
    "DurabilityError",
    "StorageError",
    "TransactionObserver",
    "check_durability",
    "create_db_engine",
    "open_database",
    "schema_status",
    "upgrade_schema",
]

log = Logger()

READ_TIMEOUT_SECONDS = 120.0
"""How long a long read (a whole route table) may take before it counts as failed."""

T = TypeVar("T")
P = ParamSpec("P")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def normalize_url(url: str) -> str:
    """Select psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy defaults to psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def displayable_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and command output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported elsewhere; show nothing of it
        return "<unreadable database URL>"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other engines."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return Path(parsed.database)
    return None


SQLITE_SUFFIXES = ("", "-wal", "-shm")
"""A SQLite database is its file and, in WAL mode, the two beside it with these suffixes."""


def _private_sqlite_file(path: Path) -> None:
    # The file holds password hashes and call records: owner-only from its first byte,
    # whatever the umask.  SQLite creates the -wal and -shm files with the database
    # file's own mode, so they follow.  Existing files lose other users' access only.
    try:
        make_private_directory(path.parent)
        make_private_file(path)
    except OSError as e:
        raise StorageError(f"{path}: {e.strerror or e}") from None
    for file in (Path(f"{path}{suffix}") for suffix in SQLITE_SUFFIXES):
        try:
            if file.exists() and remove_world_access(file):
                log.warn("{path}: was readable by other users; no longer", path=str(file))
        except PermissionError:
            log.warn(
                "{path}: readable by other users, and this process does not own it to change that",
                path=str(file),
            )
        except OSError:
            pass  # vanished between the check and the change (a checkpoint)


def create_db_engine(
    url: str, *, pool_size: int = 4, timeout_seconds: float = 10.0, read_only: bool = False
) -> Engine:
    """Create an engine with the durable settings of each engine applied on connect.

    ``read_only`` engines are for long reads beside the writer (route tables): on
    SQLite their transactions are deferred and ``query_only``, so they never take the
    write lock; on PostgreSQL their transactions are read-only.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise StorageError("SQLite needs a file path: sqlite:///path/to/osp.sqlite3")
        if not read_only:  # the writer's engine, made first, did it
            _private_sqlite_file(Path(database))
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout_seconds,
            connect_args={
                "isolation_level": None,
                "check_same_thread": False,
                "timeout": timeout_seconds,
            },
        )
        busy_ms = int(timeout_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            if read_only:
                # A snapshot of the WAL that the writer never waits for.
                conn.exec_driver_sql("BEGIN")
                return
            # Take the write lock up front: a deferred transaction that later writes
            # fails at once with "database is locked" when another process wrote.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        if read_only:

            @event.listens_for(engine, "connect")
            def _sqlite_query_only(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA query_only=ON")
                cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        statement_ms = int(timeout_seconds * 1000)
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout_seconds,
            pool_pre_ping=True,
            # A long read (version, routes, blocks) sees one snapshot of the database.
            **({"isolation_level": "REPEATABLE READ"} if read_only else {}),
            connect_args={
                "connect_timeout": max(1, int(timeout_seconds)),
                "options": f"-c statement_timeout={statement_ms}"
                + (" -c default_transaction_read_only=on" if read_only else ""),
            },
        )
    raise StorageError(f"unsupported database URL scheme: {parsed.drivername}")


def check_durability(conn: Connection) -> None:
    """Refuse to run when commits would not be durable (SECURITY.md R9)."""
    if conn.dialect.name == "sqlite":
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        if str(mode).lower() != "wal" or sync != 2:
            raise DurabilityError(
                f"SQLite must run with journal_mode=WAL and synchronous=FULL "
                f"(got journal_mode={mode}, synchronous={sync})"
            )
    elif conn.dialect.name == "postgresql":
        fsync = conn.exec_driver_sql("SHOW fsync").scalar()
        if str(fsync).lower() != "on":
            raise DurabilityError(f"PostgreSQL must run with fsync=on (got fsync={fsync})")


def _alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


MigrationApplied: TypeAlias = Callable[[str, str], None]
"""Told ``(revision, description)`` after each migration step is applied."""


def upgrade_schema(
    engine: Engine, revision: str = "head", *, on_applied: MigrationApplied | None = None
) -> str | None:
    """Apply the pending migrations up to ``revision``; returns the revision now current.

    On SQLite, foreign keys are off while migrations run (a table that others refer to
    can only be rebuilt so: SQLite's documented procedure) and checked before the
    commit: a violation rolls the whole upgrade back.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Outside any transaction, where SQLite honours it (the DBAPI connection
            # runs in autocommit; SQLAlchemy's would begin one first).
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                cfg = _alembic_config(conn)
                if on_applied is not None:
                    cfg.attributes["on_version_apply"] = _reporting(on_applied)
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise StorageError(
                            f"the migration would leave {len(broken)} rows whose foreign "
                            f"keys point nowhere (first: {tuple(broken[0])}); nothing changed"
                        )
                current = MigrationContext.configure(conn).get_current_revision()
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    return current


def _reporting(on_applied: MigrationApplied) -> Callable[..., None]:
    """Alembic's ``on_version_apply`` hook, reduced to (revision, description)."""

    def hook(*, step: Any, **_: Any) -> None:
        on_applied(str(step.up_revision_id), str(step.up_revision.doc or ""))

    return hook


def pending_migrations(engine: Engine) -> list[str]:
    """The revisions an upgrade to head would apply, oldest first."""
    current, head = schema_status(engine)
    if head is None or current == head:
        return []
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return [r.revision for r in reversed(list(script.iterate_revisions(head, current)))]


MIGRATION_TIMEOUT_SECONDS = 3600.0
"""Statement and lock timeout for migrations: an index built over a large table takes
far longer than the request-path timeout allows."""


def migrate_schema(
    url: str,
    *,
    on_pending: Callable[[list[str]], None] | None = None,
    on_applied: MigrationApplied | None = None,
) -> str | None:
    """:func:`upgrade_schema` on an engine of its own with MIGRATION_TIMEOUT_SECONDS
    (the server's engine carries the short request-path timeout).  ``on_pending`` is
    told the revisions about to be applied, ``on_applied`` each one when it is."""
    engine = create_db_engine(url, pool_size=1, timeout_seconds=MIGRATION_TIMEOUT_SECONDS)
    try:
        if on_pending is not None:
            on_pending(pending_migrations(engine))
        return upgrade_schema(engine, on_applied=on_applied)
    finally:
        engine.dispose()


def schema_status(engine: Engine) -> tuple[str | None, str | None]:
    """(current revision, head revision) of the database."""
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    return current, head


def known_revision(revision: str) -> bool:
    """True when this program's migrations include ``revision`` (a database migrated by
    a newer version carries one it does not know)."""
    try:
        return ScriptDirectory(str(MIGRATIONS_DIR)).get_revision(revision) is not None
    except Exception:  # alembic raises several error types for an unknown id
        return False


class TransactionObserver(Protocol):
    """Told about every transaction :meth:`Database.transact` ran (the metrics hook)."""

    def __call__(self, desc: str, seconds: float, outcome: str) -> None:
        """``desc`` is the caller's label; ``seconds`` the time spent in the worker
        thread (queueing excluded); ``outcome`` is ``ok``, ``error`` or ``timeout``."""


def _ignore(desc: str, seconds: float, outcome: str) -> None:
    pass


class Database:
    """An engine plus the thread pool that is the only place its connections are used.

    Work goes through :meth:`transact` as ``transact("label", something_txn, ...)``:
    the function (named ``*_txn`` by convention) gets the connection first and runs as
    one transaction; the label names it in the metrics (``observer``).
    """

    def __init__(
        self,
        engine: Engine,
        reactor: IOSPReactor | None,
        *,
        threads: int = 4,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reactor = reactor
        self._timeout = timeout_seconds
        # SQLite: one writer connection, so one thread; more threads would only queue.
        size = 1 if self.dialect == "sqlite" else threads
        self._pool = ThreadPool(minthreads=1, maxthreads=size, name="osp-db")
        self._started = False
        self.observer: TransactionObserver = _ignore
        self._writer: GroupCommitWriter | None = None
        # Long reads (whole route tables) get a connection and a thread of their own,
        # so that the writer (SQLite's only one) never waits for them, and a longer
        # timeout: a million routes take seconds to read.
        self.read_timeout_seconds = max(READ_TIMEOUT_SECONDS, timeout_seconds)
        self._read_pool = ThreadPool(minthreads=0, maxthreads=1, name="osp-db-read")
        self._read_engine: Engine | None = None
        # Tiny reads polled often (the access version) on a connection of their own:
        # neither a long read nor SQLite's writer lock may delay them.
        self._peek_pool = ThreadPool(minthreads=0, maxthreads=1, name="osp-db-peek")
        self._peek_engine: Engine | None = None

    def start(self) -> None:
        """Start the worker threads (call from the reactor thread)."""
        if not self._started:
            self._pool.start()
            self._read_pool.start()
            self._peek_pool.start()
            self._started = True

    def stop(self) -> None:
        """Stop the worker threads and close the connections."""
        if self._started:
            self._pool.stop()
            self._read_pool.stop()
            self._peek_pool.stop()
            self._started = False
        self.engine.dispose()
        for engine in (self._read_engine, self._peek_engine):
            if engine is not None:
                engine.dispose()

    def read(
        self,
        desc: str,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Run ``fn(connection, ...)`` in a read-only transaction on the reader's own
        connection and thread (see ``read_timeout_seconds``): for long reads that must
        not hold up writes.  Errors and timeouts come back as :class:`StorageError`."""
        if self._read_engine is None:
            self._read_engine = create_db_engine(
                self.engine.url.render_as_string(hide_password=False),
                pool_size=1,
                timeout_seconds=self.read_timeout_seconds,
                read_only=True,
            )
        return self._run(
            self._read_engine, self._read_pool, self.read_timeout_seconds, desc, fn, args, kwargs
        )

    def peek(
        self,
        desc: str,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Like :meth:`read`, for a tiny read that runs often and must not wait: its own
        read-only connection and thread, and the ordinary timeout."""
        if self._peek_engine is None:
            self._peek_engine = create_db_engine(
                self.engine.url.render_as_string(hide_password=False),
                pool_size=1,
                timeout_seconds=self._timeout,
                read_only=True,
            )
        return self._run(self._peek_engine, self._peek_pool, self._timeout, desc, fn, args, kwargs)

    def transact(
        self,
        desc: str,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Run ``fn(connection, ...)`` in one transaction on the pool; ``desc`` labels
        it for the observer (one label per call site, never per request).

        The transaction commits when ``fn`` returns and rolls back when it raises.
        Driver failures and calls that take longer than the configured timeout come
        back as :class:`StorageError` (a late thread finishes its work, but nobody
        waits for it).
        """
        return self._run(self.engine, self._pool, self._timeout, desc, fn, args, kwargs)

    def _run(
        self,
        engine: Engine,
        pool: ThreadPool,
        timeout: float,
        desc: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Deferred[T]:
        """``fn`` in one transaction of ``engine`` on ``pool``, observed and timed out."""
        reactor = self._reactor
        if reactor is None:
            raise RuntimeError("this Database was opened without a reactor: use transact_sync")
        observer = self.observer

        def work() -> T:
            started = time.perf_counter()
            outcome = "error"
            try:
                with engine.begin() as conn:
                    result = fn(conn, *args, **kwargs)
                outcome = "ok"
                return result
            except SQLAlchemyError as e:
                raise storage_error(e) from e
            finally:
                observer(desc, time.perf_counter() - started, outcome)

        d: Deferred[T] = deferToThreadPool(reactor, pool, work)
        d.addTimeout(timeout, reactor)
        d.addErrback(self._timed_out, desc, timeout)
        return d

    def group_commit(
        self,
        desc: str,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[T]:
        """Like :meth:`transact`, for small hot-path writes: ``fn`` runs in a
        transaction shared with the other writes waiting at the time (isolated in a
        savepoint when one of them fails), and the Deferred fires after that
        transaction's COMMIT (:mod:`osp_server.storage.group_commit`)."""
        if self._writer is None:
            if self._reactor is None:
                raise RuntimeError("this Database was opened without a reactor")
            self._writer = GroupCommitWriter(
                self.engine,
                self._reactor,
                lambda: self._pool,
                timeout_seconds=self._timeout,
                observer=lambda: self.observer,
                on_timeout=self._timed_out,
            )
        answer: Deferred[T] = self._writer.submit(desc, fn, *args, **kwargs)
        return answer

    def _timed_out(self, failure: Failure, desc: str, timeout: float) -> NoReturn:
        # Callers handle one exception type for "storage is not answering".
        if failure.check(defer.TimeoutError):
            self.observer(desc, timeout, "timeout")
            raise StorageError(f"database did not answer within {timeout:g} s")
        failure.raiseException()

    def transact_sync(
        self,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` in one transaction on the calling thread (CLI and start-up only)."""
        try:
            with self.engine.begin() as conn:
                return fn(conn, *args, **kwargs)
        except SQLAlchemyError as e:
            raise storage_error(e) from e

    def ping(self) -> Deferred[bool]:
        """True when the database answers a trivial query."""

        def ping_txn(conn: Connection) -> bool:
            return conn.execute(text("SELECT 1")).scalar() == 1

        return self.transact("ping", ping_txn)


def open_database(
    config: DatabaseConfig, reactor: IOSPReactor | None, *, migrate: bool = True
) -> Database:
    """Engine + migrations + durability check (blocking; start-up and CLI only).

    ``migrate=False`` (worker processes, whose supervisor migrated) only checks that
    the schema is at the head revision: N processes never run Alembic at once.
    """
    engine = create_db_engine(
        config.url, pool_size=config.threads, timeout_seconds=config.timeout_seconds
    )
    try:
        if migrate:
            migrate_schema(config.url)
        else:
            current, head = schema_status(engine)
            if current != head:
                engine.dispose()
                raise StorageError(
                    f"the schema is at revision {current}, not {head}: "
                    "start the server (or osp-admin db upgrade) to migrate it"
                )
        with engine.connect() as conn:
            check_durability(conn)
    except (SQLAlchemyError, OSError) as e:
        engine.dispose()
        raise StorageError(f"cannot open the database: {describe_error(e)}") from None
    return Database(engine, reactor, threads=config.threads, timeout_seconds=config.timeout_seconds)
