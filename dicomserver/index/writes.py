"""Writes of the index: STOW's instances, deletes, and the counters and columns they move.

Every write runs in one short transaction under the index's single write lock
(connection.py); STOW's instances share theirs with those stored at the same time
(group commit), each in a savepoint, so one instance's refusal fails only itself.
Blob deletions are returned to the caller to run *after* the commit, so a crash
can leave an orphan blob but never an index row without its blob.

STOW's path is plain parametrised SQL, built once per database: building a statement
with peewee's query builder costs far more than SQLite needs to run it (about 1 ms
against 50 µs for the dozen statements one instance needs), so the hot path keeps its
SQL text in a cache keyed by the columns it sets and only binds values. Column names
come from the peewee models, so the two cannot drift apart. The statements are
portable between SQLite (3.35+) and PostgreSQL: `RETURNING` gives new ids on both.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import peewee as pw

from ..dicomjson import DicomJson
from ..metrics import INDEX_SECONDS
from ..partitions import DEFAULT, Partition
from ..searchable import IndexColumns, request_attributes, series_columns, study_columns
from .connection import utcnow
from .extended import index_instance_values
from .models import Change, Instance, InstanceMetadata, RequestAttribute, Series, Study
from .outbox import INSTANCE_DELETED, INSTANCE_STORED, Outbox
from .query import qido_members
from .reads import IndexReads


class DuplicateInstance(Exception):
    """The SOP Instance UID is already stored (STOW failure 45070)."""


@dataclass(frozen=True)
class InstanceRecord:
    """Everything STOW learned about one instance, ready to index."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str | None
    frames: str | None
    metadata: DicomJson
    #: The searchable column values, from the attributes STOW found valid (searchable.py).
    columns: IndexColumns
    bulkdata: str | None = None
    #: The data partition the instance is stored in (its UIDs are unique within it).
    partition: Partition = DEFAULT


@dataclass(frozen=True)
class StoreOutcome:
    replaced: bool
    #: Blob of the replaced version, to delete after the commit.
    obsolete_blob_key: str | None
    sequence: int
    #: The replaced instance's original version, when a bulk update had kept one (deleted too).
    obsolete_original_key: str | None = None


#: peewee's translation of DB-API errors into its own (what its execute_sql wraps a call in).
_DATABASE_ERRORS = pw.__exception_wrapper__  # type: ignore[attr-defined]


class WriteStatements:
    def __init__(self, db: pw.Database):
        self.db = db
        self.p = db.param
        self._cache: dict[tuple[Any, ...], str] = {}

    # -- execution ---------------------------------------------------------
    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute; the DB-API cursor (sqlite3 or psycopg2) is returned as is. As peewee's
        execute_sql, errors become peewee's (IntegrityError, OperationalError...), without
        its query logging and hooks, which the hot path does not use."""
        with _DATABASE_ERRORS:
            cursor = self.db.cursor()
            cursor.execute(sql, tuple(params))
        return cursor

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.run(sql, params).fetchone()
        return row

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the one row a query returns."""
        return self.run(sql, params).fetchone()[0]

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.run(sql, params).fetchall()
        return rows

    # -- statement text ----------------------------------------------------
    def _sql(self, key: tuple[Any, ...], build: Callable[[], str]) -> str:
        sql = self._cache.get(key)
        if sql is None:
            sql = self._cache[key] = build()
        return sql

    def insert(
        self, model: type[pw.Model], columns: Iterable[str], values: Sequence[Any], *, returning: str | None = None
    ) -> Any:
        """INSERT one row; with `returning`, the value of that column (e.g. the new id)."""
        columns = tuple(columns)

        def build() -> str:
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join([self.p] * len(columns))
            tail = f' RETURNING "{returning}"' if returning else ""
            return f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks}){tail}'

        cursor = self.run(self._sql(("insert", model, columns, returning), build), values)
        return cursor.fetchone()[0] if returning else None

    def update(
        self,
        model: type[pw.Model],
        columns: Iterable[str],
        increments: Iterable[str],
        values: Sequence[Any],
        row_id: int,
    ) -> None:
        """UPDATE one row by id: `columns` are set, `increments` are added to."""
        columns, increments = tuple(columns), tuple(increments)

        def build() -> str:
            sets = [f'"{c}" = {self.p}' for c in columns] + [f'"{c}" = "{c}" + {self.p}' for c in increments]
            return f'UPDATE "{model._meta.table_name}" SET {", ".join(sets)} WHERE "id" = {self.p}'

        self.run(self._sql(("update", model, columns, increments), build), (*values, row_id))


