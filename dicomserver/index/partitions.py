"""Data partitions in the index: look one up by name, add one (STOW's implicit creation), list them.

Partitions are never renamed or deleted, so callers keep what these return (archive.py);
these run only on a process' first sight of a name.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..partitions import Partition
from .connection import IndexDatabase, utcnow
from .models import Partition as PartitionRow


@dataclass(frozen=True, slots=True)
class PartitionEntry:
    """A partition as `GET /partitions` lists it."""

    key: int
    name: str
    created: dt.datetime


class IndexPartitions(IndexDatabase):
    def partition_named(self, name: str) -> Partition | None:
        sql = f'SELECT "key", "name" FROM "partition" WHERE "name" = {self.db.param}'
        row = self.db.execute_sql(sql, (name,)).fetchone()
        return None if row is None else Partition(row[0], row[1])

    def add_partition(self, name: str) -> Partition:
        """The partition of that name, created if it does not exist (under the write lock, so
        two hosts creating it at once make one)."""
        with self.write_transaction():
            found = self.partition_named(name)
            if found is not None:
                return found
            key = self.db.execute_sql('SELECT COALESCE(MAX("key"), 0) + 1 FROM "partition"').fetchone()[0]
            PartitionRow.insert(key=key, name=name, created=utcnow()).execute()
        return Partition(key, name)

    def partition_entries(self) -> list[PartitionEntry]:
        """Every partition, by key."""
        rows = PartitionRow.select(PartitionRow.key, PartitionRow.name, PartitionRow.created).order_by(PartitionRow.key)
        return [PartitionEntry(r.key, r.name, r.created) for r in rows]

    def partition_count(self) -> int:
        return int(self.db.execute_sql('SELECT COUNT(*) FROM "partition"').fetchone()[0])
