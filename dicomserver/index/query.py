"""QIDO-RS search over the index: filters → one SQL query, rows → DICOM JSON results.

Attribute values come from each entity's representative (latest) instance; computed
attributes (counts, ModalitiesInStudy) from the counters kept on Study/Series rows.
One query per request, no N+1 (a second one only while rows stored before schema 5
wait for `flask dicom backfill-qido`).

Results are assembled as text. At STOW every attribute a result can carry without
`includefield` (QIDO_TAGS) is serialised once into `qido_members` text, one JSON
object member per line; a search picks the lines it returns and adds the computed
members, so no stored JSON is parsed. Only `includefield` beyond QIDO_TAGS parses
the instance's full DICOM JSON.

Order and paging. PS3.18 leaves the order of QIDO results open; `offset` paging needs
one that is total and the same for every page of a query. Results come in arrival
order (the level's id), whatever the filters: it is total, and the order a production
archive can keep stable while it works, since a study stored between two page requests
is appended at the end instead of shifting the pages already seen (an order by
StudyDate would insert it mid-range: a match repeated or skipped). The SQL that makes
this cheap at scale, in three layers:

1. the page: `SELECT id FROM <level> [JOIN parents the filters use] WHERE ... ORDER BY
   id LIMIT n+1 OFFSET k`. It names no other column, so a filter answered by an index
   ending in id reads only index entries: SQLite's single-column indexes end in the
   rowid; PostgreSQL gets (study_date, id) and (patient_name_key text_pattern_ops, id)
   (schema.POSTGRES_INDEXES; a default B-tree serves LIKE 'SMI%' only under the "C"
   collation). A selective filter (PatientID) finds a few entries; a wide one (a
   StudyDate range over years, PatientName=S*) scans its matching index entries and
   keeps the n+k smallest ids (top-N sort) - never a row of the table. The planner
   may instead walk the primary key in id order and stop at the (k+n+1)th match when
   most rows match (PostgreSQL does, from its statistics).
2. the rows of that page only: Study/Series/Instance columns by primary key;
3. the representative instance's `qido` members (instance_metadata), by primary key.

Cost, then: an exact match is a few index probes; a wide filter is linear in its
matches, at index-entry speed (40,000 entries, 1M instances: a few ms, docs/scale.md);
a deep `offset` is linear in the offset (walking the primary key). Ordering
date-filtered queries by (StudyDate, id) would bound wide date ranges by k+n entries
at any size, at the price of the stability above and of the order clients see today;
it is the next step if archives grow well past 10M instances.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import peewee as pw

from ..matching import (
    INSTANCE,
    SEARCHABLE,
    SERIES,
    STUDY,
    DateTimeRange,
    Filter,
    FuzzyName,
    Matcher,
    QidoQuery,
    Range,
    SingleValue,
    ValueList,
    Wildcard,
)
from ..metrics import INDEX_SECONDS
from ..partitions import DEFAULT, Partition
from .models import Instance, RequestAttribute, Series, Study

# PS3.18 Table 10.6.3-3/-4/-5 default return attributes (the reference's v1 lists
# plus the computed counts and RetrieveURL PS3.18 asks for).
STUDY_DEFAULTS = (
    "00080005",  # SpecificCharacterSet
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080056",  # InstanceAvailability
    "00080061",  # ModalitiesInStudy
    "00080090",  # ReferringPhysicianName
    "00080201",  # TimezoneOffsetFromUTC
    "00081190",  # RetrieveURL
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
    "00201206",  # NumberOfStudyRelatedSeries
    "00201208",  # NumberOfStudyRelatedInstances
)
SERIES_DEFAULTS = (
    "00080005",  # SpecificCharacterSet
    "00080060",  # Modality
    "00080201",  # TimezoneOffsetFromUTC
    "0008103E",  # SeriesDescription
    "00081190",  # RetrieveURL
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00201209",  # NumberOfSeriesRelatedInstances
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
)
INSTANCE_DEFAULTS = (
    "00080005",  # SpecificCharacterSet
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080056",  # InstanceAvailability
    "00080201",  # TimezoneOffsetFromUTC
    "00081190",  # RetrieveURL
    "0020000D",  # StudyInstanceUID
    "0020000E",  # SeriesInstanceUID
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
)

#: Attributes computed from the index, never taken from the stored JSON.
COMPUTED_TAGS = frozenset(("00080056", "00080061", "00080062", "00081190", "00201206", "00201208", "00201209"))
#: Stored attributes a result carries without includefield: every level's defaults and
#: every matching key (a query returns the attributes it matched on).
QIDO_TAGS = (
    frozenset(STUDY_DEFAULTS + SERIES_DEFAULTS + INSTANCE_DEFAULTS)
    | {tag.split(".")[0] for tag in SEARCHABLE}
) - COMPUTED_TAGS
_QIDO_TAGS_SORTED = tuple(sorted(QIDO_TAGS))
#: Compact JSON; one encoder for every member (json.dumps with separators builds one per call).
_COMPACT_ENCODER = json.JSONEncoder(separators=(",", ":"))
_compact = _COMPACT_ENCODER.encode


def _member_encoder() -> Callable[[Any], str]:
    """`_compact` for STOW's many small values: json's C encoder made once, not per call
    (JSONEncoder.encode builds one each time: half the cost of a member). Checked against
    `_compact` here, so a Python whose private encoder differs falls back to it."""
    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]

        iterencode = c_make_encoder(None, _COMPACT_ENCODER.default, encode_basestring_ascii, None, ":", ",",
                                    False, False, True)

        def encode(value: Any) -> str:
            return "".join(iterencode(value, 0))

        sample = {"vr": "PN", "Value": [{"Alphabetic": "Ä^\"x\"\n"}, 1, 2.5, None, True]}
        if encode(sample) == _compact(sample):
            return encode
    except Exception:  # no C accelerator, or another signature: the plain encoder
        pass
    return _compact


_encode_member = _member_encoder()


def qido_members(meta: dict[str, Any]) -> str:
    """The QIDO_TAGS of one instance's DICOM JSON as object members, one per line.

    Compact JSON never contains a raw newline (json.dumps escapes control characters
    inside strings), so the lines split back exactly.
    """
    return "\n".join(
        f'"{tag}":{_encode_member(meta[tag])}' for tag in _QIDO_TAGS_SORTED if tag in meta
    )


_COLUMNS: dict[str, pw.Field[Any]] = {
    "StudyInstanceUID": Study.study_instance_uid,
    "PatientName": Study.patient_name_key,
    "PatientID": Study.patient_id,
    "PatientBirthDate": Study.patient_birth_date,
    "PatientSex": Study.patient_sex,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "AccessionNumber": Study.accession_number,
    "ReferringPhysicianName": Study.referring_physician_name_key,
    "StudyID": Study.study_id,
    "StudyDescription": Study.study_description,
    "SeriesInstanceUID": Series.series_instance_uid,
    "Modality": Series.modality,
    "SeriesNumber": Series.series_number,
    "SeriesDescription": Series.series_description,
    "PerformedProcedureStepStartDate": Series.performed_procedure_step_start_date,
    "PerformedProcedureStepStartTime": Series.performed_procedure_step_start_time,
    "ManufacturerModelName": Series.manufacturer_model_name,
    "SOPInstanceUID": Instance.sop_instance_uid,
    "SOPClassUID": Instance.sop_class_uid,
    "InstanceNumber": Instance.instance_number,
    "RequestAttributesSequence.ScheduledProcedureStepID": RequestAttribute.scheduled_procedure_step_id,
    "RequestAttributesSequence.RequestedProcedureID": RequestAttribute.requested_procedure_id,
}
#: Word columns for fuzzy (word-prefix) person-name matching.
_WORDS: dict[str, pw.Field[Any]] = {
    "PatientName": Study.patient_name_words,
    "ReferringPhysicianName": Study.referring_physician_name_words,
}
#: Date/Time column pairs for combined date-time ranges, by the date attribute.
_DATE_TIME: dict[str, tuple[pw.Field[Any], pw.Field[Any]]] = {
    "StudyDate": (Study.study_date, Study.study_time),
    "PerformedProcedureStepStartDate": (
        Series.performed_procedure_step_start_date,
        Series.performed_procedure_step_start_time,
    ),
}


def like_pattern(wildcard: str) -> str:
    """DICOM '*'/'?' → SQL LIKE, escaping LIKE's own '%', '_' and the escape char."""
    escaped = wildcard.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


