"""Reads of the index by study/series/instance UID: WADO, /metadata, the change feed, gc.

Every WADO request starts with one of these, so their SQL text is built once per
database and only values are bound (building a statement with peewee's query builder
costs more than SQLite takes to run it; see writes.py). Rows come back as frozen
dataclasses, never as peewee models, so what a caller gets is what the hints say.

`/metadata` is read in pieces (metadata_stream.py streams it): the series and their
versions first, then per series its instance ids, then their DICOM JSON a batch at a
time. The one thing written here is derived data: a series' gzip-compressed `/metadata`
(SeriesMetadataCache), kept per version so that no write path has to invalidate it.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, cast

import peewee as pw

from ..errors import NotFound
from ..metrics import INDEX_SECONDS
from ..partitions import DEFAULT, Partition
from .connection import IndexDatabase
from .models import Change, Instance, InstanceMetadata
from .models import Partition as PartitionRow

log = logging.getLogger(__name__)

#: Instances per read of a streamed `/metadata` body (~250 KB of CT JSON: memory stays bounded,
#: and each piece is joined, made absolute and encoded while it is still in the CPU cache).
METADATA_BATCH = 50
#: SOP Instance UIDs per statement of `sop_classes_and_blobs` (SQLite before 3.32 binds 999
#: parameters at most).
UID_BATCH = 500
#: Base URLs a series' gzip cache is kept for (each deployment answers under one or a few).
METADATA_CACHE_BASES = 4


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One stored instance: its Instance row, its series' UID and number, and its DICOM JSON."""

    id: int
    study_id: int
    series_id: int
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None
    blob_key: str
    size: int
    sha256: str | None
    #: JSON frame map (see frames.py); None when frames cannot be located by offset.
    frames: str | None
    #: JSON {bulk data path: [offset, length]} for the BulkDataURIs in `metadata`.
    bulkdata: str | None
    watermark: int
    series_instance_uid: str
    series_number: int | None
    #: The DICOM JSON text stored at STOW (BulkDataURIs relative, see dicomjson.py).
    metadata: str


@dataclass(frozen=True, slots=True)
class SeriesVersion:
    """One series of a `/metadata` answer: its row id, and the newest watermark and number of
    its instances in the answer."""

    id: int
    newest: int
    count: int

    @property
    def version(self) -> str:
        return version_tag(self.newest, self.count)


@dataclass(frozen=True, slots=True)
class CachedDeflate:
    """A series' `/metadata` text as a raw deflate stream ending in a sync flush, with the
    CRC-32 and length of the text, which the gzip trailer needs."""

    crc32: int
    length: int
    deflate: bytes


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """A change-feed entry and the current version of its instance (watermark None: deleted)."""

    sequence: int
    timestamp: dt.datetime
    action: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    current_watermark: int | None
    current_metadata: str | None
    #: The partition's name (the feed is global; the reference names each entry's partition).
    partition_name: str


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """Where an indexed instance's blob is, and when its version was stored (`dicom gc`),
    with the size and SHA-256 its blob had when stored (`dicomserver verify`)."""

    blob_key: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    stored_at: dt.datetime
    size: int
    #: None for instances stored before the index kept it.
    sha256: str | None
    #: The original version a bulk update kept (not the instance's current blob).
    original: bool = False
    partition_key: int = DEFAULT.key


#: Table alias of each StoredInstance field in the instances query (the rest are Instance columns).
_FIELD_TABLE = {"series_instance_uid": "se", "series_number": "se", "metadata": "m"}
_INSTANCE_COLUMNS = ", ".join(f'{_FIELD_TABLE.get(f.name, "i")}."{f.name}"' for f in fields(StoredInstance))
#: The same columns for `msdicom-request-original`: the original version where a bulk update kept one.
_ORIGINAL = {
    "blob_key": 'COALESCE(i."original_blob_key", i."blob_key")',
    "size": 'COALESCE(i."original_size", i."size")',
    "sha256": 'CASE WHEN i."original_blob_key" IS NULL THEN i."sha256" ELSE i."original_sha256" END',
    "metadata": 'COALESCE(m."original_metadata", m."metadata")',
}
_ORIGINAL_COLUMNS = ", ".join(
    _ORIGINAL.get(f.name, f'{_FIELD_TABLE.get(f.name, "i")}."{f.name}"') for f in fields(StoredInstance)
)

SqlBuilder = Callable[[str, bool, bool], str]
#: The original version's DICOM JSON where a bulk update kept one, else the current one.
_ORIGINAL_TEXT = 'COALESCE("original_metadata", "metadata")'


