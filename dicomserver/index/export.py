"""Reads of the export operation: the instances an identifier (study, series or instance) names,
a page at a time by row id, so that a resumed export goes on where its checkpoint left it."""
from __future__ import annotations

from dataclasses import dataclass

from ..partitions import DEFAULT_KEY
from .connection import IndexDatabase


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One instance to export: its row id (the export's cursor), UIDs and blob."""

    id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    blob_key: str
    size: int
    #: The blob's SHA-256 when stored (None for instances stored before the index kept it).
    sha256: str | None


class IndexExport(IndexDatabase):
    def _export_where(
        self, partition_key: int, study: str, series: str | None, sop: str | None
    ) -> tuple[str, list[object]]:
        p = self.db.param
        where, params = [f's."partition_key" = {p}', f's."study_instance_uid" = {p}'], [partition_key, study]
        if series is not None:
            where.append(f'se."series_instance_uid" = {p}')
            params.append(series)
        if sop is not None:
            where.append(f'i."sop_instance_uid" = {p}')
            params.append(sop)
        return " AND ".join(where), list(params)

    def export_count(
        self, study: str, series: str | None, sop: str | None, *, upto: int, partition_key: int = DEFAULT_KEY
    ) -> int:
        """How many instances (of id <= `upto`) the identifier names in the partition."""
        where, params = self._export_where(partition_key, study, series, sop)
        row = self.db.execute_sql(
            'SELECT COUNT(*) FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
            f'JOIN "study" AS s ON s."id" = i."study_id" WHERE {where} AND i."id" <= {self.db.param}',
            (*params, upto),
        ).fetchone()
        return int(row[0])

    def export_page(
        self, study: str, series: str | None, sop: str | None, *, after: int, upto: int, limit: int,
        partition_key: int = DEFAULT_KEY,
    ) -> list[ExportRow]:
        """The identifier's next instances in the partition by id, after `after` and up to `upto`
        (those stored once the export started are not part of it)."""
        where, params = self._export_where(partition_key, study, series, sop)
        p = self.db.param
        rows = self.db.execute_sql(
            'SELECT i."id", s."study_instance_uid", se."series_instance_uid", i."sop_instance_uid", '
            'i."blob_key", i."size", i."sha256" FROM "instance" AS i JOIN "series" AS se ON se."id" = i."series_id" '
            f'JOIN "study" AS s ON s."id" = i."study_id" WHERE {where} AND i."id" > {p} AND i."id" <= {p} '
            f'ORDER BY i."id" LIMIT {p}',
            (*params, after, upto, limit),
        ).fetchall()
        return [ExportRow(*row) for row in rows]
