"""The audit trail: one record per request that reads or changes patient data, or is refused.

Who (the token's subject or the API key's name), from where, what (method, route,
study/series/instance UIDs), the outcome (status, bytes) and the request id that ties
the record to the server's log. Never an attribute value, never a token. Each record
goes two ways:

- JSON lines (DICOMWEB_AUDIT_LOG: a file, `-` for stdout, `off`), written before the
  answer leaves, one write per record so that concurrent lines never interleave: the
  complete trail, for a SIEM;
- the index (DICOMWEB_AUDIT_STORE), in batches off the request path, kept for
  DICOMWEB_AUDIT_RETENTION_DAYS and searchable as FHIR AuditEvents at /audit.
"""
from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TextIO

import peewee as pw

from .index import AuditRecord, Index

__all__ = ["AuditLog", "AuditRecord", "AuditStore", "AuditTrail", "iso_time"]

log = logging.getLogger(__name__)


#: One encoder for every line: json.dumps with separators builds a new encoder per call.
_encode_line = json.JSONEncoder(separators=(",", ":")).encode


def iso_time(moment: dt.datetime) -> str:
    """UTC with milliseconds, ISO 8601 ('2026-12-06T03:54:32.609Z')."""
    if moment.tzinfo is not None:  # isoformat would append the offset
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"  # a third of strftime's time


class AuditLog:
    """Appends records to a file or stdout as JSON lines; `None` target: off."""

    def __init__(self, target: str | None):
        self.target = target
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if target not in (None, "-"):
            folder = os.path.dirname(os.path.abspath(target))
            os.makedirs(folder, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.target is not None

    def write(self, record: AuditRecord) -> None:
        if self.target is None:
            return
        fields = {name: getattr(record, name) for name in AuditRecord.__slots__}
        fields["time"] = iso_time(record.time)
        line = _encode_line(fields) + "\n"
        with self._lock:
            stream = self._stream()
            stream.write(line)
            stream.flush()

    def _stream(self) -> TextIO:
        if self.target == "-":
            return sys.stdout
        if self._file is None:  # opened in the worker that writes (after gunicorn's fork)
            assert self.target is not None
            self._file = open(self.target, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process
        return self._file


class AuditStore:
    """Records into the index in batches, so that no request waits on the write lock for its record.

    A request appends its record and goes on; a thread writes what has gathered every
    FLUSH_INTERVAL seconds in one transaction, deletes records past the retention at
    most every PURGE_INTERVAL, and ends once nothing is left (it starts again with the
    next record, so idle apps keep no thread). A worker that stops writes what is left
    (atexit); a crash can lose the last second here, never in the JSON lines. When
    the index cannot be written, records wait (up to MAX_PENDING) and are retried;
    after GIVE_UP_AFTER failed attempts in a row they are dropped, with an error.
    """

    FLUSH_INTERVAL = 1.0
    PURGE_INTERVAL = 3600.0
    MAX_PENDING = 100_000
    GIVE_UP_AFTER = 60

    def __init__(self, index: Index, retention_days: int):
        self.index = index
        self.retention = dt.timedelta(days=retention_days)
        self._reset()
        _STORES.add(self)

    def _reset(self) -> None:
        self._pending: list[AuditRecord] = []
        self._lock = threading.Lock()  # guards _pending and _thread
        self._flush_lock = threading.Lock()  # one batch at a time
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # close() cuts the thread's wait short
        self._failures = 0
        self._next_purge = 0.0

    def append(self, record: AuditRecord) -> None:
        with self._lock:
            if len(self._pending) >= self.MAX_PENDING:
                dropped = self._pending[: len(self._pending) - self.MAX_PENDING + 1]
                del self._pending[: len(dropped)]
                log.error("audit: %d records dropped from the index queue (they are in the JSON lines)", len(dropped))
            self._pending.append(record)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-store", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Write what is pending now (also before /audit answers, so this worker's records show)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                self._write(batch)

    def close(self) -> None:
        """Write what is pending and let the thread end (app shutdown)."""
        self.flush()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._wake.set()
            thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.FLUSH_INTERVAL)
                self._wake.clear()
                self.flush()
                if time.monotonic() >= self._next_purge:  # here only: never inside a request
                    self._next_purge = time.monotonic() + self.PURGE_INTERVAL
                    self._purge()
                with self._lock:
                    if not self._pending:
                        self._thread = None
                        return
        except BaseException:
            with self._lock:  # the next record starts a new thread
                self._thread = None
            raise

    def _write(self, batch: list[AuditRecord]) -> None:
        try:
            with _connection(self.index):
                self._store(batch)
            self._failures = 0
        except Exception as exc:
            self._failures += 1
            if self._failures >= self.GIVE_UP_AFTER:
                log.error("audit: %d records not stored in the index after %d attempts: %s",
                          len(batch), self._failures, exc)
                self._failures = 0
                return
            log.warning("audit: %d records not stored in the index yet (%s); retrying", len(batch), exc)
            with self._lock:
                self._pending[:0] = batch
                del self._pending[: max(0, len(self._pending) - self.MAX_PENDING)]

    def _store(self, batch: list[AuditRecord]) -> None:
        """One transaction; if the database refuses the data itself, each record alone, so
        that one bad record cannot keep the others out."""
        try:
            self.index.record_audit(batch)
        except (pw.DataError, pw.IntegrityError):
            if len(batch) == 1:
                log.error("audit: a record was refused by the index and dropped: %r", batch[0])
                return
            for record in batch:
                self._store([record])

    def _purge(self) -> None:
        before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - self.retention
        try:
            with _connection(self.index):
                removed = self.index.purge_audit(before)
        except Exception as exc:
            log.warning("audit: records older than %s not purged (%s)", before.date(), exc)
            return
        if removed:
            log.info("audit: %d records older than %s purged", removed, before.date())


class _connection:
    """Use this thread's connection, opening (and afterwards closing) one if it has none."""

    def __init__(self, index: Index):
        self.index = index
        self.opened = False

    def __enter__(self) -> None:
        if self.index.db.is_closed():
            self.index.db.connect()
            self.opened = True

    def __exit__(self, *exc: object) -> None:
        if self.opened:
            self.index.db.close()


class AuditTrail:
    """Both ways a record goes (JSON lines and the index); either may be off."""

    def __init__(self, log: AuditLog, store: AuditStore | None):
        self.log = log
        self.store = store

    @property
    def enabled(self) -> bool:
        return self.log.enabled or self.store is not None

    def write(self, records: Iterable[AuditRecord]) -> None:
        for record in records:
            self.log.write(record)
            if self.store is not None:
                self.store.append(record)

    def flush(self) -> None:
        if self.store is not None:
            self.store.flush()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


_STORES: weakref.WeakSet[AuditStore] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for store in list(_STORES):
        try:
            store.flush()
        except Exception:  # the interpreter is going: nothing else can be done
            log.exception("audit: pending records not stored at exit")


if hasattr(os, "register_at_fork"):

    def _forget_parent_records() -> None:
        """A forked worker starts empty: the parent's pending records and thread stay the parent's."""
        for store in list(_STORES):
            store._reset()

    os.register_at_fork(after_in_child=_forget_parent_records)
