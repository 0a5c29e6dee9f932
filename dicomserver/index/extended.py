"""Extended query tags in the index: their definitions, their values per instance, their errors.

A tag is added with status Adding and a re-index operation (operations.py) in one
transaction. From that commit on, every instance stored indexes the tag too
(`index_instance_values`, called in STOW's transaction, so it reads the tags under the
same write lock the adding took): nothing stored after the tag misses it, and the
re-index walks the instances stored before it, by id, a batch per transaction, each
batch's values committed with the operation's checkpoint. Both write with ON CONFLICT DO
NOTHING, so an instance both of them reach is indexed once. When the walk ends the tag
becomes Ready, and Disabled for queries if some values failed (the reference's rule:
an operator re-enables it knowing which instances are missing).
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import peewee as pw

from ..dicomjson import DicomJson
from ..errors import BadRequest, Conflict, NotFound
from ..partitions import DEFAULT_NAME
from ..query_tags import MAX_TAGS, IndexedValue, InvalidTag, TagDefinition, value_of
from .connection import utcnow
from .models import ExtendedQueryTag, ExtendedQueryTagError, Instance, Partition
from .operations import IndexOperations

ADDING, READY = "Adding", "Ready"
ENABLED, DISABLED = "Enabled", "Disabled"
REINDEX = "reindex"


@dataclass(frozen=True)
class StoredTag:
    id: int
    path: str
    vr: str
    private_creator: str | None
    level: str
    status: str
    query_status: str
    error_count: int
    operation_id: str | None


@dataclass(frozen=True)
class TagError:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    created: dt.datetime
    message: str
    #: The instance's data partition (the reference names it in each error).
    partition_name: str = DEFAULT_NAME


@dataclass(frozen=True)
class ReindexRow:
    instance_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    metadata: str


_TAG_COLUMNS = (
    'SELECT t."id", t."path", t."vr", t."private_creator", t."level", t."status", t."query_status", '
    '(SELECT COUNT(*) FROM "extended_query_tag_error" AS e WHERE e."tag_id" = t."id"), t."operation_id" '
    'FROM "extended_query_tag" AS t'
)


class IndexExtendedQueryTags(IndexOperations):
    def add_extended_query_tags(
        self, tags: Sequence[TagDefinition], operation_id: str, payload: dict[str, Any]
    ) -> None:
        """Add tags (status Adding) and their re-index operation, in one transaction; Conflict if
        one exists or a re-index is under way, BadRequest past MAX_TAGS."""
        with self.write_transaction():
            if self.active_operations(REINDEX):
                raise Conflict("another extended query tag operation is in progress; wait until it ends")
            paths = [t.path for t in tags]
            existing = [row.path for row in ExtendedQueryTag.select().where(ExtendedQueryTag.path.in_(paths))]
            if existing:
                raise Conflict(f"extended query tag(s) {', '.join(existing)} already exist")
            if ExtendedQueryTag.select().count() + len(tags) > MAX_TAGS:
                raise BadRequest(f"a server keeps at most {MAX_TAGS} extended query tags")
            now = utcnow()
            ids = []
            for tag in tags:
                ids.append(
                    ExtendedQueryTag.insert(
                        path=tag.path, vr=tag.vr, private_creator=tag.private_creator, level=tag.level,
                        status=ADDING, query_status=ENABLED, operation_id=operation_id, created=now,
                    ).execute()
                )
            self.insert_operation(operation_id, REINDEX, {**payload, "tagIds": ids})

    def extended_query_tags(self, *, limit: int = 1000, offset: int = 0, ready_only: bool = False) -> list[StoredTag]:
        where = f' WHERE t."status" = {self.db.param}' if ready_only else ""
        params: list[Any] = [READY] if ready_only else []
        cursor = self.db.execute_sql(
            f'{_TAG_COLUMNS}{where} ORDER BY t."id" LIMIT {self.db.param} OFFSET {self.db.param}',
            (*params, limit, offset),
        )
        return [StoredTag(*row) for row in cursor.fetchall()]

    def extended_query_tag(self, path: str) -> StoredTag:
        cursor = self.db.execute_sql(f'{_TAG_COLUMNS} WHERE t."path" = {self.db.param}', (path,))
        row = cursor.fetchone()
        if row is None:
            raise NotFound(f"there is no extended query tag {path}")
        return StoredTag(*row)

    def set_query_status(self, path: str, status: str) -> StoredTag:
        with self.write_transaction():
            if not ExtendedQueryTag.update(query_status=status).where(ExtendedQueryTag.path == path).execute():
                raise NotFound(f"there is no extended query tag {path}")
        return self.extended_query_tag(path)

    def delete_extended_query_tag(self, path: str) -> None:
        """The tag, its values and errors (ON DELETE CASCADE); a re-index still running skips it from then on."""
        with self.write_transaction():
            cursor = self.db.execute_sql(f'DELETE FROM "extended_query_tag" WHERE "path" = {self.db.param}', (path,))
            if not cursor.rowcount:
                raise NotFound(f"there is no extended query tag {path}")

    def extended_query_tag_errors(self, path: str, *, limit: int, offset: int) -> list[TagError]:
        tag = self.extended_query_tag(path)
        e = ExtendedQueryTagError
        rows = (
            e.select(
                e.study_instance_uid, e.series_instance_uid, e.sop_instance_uid, e.created, e.message, Partition.name
            )
            .join(Instance, on=(Instance.id == e.instance))
            .join(Partition, on=(Partition.key == Instance.partition_key))
            .where(e.tag == tag.id)
            .order_by(e.id)
            .limit(limit)
            .offset(offset)
            .tuples()
        )
        return [TagError(*row) for row in cast("list[tuple[Any, ...]]", list(rows))]

    # -- the re-index --------------------------------------------------------
    def instances_after(self, instance_id: int, limit: int, *, upto: int) -> list[ReindexRow]:
        """The next instances by id (up to `upto`), with their stored DICOM JSON (no blob is read)."""
        p = self.db.param
        rows = self.db.execute_sql(
            'SELECT i."id", s."study_instance_uid", se."series_instance_uid", i."sop_instance_uid", m."metadata" '
            'FROM "instance" AS i JOIN "instance_metadata" AS m ON m."instance_id" = i."id" '
            'JOIN "series" AS se ON se."id" = i."series_id" JOIN "study" AS s ON s."id" = i."study_id" '
            f'WHERE i."id" > {p} AND i."id" <= {p} ORDER BY i."id" LIMIT {p}',
            (instance_id, upto, limit),
        ).fetchall()
        return [ReindexRow(*row) for row in rows]

    def instance_extent(self) -> tuple[int, int]:
        """The newest instance id and the number of instances: what a re-index started now has to walk
        (instances stored later are indexed as they are stored)."""
        row = self.db.execute_sql('SELECT COALESCE(MAX("id"), 0), COUNT(*) FROM "instance"').fetchone()
        return int(row[0]), int(row[1])

    def tags_of_operation(self, tag_ids: Sequence[int]) -> list[StoredTag]:
        """The operation's tags that still exist and are still being added (a deleted one is skipped)."""
        return [t for t in self.extended_query_tags() if t.id in set(tag_ids) and t.status == ADDING]

    def write_reindexed(self, tags: Sequence[StoredTag], rows: Sequence[ReindexRow]) -> None:
        """Index `rows` for `tags`; callers hold the write lock (with the operation's checkpoint).
        Instances deleted since they were read are skipped."""
        if not rows or not tags:
            return
        marks = ", ".join([self.db.param] * len(rows))
        present = {
            r[0]
            for r in self.db.execute_sql(
                f'SELECT "id" FROM "instance" WHERE "id" IN ({marks})', [r.instance_id for r in rows]
            ).fetchall()
        }
        for row in rows:
            if row.instance_id in present:
                _index_values(self.db, tags, row.instance_id, json.loads(row.metadata),
                              (row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid))

    def complete_reindex(self, tag_ids: Sequence[int]) -> None:
        """The operation's tags become Ready (Disabled for queries if some values failed); callers hold the lock."""
        for tag in self.tags_of_operation(tag_ids):
            ExtendedQueryTag.update(
                status=READY, operation_id=None, query_status=DISABLED if tag.error_count else tag.query_status
            ).where(ExtendedQueryTag.id == tag.id).execute()


