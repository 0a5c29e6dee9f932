"""Schema creation and migrations of the index, run when the server starts.

The database records the version it was migrated to (SchemaInfo). A new database
gets the current schema directly; an older one is brought forward one step at a
time with peewee's migrator, inside the write lock, so several workers starting
together migrate it once. Derived columns a migration adds are recomputed from the
DICOM JSON already stored on each instance: no blob is read.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from playhouse.migrate import SchemaMigrator, migrate

from ..partitions import DEFAULT_KEY, DEFAULT_NAME
from .connection import utcnow
from .models import (
    MODELS,
    UPS_MODELS,
    WEBHOOK_MODELS,
    AuditEvent,
    Change,
    ExtendedQueryTag,
    ExtendedQueryTagError,
    ExtendedQueryTagValue,
    Instance,
    InstanceMetadata,
    Operation,
    Partition,
    RequestAttribute,
    SchemaInfo,
    Series,
    SeriesMetadataCache,
    Study,
)

if TYPE_CHECKING:
    from . import Index

log = logging.getLogger(__name__)

SCHEMA_VERSION = 14
#: What the stored `instance_metadata.qido` members were built from (query.QIDO_TAGS).
#: A change of QIDO_TAGS needs a migration that sets `qido` to NULL (the backfill then
#: rebuilds it) and a new fingerprint here; tests/test_schema.py compares the two.
QIDO_TAGS_FINGERPRINT = "2f29c5c31f2f216d"

#: Indexes only PostgreSQL needs (SQLite's single-column indexes already end in the
#: rowid, and its LIKE uses a BINARY index under case_sensitive_like). A default B-tree
#: can serve LIKE 'ABC%' only in the "C" collation, and initdb usually picks another
#: (C.UTF-8, en_US.UTF-8): text_pattern_ops makes PatientName prefix wildcards
#: index range scans. Both end in id so QIDO's page query (ids ordered by id) is an
#: index-only scan of the matches, never a visit of their rows (see query.py).
POSTGRES_INDEXES = (
    'CREATE INDEX IF NOT EXISTS "study_patient_name_key_prefix" ON "study" ("patient_name_key" text_pattern_ops, "id")',
    'CREATE INDEX IF NOT EXISTS "study_study_date_id" ON "study" ("study_date", "id")',
)


def _create_database_specific_indexes(index: Index) -> None:
    if not index.is_sqlite:
        for statement in POSTGRES_INDEXES:
            index.db.execute_sql(statement)


def _v1_to_v2(index: Index) -> bool:
    """Fuzzy name matching, SOPClassesInStudy, Request Attributes Sequence matching."""
    migrator = SchemaMigrator.from_database(index.db)
    migrate(
        migrator.add_column("study", "patient_name_words", Study.patient_name_words),
        migrator.add_column("study", "referring_physician_name_words", Study.referring_physician_name_words),
        migrator.add_column("study", "sop_classes_in_study", Study.sop_classes_in_study),
    )
    index.db.create_tables([RequestAttribute])
    return True  # the new columns are derived from the stored JSON


def _v2_to_v3(index: Index) -> bool:
    """Bulk data locations (instances stored before have none: their metadata has no BulkDataURI)."""
    migrator = SchemaMigrator.from_database(index.db)
    migrate(migrator.add_column("instance", "bulkdata", Instance.bulkdata))
    return False


def _v3_to_v4(index: Index) -> bool:
    """The DICOM JSON moves out of the instance rows into instance_metadata."""
    index.db.create_tables([InstanceMetadata])
    index.db.execute_sql(
        'INSERT INTO "instance_metadata" ("instance_id", "metadata") SELECT "id", "metadata" FROM "instance"'
    )
    migrator = SchemaMigrator.from_database(index.db)
    migrate(migrator.drop_column("instance", "metadata"))
    return False


def _v4_to_v5(index: Index) -> bool:
    """QIDO results are assembled from pre-serialised members (query.qido_members).

    Only the column is added here: filling it takes minutes per million instances, too
    long for a worker's start-up. Until `flask --app wsgi dicom backfill-qido` has run,
    QIDO reads the full DICOM JSON of the rows without it (same results, slower).
    """
    # A database migrated from version 3 got instance_metadata with today's columns.
    if "qido" not in {c.name for c in index.db.get_columns("instance_metadata")}:
        migrator = SchemaMigrator.from_database(index.db)
        migrate(migrator.add_column("instance_metadata", "qido", InstanceMetadata.qido))
    log.warning(
        "index schema 5: instances stored before it have no QIDO members yet; "
        "run `flask --app wsgi dicom backfill-qido` once (QIDO answers are slower until then)"
    )
    return False


def _v5_to_v6(index: Index) -> bool:
    """QIDO scale: PostgreSQL indexes for prefix wildcards and date ranges (POSTGRES_INDEXES)."""
    _create_database_specific_indexes(index)
    return False


def _v6_to_v7(index: Index) -> bool:
    """The audit trail's table (FHIR AuditEvent at /audit); nothing before it was recorded."""
    index.db.create_tables([AuditEvent])
    return False


def _v7_to_v8(index: Index) -> bool:
    """The per-series gzip cache of `/metadata` (SeriesMetadataCache); it fills on first reads."""
    index.db.create_tables([SeriesMetadataCache])
    return False


