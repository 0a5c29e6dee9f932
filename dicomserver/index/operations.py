"""Operations in the index: long-running jobs that any process of any host may run, exactly once at a time.

A runner claims an operation by taking its lease (owner, expiry) in a write transaction,
so two claims never overlap: the writer lock serialises them on both databases. It renews
the lease with each checkpoint, in the same transaction as the work the checkpoint
covers, and a write of a runner that lost its lease (it stalled past the expiry and another
runner took over) is refused and rolled back (`LeaseLost`). A runner that crashes simply
stops renewing: once the lease expires, the next claim resumes from the last checkpoint.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .connection import IndexDatabase, utcnow
from .models import Operation

NOT_STARTED, RUNNING, SUCCEEDED, FAILED, CANCELED = "notStarted", "running", "succeeded", "failed", "canceled"
ACTIVE = (NOT_STARTED, RUNNING)
#: Claims of one operation after which it fails instead of being retried (a crash loop).
MAX_ATTEMPTS = 10


class LeaseLost(Exception):
    """This runner's lease on the operation expired and another runner may have it: stop."""


@dataclass(frozen=True)
class OperationRecord:
    id: str
    type: str
    status: str
    created: dt.datetime
    last_updated: dt.datetime
    started: dt.datetime | None
    ended: dt.datetime | None
    percent_complete: int
    payload: dict[str, Any]
    checkpoint: Any
    errors: list[str]
    attempts: int

    @classmethod
    def of(cls, row: Operation) -> OperationRecord:
        return cls(
            id=row.id,
            type=row.type,
            status=row.status,
            created=row.created,
            last_updated=row.last_updated,
            started=row.started,
            ended=row.ended,
            percent_complete=row.percent_complete,
            payload=json.loads(row.payload),
            checkpoint=None if row.checkpoint is None else json.loads(row.checkpoint),
            errors=json.loads(row.errors) if row.errors else [],
            attempts=row.attempts,
        )


class IndexOperations(IndexDatabase):
    def insert_operation(self, operation_id: str, type_: str, payload: dict[str, Any]) -> None:
        """A new operation, not started; callers hold the write lock (it goes in with what it is about)."""
        now = utcnow()
        Operation.insert(
            id=operation_id, type=type_, status=NOT_STARTED, created=now, last_updated=now,
            payload=json.dumps(payload), percent_complete=0, attempts=0,
        ).execute()

    def operation(self, operation_id: str) -> OperationRecord | None:
        row = Operation.get_or_none(Operation.id == operation_id)
        return None if row is None else OperationRecord.of(row)

    def active_operations(self, type_: str) -> list[str]:
        """Ids of the operations of a type not finished yet."""
        rows = Operation.select(Operation.id).where((Operation.type == type_) & Operation.status.in_(ACTIVE))
        return [row.id for row in rows]

    def claim_operation(self, owner: str, lease: dt.timedelta, types: Iterable[str]) -> OperationRecord | None:
        """Take the oldest operation of `types` nobody holds (never started, or its runner's lease
        expired); None when there is none. One that has been claimed MAX_ATTEMPTS times fails.

        A look without the write lock comes first: an idle poll costs a read, not a commit."""
        wanted = list(types)
        if self._claimable(wanted, utcnow()) is None:
            return None
        with self.write_transaction():
            now = utcnow()
            while True:
                row = self._claimable(wanted, now)
                if row is None:
                    return None
                if row.attempts >= MAX_ATTEMPTS:
                    self._end(row.id, FAILED, [f"the operation was interrupted {row.attempts} times; given up"], now)
                    continue
                Operation.update(
                    status=RUNNING, lease_owner=owner, lease_expires=now + lease, attempts=Operation.attempts + 1,
                    started=row.started or now, last_updated=now,
                ).where(Operation.id == row.id).execute()
                claimed = Operation.get_by_id(row.id)
                return OperationRecord.of(claimed)

    @staticmethod
    def _claimable(types: list[str], now: dt.datetime) -> Operation | None:
        row: Operation | None = (
            Operation.select()
            .where(
                Operation.status.in_(ACTIVE)
                & Operation.type.in_(types)
                & (Operation.lease_expires.is_null() | (Operation.lease_expires < now))
            )
            .order_by(Operation.created, Operation.id)
            .first()
        )
        return row

    def renew_lease(
        self, operation_id: str, owner: str, lease: dt.timedelta, *, checkpoint: Any = None, percent: int | None = None
    ) -> None:
        """Extend the lease and record progress; callers hold the write lock (the work the
        checkpoint covers commits with it). LeaseLost if another runner holds the operation now."""
        now = utcnow()
        changes: dict[Any, Any] = {Operation.lease_expires: now + lease, Operation.last_updated: now}
        if checkpoint is not None:
            changes[Operation.checkpoint] = json.dumps(checkpoint)
        if percent is not None:
            changes[Operation.percent_complete] = percent
        updated = (
            Operation.update(changes)
            .where((Operation.id == operation_id) & (Operation.lease_owner == owner) & (Operation.status == RUNNING))
            .execute()
        )
        if updated != 1:
            raise LeaseLost(operation_id)

    def finish_operation(self, operation_id: str, owner: str, status: str, errors: list[str] | None = None) -> None:
        """End an operation this runner holds (succeeded, failed or canceled); callers hold the write lock."""
        self.renew_lease(operation_id, owner, dt.timedelta(0))
        self._end(operation_id, status, errors, utcnow())

    def release_operation(self, operation_id: str, owner: str) -> None:
        """Give an operation back (the process stops): another runner may claim it at once."""
        with self.write_transaction():
            Operation.update(lease_expires=None, lease_owner=None).where(
                (Operation.id == operation_id) & (Operation.lease_owner == owner)
            ).execute()

    def _end(self, operation_id: str, status: str, errors: list[str] | None, now: dt.datetime) -> None:
        changes: dict[Any, Any] = {
            Operation.status: status, Operation.ended: now, Operation.last_updated: now,
            Operation.lease_owner: None, Operation.lease_expires: None,
        }
        if status == SUCCEEDED:
            changes[Operation.percent_complete] = 100
        if errors:
            changes[Operation.errors] = json.dumps(errors)
        Operation.update(changes).where(Operation.id == operation_id).execute()