#: The tags every stored instance is indexed for. Not cached: they are read in STOW's
#: transaction, under the write lock the adding of a tag took, so no instance misses a tag.
_INDEXED_TAGS = (
    'SELECT "id", "path", "vr", "private_creator", "level", "status", "query_status", 0, "operation_id" '
    'FROM "extended_query_tag"'
)


def index_instance_values(db: pw.Database, instance_id: int, uids: tuple[str, str, str], meta: DicomJson) -> None:
    """Index a newly stored instance for every extended query tag (STOW's hook; callers hold the write lock)."""
    rows = db.execute_sql(_INDEXED_TAGS).fetchall()
    if rows:
        _index_values(db, [StoredTag(*row) for row in rows], instance_id, meta, uids)


def _index_values(
    db: pw.Database, tags: Sequence[StoredTag], instance_id: int, meta: DicomJson, uids: tuple[str, str, str]
) -> None:
    p = db.param
    for tag in tags:
        try:
            value: IndexedValue | None = value_of(meta, tag.path, tag.vr, tag.private_creator)
        except InvalidTag as exc:
            db.execute_sql(
                'INSERT INTO "extended_query_tag_error" ("tag_id", "instance_id", "study_instance_uid", '
                f'"series_instance_uid", "sop_instance_uid", "created", "message") VALUES ({p}, {p}, {p}, {p}, {p}, '
                f'{p}, {p}) ON CONFLICT DO NOTHING',
                (tag.id, instance_id, *uids, ExtendedQueryTagError.created.db_value(utcnow()), str(exc)),
            )
            continue
        if value is None or (value.text is None and value.number is None):
            continue
        db.execute_sql(
            'INSERT INTO "extended_query_tag_value" ("tag_id", "instance_id", "text_value", "number_value") '
            f"VALUES ({p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
            (tag.id, instance_id, value.text, value.number),
        )