#: Table aliases of the page query (the SQL below is written by hand: building it with
#: peewee cost more than running it).
_ALIAS = {Study: "s", Series: "se", Instance: "i", RequestAttribute: "ra"}


def _col(field: pw.Field) -> str:
    return f'{_ALIAS[field.model]}."{field.column_name}"'


class _Params:
    """Collects bound values in the order their placeholders are written."""

    def __init__(self, mark: str):
        self.mark = mark
        self.values: list[Any] = []

    def one(self, value: Any) -> str:
        self.values.append(value)
        return self.mark

    def is_in(self, column: str, values: Sequence[Any]) -> str:
        """`column IN (...)`; an empty list matches nothing (PostgreSQL refuses `IN ()`)."""
        if not values:
            return "1 = 0"
        return f"{column} IN (" + ", ".join(self.one(v) for v in values) + ")"


#: Where each level's value of an extended query tag comes from: the latest instance of a study
#: or series (as for the core columns), or the instance itself.
_EXTENDED_SOURCE = {STUDY: 's."latest_instance_id"', SERIES: 'se."latest_instance_id"', INSTANCE: 'i."id"'}
_EXTENDED_MODEL = {STUDY: Study, SERIES: Series, INSTANCE: Instance}


def _extended_condition(f: Filter, p: _Params) -> str:
    """An extended query tag's filter: its value row for the entity's (latest) instance matches."""
    m = f.matcher
    tag = p.one(f.attribute.extended)  # placeholders are bound in the order they are written
    column = 'xv."number_value"' if f.attribute.kind == "number" else 'xv."text_value"'
    if isinstance(m, FuzzyName):
        words = f"(' ' || REPLACE(REPLACE({column}, '^', ' '), '=', ' '))"
        condition = " AND ".join(_like(words, "% " + like_pattern(word) + "%", p) for word in m.words)
    else:
        condition = _value_condition(column, m, p)
    return (
        f'EXISTS (SELECT 1 FROM "extended_query_tag_value" AS xv WHERE xv."tag_id" = {tag} '
        f'AND xv."instance_id" = {_EXTENDED_SOURCE[f.attribute.level]} AND {condition})'
    )