class IndexReads(IndexDatabase):
    def __init__(self, database_url: str, **options: Any):
        super().__init__(database_url, **options)
        self._read_sql: dict[tuple[SqlBuilder, bool, bool], str] = {}
        self._sop_classes_sql: str | None = None
        p = self.db.param
        ids = f'SELECT "id", "watermark" FROM "instance" WHERE "series_id" = {p}'
        order = 'ORDER BY "instance_number", "id"'
        self._metadata_ids_sql = {False: f"{ids} {order}", True: f'{ids} AND "sop_instance_uid" = {p} {order}'}
        # The texts as UTF-8 bytes, as they are sent: no decoding into str and encoding back
        # (a third of a 5,000-instance study's `/metadata`). PostgreSQL's convert_to gives
        # bytea (a text-to-bytea cast would read backslashes as escapes).
        utf8 = 'CAST("metadata" AS BLOB)' if self.is_sqlite else """convert_to("metadata", 'UTF8')"""
        self._metadata_texts_sql = {
            original: f'SELECT "instance_id", {utf8} FROM "instance_metadata" '
                      f'WHERE "instance_id" IN ({", ".join([p] * METADATA_BATCH)})'
            for original, utf8 in ((False, utf8), (True, utf8.replace('"metadata"', _ORIGINAL_TEXT)))
        }

    @INDEX_SECONDS.labels("instances").time()
    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
        partition: Partition = DEFAULT,
    ) -> list[StoredInstance]:
        """Instances of a study/series/instance of a partition, in series then instance order; 404 if none."""
        cursor = self._execute_cached(_instances_sql, partition, study_uid, series_uid, sop_uid)
        rows = [StoredInstance(*values) for values in cursor.fetchall()]
        if not rows:
            raise NotFound(_not_found_message(study_uid, series_uid, sop_uid))
        return rows

    def original_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
        partition: Partition = DEFAULT,
    ) -> list[StoredInstance]:
        """`instances` in their original version (`msdicom-request-original`): the blob and DICOM
        JSON an instance was first stored with, where a bulk update has changed it since."""
        cursor = self._execute_cached(_original_instances_sql, partition, study_uid, series_uid, sop_uid)
        rows = [StoredInstance(*values) for values in cursor.fetchall()]
        if not rows:
            raise NotFound(_not_found_message(study_uid, series_uid, sop_uid))
        return rows

    @INDEX_SECONDS.labels("metadata").time()
    def metadata_series(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
        partition: Partition = DEFAULT,
    ) -> list[SeriesVersion]:
        """The series of a study/series/instance of a partition in answer order, each with the
        version of its instances there (one aggregate over the instance rows; no DICOM JSON
        read); 404 if none."""
        rows = self._execute_cached(_metadata_series_sql, partition, study_uid, series_uid, sop_uid).fetchall()
        if not rows:
            raise NotFound(_not_found_message(study_uid, series_uid, sop_uid))
        return [SeriesVersion(series_id, newest, count) for series_id, newest, count in rows]

    def metadata_ids(self, series_id: int, sop_uid: str | None = None) -> tuple[list[int], str]:
        """The instance ids of a series (or of its one instance) in answer order, and the
        version of exactly those rows (one statement, so the two agree)."""
        sql = self._metadata_ids_sql[sop_uid is not None]
        with self._connected():
            rows = self.db.execute_sql(sql, (series_id,) if sop_uid is None else (series_id, sop_uid)).fetchall()
        return [row[0] for row in rows], version_tag(max((row[1] for row in rows), default=0), len(rows))

    def metadata_texts(self, ids: Sequence[int], *, original: bool = False) -> list[bytes]:
        """The DICOM JSON texts stored at STOW of up to METADATA_BATCH instances, UTF-8, in the
        order of `ids` (with `original`, the original versions' where a bulk update kept them);
        an instance deleted since its id was read is left out."""
        padded = list(ids) + [ids[-1]] * (METADATA_BATCH - len(ids))  # one statement text
        with self._connected():
            found = dict(self.db.execute_sql(self._metadata_texts_sql[original], padded).fetchall())
        if not self.is_sqlite:  # psycopg2 gives bytea as memoryview
            found = {i: bytes(text) for i, text in found.items()}
        return [found[i] for i in ids if i in found]

    def cached_metadata(self, series_id: int, base_url: str, version: str) -> CachedDeflate | None:
        """The series' deflated `/metadata` text for this base URL, if built for this version."""
        sql = (
            f'SELECT "crc32", "length", "deflate" FROM "series_metadata_cache" '
            f'WHERE "series_id" = {self.db.param} AND "base_url" = {self.db.param} AND "version" = {self.db.param}'
        )
        with self._connected():
            row = self.db.execute_sql(sql, (series_id, base_url, version)).fetchone()
        return None if row is None else CachedDeflate(row[0], row[1], bytes(row[2]))

    def cache_metadata(self, series_id: int, base_url: str, version: str, entry: CachedDeflate) -> None:
        """Keep a series' deflated `/metadata` text (the newest METADATA_CACHE_BASES base URLs
        per series). Best effort: a cache that cannot be written (a read-only database, a busy
        writer lock) only costs the next reader the compression again."""
        p = self.db.param
        table = '"series_metadata_cache"'
        newest = f'SELECT "id" FROM {table} WHERE "series_id" = {p} ORDER BY "id" DESC LIMIT {METADATA_CACHE_BASES}'
        try:
            with self._connected(), self.write_transaction():
                self.db.execute_sql(
                    f'DELETE FROM {table} WHERE "series_id" = {p} AND "base_url" = {p}', (series_id, base_url)
                )
                self.db.execute_sql(
                    f'INSERT INTO {table} ("series_id", "base_url", "version", "crc32", "length", "deflate") '
                    f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
                    (series_id, base_url, version, entry.crc32, entry.length, entry.deflate),
                )
                self.db.execute_sql(
                    f'DELETE FROM {table} WHERE "series_id" = {p} AND "id" NOT IN ({newest})',
                    (series_id, series_id),
                )
        except pw.DatabaseError as exc:
            log.warning("the gzip cache of series %s was not stored: %s", series_id, exc)

    @contextmanager
    def _connected(self) -> Iterator[None]:
        """A connection for the reads a streamed `/metadata` body makes: it runs after the
        request's teardown gave the pooled connection back, so it takes one per batch and
        returns it (never holding one while a slow client reads)."""
        if not self.db.is_closed():
            yield
            return
        self.connect()
        try:
            yield
        finally:
            self.close()

    def stored_counts(self) -> tuple[int, int]:
        """(studies, instances) in the archive, for /metrics: one pass over the study rows' counters."""
        row = self.db.execute_sql('SELECT COUNT(*), COALESCE(SUM("number_of_instances"), 0) FROM "study"').fetchone()
        return int(row[0]), int(row[1])

    def _execute_cached(
        self, build: SqlBuilder, partition: Partition, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> Any:
        """Run one of the per-request reads by study/series/instance; its SQL text is built once."""
        key = (build, series_uid is not None, sop_uid is not None)
        sql = self._read_sql.get(key)
        if sql is None:
            sql = self._read_sql[key] = build(self.db.param, series_uid is not None, sop_uid is not None)
        params = [partition.key, study_uid] + [u for u in (series_uid, sop_uid) if u is not None]
        return self.db.execute_sql(sql, params)

    def changes(
        self,
        *,
        after_sequence: int | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        offset: int = 0,
        limit: int = 10,
        newest_first: bool = False,
    ) -> list[FeedEntry]:
        """Change-feed entries with the current version of their instance."""
        query = (
            Change.select(
                Change.sequence,
                Change.timestamp,
                Change.action,
                Change.study_instance_uid,
                Change.series_instance_uid,
                Change.sop_instance_uid,
                Instance.watermark,
                InstanceMetadata.metadata,
                PartitionRow.name,
            )
            .join(
                Instance,
                pw.JOIN.LEFT_OUTER,
                on=(
                    (Instance.partition_key == Change.partition_key)
                    & (Instance.sop_instance_uid == Change.sop_instance_uid)
                ),
            )
            .join_from(Instance, InstanceMetadata, pw.JOIN.LEFT_OUTER, on=(InstanceMetadata.instance == Instance.id))
            .join_from(Change, PartitionRow, on=(PartitionRow.key == Change.partition_key))
        )
        if after_sequence is not None:
            query = query.where(Change.sequence > after_sequence)
        if start is not None:
            query = query.where(Change.timestamp >= start)
        if end is not None:
            query = query.where(Change.timestamp < end)
        order: tuple[Any, ...]
        if newest_first:
            order = (Change.sequence.desc(),)
        elif start is not None or end is not None:
            order = (Change.timestamp, Change.sequence)
        else:
            order = (Change.sequence,)
        rows = cast("Iterable[tuple[Any, ...]]", query.order_by(*order).offset(offset).limit(limit).tuples())
        return [FeedEntry(*row) for row in rows]

    def stored_blobs(
        self, sop_instance_uid: str | None = None, *, partition_key: int = DEFAULT.key
    ) -> list[StoredBlob]:
        """Every indexed blob of every partition: each instance's current version and, where a
        bulk update kept one, its original (both live for `dicom gc` and checked by `verify`),
        with its UIDs and the time the current version was stored (or the one instance's blobs
        in a partition, to check again what a scan found)."""
        p = self.db.param
        by_sop = None if sop_instance_uid is None else f'i."partition_key" = {p} AND i."sop_instance_uid" = {p}'
        selects = []
        for prefix, only in (("", None), ("original_", 'i."original_blob_key" IS NOT NULL')):
            conditions = [condition for condition in (by_sop, only) if condition]
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            selects.append(
                f'SELECT i."{prefix}blob_key", s."study_instance_uid", se."series_instance_uid", '
                f'i."sop_instance_uid", c."timestamp", i."{prefix}size", i."{prefix}sha256", {1 if prefix else 0}, '
                'i."partition_key" FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
                'JOIN "study" AS s ON s."id" = i."study_id" JOIN "change" AS c ON c."sequence" = i."watermark"'
                + where
            )
        sql = " UNION ALL ".join(selects)
        params = () if sop_instance_uid is None else (partition_key, sop_instance_uid) * 2
        to_datetime = Change.timestamp.python_value
        return [
            StoredBlob(key, study, series, sop, to_datetime(stored), size, sha256, bool(original), pkey)
            for key, study, series, sop, stored, size, sha256, original, pkey
            in self.db.execute_sql(sql, params).fetchall()
        ]

    def sop_classes_and_blobs(
        self, sop_uids: Sequence[str], *, partition: Partition = DEFAULT
    ) -> dict[str, tuple[str, str]]:
        """SOP Instance UID -> (SOP Class UID, blob key) of those of `sop_uids` stored in the
        partition (storage commitment): one statement per UID_BATCH UIDs, by the (UID,
        partition) unique index, its text the same for every batch (the last one padded)."""
        sql = self._sop_classes_sql
        if sql is None:
            p = self.db.param
            sql = self._sop_classes_sql = (
                'SELECT "sop_instance_uid", "sop_class_uid", "blob_key" FROM "instance" '
                f'WHERE "partition_key" = {p} AND "sop_instance_uid" IN ({", ".join([p] * UID_BATCH)})'
            )
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(sop_uids), UID_BATCH):
            batch = list(sop_uids[start:start + UID_BATCH])
            batch += [batch[-1]] * (UID_BATCH - len(batch))
            for sop_uid, sop_class_uid, blob_key in self.db.execute_sql(sql, [partition.key, *batch]).fetchall():
                found[sop_uid] = (sop_class_uid, blob_key)
        return found

    def has_instance(self, sop_instance_uid: str, *, partition: Partition = DEFAULT) -> bool:
        """Whether an instance with this SOP Instance UID is stored in the partition (a bulk import skips it)."""
        p = self.db.param
        sql = f'SELECT 1 FROM "instance" WHERE "partition_key" = {p} AND "sop_instance_uid" = {p} LIMIT 1'
        return self.db.execute_sql(sql, (partition.key, sop_instance_uid)).fetchone() is not None


