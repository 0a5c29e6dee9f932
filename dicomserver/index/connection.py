"""The index's database: opening it, per-request connections, and the single writer lock.

SQLite by default, PostgreSQL by URL (pooled). Writers are serialised on both: on
SQLite they take the write lock up front (BEGIN IMMEDIATE) after queueing on a
host-wide lock (_SqliteWriteLock), so concurrent writers from several processes wait
their turn, up to the busy timeout, instead of failing on a lock upgrade; on
PostgreSQL a transaction-scoped advisory lock does the same. So change-feed sequences
are assigned in commit order without gaps, and check-then-insert needs no retries.

Writes that arrive together share a commit (`GroupCommit`): a commit costs an fsync
(SQLite's WAL, PostgreSQL's WAL flush), far more than the rows of one instance, so the
threads of a process that store while a commit runs queue up, and the first of them
writes the queue's records in one transaction, a savepoint each, and commits once.
"""
from __future__ import annotations

import copy
import datetime as dt
import fcntl
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TypeVar

import peewee as pw
from playhouse.db_url import parse as parse_url

from .models import database_proxy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most writes one commit carries: bounds what the first of a group waits for the others' rows.
GROUP_COMMIT_LIMIT = 64


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


#: pg_advisory_xact_lock key that serialises writers on PostgreSQL (as BEGIN IMMEDIATE does on SQLite).
_WRITE_LOCK_KEY = 0x44494357  # "DICW"


class IndexDatabase:
    """One database (SQLite or PostgreSQL) and its writer lock; the base of `Index`."""

    def __init__(self, database_url: str, *, sqlite_busy_timeout_ms: int = 30000, pool_size: int = 16):
        self.database_url = database_url
        self.is_sqlite = database_url.startswith("sqlite")
        self.db: pw.Database
        if self.is_sqlite:
            path = database_url[len("sqlite:///"):]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._write_lock = _SqliteWriteLock(path, sqlite_busy_timeout_ms / 1000)
            self.db = pw.SqliteDatabase(
                path,
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": "full",  # a 200 to STOW survives power loss
                    "foreign_keys": 1,
                    "busy_timeout": sqlite_busy_timeout_ms,
                    "case_sensitive_like": 1,
                },
                timeout=sqlite_busy_timeout_ms / 1000,
            )
        else:
            self.db = _postgres(database_url, pool_size)
        database_proxy.initialize(self.db)
        #: Writes that arrive while a commit runs share the next one (see GroupCommit).
        self.group_commit = GroupCommit(self)

    def connect(self) -> None:
        self.db.connect(reuse_if_open=True)

    def close(self) -> None:
        """End a request's use of the database: a pooled connection goes back to the pool.

        A SQLite connection stays open for the thread's next request: opening one costs
        more than most queries (its PRAGMAs run on every open).
        """
        if not self.is_sqlite and not self.db.is_closed():
            self.db.close()

    def shutdown(self) -> None:
        """Close every connection, pooled ones included (app teardown)."""
        if not self.db.is_closed():
            self.db.close()
        if hasattr(self.db, "close_all"):
            self.db.close_all()
        if self.is_sqlite:
            self._write_lock.close()

    def check(self) -> None:
        self.db.execute_sql("SELECT 1")

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """A write transaction that holds the database's single write lock.

        Writers are serialised on both databases (SQLite: BEGIN IMMEDIATE; PostgreSQL:
        a transaction-scoped advisory lock), so change-feed sequences are assigned in
        commit order without gaps, and check-then-insert needs no retry logic.
        """
        if self.is_sqlite:
            with self._write_lock, self.db.atomic("IMMEDIATE"):
                yield
            return
        with self.db.atomic():
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))
            yield

    def write_each(self, writes: Sequence[Callable[[], T]]) -> list[T | Exception]:
        """Run `writes` in order in one write transaction, committed once; their results.

        Each write of several runs as if in a savepoint of its own: one that raises is
        rolled back alone, and its exception is its result. An error of the transaction
        itself (no write lock, a savepoint that cannot be rolled back, the commit) is
        raised, and then none of the writes is stored. A lone write needs no savepoint:
        its error rolls back the transaction and is its result.

        Savepoints cost: SQLite copies each page a savepoint's writes touch into its
        statement journal first (about 18 pages an instance, far more than the commit
        writes). So several writes first run together in one savepoint, which copies a
        page once for all of them; only if one raises is that undone and each run again
        in a savepoint of its own (the failing one fails again: its result).
        """
        results: list[T | Exception] = []
        lone = len(writes) == 1
        writing = False
        try:
            with self.write_transaction():
                if lone:
                    writing = True
                    results.append(writes[0]())
                    writing = False
                else:
                    results = self._all_or_each(writes)
        except Exception as exc:
            if writing:
                return [exc]
            raise
        return results

    def _all_or_each(self, writes: Sequence[Callable[[], T]]) -> list[T | Exception]:
        """Every write in one savepoint; if one raises, each in its own (see write_each)."""
        self.db.execute_sql("SAVEPOINT group_all")
        try:
            results: list[T | Exception] = [write() for write in writes]
        except Exception:
            # On PostgreSQL the failed statement aborted the transaction: this resumes it.
            self.db.execute_sql("ROLLBACK TO SAVEPOINT group_all")
            self.db.execute_sql("RELEASE SAVEPOINT group_all")
            return [self._in_savepoint(write) for write in writes]
        self.db.execute_sql("RELEASE SAVEPOINT group_all")
        return results

    def _in_savepoint(self, write: Callable[[], T]) -> T | Exception:
        self.db.execute_sql("SAVEPOINT group_member")
        result: T | Exception
        try:
            result = write()
        except Exception as exc:
            # On PostgreSQL the failed statement aborted the transaction: this resumes it.
            self.db.execute_sql("ROLLBACK TO SAVEPOINT group_member")
            result = exc
        self.db.execute_sql("RELEASE SAVEPOINT group_member")
        return result