def _condition(f: Filter, p: _Params) -> str:
    m = f.matcher
    kind = f.attribute.kind
    if f.attribute.extended is not None:
        return _extended_condition(f, p)
    if kind == "modalities":
        matches = p.is_in('ms."modality"', m.values)  # type: ignore[union-attr]
        return f'EXISTS (SELECT 1 FROM "series" AS ms WHERE ms."study_id" = s."id" AND {matches})'
    if kind == "sopclasses":
        matches = p.is_in('sc."sop_class_uid"', m.values)  # type: ignore[union-attr]
        return f'EXISTS (SELECT 1 FROM "instance" AS sc WHERE sc."study_id" = s."id" AND {matches})'
    if isinstance(m, FuzzyName):
        words = _col(_WORDS[f.attribute.keyword])
        return " AND ".join(
            [f"{words} IS NOT NULL"] + [_like(words, "% " + like_pattern(word) + "%", p) for word in m.words]
        )
    if isinstance(m, DateTimeRange):
        date, time = (_col(c) for c in _DATE_TIME[f.attribute.keyword])
        # The date bounds alone are implied by the combined ones; they let the date index
        # narrow the rows the combined comparison has to look at.
        return " AND ".join(
            [
                f"{date} IS NOT NULL",
                *_between(date, m.lower and m.lower[:8], m.upper and m.upper[:8], p),
                *_between(f"({date} || COALESCE({time}, '000000.000000'))", m.lower, m.upper, p),
            ]
        )
    field = _COLUMNS[f.attribute.keyword]
    condition = _value_condition(_col(field), m, p)
    if field.model is RequestAttribute:
        # Sequence matching: some item of the series' sequence matches.
        return f'EXISTS (SELECT 1 FROM "request_attribute" AS ra WHERE ra."series_id" = se."id" AND {condition})'
    return condition


def _like(column: str, pattern: str, p: _Params) -> str:
    return f"{column} LIKE {p.one(pattern)} ESCAPE '\\'"


def _value_condition(column: str, m: Matcher, p: _Params) -> str:
    if isinstance(m, SingleValue):
        return f"{column} = {p.one(m.value)}"
    if isinstance(m, ValueList):
        return p.is_in(column, m.values)
    if isinstance(m, Wildcard):
        return _like(column, like_pattern(m.pattern), p)
    if isinstance(m, Range):
        return " AND ".join([f"{column} IS NOT NULL", *_between(column, m.lower, m.upper, p)])
    raise AssertionError(f"unknown matcher {m!r}")


def _between(expression: str, lower: str | None, upper: str | None, p: _Params) -> list[str]:
    """Inclusive range with either end open (PS3.4 C.2.2.2.5)."""
    conditions = []
    if lower is not None:
        conditions.append(f"{expression} >= {p.one(lower)}")
    if upper is not None:
        conditions.append(f"{expression} <= {p.one(upper)}")
    return conditions


