"""The audit trail in the index: records written in batches, searched by date, subject and study.

Queries are built with peewee but executed on this index's own database
(`self.db.execute`), never through the models' shared proxy: the batch writer runs on
its own thread and must not follow the proxy to another app's database (tests build
many apps in one process).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields

import peewee as pw

from .connection import IndexDatabase
from .models import AuditEvent

#: Turns the driver's errors into peewee's (DataError, IntegrityError, ...) around raw cursors.
_DRIVER_ERRORS = pw.__exception_wrapper__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What one request did: who, from where, which route and UIDs, and the outcome.

    Never an attribute value, never a token: the UIDs are the only identifiers.
    """

    #: When the answer was sent (UTC, naive).
    time: dt.datetime
    request_id: str
    #: The token's `sub`/`oid`, the API key's name, or "-" when the API is open.
    subject: str
    client: str
    method: str
    #: The route with placeholders ('/v2/studies/<study>'), never the values.
    route: str
    #: The data action the route declared; None for a refused request to no such route.
    action: str | None
    study: str | None
    series: str | None
    instance: str | None
    status: int
    bytes: int | None
    #: The data partition the request's path named, once resolved (None: not partitioned).
    partition: str | None = None


@dataclass(frozen=True)
class AuditQuery:
    """A search of the stored records, newest first; `before_id` continues a page."""

    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive
    subject: str | None = None
    study: str | None = None
    before_id: int | None = None
    limit: int = 100


#: AuditRecord fields in column order ("time" is the `recorded` column).
_NAMES = [f.name for f in fields(AuditRecord)]
_COLUMNS = [AuditEvent.recorded, *(getattr(AuditEvent, name) for name in _NAMES[1:])]


class IndexAudit(IndexDatabase):
    def record_audit(self, records: Sequence[AuditRecord]) -> None:
        """Store a batch of records in one transaction.

        Plain SQL, not peewee's builder (~10 µs a row, paid for every request served).
        On PostgreSQL the rows go in one multi-row statement and without the writers'
        advisory lock: audit rows need no ordering with STOW's, so they never hold it up.
        """
        if not records:
            return
        convert = AuditEvent.recorded.db_value
        rows = [(convert(r.time), *(getattr(r, name) for name in _NAMES[1:])) for r in records]
        if self.is_sqlite:
            with self.write_transaction(), _DRIVER_ERRORS:
                self.db.cursor().executemany(self._audit_insert(), rows)
            return
        from psycopg2.extras import execute_values  # type: ignore[import-untyped]

        with self.db.atomic(), _DRIVER_ERRORS:  # psycopg2's errors as peewee's
            execute_values(self.db.cursor(), self._audit_insert(values="%s"), rows, page_size=1000)

    def _audit_insert(self, values: str | None = None) -> str:
        columns = ", ".join(f'"{field.column_name}"' for field in _COLUMNS)
        marks = values or "(" + ", ".join([self.db.param] * len(_COLUMNS)) + ")"
        return f'INSERT INTO "{AuditEvent._meta.table_name}" ({columns}) VALUES {marks}'

    def audit_records(self, query: AuditQuery) -> list[tuple[int, AuditRecord]]:
        """Matching records with their ids, newest first, at most `query.limit`."""
        select = AuditEvent.select(AuditEvent.id, *_COLUMNS)
        if query.since is not None:
            select = select.where(AuditEvent.recorded >= query.since)
        if query.until is not None:
            select = select.where(AuditEvent.recorded < query.until)
        if query.subject is not None:
            select = select.where(AuditEvent.subject == query.subject)
        if query.study is not None:
            select = select.where(AuditEvent.study == query.study)
        if query.before_id is not None:
            select = select.where(AuditEvent.id < query.before_id)
        return self._audit_rows(select.order_by(AuditEvent.id.desc()).limit(query.limit))

    def audit_record(self, record_id: int) -> tuple[int, AuditRecord] | None:
        rows = self._audit_rows(AuditEvent.select(AuditEvent.id, *_COLUMNS).where(AuditEvent.id == record_id))
        return rows[0] if rows else None

    def purge_audit(self, before: dt.datetime, *, batch: int = 10000) -> int:
        """Delete records older than `before`, `batch` rows per transaction (writers keep their turn)."""
        removed = 0
        oldest = AuditEvent.select(AuditEvent.id).where(AuditEvent.recorded < before).limit(batch)
        while True:
            with self.write_transaction():
                count = self.db.execute(AuditEvent.delete().where(AuditEvent.id.in_(oldest))).rowcount  # type: ignore[misc]
            removed += count
            if count < batch:
                return removed

    def _audit_rows(self, select: object) -> list[tuple[int, AuditRecord]]:
        cursor = self.db.execute(select)
        return [(row[0], AuditRecord(_datetime(row[1]), *row[2:])) for row in cursor.fetchall()]  # time first


def _datetime(value: dt.datetime | str) -> dt.datetime:
    """SQLite hands back the text peewee stored; PostgreSQL a datetime."""
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)
