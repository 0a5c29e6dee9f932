"""UPS-RS in the index: workitems (their DICOM JSON and search columns), subscriptions, and
the event reports open event channels read (ups_events.py).

Writes happen in the caller's `write_transaction()` (workitems.py), so a state change, the
subscriptions it implies and the events it reports commit together. A workitem's `version`
makes updates optimistic: a write names the version it read and changes nothing (the
caller answers 409) when another write came first.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import peewee as pw

from .connection import IndexDatabase, utcnow
from .models import UpsEvent, UpsSubscription, Workitem

#: The columns a workitem search matches on (workitems.py fills them).
SEARCH_COLUMNS = (
    "patient_name", "patient_name_words", "patient_id", "accession_number", "requested_procedure_id",
    "scheduled_start", "station_name_code", "station_class_code", "station_location_code", "workitem_code",
    "procedure_step_state", "study_instance_uid",
)


class DuplicateWorkitem(Exception):
    """A workitem with that UID exists in the partition."""


@dataclass(frozen=True, slots=True)
class StoredWorkitem:
    id: int
    uid: str
    state: str
    transaction_uid: str | None
    version: int
    dataset: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkitemFilter:
    """One matching condition: `kind` is exact, wildcard (a LIKE pattern), range (low, high:
    either None) or words (a word-prefix LIKE on patient_name_words)."""

    column: str
    kind: str
    value: Any


@dataclass(frozen=True, slots=True)
class GlobalSubscription:
    ae_title: str
    filter: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class EventRow:
    sequence: int
    ae_title: str
    payload: str


class IndexWorkitems(IndexDatabase):
    # -- workitems ---------------------------------------------------------------
    def workitem(self, partition_key: int, uid: str) -> StoredWorkitem | None:
        row = (
            Workitem.select()
            .where((Workitem.sop_instance_uid == uid) & (Workitem.partition_key == partition_key))
            .first()
        )
        if row is None:
            return None
        return StoredWorkitem(
            row.id, row.sop_instance_uid, row.procedure_step_state, row.transaction_uid, row.version,
            json.loads(row.dataset),
        )

    def insert_workitem(self, partition_key: int, uid: str, columns: dict[str, Any], dataset: dict[str, Any]) -> int:
        """In the caller's write transaction; DuplicateWorkitem when the UID is taken."""
        if self.workitem(partition_key, uid) is not None:
            raise DuplicateWorkitem(uid)
        now = utcnow()
        row_id: int = Workitem.insert(
            partition_key=partition_key, sop_instance_uid=uid, version=1, dataset=json.dumps(dataset),
            created=now, updated=now, **columns,
        ).execute()
        return row_id

    def update_workitem(
        self, stored: StoredWorkitem, columns: dict[str, Any], dataset: dict[str, Any], transaction_uid: str | None
    ) -> bool:
        """Write the workitem if it is still at the version `stored` was read at; False if not."""
        changed = (
            Workitem.update(
                version=stored.version + 1, dataset=json.dumps(dataset), transaction_uid=transaction_uid,
                updated=utcnow(), **columns,
            )
            .where((Workitem.id == stored.id) & (Workitem.version == stored.version))
            .execute()
        )
        return bool(changed)

    def search_workitems(
        self, partition_key: int, filters: Sequence[WorkitemFilter], limit: int, offset: int,
        only_id: int | None = None, states: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The DICOM JSON of matching workitems, oldest first."""
        query = Workitem.select(Workitem.dataset).where(Workitem.partition_key == partition_key)
        for condition in filters:
            query = query.where(_condition(condition))
        if only_id is not None:
            query = query.where(Workitem.id == only_id)
        if states is not None:
            query = query.where(Workitem.procedure_step_state.in_(list(states)))
        rows = query.order_by(Workitem.id).limit(limit).offset(offset)
        return [json.loads(row.dataset) for row in rows]

    # -- subscriptions -----------------------------------------------------------
    def subscribe(
        self, partition_key: int, ae_title: str, workitem_uid: str | None, filter: dict[str, str] | None,
        deletion_lock: bool,
    ) -> None:
        """Add or replace the AE's subscription (to one workitem, or its global one)."""
        self._delete_subscriptions(partition_key, ae_title, workitem_uid, only_global=workitem_uid is None)
        UpsSubscription.insert(
            partition_key=partition_key, ae_title=ae_title, workitem_uid=workitem_uid,
            filter_json=None if filter is None else json.dumps(filter), deletion_lock=deletion_lock,
            created=utcnow(),
        ).execute()

    def unsubscribe(self, partition_key: int, ae_title: str, workitem_uid: str | None) -> int:
        """Remove one subscription; workitem_uid None removes the global one and every other (PS3.4 CC.2.3.2)."""
        return self._delete_subscriptions(partition_key, ae_title, workitem_uid, only_global=False)

    def suspend_global(self, partition_key: int, ae_title: str) -> int:
        """Remove the global subscription only: the workitems it subscribed the AE to stay (CC.2.3.3)."""
        return self._delete_subscriptions(partition_key, ae_title, None, only_global=True)

    def subscribers(self, partition_key: int, workitem_uid: str) -> list[str]:
        rows = UpsSubscription.select(UpsSubscription.ae_title).where(
            (UpsSubscription.partition_key == partition_key) & (UpsSubscription.workitem_uid == workitem_uid)
        )
        return sorted({row.ae_title for row in rows})

    def global_subscriptions(self, partition_key: int) -> list[GlobalSubscription]:
        rows = UpsSubscription.select(UpsSubscription.ae_title, UpsSubscription.filter_json).where(
            (UpsSubscription.partition_key == partition_key) & UpsSubscription.workitem_uid.is_null()
        )
        return [
            GlobalSubscription(r.ae_title, None if r.filter_json is None else json.loads(r.filter_json)) for r in rows
        ]

    def _delete_subscriptions(
        self, partition_key: int, ae_title: str, workitem_uid: str | None, *, only_global: bool
    ) -> int:
        """The AE's subscription to `workitem_uid`, its global one (only_global), or all of them (neither)."""
        p = self.db.param
        sql = f'DELETE FROM "ups_subscription" WHERE "partition_key" = {p} AND "ae_title" = {p}'
        params: list[Any] = [partition_key, ae_title]
        if workitem_uid is not None:
            sql += f' AND "workitem_uid" = {p}'
            params.append(workitem_uid)
        elif only_global:
            sql += ' AND "workitem_uid" IS NULL'
        return int(self.db.execute_sql(sql, params).rowcount)

    # -- events ------------------------------------------------------------------
    def add_events(self, ae_titles: Sequence[str], payload: str) -> None:
        """One event report per AE title, in the caller's write transaction (the write lock
        makes MAX + 1 increase in commit order, so a reader tailing by sequence misses none)."""
        if not ae_titles:
            return
        sequence = self.last_event_sequence()
        now = utcnow()
        rows = [
            {"sequence": sequence + n, "created": now, "ae_title": ae, "payload": payload}
            for n, ae in enumerate(ae_titles, start=1)
        ]
        UpsEvent.insert_many(rows).execute()

    def last_event_sequence(self) -> int:
        return int(self.db.execute_sql('SELECT COALESCE(MAX("sequence"), 0) FROM "ups_event"').fetchone()[0])

    def events_after(self, sequence: int, limit: int = 500) -> list[EventRow]:
        sql = (
            f'SELECT "sequence", "ae_title", "payload" FROM "ups_event" WHERE "sequence" > {self.db.param} '
            f'ORDER BY "sequence" LIMIT {int(limit)}'
        )
        return [EventRow(int(r[0]), r[1], r[2]) for r in self.db.execute_sql(sql, (sequence,)).fetchall()]

    def purge_events(self, before: dt.datetime) -> int:
        """Drop event reports older than `before` (every open channel has read them by then)."""
        with self.write_transaction():
            sql = f'DELETE FROM "ups_event" WHERE "created" < {self.db.param}'
            return int(self.db.execute_sql(sql, (before,)).rowcount)




def _like(column: Any, pattern: str) -> Any:
    """LIKE on both databases (peewee writes SQLite's as GLOB; SQLite's LIKE is case-sensitive here:
    connection.py sets case_sensitive_like)."""
    return pw.NodeList((column, pw.SQL("LIKE"), pw.Value(pattern)))


def _condition(condition: WorkitemFilter) -> Any:
    column = getattr(Workitem, condition.column)
    if condition.kind == "exact":
        return column == condition.value
    if condition.kind == "wildcard":
        return _like(column, condition.value)
    if condition.kind == "words":
        return _like(column, f"% {condition.value}%")
    low, high = condition.value
    expression = column.is_null(False)
    if low is not None:
        expression &= column >= low
    if high is not None:
        expression &= column <= high
    return expression