def table(model: type[pw.Model]) -> str:
    return f'"{model._meta.table_name}"'


def column(field: pw.Field) -> str:
    return f'"{field.column_name}"'


class InstanceWriter:
    """The statements STOW runs per instance (see IndexWrites._insert)."""

    def __init__(self, db: pw.Database):
        self.s = WriteStatements(db)
        p = db.param
        self.instance_by_sop = (
            f"SELECT {column(Instance.id)}, {column(Instance.study)}, {column(Instance.series)}, "
            f"{column(Instance.blob_key)}, {column(Instance.original_blob_key)} FROM {table(Instance)} "
            f"WHERE {column(Instance.partition_key)} = {p} AND {column(Instance.sop_instance_uid)} = {p}"
        )
        self.next_sequence = f"SELECT COALESCE(MAX({column(Change.sequence)}), 0) + 1 FROM {table(Change)}"
        self.study_by_uid = (
            f"SELECT {column(Study.id)}, {column(Study.sop_classes_in_study)}, {column(Study.modalities_in_study)} "
            f"FROM {table(Study)} "
            f"WHERE {column(Study.partition_key)} = {p} AND {column(Study.study_instance_uid)} = {p}"
        )
        # The study and, if stored, the series: one statement where most STOWs need two.
        self.study_and_series = (
            f"SELECT st.{column(Study.id)}, st.{column(Study.sop_classes_in_study)}, "
            f"st.{column(Study.modalities_in_study)}, se.{column(Series.id)}, se.{column(Series.study)}, "
            f"se.{column(Series.modality)} FROM {table(Study)} st LEFT JOIN {table(Series)} se "
            f"ON se.{column(Series.partition_key)} = st.{column(Study.partition_key)} "
            f"AND se.{column(Series.series_instance_uid)} = {p} "
            f"WHERE st.{column(Study.partition_key)} = {p} AND st.{column(Study.study_instance_uid)} = {p}"
        )
        self.series_by_uid = (
            f"SELECT {column(Series.id)}, {column(Series.study)}, {column(Series.modality)} FROM {table(Series)} "
            f"WHERE {column(Series.partition_key)} = {p} AND {column(Series.series_instance_uid)} = {p}"
        )
        self.modalities = (
            f"SELECT DISTINCT {column(Series.modality)} FROM {table(Series)} "
            f"WHERE {column(Series.study)} = {p} AND {column(Series.modality)} IS NOT NULL"
        )
        self.delete_request_attributes = (
            f"DELETE FROM {table(RequestAttribute)} WHERE {column(RequestAttribute.series)} = {p}"
        )
        self.timestamp = Change.timestamp.db_value


