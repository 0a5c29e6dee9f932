"""The STOW write path of the index as plain parametrised SQL, built once per database.

Building a statement with peewee's query builder costs far more than SQLite needs to
run it (about 1 ms against 50 µs for the dozen statements one instance needs), so the
hot path keeps its SQL text in a cache keyed by the columns it sets and only binds
values. Column names come from the peewee models, so the two cannot drift apart.
The statements are portable between SQLite (3.35+) and PostgreSQL: `RETURNING` gives
new ids on both. Callers hold the index's write lock.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import peewee as pw

from .models import Change, Instance, RequestAttribute, Series, Study


class WriteStatements:
    def __init__(self, db: pw.Database):
        self.db = db
        self.p = db.param
        self._cache: dict[tuple, str] = {}

    # -- execution ---------------------------------------------------------
    def run(self, sql: str, params: Sequence[Any] = ()):
        return self.db.execute_sql(sql, tuple(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.run(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.run(sql, params).fetchall()

    # -- statement text ----------------------------------------------------
    def _sql(self, key: tuple, build) -> str:
        sql = self._cache.get(key)
        if sql is None:
            sql = self._cache[key] = build()
        return sql

    def insert(self, model: type[pw.Model], columns: Iterable[str], values: Sequence[Any], *, returning: str | None = None):
        """INSERT one row; with `returning`, the value of that column (e.g. the new id)."""
        columns = tuple(columns)

        def build() -> str:
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join([self.p] * len(columns))
            tail = f' RETURNING "{returning}"' if returning else ""
            return f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({marks}){tail}'

        cursor = self.run(self._sql(("insert", model, columns, returning), build), values)
        return cursor.fetchone()[0] if returning else None

    def update(self, model: type[pw.Model], columns: Iterable[str], increments: Iterable[str], values: Sequence[Any], row_id: int) -> None:
        """UPDATE one row by id: `columns` are set, `increments` are added to."""
        columns, increments = tuple(columns), tuple(increments)

        def build() -> str:
            sets = [f'"{c}" = {self.p}' for c in columns] + [f'"{c}" = "{c}" + {self.p}' for c in increments]
            return f'UPDATE "{model._meta.table_name}" SET {", ".join(sets)} WHERE "id" = {self.p}'

        self.run(self._sql(("update", model, columns, increments), build), (*values, row_id))

    def select(self, key: str, build) -> str:
        return self._sql(("select", key), build)


def table(model: type[pw.Model]) -> str:
    return f'"{model._meta.table_name}"'


def column(field: pw.Field) -> str:
    return f'"{field.column_name}"'


class InstanceWriter:
    """The statements STOW runs per instance (see Index._insert)."""

    def __init__(self, db: pw.Database):
        self.s = WriteStatements(db)
        p = db.param
        self.instance_by_sop = (
            f"SELECT {column(Instance.id)} FROM {table(Instance)} WHERE {column(Instance.sop_instance_uid)} = {p}"
        )
        self.next_sequence = f"SELECT COALESCE(MAX({column(Change.sequence)}), 0) + 1 FROM {table(Change)}"
        self.study_by_uid = (
            f"SELECT {column(Study.id)}, {column(Study.sop_classes_in_study)} FROM {table(Study)} "
            f"WHERE {column(Study.study_instance_uid)} = {p}"
        )
        self.series_by_uid = (
            f"SELECT {column(Series.id)}, {column(Series.study)} FROM {table(Series)} "
            f"WHERE {column(Series.series_instance_uid)} = {p}"
        )
        self.modalities = (
            f"SELECT DISTINCT {column(Series.modality)} FROM {table(Series)} "
            f"WHERE {column(Series.study)} = {p} AND {column(Series.modality)} IS NOT NULL"
        )
        self.delete_request_attributes = (
            f"DELETE FROM {table(RequestAttribute)} WHERE {column(RequestAttribute.series)} = {p}"
        )
        self.timestamp = Change.timestamp.db_value
