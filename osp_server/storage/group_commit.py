"""Group commit: many small write transactions share one durable COMMIT.

The hot-path writes (an authorization's transaction record, usage records,
capabilities) are small, and on SQLite each one used to pay its own fsync: about 150
durable commits a second on the single writer.  Here requests queue on the reactor
thread; while one batch commits, the next requests wait, and then everything waiting
goes into the next transaction together:

- a batch first runs without savepoints (two statements fewer per request); when a
  request fails, that attempt is rolled back and the batch runs again with a SAVEPOINT
  per request, so one request's failure (a constraint, a bad value) rolls back only its
  own work and fails only its own Deferred;
- every Deferred fires only after the COMMIT returned: nothing is confirmed to a device
  before it is durable (SECURITY.md R1, R2); when the COMMIT fails, every request of
  the batch fails;
- a caller that stops waiting (the database timeout) gets ``StorageError`` as with
  :meth:`Database.transact`; its work may still commit later, as a late thread's does.

Batches run on the database pool one at a time (on SQLite the pool is the single
writer thread, so batches and other transactions never contend for the write lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from osp_server.reactor import IOSPReactor
from osp_server.storage.errors import StorageError, storage_error

log = Logger()

MAX_BATCH = 500
"""Requests per transaction at most: bounds the time one COMMIT holds everyone."""


class Observer(Protocol):
    """Told about each request (its label) and each COMMIT (label ``group_commit``)."""

    def __call__(self, desc: str, seconds: float, outcome: str) -> None:
        """As :class:`osp_server.storage.db.TransactionObserver`."""


MAX_WAITING = 10_000
"""Requests queued at most; beyond it new ones fail at once (storage far behind)."""


class _BatchLost(Exception):
    """The database ended the batch's transaction on its own."""


def _transaction_intact(conn: Any) -> bool:
    """Whether the batch's transaction is still open and usable."""
    dbapi = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite":
        return bool(dbapi.in_transaction)
    if conn.dialect.name == "postgresql":
        from psycopg.pq import TransactionStatus

        return bool(dbapi.info.transaction_status == TransactionStatus.INTRANS)
    return True


def _observe(observer: Observer, desc: str, seconds: float, outcome: str) -> None:
    # Metrics must never change what a request is answered.
    try:
        observer(desc, seconds, outcome)
    except Exception:
        log.failure("transaction observer failed for {desc}", desc=desc)


@dataclass
class _Request:
    desc: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    answer: Deferred[Any] = field(default_factory=Deferred)


@dataclass
class _Outcome:
    ok: bool
    value: Any  # the result, or the exception


