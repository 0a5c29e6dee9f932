"""Webhooks in the index: subscriptions, the fan-out of the outbox into deliveries, the stable
scan, and deliveries claimed with a lease so that each is sent by one process at a time.

Every step that writes runs under the index's write lock, after a look without it (an idle
poll costs a read, not a commit). A delivery is claimed for `lease` (owner, expiry, one more
attempt) and ends only with its outcome written by the same owner: a process killed while
sending leaves the claim to expire, and the next claim sends the event again (at least once;
receivers de-duplicate by event id).
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import peewee as pw

from .connection import utcnow
from .models import (
    Change,
    Partition,
    Series,
    Study,
    Webhook,
    WebhookCursor,
    WebhookDelivery,
    WebhookEvent,
    WebhookStable,
)
from .outbox import PING, SERIES_STABLE, STUDY_STABLE
from .writes import IndexWrites

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STABLE_TYPES = (SERIES_STABLE, STUDY_STABLE)
_FANOUT, _STABLE = "fanout", "stable"
#: Rows one step of a scan handles in one transaction.
BATCH = 500


@dataclass(frozen=True)
class WebhookRecord:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    description: str | None
    partition: str | None
    active: bool
    created: dt.datetime
    updated: dt.datetime

    @classmethod
    def of(cls, row: Webhook) -> WebhookRecord:
        return cls(row.id, row.url, tuple(json.loads(row.events)), row.secret, row.description, row.partition,
                   bool(row.active), row.created, row.updated)


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivery as GET /webhooks/{id}[/deliveries] shows it."""

    id: int
    event_id: str
    event_type: str
    event_time: dt.datetime
    status: str
    attempts: int
    created: dt.datetime
    next_attempt: dt.datetime | None
    last_attempt: dt.datetime | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed delivery: what to send where, and with which secret."""

    id: int
    attempts: int
    url: str
    secret: str
    event_id: str
    event_type: str
    event_time: dt.datetime
    partition: str
    data: dict[str, Any]


def _tuples(query: Any) -> list[tuple[Any, ...]]:
    """A peewee query's rows as tuples (its stubs type them as model instances)."""
    return cast("list[tuple[Any, ...]]", list(query.tuples()))