class IndexWrites(IndexReads):
    def __init__(self, database_url: str, **options: Any):
        super().__init__(database_url, **options)
        self._writer = InstanceWriter(self.db)
        #: Webhook events, written with the change they report (index/outbox.py).
        self.outbox = Outbox(self.db)

    # -- writes ------------------------------------------------------------
    @INDEX_SECONDS.labels("store_instance").time()
    def store_instance(self, rec: InstanceRecord, *, replace: bool) -> StoreOutcome:
        """Index one stored blob; raise DuplicateInstance unless `replace`.

        Returns once committed, in one commit with the instances other threads of this
        process stored meanwhile (connection.GroupCommit).
        """
        return self.group_commit(lambda: self._store(rec, replace))

    def store_many(self, records: Iterable[InstanceRecord], *, replace: bool = False) -> list[StoreOutcome | Exception]:
        """Index a batch in one transaction and one commit (bulk import, the scale benchmark):
        each record's outcome, or its exception (DuplicateInstance...), which stores
        nothing of it and nothing less of the others. Errors of the transaction itself
        (no write lock, the commit) are raised: then none of the batch is stored."""
        return self.write_each([partial(self._store, rec, replace) for rec in records])

    def _store(self, rec: InstanceRecord, replace: bool) -> StoreOutcome:
        try:
            return self._insert(rec, replace=replace)
        except pw.IntegrityError:
            # Defence in depth: writers are serialised, but a unique index has the last word.
            raise DuplicateInstance(rec.sop_instance_uid) from None

    def _insert(self, rec: InstanceRecord, *, replace: bool) -> StoreOutcome:
        """The rows of one instance and their counters; callers hold the write lock."""
        meta = rec.metadata
        w = self._writer
        s = w.s
        partition_key = rec.partition.key
        found = s.one(w.instance_by_sop, (partition_key, rec.sop_instance_uid))
        if found is not None:
            if not replace:
                raise DuplicateInstance(rec.sop_instance_uid)
            self._remove_instances([found[:3]])
        sequence = s.value(w.next_sequence)
        s.insert(
            Change,
            (
                "sequence", "timestamp", "action", "partition_key", "study_instance_uid", "series_instance_uid",
                "sop_instance_uid",
            ),
            (
                sequence,
                w.timestamp(utcnow()),
                "update" if found is not None else "create",
                partition_key,
                rec.study_instance_uid,
                rec.series_instance_uid,
                rec.sop_instance_uid,
            ),
        )
        study = s.one(w.study_and_series, (rec.series_instance_uid, partition_key, rec.study_instance_uid))
        series: tuple[Any, ...] | None
        if study is None:
            study_id = s.insert(
                Study,
                ("partition_key", "study_instance_uid", "number_of_series", "number_of_instances"),
                (partition_key, rec.study_instance_uid, 0, 0),
                returning="id",
            )
            sop_classes = modalities = None
            series = s.one(w.series_by_uid, (partition_key, rec.series_instance_uid))  # under another study?
        else:
            study_id, sop_classes, modalities = study[:3]
            series = None if study[3] is None else study[3:]
        new_series = series is None
        if series is None:
            series_id = s.insert(
                Series,
                ("study_id", "partition_key", "series_instance_uid", "number_of_instances"),
                (study_id, partition_key, rec.series_instance_uid, 0),
                returning="id",
            )
            old_modality = None
        elif series[1] != study_id:
            # A series UID re-used under another study: keep the first owner.
            raise DuplicateInstance(rec.sop_instance_uid)
        else:
            series_id, _, old_modality = series
        instance_columns = rec.columns.instance
        instance_id = s.insert(
            Instance,
            (
                "study_id", "series_id", "partition_key", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid",
                "blob_key", "size", "sha256", "frames", "bulkdata", "watermark", *instance_columns,
            ),
            (
                study_id, series_id, partition_key, rec.sop_instance_uid, rec.sop_class_uid, rec.transfer_syntax_uid,
                rec.blob_key, rec.size, rec.sha256, rec.frames, rec.bulkdata, sequence, *instance_columns.values(),
            ),
            returning="id",
        )
        s.insert(
            InstanceMetadata,
            ("instance_id", "metadata", "qido"),
            (instance_id, json.dumps(meta, separators=(",", ":")), qido_members(meta)),
        )
        uids = (rec.study_instance_uid, rec.series_instance_uid, rec.sop_instance_uid)
        index_instance_values(self.db, instance_id, uids, meta)  # extended query tags (index/extended.py)
        # Counters move by increments: no recount of a large study per STOW.
        series_columns = rec.columns.series
        s.update(
            Series,
            ("latest_instance_id", *series_columns),
            ("number_of_instances",),
            (instance_id, *series_columns.values(), 1),
            series_id,
        )
        self._set_request_attributes(series_id, meta, new_series=new_series)
        if new_series or series_columns.get("modality", old_modality) != old_modality:
            # The series' modality is new or changed ("latest wins"): the study's set is
            # recomputed from its series; otherwise it is the one stored.
            modalities = "\\".join(sorted(row[0] for row in s.all(w.modalities, (study_id,)))) or None
        study_columns = rec.columns.study
        s.update(
            Study,
            ("latest_instance_id", "modalities_in_study", "sop_classes_in_study", *study_columns),
            ("number_of_instances", "number_of_series"),
            (
                instance_id,
                modalities,
                _with_value(sop_classes, rec.sop_class_uid),
                *study_columns.values(),
                1,
                1 if new_series else 0,
            ),
            study_id,
        )
        self.outbox.record(INSTANCE_STORED, rec.partition.name, {
            "studyInstanceUid": rec.study_instance_uid, "seriesInstanceUid": rec.series_instance_uid,
            "sopInstanceUid": rec.sop_instance_uid, "sopClassUid": rec.sop_class_uid, "replaced": found is not None,
        })
        if found is None:
            return StoreOutcome(False, None, sequence)
        return StoreOutcome(True, found[3], sequence, found[4])

    def backfill_qido(self, *, batch: int = 2000) -> Iterator[int]:
        """Fill `qido` for rows stored before schema 5, `batch` rows per short write
        transaction (STOW goes on meanwhile); yields the running count after each."""
        select = (
            f'SELECT "instance_id", "metadata" FROM "instance_metadata" WHERE "qido" IS NULL '
            f'ORDER BY "instance_id" LIMIT {self.db.param}'
        )
        update = f'UPDATE "instance_metadata" SET "qido" = {self.db.param} WHERE "instance_id" = {self.db.param}'
        done = 0
        while True:
            with self.write_transaction():
                rows = self.db.execute_sql(select, (batch,)).fetchall()
                if not rows:
                    return
                self.db.cursor().executemany(
                    update, [(qido_members(json.loads(metadata)), instance_id) for instance_id, metadata in rows]
                )
            done += len(rows)
            yield done

    def _set_request_attributes(self, series_id: int, meta: DicomJson, *, new_series: bool = False) -> None:
        """Mirror the latest instance's Request Attributes Sequence items for matching
        (a series created in this transaction has none to replace)."""
        s = self._writer.s
        if not new_series:
            s.run(self._writer.delete_request_attributes, (series_id,))
        for scheduled_procedure_step_id, requested_procedure_id in request_attributes(meta):
            s.insert(
                RequestAttribute,
                ("series_id", "scheduled_procedure_step_id", "requested_procedure_id"),
                (series_id, scheduled_procedure_step_id, requested_procedure_id),
            )

    @INDEX_SECONDS.labels("delete").time()
    def delete(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
        partition: Partition = DEFAULT,
    ) -> list[str]:
        """Remove matching instances of a partition, record 'delete' changes; return their blob keys
        (the current versions' and, of instances a bulk update changed, the originals')."""
        with self.write_transaction():
            instances = self.instances(study_uid, series_uid, sop_uid, partition=partition)  # 404 if none
            originals = self._original_keys([i.id for i in instances])
            now = utcnow()
            first = self._writer.s.value(self._writer.next_sequence)  # callers hold the write lock
            Change.insert_many(
                [
                    {
                        "sequence": first + number,
                        "timestamp": now,
                        "action": "delete",
                        "partition_key": partition.key,
                        "study_instance_uid": study_uid,
                        "series_instance_uid": i.series_instance_uid,
                        "sop_instance_uid": i.sop_instance_uid,
                    }
                    for number, i in enumerate(instances)
                ]
            ).execute()
            self._remove_instances([(i.id, i.study_id, i.series_id) for i in instances])
            self.outbox.record_many(INSTANCE_DELETED, partition.name, (
                {"studyInstanceUid": study_uid, "seriesInstanceUid": i.series_instance_uid,
                 "sopInstanceUid": i.sop_instance_uid} for i in instances
            ))
        return [i.blob_key for i in instances] + originals

    def _original_keys(self, ids: list[int]) -> list[str]:
        """The original versions' blobs of these instances (those a bulk update changed)."""
        keys: list[str] = []
        for chunk in _chunks(ids, 500):
            marks = ", ".join([self.db.param] * len(chunk))
            rows = self.db.execute_sql(
                f'SELECT "original_blob_key" FROM "instance" WHERE "id" IN ({marks}) '
                'AND "original_blob_key" IS NOT NULL', chunk,
            ).fetchall()
            keys.extend(row[0] for row in rows)
        return keys

    def _remove_instances(self, instances: Sequence[tuple[int, int, int]]) -> None:
        """Delete instance rows (id, study id, series id) and keep their series and study
        rows consistent; callers hold the write lock."""
        ids = [instance_id for instance_id, _, _ in instances]
        study_ids = sorted({study_id for _, study_id, _ in instances})
        series_ids = sorted({series_id for _, _, series_id in instances})
        for chunk in _chunks(ids, 500):
            marks = ", ".join([self.db.param] * len(chunk))
            self.db.execute_sql(f'DELETE FROM "instance" WHERE "id" IN ({marks})', chunk)
        self.rederive(study_ids, series_ids)

    def rederive(self, study_ids: Iterable[int], series_ids: Iterable[int]) -> None:
        """Recount, re-pick the latest instance and its columns, drop empty series/studies.

        The new latest instance's columns come from its stored JSON, whose values are
        checked again here (searchable.py): which of them were valid is not stored.
        """
        for series_id in series_ids:
            latest = self._latest_instance(Instance.series, series_id)
            if latest is None:
                self.db.execute_sql(f'DELETE FROM "series" WHERE "id" = {self.db.param}', (series_id,))
                continue
            latest_id, meta = latest
            Series.update(
                number_of_instances=Instance.select().where(Instance.series == series_id).count(),
                latest_instance_id=latest_id,
                **series_columns(meta),
            ).where(Series.id == series_id).execute()
            self._set_request_attributes(series_id, meta)
        for study_id in study_ids:
            latest = self._latest_instance(Instance.study, study_id)
            if latest is None:
                self.db.execute_sql(f'DELETE FROM "study" WHERE "id" = {self.db.param}', (study_id,))
                continue
            latest_id, meta = latest
            Study.update(
                number_of_instances=Instance.select().where(Instance.study == study_id).count(),
                number_of_series=Series.select().where(Series.study == study_id).count(),
                modalities_in_study=_modalities(study_id),
                sop_classes_in_study=_sop_classes(study_id),
                latest_instance_id=latest_id,
                **study_columns(meta),
            ).where(Study.id == study_id).execute()

    def _latest_instance(self, parent: pw.Field[Any], parent_id: int) -> tuple[int, DicomJson] | None:
        """The newest instance of a series or study (by `parent`, its foreign key) and its DICOM JSON."""
        row = (
            Instance.select(Instance.id, InstanceMetadata.metadata)
            .join(InstanceMetadata, on=(InstanceMetadata.instance == Instance.id))
            .where(parent == parent_id)
            .order_by(Instance.id.desc())
            .tuples()
            .first()
        )
        return None if row is None else (row[0], json.loads(row[1]))


def _modalities(study_id: int) -> str | None:
    """ModalitiesInStudy as a DICOM multi-value: the distinct modalities of its series."""
    rows = Series.select(Series.modality).where((Series.study == study_id) & Series.modality.is_null(False))
    return "\\".join(sorted({r.modality for r in rows if r.modality})) or None


def _sop_classes(study_id: int) -> str | None:
    rows = Instance.select(Instance.sop_class_uid).where(Instance.study == study_id).distinct()
    return "\\".join(sorted(r.sop_class_uid for r in rows)) or None


def _with_value(multi_value: str | None, value: str) -> str:
    """Add a value to a backslash-joined set, kept sorted."""
    values = set(multi_value.split("\\")) if multi_value else set()
    values.add(value)
    return "\\".join(sorted(values))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