class GroupCommitWriter:
    """Queues write transactions and commits them in batches (see the module doc)."""

    def __init__(
        self,
        engine: Engine,
        reactor: IOSPReactor,
        pool: Callable[[], ThreadPool],
        *,
        timeout_seconds: float,
        observer: Callable[[], Observer],
        on_timeout: Callable[[Failure, str, float], object],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._engine = engine
        self._reactor = reactor
        self._pool = pool
        self._timeout = timeout_seconds
        self._observer = observer
        self._on_timeout = on_timeout
        self._max_batch = max_batch
        self._waiting: list[_Request] = []
        self._committing = False

    def submit(self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Queue ``fn(connection, *args, **kwargs)``; its result once its batch committed."""
        if len(self._waiting) >= MAX_WAITING:
            # Storage is far behind: refuse at once rather than queue work that would
            # time out anyway (devices retry elsewhere on the error).
            _observe(self._observer(), desc, 0.0, "overloaded")
            return defer.fail(StorageError(f"database writer overloaded ({MAX_WAITING} waiting)"))
        request = _Request(desc, fn, args, kwargs)
        self._waiting.append(request)
        answer = request.answer
        answer.addTimeout(self._timeout, self._reactor)
        answer.addErrback(self._on_timeout, desc, self._timeout)
        if not self._committing:
            self._next_batch()
        return answer

    def _next_batch(self) -> None:
        # Requests whose callers stopped waiting (timeout, disconnect) are not run:
        # under overload, batches would otherwise be spent on work nobody waits for.
        while self._waiting:
            batch = [r for r in self._waiting[: self._max_batch] if not r.answer.called]
            del self._waiting[: self._max_batch]
            if batch:
                break
        else:
            return
        pool = self._pool()
        if not getattr(pool, "started", True):
            error = StorageError("the database is stopped")
            for request in batch:
                request.answer.errback(Failure(error))
            return
        self._committing = True
        try:
            d = deferToThreadPool(self._reactor, pool, self._run, batch, self._observer())
        except BaseException:
            self._committing = False
            raise
        d.addBoth(self._answer, batch)

    def _run(self, batch: list[_Request], observer: Observer) -> list[_Outcome]:
        """On the database pool: the batch in one transaction.

        First without savepoints (two statements fewer per request); if a request
        fails, that attempt is rolled back whole and the batch runs again with a
        savepoint per request, so the failure stays its own.
        """
        plain = self._run_plain(batch, observer)
        return plain if plain is not None else self._run_isolated(batch, observer)

    def _run_plain(self, batch: list[_Request], observer: Observer) -> list[_Outcome] | None:
        """Every request in one transaction; None (nothing committed) when one failed."""
        values: list[Any] = []
        timings: list[tuple[str, float]] = []
        committing: float | None = None
        try:
            with self._engine.begin() as conn:
                for request in batch:
                    started = time.perf_counter()
                    values.append(request.fn(conn, *request.args, **request.kwargs))
                    timings.append((request.desc, time.perf_counter() - started))
                if not _transaction_intact(conn):
                    # A request swallowed a database error (PostgreSQL's transaction
                    # is then aborted, and its COMMIT would quietly roll back).
                    raise _BatchLost("transaction aborted")
                committing = time.perf_counter()
        except Exception as e:
            if committing is None:
                return None  # a request failed: all rolled back, run isolated
            _observe(observer, "group_commit", 0.0, "error")
            error = StorageError(f"the batch was rolled back: {e}")
            return [_Outcome(False, error) for _ in batch]
        for desc, seconds in timings:
            _observe(observer, desc, seconds, "ok")
        _observe(observer, "group_commit", time.perf_counter() - committing, "ok")
        return [_Outcome(True, value) for value in values]

    def _run_isolated(self, batch: list[_Request], observer: Observer) -> list[_Outcome]:
        """One transaction, a savepoint per request."""
        outcomes: list[_Outcome] = []
        try:
            with self._engine.begin() as conn:
                for request in batch:
                    started = time.perf_counter()
                    savepoint = conn.begin_nested()
                    try:
                        value = request.fn(conn, *request.args, **request.kwargs)
                        if not _transaction_intact(conn):
                            # It swallowed a database error: PostgreSQL aborted the
                            # transaction, which only its savepoint's rollback repairs.
                            raise StorageError("database error inside the request")
                        savepoint.commit()
                    except Exception as e:  # the request's own failure: its alone
                        if savepoint.is_active:
                            savepoint.rollback()
                        error = storage_error(e) if isinstance(e, SQLAlchemyError) else e
                        outcomes.append(_Outcome(False, error))
                        outcome = "error"
                    else:
                        outcomes.append(_Outcome(True, value))
                        outcome = "ok"
                    _observe(observer, request.desc, time.perf_counter() - started, outcome)
                    if not _transaction_intact(conn):
                        # The database rolled back the whole transaction (SQLite does on
                        # some errors; PostgreSQL's is aborted): nothing before counts,
                        # and what follows would run outside any transaction.
                        raise _BatchLost(outcomes[-1].value)
                committing = time.perf_counter()
            _observe(observer, "group_commit", time.perf_counter() - committing, "ok")
        except (SQLAlchemyError, _BatchLost) as e:
            _observe(observer, "group_commit", 0.0, "error")
            cause = e.args[0] if isinstance(e, _BatchLost) else e
            error = StorageError(f"the batch was rolled back: {cause}")
            return [_Outcome(False, error) for _ in batch]
        return outcomes

    def _answer(self, result: list[_Outcome] | Failure, batch: list[_Request]) -> None:
        """On the reactor: answer each request of a finished batch, start the next."""
        try:
            if isinstance(result, Failure):
                outcomes = [_Outcome(False, result.value) for _ in batch]
            else:
                outcomes = result
            for request, outcome in zip(batch, outcomes, strict=True):
                if request.answer.called:
                    continue  # the caller stopped waiting (timeout)
                if outcome.ok:
                    request.answer.callback(outcome.value)
                else:
                    request.answer.errback(Failure(outcome.value))
        finally:
            # Whatever happened above, the queue must keep moving.
            self._committing = False
            if self._waiting:
                self._next_batch()
