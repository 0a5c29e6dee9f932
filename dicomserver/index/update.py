"""Index side of bulk update (bulk_update.py): which studies a request names, their instances
a page at a time by row id, and the transaction that points an instance at its new version.

An updated instance keeps its row (id, UIDs, extended query tag rows) and gains a new blob;
the blob it was first stored as stays, as the reference keeps it, in `original_blob_key`
(with its size, SHA-256 and DICOM JSON), so that `msdicom-request-original` can serve it.
A second update replaces the current version only: the original is the first one, always.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..partitions import DEFAULT, Partition
from .connection import utcnow
from .extended import index_instance_values
from .models import Change
from .query import qido_members
from .writes import IndexWrites, InstanceRecord


@dataclass(frozen=True, slots=True)
class UpdateTarget:
    """One instance a bulk update rewrites: its row ids, UIDs and current blob."""

    id: int
    study_id: int
    series_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    blob_key: str
    partition_key: int


@dataclass(frozen=True, slots=True)
class UpdatedInstance:
    """An instance's new version, written and durable, waiting for its index commit."""

    target: UpdateTarget
    record: InstanceRecord


class IndexUpdate(IndexWrites):
    def study_ids(self, study_uids: Sequence[str], partition: Partition = DEFAULT) -> dict[str, int]:
        """The row id of each study among `study_uids` stored in the partition (the one UID lookup
        of a bulk update: the operation then works on row ids, whatever happens to UIDs meanwhile)."""
        if not study_uids:
            return {}
        p = self.db.param
        marks = ", ".join([p] * len(study_uids))
        rows = self.db.execute_sql(
            f'SELECT "study_instance_uid", "id" FROM "study" WHERE "study_instance_uid" IN ({marks}) '
            f'AND "partition_key" = {p}',
            [*study_uids, partition.key],
        ).fetchall()
        return dict(rows)

    def update_targets(self, study_id: int, *, after: int, limit: int) -> list[UpdateTarget]:
        """The study's next instances by row id after `after` (an update resumes from its checkpoint)."""
        p = self.db.param
        rows = self.db.execute_sql(
            'SELECT i."id", i."study_id", i."series_id", s."study_instance_uid", se."series_instance_uid", '
            'i."sop_instance_uid", i."blob_key", i."partition_key" '
            'FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
            f'JOIN "study" AS s ON s."id" = i."study_id" WHERE i."study_id" = {p} AND i."id" > {p} '
            f'ORDER BY i."id" LIMIT {p}',
            (study_id, after, limit),
        ).fetchall()
        return [UpdateTarget(*row) for row in rows]

    def study_instance_count(self, study_id: int) -> int:
        row = self.db.execute_sql(
            f'SELECT COUNT(*) FROM "instance" WHERE "study_id" = {self.db.param}', (study_id,)
        ).fetchone()
        return int(row[0])

    def apply_updates(self, updates: Iterable[UpdatedInstance]) -> tuple[list[UpdateTarget], list[str]]:
        """Point each instance at its new version (callers hold the write transaction): which
        were applied, and the blobs superseded, to delete after the commit. An instance deleted
        or replaced (STOW PUT) since its blob was read is left as it is now (its new blob is
        then the caller's to discard)."""
        applied: list[UpdateTarget] = []
        superseded: list[str] = []
        studies: set[int] = set()
        series: set[int] = set()
        p = self.db.param
        for update in updates:
            target, rec = update.target, update.record
            row = self.db.execute_sql(
                'SELECT i."blob_key", i."original_blob_key", i."size", i."sha256", m."metadata" FROM "instance" AS i '
                f'JOIN "instance_metadata" AS m ON m."instance_id" = i."id" WHERE i."id" = {p}',
                (target.id,),
            ).fetchone()
            if row is None or row[0] != target.blob_key:
                continue
            blob_key, original_key, size, sha256, metadata = row
            sequence = self._writer.s.value(self._writer.next_sequence)
            Change.insert(
                sequence=sequence, timestamp=utcnow(), action="update", partition_key=target.partition_key,
                study_instance_uid=target.study_instance_uid, series_instance_uid=target.series_instance_uid,
                sop_instance_uid=target.sop_instance_uid,
            ).execute()
            columns = rec.columns.instance
            sets = ", ".join(f'"{name}" = {p}' for name in (
                "blob_key", "size", "sha256", "frames", "bulkdata", "transfer_syntax_uid", "watermark", *columns,
            ))
            values: list[object] = [rec.blob_key, rec.size, rec.sha256, rec.frames, rec.bulkdata,
                                    rec.transfer_syntax_uid, sequence, *columns.values()]
            if original_key is None:  # the first update: the stored version becomes the original
                sets += f', "original_blob_key" = {p}, "original_size" = {p}, "original_sha256" = {p}'
                values += [blob_key, size, sha256]
                self.db.execute_sql(
                    f'UPDATE "instance_metadata" SET "original_metadata" = {p} WHERE "instance_id" = {p}',
                    (metadata, target.id),
                )
            else:  # an intermediate version: not kept (the reference keeps the original and the latest)
                superseded.append(blob_key)
            self.db.execute_sql(f'UPDATE "instance" SET {sets} WHERE "id" = {p}', (*values, target.id))
            meta = rec.metadata
            self.db.execute_sql(
                f'UPDATE "instance_metadata" SET "metadata" = {p}, "qido" = {p} WHERE "instance_id" = {p}',
                (json.dumps(meta, separators=(",", ":")), qido_members(meta), target.id),
            )
            for table in ("extended_query_tag_value", "extended_query_tag_error"):
                self.db.execute_sql(f'DELETE FROM "{table}" WHERE "instance_id" = {p}', (target.id,))
            uids = (target.study_instance_uid, target.series_instance_uid, target.sop_instance_uid)
            index_instance_values(self.db, target.id, uids, meta)
            applied.append(target)
            studies.add(target.study_id)
            series.add(target.series_id)
        self.rederive(sorted(studies), sorted(series))
        return applied, superseded