def _instances_sql(param: str, by_series: bool, by_sop: bool) -> str:
    return _by_uids(_INSTANCE_COLUMNS, param, by_series, by_sop)


def _original_instances_sql(param: str, by_series: bool, by_sop: bool) -> str:
    return _by_uids(_ORIGINAL_COLUMNS, param, by_series, by_sop)


def _metadata_series_sql(param: str, by_series: bool, by_sop: bool) -> str:
    columns, tail = 'se."id", MAX(i."watermark"), COUNT(*)', 'GROUP BY se."id" ORDER BY se."id"'
    return _by_uids(columns, param, by_series, by_sop, tail=tail, with_metadata=False)


def _by_uids(
    columns: str, param: str, by_series: bool, by_sop: bool, *,
    tail: str = 'ORDER BY se."id", i."instance_number", i."id"', with_metadata: bool = True,
) -> str:
    """SELECT `columns` of a study's/series'/instance's instances of a partition, in series then
    instance order (the study by its (UID, partition) index)."""
    where = [f's."partition_key" = {param}', f's."study_instance_uid" = {param}']
    if by_series:
        where.append(f'se."series_instance_uid" = {param}')
    if by_sop:
        where.append(f'i."sop_instance_uid" = {param}')
    join = ' JOIN "instance_metadata" AS m ON m."instance_id" = i."id"' if with_metadata else ""
    return (
        f"SELECT {columns} "
        f'FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
        f'JOIN "study" AS s ON s."id" = i."study_id"{join} '
        f'WHERE {" AND ".join(where)} {tail}'
    )


def version_tag(newest_watermark: int, count: int) -> str:
    """'<newest watermark>-<count>': it changes whenever an instance is added, replaced or
    removed (a new version gets a higher watermark; removals lower the count, and what is
    left below a watermark only shrinks), which is what a metadata ETag must follow."""
    return f"{newest_watermark}-{count}"


def _not_found_message(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid is not None:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid} was not found"
    if series_uid is not None:
        return f"series {series_uid} in study {study_uid} was not found"
    return f"study {study_uid} was not found"