class IndexWebhooks(IndexWrites):
    # -- subscriptions -----------------------------------------------------------
    def add_webhook(self, record: WebhookRecord) -> None:
        with self.write_transaction():
            if set(record.events) & set(STABLE_TYPES) and record.active:
                self._restart_stable_scan()
            Webhook.insert(
                id=record.id, url=record.url, events=json.dumps(list(record.events)), secret=record.secret,
                description=record.description, partition=record.partition, active=record.active,
                created=record.created, updated=record.updated,
            ).execute()
        self.outbox.forget()

    def webhooks(self) -> list[WebhookRecord]:
        return [WebhookRecord.of(row) for row in Webhook.select().order_by(Webhook.created, Webhook.id)]

    def webhook(self, webhook_id: str) -> WebhookRecord | None:
        row = Webhook.get_or_none(Webhook.id == webhook_id)
        return None if row is None else WebhookRecord.of(row)

    def update_webhook(self, record: WebhookRecord) -> bool:
        """Replace a subscription's fields; False if it is gone."""
        with self.write_transaction():
            before = self.webhook(record.id)
            if (set(record.events) & set(STABLE_TYPES) and record.active and before is not None
                    and not (before.active and set(before.events) & set(STABLE_TYPES))):
                self._restart_stable_scan(ignore=record.id)
            updated = Webhook.update(
                url=record.url, events=json.dumps(list(record.events)), secret=record.secret,
                description=record.description, partition=record.partition, active=record.active,
                updated=record.updated,
            ).where(Webhook.id == record.id).execute()
        self.outbox.forget()
        return bool(updated)

    def delete_webhook(self, webhook_id: str) -> bool:
        with self.write_transaction():
            WebhookDelivery.delete().where(WebhookDelivery.webhook == webhook_id).execute()  # type: ignore[misc]
            deleted = Webhook.delete().where(Webhook.id == webhook_id).execute()  # type: ignore[misc]
        self.outbox.forget()
        return bool(deleted)

    def _restart_stable_scan(self, ignore: str | None = None) -> None:
        """A first subscription to stable events starts the scan at the change feed's end: what was
        stored while nobody subscribed is not reported (callers hold the write lock)."""
        others = [json.loads(events) for events, in _tuples(Webhook.select(Webhook.events).where(
            (Webhook.active == True) & (Webhook.id != (ignore or ""))  # noqa: E712
        ))]
        if any(set(events) & set(STABLE_TYPES) for events in others):
            return
        WebhookStable.delete().execute()  # type: ignore[misc]
        self._set_cursor(_STABLE, self._last_change())

    # -- deliveries as clients see them -----------------------------------------
    def deliveries(self, webhook_id: str, limit: int) -> list[DeliveryRecord]:
        """A subscription's deliveries, newest event first."""
        rows = (
            WebhookDelivery.select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent)
            .where(WebhookDelivery.webhook == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(limit)
        )
        return [
            DeliveryRecord(r.id, r.event.event_id, r.event.type, r.event.time, r.status, r.attempts, r.created,
                           r.next_attempt, r.last_attempt, r.last_status, r.last_error)
            for r in rows
        ]

    def last_delivery(self, webhook_id: str) -> DeliveryRecord | None:
        """The delivery attempted last (or, before any attempt, the newest)."""
        rows = (
            WebhookDelivery.select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent)
            .where(WebhookDelivery.webhook == webhook_id)
            .order_by(WebhookDelivery.last_attempt.desc(nulls="last"), WebhookDelivery.id.desc())
            .limit(1)
        )
        return next((DeliveryRecord(r.id, r.event.event_id, r.event.type, r.event.time, r.status, r.attempts,
                                    r.created, r.next_attempt, r.last_attempt, r.last_status, r.last_error)
                     for r in rows), None)

    def ping(self, webhook_id: str, event_id: str, partition: str, data: dict[str, Any]) -> bool:
        """An event for one subscription only, due at once; False if the subscription is gone."""
        with self.write_transaction():
            if not Webhook.select().where(Webhook.id == webhook_id).exists():
                return False
            now = utcnow()
            event = WebhookEvent.insert(event_id=event_id, type=PING, time=now, partition=partition,
                                        data=json.dumps(data)).execute()
            WebhookDelivery.insert(webhook=webhook_id, event=event, status=PENDING, attempts=0, created=now,
                                   next_attempt=now).execute()
        return True

    # -- the delivery thread's steps ---------------------------------------------
    def fan_out(self) -> int:
        """Turn the outbox's new events into one delivery per subscription that wants each; how many events."""
        last = WebhookEvent.select(pw.fn.MAX(WebhookEvent.id)).scalar() or 0
        if last <= self._cursor(_FANOUT, 0):
            return 0
        with self.write_transaction():
            after = self._cursor(_FANOUT, 0)
            events = _tuples(WebhookEvent.select(WebhookEvent.id, WebhookEvent.type, WebhookEvent.time,
                                                 WebhookEvent.partition)
                             .where(WebhookEvent.id > after).order_by(WebhookEvent.id).limit(BATCH))
            if not events:
                return 0
            subscriptions = [WebhookRecord.of(row) for row in Webhook.select().where(Webhook.active == True)]  # noqa: E712
            now = utcnow()
            rows = [
                {"webhook": s.id, "event": event_id, "status": PENDING, "attempts": 0, "created": now,
                 "next_attempt": now}
                for event_id, kind, time, partition in events
                for s in subscriptions
                if kind in s.events and s.partition in (None, partition) and s.created <= time
            ]
            for start in range(0, len(rows), 100):
                WebhookDelivery.insert_many(rows[start:start + 100]).execute()
            self._set_cursor(_FANOUT, events[-1][0])
        return len(events)

    def scan_stable(self, threshold: dt.timedelta) -> int:
        """Note the series and studies the change feed's new entries touched; report those whose newest
        change is older than `threshold` (series.stable, study.stable); how many were reported."""
        cursor = self._cursor(_STABLE, None)
        now = utcnow()
        due = now - threshold
        has_news = cursor is None or self._last_change() > cursor
        if not has_news and not WebhookStable.select().where(WebhookStable.last_change <= due).exists():
            return 0
        with self.write_transaction():
            cursor = self._cursor(_STABLE, None)
            if cursor is None:
                self._set_cursor(_STABLE, self._last_change())
                return 0
            self._note_changes(cursor)
            return self._report_stable(due)

    def _note_changes(self, cursor: int) -> None:
        changes = _tuples(
            Change.select(Change.sequence, Change.timestamp, Change.partition_key, Change.study_instance_uid,
                          Change.series_instance_uid)
            .where((Change.sequence > cursor) & (Change.action != "delete"))
            .order_by(Change.sequence).limit(BATCH * 10)
        )
        if not changes:
            self._set_cursor(_STABLE, max(cursor, self._last_change(limit=cursor + BATCH * 10)))
            return
        latest: dict[tuple[str, int, str, str], dt.datetime] = {}
        for _, timestamp, partition_key, study, series in changes:
            for key in (("series", partition_key, study, series), ("study", partition_key, study, "")):
                latest[key] = max(latest.get(key, timestamp), timestamp)
        for (level, partition_key, study, series), timestamp in latest.items():
            match = ((WebhookStable.level == level) & (WebhookStable.partition_key == partition_key)
                     & (WebhookStable.study_instance_uid == study) & (WebhookStable.series_instance_uid == series))
            if not WebhookStable.update(last_change=timestamp).where(match).execute():
                WebhookStable.insert(level=level, partition_key=partition_key, study_instance_uid=study,
                                     series_instance_uid=series, last_change=timestamp).execute()
        self._set_cursor(_STABLE, changes[-1][0])

    def _report_stable(self, due: dt.datetime) -> int:
        rows = list(WebhookStable.select().where(WebhookStable.last_change <= due)
                    .order_by(WebhookStable.last_change, WebhookStable.id).limit(BATCH))
        names: dict[int, str] = dict(_tuples(Partition.select(Partition.key, Partition.name)))
        reported = 0
        for row in rows:
            partition = names.get(row.partition_key, str(row.partition_key))
            data = self._stable_data(row)
            if data is not None:
                reported += self.outbox.record(SERIES_STABLE if row.level == "series" else STUDY_STABLE,
                                               partition, data) is not None
            row.delete_instance()
        return reported

    @staticmethod
    def _stable_data(row: WebhookStable) -> dict[str, Any] | None:
        """The event's data: the UIDs and counts of what is stored now (None: deleted meanwhile)."""
        study = Study.get_or_none((Study.partition_key == row.partition_key)
                                  & (Study.study_instance_uid == row.study_instance_uid))
        if study is None:
            return None
        if row.level == "study":
            return {"studyInstanceUid": row.study_instance_uid, "numberOfSeries": study.number_of_series,
                    "numberOfInstances": study.number_of_instances}
        series = Series.get_or_none((Series.study == study.id)
                                    & (Series.series_instance_uid == row.series_instance_uid))
        if series is None:
            return None
        return {"studyInstanceUid": row.study_instance_uid, "seriesInstanceUid": row.series_instance_uid,
                "modality": series.modality, "numberOfInstances": series.number_of_instances}

    def claim_deliveries(self, owner: str, lease: dt.timedelta, limit: int) -> list[DeliveryJob]:
        """Take up to `limit` due deliveries of active subscriptions nobody holds (one more attempt each)."""
        if not self._due(utcnow(), 1):
            return []
        with self.write_transaction():
            now = utcnow()
            ids = self._due(now, limit)
            if not ids:
                return []
            WebhookDelivery.update(
                lease_owner=owner, lease_expires=now + lease, attempts=WebhookDelivery.attempts + 1,
            ).where(WebhookDelivery.id.in_(ids)).execute()
            rows = (WebhookDelivery.select(WebhookDelivery, WebhookEvent, Webhook)
                    .join_from(WebhookDelivery, WebhookEvent).join_from(WebhookDelivery, Webhook)
                    .where(WebhookDelivery.id.in_(ids)).order_by(WebhookDelivery.id))
            return [DeliveryJob(r.id, r.attempts, r.webhook.url, r.webhook.secret, r.event.event_id, r.event.type,
                                r.event.time, r.event.partition, json.loads(r.event.data)) for r in rows]

    @staticmethod
    def _due(now: dt.datetime, limit: int) -> list[int]:
        return [row_id for row_id, in _tuples(
            WebhookDelivery.select(WebhookDelivery.id).join(Webhook)
            .where((WebhookDelivery.status == PENDING) & (WebhookDelivery.next_attempt <= now)
                   & (WebhookDelivery.lease_expires.is_null() | (WebhookDelivery.lease_expires < now))
                   & (Webhook.active == True))  # noqa: E712
            .order_by(WebhookDelivery.next_attempt, WebhookDelivery.id).limit(limit)
        )]

    def finish_delivery(self, job: DeliveryJob, owner: str, *, status: int | None, error: str | None,
                        retry: Callable[[DeliveryJob], dt.datetime | None]) -> bool:
        """Write an attempt's outcome: delivered on a 2xx, else pending until `retry(job)` (None: failed).
        False if this owner's claim was lost (another process took the delivery over)."""
        now = utcnow()
        delivered = status is not None and 200 <= status < 300
        next_attempt = None if delivered else retry(job)
        with self.write_transaction():
            updated = WebhookDelivery.update(
                status=DELIVERED if delivered else (PENDING if next_attempt is not None else FAILED),
                next_attempt=next_attempt, last_attempt=now, last_status=status, last_error=error,
                lease_owner=None, lease_expires=None,
            ).where((WebhookDelivery.id == job.id) & (WebhookDelivery.lease_owner == owner)).execute()
        return bool(updated)

    def purge_webhook_history(self, before: dt.datetime) -> None:
        """Forget deliveries that ended before `before`, and the events nothing refers to any more."""
        with self.write_transaction():
            ended = WebhookDelivery.status.in_((DELIVERED, FAILED)) & (WebhookDelivery.created < before)
            WebhookDelivery.delete().where(ended).execute()  # type: ignore[misc]
            fanned = self._cursor(_FANOUT, 0)
            referred = WebhookDelivery.select(WebhookDelivery.event)
            unused = (WebhookEvent.time < before) & (WebhookEvent.id <= fanned) & WebhookEvent.id.not_in(referred)
            WebhookEvent.delete().where(unused).execute()  # type: ignore[misc]

    # -- cursors -----------------------------------------------------------------
    @staticmethod
    def _cursor(name: str, default: Any) -> Any:
        row = WebhookCursor.get_or_none(WebhookCursor.name == name)
        return default if row is None else row.position

    @staticmethod
    def _set_cursor(name: str, position: int) -> None:
        if not WebhookCursor.update(position=position).where(WebhookCursor.name == name).execute():
            WebhookCursor.insert(name=name, position=position).execute()

    @staticmethod
    def _last_change(limit: int | None = None) -> int:
        query = Change.select(pw.fn.MAX(Change.sequence))
        if limit is not None:
            query = query.where(Change.sequence <= limit)
        return int(query.scalar() or 0)