class GroupCommit:
    """One commit for the writes a process's threads ask for while the previous commit runs.

    The first caller becomes the leader: it takes up to `limit` queued writes (its own
    first), runs them with `IndexDatabase.write_each` (one transaction, the write lock
    taken once, a savepoint each) and wakes every member with its own result; then the
    next queued caller, if any, leads the next group. Nobody waits for company: a lone
    write commits at once, and a group is whatever queued while the last commit ran.
    No caller returns before the commit that holds its write, and a process commits its
    groups in queue order, so change-feed sequences still follow commit order.
    """

    def __init__(self, database: IndexDatabase, limit: int = GROUP_COMMIT_LIMIT):
        self._database = database
        self._limit = limit
        self._mutex = threading.Lock()
        self._queue: deque[_Member] = deque()
        self._leading = False
        _FORK_SENSITIVE.add(self)

    def __call__(self, write: Callable[[], T]) -> T:
        """The result of `write` once committed; its exception, or the group's, is raised."""
        member = _Member(write)
        with self._mutex:
            self._queue.append(member)
            member.leads = not self._leading
            self._leading = True
        if not member.leads:
            member.done.wait()  # committed by a leader, or this thread is handed the lead
        if member.leads:
            self._lead()
        return member.outcome()  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._mutex:
            group = [self._queue.popleft() for _ in range(min(self._limit, len(self._queue)))]
        try:
            try:
                results: Sequence[object] = self._database.write_each([m.write for m in group])
            except BaseException as exc:  # the whole group failed: nothing of it is stored
                results = [exc] + [_for_another_thread(exc) for _ in group[1:]]
            for member, result in zip(group, results, strict=True):
                member.result = result
        finally:
            with self._mutex:
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
            for member in group[1:]:
                member.done.set()

    def _after_fork_in_child(self) -> None:
        """The parent's threads, queued or leading, do not exist here."""
        self._mutex = threading.Lock()
        self._queue = deque()
        self._leading = False


class _Member:
    """One caller's write in a GroupCommit queue, and what became of it."""

    __slots__ = ("done", "leads", "result", "write")

    def __init__(self, write: Callable[[], object]):
        self.write = write
        self.result: object = _PENDING
        self.leads = False
        self.done = threading.Event()

    def outcome(self) -> object:
        if self.result is _PENDING:  # the leader's thread was stopped before its commit ended
            raise pw.OperationalError("the index write was interrupted")
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


_PENDING = object()


def _for_another_thread(exc: BaseException) -> BaseException:
    """The group's failure as another member raises it: a copy (one exception raised in
    several threads would gather all their tracebacks); the leader's interruption
    (KeyboardInterrupt, a worker's exit) is an outage for the others."""
    if not isinstance(exc, Exception):
        return pw.OperationalError("the index write was interrupted")
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc
    clone.__traceback__ = None
    return clone


class _SqliteWriteLock:
    """Queue this host's SQLite writers on a lock that hands over within milliseconds.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so writers that
    collide on the database lock (several threads and gunicorn workers storing at
    once) lose far more time sleeping than the transactions take. Threads of a process
    queue on a mutex, processes on flock() of '<database>-writelock' (polled every
    0.5-5 ms); BEGIN IMMEDIATE stays as the guarantee for any other process writing
    the file. Both waits end after the busy timeout with OperationalError (a 503).
    """

    def __init__(self, path: str, timeout_s: float):
        self._timeout = timeout_s
        self._path = f"{os.path.abspath(path)}-writelock" if path and path != ":memory:" else None
        self._fd: int | None = None
        self._mutex = threading.Lock()
        _FORK_SENSITIVE.add(self)

    def __enter__(self) -> None:
        deadline = time.monotonic() + self._timeout
        if not self._mutex.acquire(timeout=self._timeout):
            raise pw.OperationalError(f"database is locked: no write turn within {self._timeout:g} s")
        try:
            fd = self._lock_file()
            if fd is not None:
                self._flock(fd, deadline)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _lock_file(self) -> int | None:
        if self._fd is None and self._path is not None:
            try:  # read-only is enough for flock, so any user of the database can lock it
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o666)
            except OSError as exc:
                log.warning("cannot open %s (%s): writers wait on SQLite's busy handler", self._path, exc)
                self._path = None
        return self._fd

    def _flock(self, fd: int, deadline: float) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise pw.OperationalError(
                        f"database is locked: another process held {self._path} for {self._timeout:g} s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def _after_fork_in_child(self) -> None:
        """The parent's threads do not exist here: whatever they held is free."""
        self._mutex = threading.Lock()
        self.close()


#: The write locks and group commits of this process, reset in a forked child.
_FORK_SENSITIVE: weakref.WeakSet[_SqliteWriteLock | GroupCommit] = weakref.WeakSet()
if hasattr(os, "register_at_fork"):

    def _reset_after_fork() -> None:
        for each in list(_FORK_SENSITIVE):
            each._after_fork_in_child()

    os.register_at_fork(after_in_child=_reset_after_fork)


def _postgres(database_url: str, pool_size: int) -> pw.Database:
    """A pooled PostgreSQL database from postgresql[+pool]://user:password@host:port/name."""
    from playhouse.pool import PooledPostgresqlDatabase

    url = database_url.replace("+pool", "", 1).replace("postgres://", "postgresql://", 1)
    params = parse_url(url)
    database = params.pop("database")
    return PooledPostgresqlDatabase(database, max_connections=pool_size, stale_timeout=300, timeout=30, **params)