def _v8_to_v9(index: Index) -> bool:
    """Operations (/operations) and extended query tags with their values and errors; all start empty."""
    index.db.create_tables([Operation, ExtendedQueryTag, ExtendedQueryTagValue, ExtendedQueryTagError])
    return False


def _v9_to_v10(index: Index) -> bool:
    """Two indexes no query uses, which every STOW wrote to: change.sop_instance_uid (a page
    at a random place per instance) and instance.watermark."""
    for name in UNUSED_INDEXES:
        index.db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
    return False


def _v10_to_v11(index: Index) -> bool:
    """Bulk update: an updated instance keeps its original version's blob (key, size, SHA-256)
    and DICOM JSON. NULL for every instance stored before (none was updated)."""
    migrator = SchemaMigrator.from_database(index.db)
    wanted = (
        ("instance", Instance.original_blob_key), ("instance", Instance.original_size),
        ("instance", Instance.original_sha256), ("instance_metadata", InstanceMetadata.original_metadata),
    )
    # A table an earlier step created (instance_metadata, from version 3) has today's columns already.
    present = {table: {c.name for c in index.db.get_columns(table)} for table in ("instance", "instance_metadata")}
    migrate(*(migrator.add_column(table, field.column_name, field) for table, field in wanted
              if field.column_name not in present[table]))
    return False


#: Indexes of earlier schemas that schema 10 drops.
UNUSED_INDEXES = ("change_sop_instance_uid", "instance_watermark")


def _v11_to_v12(index: Index) -> bool:
    """Data partitions: the partition table with Microsoft.Default (key 1), which holds
    everything stored so far, and a partition key on studies, series, instances and the
    change feed (and a partition name on audit records). A UID is unique within its
    partition: each unique UID index becomes one on (UID, partition), which also serves
    every lookup by UID (models.py says why UID first)."""
    # What is there already is kept (a database an earlier test or tool made look older).
    index.db.create_tables([Partition])
    if not Partition.select().where(Partition.key == DEFAULT_KEY).exists():
        create_default_partition()
    for model in (Study, Series, Instance, Change):  # one statement on both (no table rebuild on SQLite)
        table = model._meta.table_name
        if "partition_key" not in {c.name for c in index.db.get_columns(table)}:
            index.db.execute_sql(f'ALTER TABLE "{table}" ADD COLUMN "partition_key" INTEGER NOT NULL DEFAULT 1')
    if "partition" not in {c.name for c in index.db.get_columns("audit_event")}:
        index.db.execute_sql('ALTER TABLE "audit_event" ADD COLUMN "partition" VARCHAR(64)')
    for model, uid in PARTITIONED_UIDS:
        table = model._meta.table_name
        index.db.execute_sql(f'DROP INDEX IF EXISTS "{table}_{uid}"')
        index.db.execute_sql(
            f'CREATE UNIQUE INDEX IF NOT EXISTS "{table}_{uid}_partition_key" ON "{table}" ("{uid}", "partition_key")'
        )
    return False


#: The UID columns that were unique on their own before schema 12.
PARTITIONED_UIDS = (
    (Study, "study_instance_uid"), (Series, "series_instance_uid"), (Instance, "sop_instance_uid"),
)


def create_default_partition() -> None:
    Partition.create(key=DEFAULT_KEY, name=DEFAULT_NAME, created=utcnow())


def _v12_to_v13(index: Index) -> bool:
    """Webhooks: subscriptions, the outbox of events, their deliveries, the scans' cursors and the
    series/studies waiting to be reported stable; all start empty."""
    index.db.create_tables(list(WEBHOOK_MODELS))
    return False


def _v13_to_v14(index: Index) -> bool:
    """UPS-RS: workitems, their subscriptions and the event reports for open channels; all start empty."""
    index.db.create_tables(list(UPS_MODELS))
    return False


#: MIGRATIONS[v] takes a database at version v to v + 1; True asks for derived columns
#: to be recomputed once the schema is current (the code that does it expects that).
MIGRATIONS: dict[int, Callable[[Index], bool]] = {
    1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7, 7: _v7_to_v8,
    8: _v8_to_v9, 9: _v9_to_v10, 10: _v10_to_v11, 11: _v11_to_v12,
    12: _v12_to_v13, 13: _v13_to_v14,
}


def ensure_schema(index: Index) -> None:
    db = index.db
    with db.connection_context(), index.write_transaction():
        tables = set(db.get_tables())
        if "study" not in tables:
            db.create_tables([*MODELS, SchemaInfo])
            _create_database_specific_indexes(index)
            create_default_partition()
            SchemaInfo.create(version=SCHEMA_VERSION)
            return
        if "schema_info" not in tables:
            db.create_tables([SchemaInfo])
            SchemaInfo.create(version=1)
        info = SchemaInfo.select().first()
        if info.version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the index schema is version {info.version}, newer than this server "
                f"understands ({SCHEMA_VERSION}); upgrade dicomserver"
            )
        rederive = False
        for version in range(info.version, SCHEMA_VERSION):
            rederive |= MIGRATIONS[version](index)
        if rederive:
            index.rederive(
                [s.id for s in Study.select(Study.id)],
                [s.id for s in Series.select(Series.id)],
            )
        SchemaInfo.update(version=SCHEMA_VERSION).execute()
