"""The metadata index: every read and write of Study/Series/Instance/Change rows.

One concrete class over Peewee (SQLite by default, PostgreSQL by URL). Writes run in
one short transaction each; on SQLite they take the write lock up front
(BEGIN IMMEDIATE), after queueing on a host-wide lock (_SqliteWriteLock), so
concurrent writers from several processes wait their turn, up to the busy timeout,
instead of failing on a lock upgrade. Blob deletions are returned to the
caller to run *after* the commit, so a crash can leave an orphan blob but never an
index row without its blob.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable, Iterator

import peewee as pw
from playhouse.db_url import parse as parse_url

from ..dicomjson import DicomJson, int_value, name_key, name_words, normalize_time, string_value
from ..errors import NotFound
from ..validation import indexed_string
from .query import qido_members
from .models import Change, Instance, InstanceMetadata, RequestAttribute, Series, Study, database_proxy
from .writes import InstanceWriter

log = logging.getLogger(__name__)

# Attribute tags (GGGGEEEE) read from an instance's DICOM JSON into index columns.
T = {
    "PatientName": "00100010",
    "PatientID": "00100020",
    "PatientBirthDate": "00100030",
    "PatientSex": "00100040",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "ReferringPhysicianName": "00080090",
    "StudyID": "00200010",
    "StudyDescription": "00081030",
    "Modality": "00080060",
    "SeriesNumber": "00200011",
    "SeriesDescription": "0008103E",
    "PerformedProcedureStepStartDate": "00400244",
    "PerformedProcedureStepStartTime": "00400245",
    "ManufacturerModelName": "00081090",
    "InstanceNumber": "00200013",
    "Rows": "00280010",
    "Columns": "00280011",
    "BitsAllocated": "00280100",
    "NumberOfFrames": "00280008",
}


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
    bulkdata: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    replaced: bool
    #: Blob of the replaced version, to delete after the commit.
    obsolete_blob_key: str | None
    sequence: int


def _study_columns(meta: DicomJson) -> dict:
    name = indexed_string(meta, T["PatientName"])
    return {
        "patient_name": name,
        "patient_name_key": name_key(name),
        "patient_id": indexed_string(meta, T["PatientID"]),
        "patient_birth_date": indexed_string(meta, T["PatientBirthDate"]),
        "patient_sex": indexed_string(meta, T["PatientSex"]),
        "study_date": indexed_string(meta, T["StudyDate"]),
        "study_time": normalize_time(indexed_string(meta, T["StudyTime"])),
        "accession_number": indexed_string(meta, T["AccessionNumber"]),
        "referring_physician_name_key": name_key(indexed_string(meta, T["ReferringPhysicianName"])),
        "patient_name_words": name_words(name),
        "referring_physician_name_words": name_words(indexed_string(meta, T["ReferringPhysicianName"])),
        "study_id": indexed_string(meta, T["StudyID"]),
        "study_description": indexed_string(meta, T["StudyDescription"]),
    }


def _series_columns(meta: DicomJson) -> dict:
    return {
        "modality": indexed_string(meta, T["Modality"]),
        "series_number": int_value(meta, T["SeriesNumber"]),
        "series_description": indexed_string(meta, T["SeriesDescription"]),
        "performed_procedure_step_start_date": indexed_string(meta, T["PerformedProcedureStepStartDate"]),
        "performed_procedure_step_start_time": normalize_time(
            indexed_string(meta, T["PerformedProcedureStepStartTime"])
        ),
        "manufacturer_model_name": indexed_string(meta, T["ManufacturerModelName"]),
    }


def _instance_columns(meta: DicomJson) -> dict:
    return {
        "instance_number": int_value(meta, T["InstanceNumber"]),
        "rows": int_value(meta, T["Rows"]),
        "columns": int_value(meta, T["Columns"]),
        "bits_allocated": int_value(meta, T["BitsAllocated"]),
        "number_of_frames": int_value(meta, T["NumberOfFrames"]),
    }


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


#: pg_advisory_xact_lock key that serialises writers on PostgreSQL (as BEGIN IMMEDIATE does on SQLite).
_WRITE_LOCK_KEY = 0x44494357  # "DICW"


class Index:
    """The index over one database: SQLite (default) or PostgreSQL (pooled)."""

    def __init__(self, database_url: str, *, sqlite_busy_timeout_ms: int = 30000, pool_size: int = 16):
        self.database_url = database_url
        self.is_sqlite = database_url.startswith("sqlite")
        if self.is_sqlite:
            path = database_url[len("sqlite:///"):]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._write_lock = _SqliteWriteLock(path, sqlite_busy_timeout_ms / 1000)
            self.db = pw.SqliteDatabase(
                path,
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": "full",  # a 200 to STOW survives power loss
                    "foreign_keys": 1,
                    "busy_timeout": sqlite_busy_timeout_ms,
                    "case_sensitive_like": 1,
                },
                timeout=sqlite_busy_timeout_ms / 1000,
            )
        else:
            self.db = _postgres(database_url, pool_size)
        database_proxy.initialize(self.db)
        self._writer = InstanceWriter(self.db)
        self._read_sql: dict[tuple, str] = {}

    # -- lifecycle ---------------------------------------------------------
    def create_schema(self) -> None:
        """Create or migrate the schema (see schema.py)."""
        from .schema import ensure_schema

        ensure_schema(self)

    def connect(self) -> None:
        self.db.connect(reuse_if_open=True)

    def close(self) -> None:
        """End a request's use of the database: a pooled connection goes back to the pool.

        A SQLite connection stays open for the thread's next request: opening one costs
        more than most queries (its PRAGMAs run on every open).
        """
        if not self.is_sqlite and not self.db.is_closed():
            self.db.close()

    def shutdown(self) -> None:
        """Close every connection, pooled ones included (app teardown)."""
        if not self.db.is_closed():
            self.db.close()
        if hasattr(self.db, "close_all"):
            self.db.close_all()
        if self.is_sqlite:
            self._write_lock.close()

    def check(self) -> None:
        self.db.execute_sql("SELECT 1")

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """A write transaction that holds the database's single write lock.

        Writers are serialised on both databases (SQLite: BEGIN IMMEDIATE; PostgreSQL:
        a transaction-scoped advisory lock), so change-feed sequences are assigned in
        commit order without gaps, and check-then-insert needs no retry logic.
        """
        if self.is_sqlite:
            with self._write_lock, self.db.atomic("IMMEDIATE"):
                yield
            return
        with self.db.atomic():
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_KEY,))
            yield

    def _next_sequence(self) -> int:
        """The next change-feed sequence; callers hold the write lock."""
        return (Change.select(pw.fn.COALESCE(pw.fn.MAX(Change.sequence), 0)).scalar() or 0) + 1

    # -- writes ------------------------------------------------------------
    def store_instance(self, rec: InstanceRecord, *, replace: bool) -> StoreOutcome:
        """Index one stored blob; raise DuplicateInstance unless `replace`."""
        try:
            with self.write_transaction():
                return self._insert(rec, replace=replace)
        except pw.IntegrityError:
            # Defence in depth: writers are serialised, but a unique index has the last word.
            raise DuplicateInstance(rec.sop_instance_uid) from None

    def store_many(self, records: Iterable[InstanceRecord]) -> int:
        """Index a batch in one transaction (bulk loading, e.g. the scale benchmark)."""
        count = 0
        with self.write_transaction():
            for rec in records:
                self._insert(rec, replace=False)
                count += 1
        return count

    def _insert(self, rec: InstanceRecord, *, replace: bool) -> StoreOutcome:
        """The rows of one instance and their counters; callers hold the write lock."""
        meta = rec.metadata
        w = self._writer
        s = w.s
        replaced = None
        found = s.one(w.instance_by_sop, (rec.sop_instance_uid,))
        if found is not None:
            if not replace:
                raise DuplicateInstance(rec.sop_instance_uid)
            replaced = Instance.get_by_id(found[0])
            self._remove_instances([replaced])
        sequence = s.one(w.next_sequence)[0]
        s.insert(
            Change,
            ("sequence", "timestamp", "action", "study_instance_uid", "series_instance_uid", "sop_instance_uid"),
            (
                sequence,
                w.timestamp(utcnow()),
                "update" if replaced is not None else "create",
                rec.study_instance_uid,
                rec.series_instance_uid,
                rec.sop_instance_uid,
            ),
        )
        study = s.one(w.study_by_uid, (rec.study_instance_uid,))
        if study is None:
            study_id, sop_classes = s.insert(
                Study,
                ("study_instance_uid", "number_of_series", "number_of_instances"),
                (rec.study_instance_uid, 0, 0),
                returning="id",
            ), None
        else:
            study_id, sop_classes = study
        series = s.one(w.series_by_uid, (rec.series_instance_uid,))
        new_series = series is None
        if new_series:
            series_id = s.insert(
                Series,
                ("study_id", "series_instance_uid", "number_of_instances"),
                (study_id, rec.series_instance_uid, 0),
                returning="id",
            )
        elif series[1] != study_id:
            # A series UID re-used under another study: keep the first owner.
            raise DuplicateInstance(rec.sop_instance_uid)
        else:
            series_id = series[0]
        instance_columns = _instance_columns(meta)
        instance_id = s.insert(
            Instance,
            (
                "study_id", "series_id", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "blob_key",
                "size", "sha256", "frames", "bulkdata", "watermark", *instance_columns,
            ),
            (
                study_id, series_id, rec.sop_instance_uid, rec.sop_class_uid, rec.transfer_syntax_uid, rec.blob_key,
                rec.size, rec.sha256, rec.frames, rec.bulkdata, sequence, *instance_columns.values(),
            ),
            returning="id",
        )
        s.insert(
            InstanceMetadata,
            ("instance_id", "metadata", "qido"),
            (instance_id, json.dumps(meta, separators=(",", ":")), qido_members(meta)),
        )
        # Counters move by increments: no recount of a large study per STOW.
        series_columns = _series_columns(meta)
        s.update(
            Series,
            ("latest_instance_id", *series_columns),
            ("number_of_instances",),
            (instance_id, *series_columns.values(), 1),
            series_id,
        )
        self._set_request_attributes(series_id, meta)
        modalities = "\\".join(sorted(row[0] for row in s.all(w.modalities, (study_id,)))) or None
        study_columns = _study_columns(meta)
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
        return StoreOutcome(replaced is not None, replaced.blob_key if replaced else None, sequence)

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

    def _set_request_attributes(self, series_id: int, meta: DicomJson) -> None:
        """Mirror the latest instance's Request Attributes Sequence items for matching."""
        s = self._writer.s
        s.run(self._writer.delete_request_attributes, (series_id,))
        for item in (meta.get("00400275") or {}).get("Value") or []:
            if isinstance(item, dict):
                s.insert(
                    RequestAttribute,
                    ("series_id", "scheduled_procedure_step_id", "requested_procedure_id"),
                    (series_id, string_value(item, "00400009"), string_value(item, "00401001")),
                )

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
        """Remove matching instances, record 'delete' changes; return their blob keys."""
        with self.write_transaction():
            instances = self.instances(study_uid, series_uid, sop_uid)  # 404 if none
            now = utcnow()
            first = self._next_sequence()
            Change.insert_many(
                [
                    {
                        "sequence": first + number,
                        "timestamp": now,
                        "action": "delete",
                        "study_instance_uid": study_uid,
                        "series_instance_uid": i.series.series_instance_uid,
                        "sop_instance_uid": i.sop_instance_uid,
                    }
                    for number, i in enumerate(instances)
                ]
            ).execute()
            self._remove_instances(instances)
        return [i.blob_key for i in instances]

    def _remove_instances(self, instances: list) -> None:
        """Delete instance rows and keep their series/study rows consistent (in a txn)."""
        ids = [i.id for i in instances]
        study_ids = sorted({i.study_id for i in instances})
        series_ids = sorted({i.series_id for i in instances})
        for chunk in _chunks(ids, 500):
            Instance.delete().where(Instance.id.in_(chunk)).execute()
        self.rederive(study_ids, series_ids)

    def rederive(self, study_ids: Iterable[int], series_ids: Iterable[int]) -> None:
        """Recount, re-pick the latest instance and its columns, drop empty series/studies."""
        for series_id in series_ids:
            latest = (
                Instance.select(Instance.id, InstanceMetadata.metadata)
                .join(InstanceMetadata, on=(InstanceMetadata.instance == Instance.id))
                .where(Instance.series == series_id)
                .order_by(Instance.id.desc())
                .objects()
                .first()
            )
            if latest is None:
                Series.delete().where(Series.id == series_id).execute()
                continue
            count = Instance.select().where(Instance.series == series_id).count()
            meta = json.loads(latest.metadata)
            Series.update(
                number_of_instances=count,
                latest_instance_id=latest.id,
                **_series_columns(meta),
            ).where(Series.id == series_id).execute()
            self._set_request_attributes(series_id, meta)
        for study_id in study_ids:
            latest = (
                Instance.select(Instance.id, InstanceMetadata.metadata)
                .join(InstanceMetadata, on=(InstanceMetadata.instance == Instance.id))
                .where(Instance.study == study_id)
                .order_by(Instance.id.desc())
                .objects()
                .first()
            )
            if latest is None:
                Study.delete().where(Study.id == study_id).execute()
                continue
            Study.update(
                number_of_instances=Instance.select().where(Instance.study == study_id).count(),
                number_of_series=Series.select().where(Series.study == study_id).count(),
                modalities_in_study=_modalities(study_id),
                sop_classes_in_study=_sop_classes(study_id),
                latest_instance_id=latest.id,
                **_study_columns(json.loads(latest.metadata)),
            ).where(Study.id == study_id).execute()

    # -- reads -------------------------------------------------------------
    def instances(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[Instance]:
        """Instances of a study/series/instance, in series then instance order; 404 if none.

        Every WADO request starts here, so the SQL text is built once (see writes.py for
        why) and rows come back as plain objects with the Instance columns, `metadata`
        and `series` (id, series_instance_uid, series_number).
        """
        cursor = self._execute_cached(_instances_sql, study_uid, series_uid, sop_uid)
        names = [d[0] for d in cursor.description]
        rows = []
        for values in cursor.fetchall():
            row = SimpleNamespace(**dict(zip(names, values)))
            row.series = SimpleNamespace(
                id=row.series_id, series_instance_uid=row.series_instance_uid, series_number=row.series_number
            )
            rows.append(row)
        if not rows:
            raise NotFound(_not_found_message(study_uid, series_uid, sop_uid))
        return rows

    def _execute_cached(self, build, study_uid: str, series_uid: str | None, sop_uid: str | None):
        """Run one of the per-request reads by study/series/instance; its SQL text is built once."""
        key = (build, series_uid is not None, sop_uid is not None)
        sql = self._read_sql.get(key)
        if sql is None:
            sql = self._read_sql[key] = build(self.db.param, series_uid is not None, sop_uid is not None)
        params = [study_uid] + [u for u in (series_uid, sop_uid) if u is not None]
        return self.db.execute_sql(sql, params)

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

    # -- change feed -------------------------------------------------------
    def changes(
        self,
        *,
        after_sequence: int | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        offset: int = 0,
        limit: int = 10,
        newest_first: bool = False,
    ) -> list[tuple[Change, Instance | None]]:
        """Change entries with the current version of their instance (None if deleted)."""
        query = (
            Change.select(Change, Instance.watermark, InstanceMetadata.metadata)
            .join(
                Instance,
                pw.JOIN.LEFT_OUTER,
                on=(Instance.sop_instance_uid == Change.sop_instance_uid),
                attr="current",
            )
            .join(InstanceMetadata, pw.JOIN.LEFT_OUTER, on=(InstanceMetadata.instance == Instance.id), attr="document")
        )
        if after_sequence is not None:
            query = query.where(Change.sequence > after_sequence)
        if start is not None:
            query = query.where(Change.timestamp >= start)
        if end is not None:
            query = query.where(Change.timestamp < end)
        if newest_first:
            order = (Change.sequence.desc(),)
        elif start is not None or end is not None:
            order = (Change.timestamp, Change.sequence)
        else:
            order = (Change.sequence,)
        rows = query.order_by(*order).offset(offset).limit(limit)
        out = []
        for change in rows:
            current = getattr(change, "current", None)
            if current is not None:
                document = getattr(current, "document", None)
                current.metadata = document.metadata if document is not None else None
            out.append((change, current))
        return out


class _SqliteWriteLock:
    """Queue this host's SQLite writers on a lock that hands over within milliseconds.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so writers that
    collide on the database lock (several threads and gunicorn workers storing at
    once) lose far more time sleeping than the transactions take. Threads of a process
    queue on a mutex, processes on flock() of '<database>-writelock' (polled every
    0.5-5 ms); BEGIN IMMEDIATE stays as the guarantee for any other process writing
    the file. Both waits end after the busy timeout with OperationalError (a 503).
    """

    def __init__(self, path: str, timeout_s: float):
        self._timeout = timeout_s
        self._path = f"{os.path.abspath(path)}-writelock" if path and path != ":memory:" else None
        self._fd: int | None = None
        self._mutex = threading.Lock()
        _WRITE_LOCKS.add(self)

    def __enter__(self) -> None:
        deadline = time.monotonic() + self._timeout
        if not self._mutex.acquire(timeout=self._timeout):
            raise pw.OperationalError(f"database is locked: no write turn within {self._timeout:g} s")
        try:
            fd = self._lock_file()
            if fd is not None:
                self._flock(fd, deadline)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _lock_file(self) -> int | None:
        if self._fd is None and self._path is not None:
            try:  # read-only is enough for flock, so any user of the database can lock it
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT, 0o666)
            except OSError as exc:
                log.warning("cannot open %s (%s): writers wait on SQLite's busy handler", self._path, exc)
                self._path = None
        return self._fd

    def _flock(self, fd: int, deadline: float) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise pw.OperationalError(
                        f"database is locked: another process held {self._path} for {self._timeout:g} s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def _after_fork_in_child(self) -> None:
        """The parent's threads do not exist here: whatever they held is free."""
        self._mutex = threading.Lock()
        self.close()


_WRITE_LOCKS: "weakref.WeakSet[_SqliteWriteLock]" = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: [lock._after_fork_in_child() for lock in list(_WRITE_LOCKS)])