def _tables(f: Filter) -> set:
    """The models a filter's SQL condition refers to (so the page query joins only those)."""
    kind = f.attribute.kind
    if f.attribute.extended is not None:
        return {_EXTENDED_MODEL[f.attribute.level]}
    if kind in ("modalities", "sopclasses"):
        return {Study}
    if isinstance(f.matcher, FuzzyName):
        return {_WORDS[f.attribute.keyword].model}
    if isinstance(f.matcher, DateTimeRange):
        return {_DATE_TIME[f.attribute.keyword][0].model}
    model = _COLUMNS[f.attribute.keyword].model
    return {Series} if model is RequestAttribute else {model}


@INDEX_SECONDS.labels("search").time()
def search(
    query: QidoQuery,
    *,
    base_url: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    partition: Partition = DEFAULT,
) -> tuple[list[str], bool]:
    """Run a QIDO query; return (results as DICOM JSON object texts, more results exist beyond this page).

    One SQL statement in three layers (see the module docstring): the page's ids are
    chosen over the level's table and only the parent tables the filters use, ordered
    by id; the page's rows are then joined to Study/Series for the result columns, and
    to instance_metadata for the representative instance's stored members.
    """
    level_model = {STUDY: Study, SERIES: Series, INSTANCE: Instance}[query.level]
    needed: set = set()
    for f in query.filters:
        needed |= _tables(f)
    if study_uid is not None:
        needed.add(Study)
    if series_uid is not None:
        needed.add(Series)
    db = Instance._meta.database
    p = _Params(db.param)
    alias = _ALIAS[level_model]
    sources = [f'"{level_model._meta.table_name}" AS {alias}']
    if query.level == SERIES and Study in needed:
        sources.append('JOIN "study" AS s ON s."id" = se."study_id"')
    elif query.level == INSTANCE:
        if Series in needed:
            sources.append('JOIN "series" AS se ON se."id" = i."series_id"')
        if Study in needed:
            sources.append('JOIN "study" AS s ON s."id" = i."study_id"')
    # The level's own partition key: its rows never meet another partition's.
    where = [f'{alias}."partition_key" = {p.one(partition.key)}']
    if study_uid is not None:
        where.append(f's."study_instance_uid" = {p.one(study_uid)}')
    if series_uid is not None:
        where.append(f'se."series_instance_uid" = {p.one(series_uid)}')
    where += [f"({_condition(f, p)})" for f in query.filters]
    inner_sql = (
        f'SELECT {alias}."id" AS page_id FROM {" ".join(sources)}'
        + f' WHERE {" AND ".join(where)}'
        + f' ORDER BY {alias}."id" LIMIT {p.one(query.limit + 1)} OFFSET {p.one(query.offset)}'
    )
    params = p.values
    return_tags = _return_tags(query, in_study_path=study_uid is not None)
    from_members = not query.include_all and return_tags <= QIDO_TAGS | _computed_at(query.level)
    document = "qido" if from_members else "metadata"
    columns = [
        'st."study_instance_uid" AS study_uid',
        'st."number_of_series" AS study_series_count',
        'st."number_of_instances" AS study_instance_count',
        'st."modalities_in_study" AS study_modalities',
        'st."sop_classes_in_study" AS study_sop_classes',
    ]
    if query.level == STUDY:
        joins = 'JOIN "study" AS st ON st."id" = page.page_id'
        rep = 'st."latest_instance_id"'
    else:
        columns += ['se."series_instance_uid" AS series_uid', 'se."number_of_instances" AS series_instance_count']
        if query.level == SERIES:
            joins = 'JOIN "series" AS se ON se."id" = page.page_id JOIN "study" AS st ON st."id" = se."study_id"'
            rep = 'se."latest_instance_id"'
        else:
            columns.append('it."sop_instance_uid" AS sop_uid')
            joins = (
                'JOIN "instance" AS it ON it."id" = page.page_id '
                'JOIN "series" AS se ON se."id" = it."series_id" JOIN "study" AS st ON st."id" = it."study_id"'
            )
            rep = "page.page_id"
    cursor = db.execute_sql(
        f'SELECT {", ".join(columns)}, {rep} AS rep_id, rep."{document}" AS rep_document '
        f"FROM ({inner_sql}) AS page {joins} "
        f'JOIN "instance_metadata" AS rep ON rep."instance_id" = {rep} ORDER BY page.page_id',
        params,
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    computed = _Computed(query, return_tags, base_url)
    missing = [row["rep_id"] for row in rows if from_members and row["rep_document"] is None]
    # Rows stored before `qido` existed and not backfilled yet (`flask dicom backfill-qido`):
    # their full DICOM JSON, in one query.
    full = _full_metadata(db, missing) if missing else {}
    results = []
    for row in rows:
        members = row["rep_document"]
        if from_members and members is not None:
            results.append(_result_from_members(row, members, computed))
        else:
            document = full[row["rep_id"]] if from_members else members
            results.append(_result(row, query, return_tags, computed, json.loads(document)))
    return results, more


def _return_tags(query: QidoQuery, *, in_study_path: bool) -> set[str]:
    """Level defaults, plus parent-level defaults the path does not already fix."""
    tags = set({STUDY: STUDY_DEFAULTS, SERIES: SERIES_DEFAULTS, INSTANCE: INSTANCE_DEFAULTS}[query.level])
    if query.level == SERIES and not in_study_path:
        tags.update(STUDY_DEFAULTS)
    if query.level == INSTANCE:
        tags.update(SERIES_DEFAULTS)
        if not in_study_path:
            tags.update(STUDY_DEFAULTS)
    tags.update(f.attribute.tag.split(".")[0] for f in query.filters)
    tags.update(query.includefields)
    return tags


def _computed_at(level: str) -> frozenset[str]:
    """The attributes the index computes for results of a level (the rest are stored)."""
    return COMPUTED_TAGS - {"00201209"} if level == STUDY else COMPUTED_TAGS


class _Computed:
    """The computed members of results (JSON member texts), reused across rows of one study."""

    def __init__(self, query: QidoQuery, return_tags: set[str], base_url: str):
        self.level = query.level
        applicable = _computed_at(query.level)
        self.wanted = applicable if query.include_all else applicable & return_tags
        #: Stored members a result keeps: the asked-for tags the index does not compute.
        self.stored = frozenset(return_tags) - self.wanted
        # UIDs in the index are validated (digits and dots), so only the base URL needs escaping.
        self._url_prefix = '"00081190":{"vr":"UR","Value":[' + json.dumps(base_url)[:-1] + "/studies/"
        self._study: dict[str, list[str]] = {}

    def members(self, row: dict[str, Any]) -> list[str]:
        study_uid = row["study_uid"]
        out = self._study.get(study_uid)
        if out is None:
            modalities = [m for m in (row["study_modalities"] or "").split("\\") if m]
            sop_classes = [c for c in (row["study_sop_classes"] or "").split("\\") if c]
            study = {
                "00080056": '"00080056":{"vr":"CS","Value":["ONLINE"]}',
                "00080061": _member("00080061", "CS", modalities),
                "00080062": _member("00080062", "UI", sop_classes),
                "00201206": f'"00201206":{{"vr":"IS","Value":[{row["study_series_count"]}]}}',
                "00201208": f'"00201208":{{"vr":"IS","Value":[{row["study_instance_count"]}]}}',
            }
            out = self._study[study_uid] = [text for tag, text in study.items() if tag in self.wanted]
        out = list(out)
        url = self._url_prefix + study_uid
        if self.level in (SERIES, INSTANCE):
            url += "/series/" + row["series_uid"]
            if "00201209" in self.wanted:
                out.append(f'"00201209":{{"vr":"IS","Value":[{row["series_instance_count"]}]}}')
        if self.level == INSTANCE:
            url += "/instances/" + row["sop_uid"]
        if "00081190" in self.wanted:
            out.append(url + '"]}')
        return out


def _member(tag: str, vr: str, values: list) -> str:
    element = {"vr": vr, "Value": values} if values else {"vr": vr}
    return f'"{tag}":{_compact(element)}'


def _result_from_members(row: dict[str, Any], members: str, computed: _Computed) -> str:
    keep = computed.stored
    picked = [m for m in members.split("\n") if m[1:9] in keep]
    picked += computed.members(row)
    picked.sort()  # every member starts with its quoted tag: text order is tag order
    return "{" + ",".join(picked) + "}"


def _full_metadata(db: pw.Database, instance_ids: list[int]) -> dict[int, str]:
    marks = ", ".join([db.param] * len(instance_ids))
    cursor = db.execute_sql(
        f'SELECT "instance_id", "metadata" FROM "instance_metadata" WHERE "instance_id" IN ({marks})', instance_ids
    )
    return dict(cursor.fetchall())


def _result(
    row: dict[str, Any], query: QidoQuery, return_tags: set[str], computed: _Computed, meta: dict[str, Any]
) -> str:
    if query.include_all:
        out = dict(meta)
    else:
        out = {tag: meta[tag] for tag in return_tags if tag in meta}
    out.update(json.loads("{" + ",".join(computed.members(row)) + "}"))
    return _compact(dict(sorted(out.items())))
