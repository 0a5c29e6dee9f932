"""Reads of the index by study/series/instance UID: WADO, /metadata, the change feed, gc.

Every WADO request starts with one of these, so their SQL text is built once per
database and only values are bound (building a statement with peewee's query builder
costs more than SQLite takes to run it; see writes.py). Rows come back as frozen
dataclasses, never as peewee models, so what a caller gets is what the hints say.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, cast

import peewee as pw

from ..errors import NotFound
from ..metrics import INDEX_SECONDS
from .connection import IndexDatabase
from .models import Change, Instance, InstanceMetadata


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


#: Table alias of each StoredInstance field in the instances query (the rest are Instance columns).
_FIELD_TABLE = {"series_instance_uid": "se", "series_number": "se", "metadata": "m"}
_INSTANCE_COLUMNS = ", ".join(f'{_FIELD_TABLE.get(f.name, "i")}."{f.name}"' for f in fields(StoredInstance))

SqlBuilder = Callable[[str, bool, bool], str]


class IndexReads(IndexDatabase):
    def __init__(self, database_url: str, **options: Any):
        super().__init__(database_url, **options)
        self._read_sql: dict[tuple[SqlBuilder, bool, bool], str] = {}

    @INDEX_SECONDS.labels("instances").time()
    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[StoredInstance]:
        """Instances of a study/series/instance, in series then instance order; 404 if none."""
        cursor = self._execute_cached(_instances_sql, study_uid, series_uid, sop_uid)
        rows = [StoredInstance(*values) for values in cursor.fetchall()]
        if not rows:
            raise NotFound(_not_found_message(study_uid, series_uid, sop_uid))
        return rows

    @INDEX_SECONDS.labels("metadata").time()
    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> tuple[list[str], str]:
        """The stored DICOM JSON texts (one per instance, unparsed) and a version tag.

        The tag is '<newest watermark>-<count>': it changes whenever an instance is
        added, replaced or removed, which is what a metadata ETag must follow.
        """
        rows = self._execute_cached(_metadata_sql, study_uid, series_uid, sop_uid).fetchall()
        if not rows:
            raise NotFound(_not_found_message(study_uid, series_uid, sop_uid))
        return [text for text, _ in rows], f"{max(w for _, w in rows)}-{len(rows)}"

    def stored_counts(self) -> tuple[int, int]:
        """(studies, instances) in the archive, for /metrics: one pass over the study rows' counters."""
        row = self.db.execute_sql('SELECT COUNT(*), COALESCE(SUM("number_of_instances"), 0) FROM "study"').fetchone()
        return int(row[0]), int(row[1])

    def _execute_cached(
        self, build: SqlBuilder, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> Any:
        """Run one of the per-request reads by study/series/instance; its SQL text is built once."""
        key = (build, series_uid is not None, sop_uid is not None)
        sql = self._read_sql.get(key)
        if sql is None:
            sql = self._read_sql[key] = build(self.db.param, series_uid is not None, sop_uid is not None)
        params = [study_uid] + [u for u in (series_uid, sop_uid) if u is not None]
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
            )
            .join(Instance, pw.JOIN.LEFT_OUTER, on=(Instance.sop_instance_uid == Change.sop_instance_uid))
            .join(InstanceMetadata, pw.JOIN.LEFT_OUTER, on=(InstanceMetadata.instance == Instance.id))
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

    def stored_blobs(self, sop_instance_uid: str | None = None) -> list[StoredBlob]:
        """Every indexed instance's blob key, UIDs and the time its version was stored
        (or the one instance's, to check again what a scan found)."""
        sql = (
            'SELECT i."blob_key", s."study_instance_uid", se."series_instance_uid", i."sop_instance_uid", '
            'c."timestamp", i."size", i."sha256" FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
            'JOIN "study" AS s ON s."id" = i."study_id" JOIN "change" AS c ON c."sequence" = i."watermark"'
        )
        params: tuple[str, ...] = ()
        if sop_instance_uid is not None:
            sql += f' WHERE i."sop_instance_uid" = {self.db.param}'
            params = (sop_instance_uid,)
        to_datetime = Change.timestamp.python_value
        return [
            StoredBlob(key, study, series, sop, to_datetime(stored), size, sha256)
            for key, study, series, sop, stored, size, sha256 in self.db.execute_sql(sql, params).fetchall()
        ]

    def has_instance(self, sop_instance_uid: str) -> bool:
        """Whether an instance with this SOP Instance UID is stored (a bulk import skips it)."""
        sql = f'SELECT 1 FROM "instance" WHERE "sop_instance_uid" = {self.db.param} LIMIT 1'
        return self.db.execute_sql(sql, (sop_instance_uid,)).fetchone() is not None


def _instances_sql(param: str, by_series: bool, by_sop: bool) -> str:
    return _by_uids(_INSTANCE_COLUMNS, param, by_series, by_sop)


def _metadata_sql(param: str, by_series: bool, by_sop: bool) -> str:
    return _by_uids('m."metadata", i."watermark"', param, by_series, by_sop)


def _by_uids(columns: str, param: str, by_series: bool, by_sop: bool) -> str:
    """SELECT `columns` of a study's/series'/instance's instances, in series then instance order."""
    where = [f's."study_instance_uid" = {param}']
    if by_series:
        where.append(f'se."series_instance_uid" = {param}')
    if by_sop:
        where.append(f'i."sop_instance_uid" = {param}')
    return (
        f"SELECT {columns} "
        f'FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
        f'JOIN "study" AS s ON s."id" = i."study_id" JOIN "instance_metadata" AS m ON m."instance_id" = i."id" '
        f'WHERE {" AND ".join(where)} ORDER BY se."id", i."instance_number", i."id"'
    )


def _not_found_message(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid is not None:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid} was not found"
    if series_uid is not None:
        return f"series {series_uid} in study {study_uid} was not found"
    return f"study {study_uid} was not found"
