"""The metadata index: every read and write of Study/Series/Instance/Change rows and the audit trail.

One concrete class over Peewee (SQLite by default, PostgreSQL by URL), assembled from
one module per job: `connection.py` (the database, per-request connections, the writer
lock), `reads.py` (by UID: WADO, /metadata, the change feed, gc), `writes.py` (STOW,
DELETE and the counters they keep), `query.py` (QIDO), `audit.py` (the audit trail),
`operations.py` (long-running jobs), `extended.py` (extended query tags), `export.py`
(the instances an export copies), `update.py` (bulk update's new versions), `partitions.py` (data
partitions), `outbox.py` and `webhooks.py` (webhook events and their deliveries), `workitems.py`
(UPS-RS workitems, subscriptions, event reports) and `schema.py` (migrations).
"""
from __future__ import annotations

from .audit import AuditQuery, AuditRecord, IndexAudit
from .export import ExportRow, IndexExport
from .extended import IndexExtendedQueryTags
from .partitions import IndexPartitions, PartitionEntry
from .reads import FeedEntry, StoredBlob, StoredInstance
from .update import IndexUpdate, UpdatedInstance, UpdateTarget
from .webhooks import IndexWebhooks
from .workitems import IndexWorkitems
from .writes import DuplicateInstance, InstanceRecord, StoreOutcome


class Index(
    IndexWebhooks, IndexUpdate, IndexAudit, IndexExtendedQueryTags, IndexExport, IndexPartitions, IndexWorkitems
):
    """The index over one database: SQLite (default) or PostgreSQL (pooled)."""

    def create_schema(self) -> None:
        """Create or migrate the schema (see schema.py)."""
        from .schema import ensure_schema

        ensure_schema(self)


def open_index(database_url: str, *, sqlite_busy_timeout_ms: int = 30000) -> Index:
    index = Index(database_url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms)
    index.create_schema()
    return index


__all__ = [
    "AuditQuery",
    "AuditRecord",
    "DuplicateInstance",
    "ExportRow",
    "FeedEntry",
    "Index",
    "InstanceRecord",
    "PartitionEntry",
    "StoreOutcome",
    "StoredBlob",
    "StoredInstance",
    "UpdateTarget",
    "UpdatedInstance",
    "open_index",
]