def _postgres(database_url: str, pool_size: int) -> pw.Database:
    """A pooled PostgreSQL database from postgresql[+pool]://user:password@host:port/name."""
    from playhouse.pool import PooledPostgresqlDatabase

    url = database_url.replace("+pool", "", 1).replace("postgres://", "postgresql://", 1)
    params = parse_url(url)
    database = params.pop("database")
    return PooledPostgresqlDatabase(database, max_connections=pool_size, stale_timeout=300, timeout=30, **params)


def open_index(database_url: str, *, sqlite_busy_timeout_ms: int = 30000) -> Index:
    index = Index(database_url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms)
    index.create_schema()
    return index


def _modalities(study_id: int) -> str | None:
    """ModalitiesInStudy as a DICOM multi-value: the distinct modalities of its series."""
    rows = Series.select(Series.modality).where((Series.study == study_id) & Series.modality.is_null(False))
    return "\\".join(sorted({r.modality for r in rows})) or None


def _sop_classes(study_id: int) -> str | None:
    rows = Instance.select(Instance.sop_class_uid).where(Instance.study == study_id).distinct()
    return "\\".join(sorted(r.sop_class_uid for r in rows)) or None


def _with_value(multi_value: str | None, value: str) -> str:
    """Add a value to a backslash-joined set, kept sorted."""
    values = set(multi_value.split("\\")) if multi_value else set()
    values.add(value)
    return "\\".join(sorted(values))


def _instances_sql(param: str, by_series: bool, by_sop: bool) -> str:
    columns = ", ".join(f'i."{f.column_name}"' for f in Instance._meta.sorted_fields)
    return _by_uids(
        f'{columns}, se."series_instance_uid", se."series_number", m."metadata"', param, by_series, by_sop
    )


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
        f'SELECT {columns} '
        f'FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
        f'JOIN "study" AS s ON s."id" = i."study_id" JOIN "instance_metadata" AS m ON m."instance_id" = i."id" '
        f'WHERE {" AND ".join(where)} ORDER BY se."id", i."instance_number", i."id"'
    )


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _not_found_message(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid is not None:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid} was not found"
    if series_uid is not None:
        return f"series {series_uid} in study {study_uid} was not found"
    return f"study {study_uid} was not found"


__all__ = [
    "Index",
    "InstanceRecord",
    "StoreOutcome",
    "DuplicateInstance",
    "open_index",
]
