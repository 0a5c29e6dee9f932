"""The webhook outbox: events written in the transaction of the change they report.

An event is one row (`webhook_event`), fanned out to the subscriptions that want it only
later, by the delivery thread (index/webhooks.py): a STOW pays for one INSERT when some
subscription wants `instance.stored`, and for nothing at all otherwise. What the
subscriptions want (event types, by partition) is read at most once per `ttl` seconds per
process and kept here, so the hot path asks no query; a process that changes the
subscriptions forgets its copy at once, the others within `ttl` (an event of a type nobody
wanted a moment ago may be missed in that window: docs/events.md says so).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, cast

import peewee as pw

from .connection import utcnow
from .models import Webhook, WebhookEvent

INSTANCE_STORED = "instance.stored"
INSTANCE_DELETED = "instance.deleted"
SERIES_STABLE = "series.stable"
STUDY_STABLE = "study.stable"
WORKITEM_STATE = "workitem.state"
#: The event types a subscription may name.
TYPES = (INSTANCE_STORED, INSTANCE_DELETED, SERIES_STABLE, STUDY_STABLE, WORKITEM_STATE)
#: The event POST /webhooks/{id}/ping sends (to that subscription only).
PING = "webhook.ping"
#: Seconds a process trusts its copy of what the subscriptions want (DICOMWEB_WEBHOOKS_CACHE_SECONDS).
DEFAULT_TTL = 2.0


class Outbox:
    """What the active subscriptions want, cached; and the INSERT of an event that some want."""

    def __init__(self, db: pw.Database, ttl: float = DEFAULT_TTL):
        self.db = db
        self.ttl = ttl
        #: (type, partition name or None for every partition) the active subscriptions want.
        self._wanted: frozenset[tuple[str, str | None]] = frozenset()
        self._expires = 0.0
        p = db.param
        self._insert = (
            f'INSERT INTO "{WebhookEvent._meta.table_name}" ("event_id", "type", "time", "partition", "data") '
            f"VALUES ({p}, {p}, {p}, {p}, {p})"
        )
        self._time = WebhookEvent.time.db_value

    def forget(self) -> None:
        """The subscriptions changed (in this process): read them again at the next look."""
        self._expires = 0.0

    def idle(self) -> bool:
        """No subscription is active, as far as this process's copy (still fresh) knows: nothing to do."""
        return not self._wanted and time.monotonic() < self._expires

    def wanted(self, event_type: str | None = None, partition: str | None = None) -> bool:
        """Whether an active subscription wants events of this type in this partition (None: of any
        type / in any partition)."""
        now = time.monotonic()
        if now >= self._expires:
            self._wanted = self._read()
            self._expires = now + self.ttl
        wanted = self._wanted
        if not wanted or event_type is None:
            return bool(wanted)
        if (event_type, None) in wanted:
            return True
        if partition is None:
            return any(kind == event_type for kind, _ in wanted)
        return (event_type, partition) in wanted

    @staticmethod
    def _read() -> frozenset[tuple[str, str | None]]:
        query = Webhook.select(Webhook.events, Webhook.partition).where(Webhook.active == True)  # noqa: E712
        rows = cast("list[tuple[str, str | None]]", list(query.tuples()))
        return frozenset((kind, partition) for events, partition in rows for kind in json.loads(events))

    def record(self, event_type: str, partition: str, data: Mapping[str, Any]) -> str | None:
        """Write one event in the caller's write transaction if a subscription wants it; its id."""
        if not self.wanted(event_type, partition):
            return None
        event_id = str(uuid.uuid4())
        cursor = self.db.cursor()
        cursor.execute(self._insert, (event_id, event_type, self._time(utcnow()), partition,
                                      json.dumps(data, separators=(",", ":"))))
        return event_id

    def record_many(self, event_type: str, partition: str, items: Iterable[Mapping[str, Any]]) -> int:
        """Several events of one type (a DELETE of a series or study: one per instance)."""
        if not self.wanted(event_type, partition):
            return 0
        now = self._time(utcnow())
        rows = [(str(uuid.uuid4()), event_type, now, partition, json.dumps(data, separators=(",", ":")))
                for data in items]
        if rows:
            self.db.cursor().executemany(self._insert, rows)
        return len(rows)
