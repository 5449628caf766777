"""Group commit: many small write transactions share one durable COMMIT.

The hot-path writes (an authorization's transaction record, usage records,
capabilities) are small, and on SQLite each one used to pay its own fsync: about 150
durable commits a second on the single writer.  Here requests queue on the reactor
thread; while one batch commits, the next requests wait, and then everything waiting
goes into the next transaction together:

- each request runs in its own SAVEPOINT, so one request's failure (a constraint, a bad
  value) rolls back only its own work and fails only its own Deferred;
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
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from osp_server.reactor import IOSPReactor
from osp_server.storage.errors import StorageError, storage_error

MAX_BATCH = 500
"""Requests per transaction at most: bounds the time one COMMIT holds everyone."""


class Observer(Protocol):
    """Told about each request (its label) and each COMMIT (label ``group_commit``)."""

    def __call__(self, desc: str, seconds: float, outcome: str) -> None:
        """As :class:`osp_server.storage.db.TransactionObserver`."""


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
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._engine = engine
        self._reactor = reactor
        self._pool = pool
        self._timeout = timeout_seconds
        self._observer = observer
        self._max_batch = max_batch
        self._waiting: list[_Request] = []
        self._committing = False
        self.batches = 0
        self.requests = 0

    def submit(self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Queue ``fn(connection, *args, **kwargs)``; its result once its batch committed."""
        request = _Request(desc, fn, args, kwargs)
        self._waiting.append(request)
        answer = request.answer
        answer.addTimeout(self._timeout, self._reactor)
        answer.addErrback(self._timed_out, desc)
        if not self._committing:
            self._next_batch()
        return answer

    def _timed_out(self, failure: Failure, desc: str) -> Failure:
        if failure.check(defer.TimeoutError):
            self._observer()(desc, self._timeout, "timeout")
            return Failure(StorageError(f"database did not answer within {self._timeout:g} s"))
        return failure

    def _next_batch(self) -> None:
        batch = self._waiting[: self._max_batch]
        del self._waiting[: self._max_batch]
        self._committing = True
        self.batches += 1
        self.requests += len(batch)
        observer = self._observer()
        d = deferToThreadPool(self._reactor, self._pool(), self._run, batch, observer)
        d.addBoth(self._answer, batch)

    def _run(self, batch: list[_Request], observer: Observer) -> list[_Outcome]:
        """On the database pool: one transaction, a savepoint per request."""
        outcomes: list[_Outcome] = []
        try:
            with self._engine.begin() as conn:
                for request in batch:
                    started = time.perf_counter()
                    try:
                        with conn.begin_nested():
                            value = request.fn(conn, *request.args, **request.kwargs)
                    except SQLAlchemyError as e:
                        outcomes.append(_Outcome(False, storage_error(e)))
                        observer(request.desc, time.perf_counter() - started, "error")
                    except Exception as e:  # the request's own refusal: its alone
                        outcomes.append(_Outcome(False, e))
                        observer(request.desc, time.perf_counter() - started, "error")
                    else:
                        outcomes.append(_Outcome(True, value))
                        observer(request.desc, time.perf_counter() - started, "ok")
                committing = time.perf_counter()
            observer("group_commit", time.perf_counter() - committing, "ok")
        except SQLAlchemyError as e:
            observer("group_commit", 0.0, "error")
            error = storage_error(e)
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
