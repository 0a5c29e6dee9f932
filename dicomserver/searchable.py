"""The searchable index columns of an instance, read from its DICOM JSON.

A value goes into a column only when it is valid for its VR (validation.py), so a
malformed StudyDate is stored and returned but never matches a date range, and when
the column can hold it: an integer beyond INTEGER_COLUMN_RANGE (a 30-digit
InstanceNumber) leaves its column NULL instead of failing the instance. STOW has
validated every attribute already and passes the set of invalid ones, so nothing is
checked twice; a value read back from the stored JSON (when the index re-picks the
latest instance of a series or study after a delete) is checked here.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .dicomjson import DicomJson, int_value, name_key, name_words, normalize_time, string_value
from .validation import is_valid_value

# Attribute tags (GGGGEEEE) whose values go into index columns.
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
ACCESSION_NUMBER = "00080050"
REFERRING_PHYSICIAN_NAME = "00080090"
STUDY_ID = "00200010"
STUDY_DESCRIPTION = "00081030"
MODALITY = "00080060"
SERIES_NUMBER = "00200011"
SERIES_DESCRIPTION = "0008103E"
PERFORMED_PROCEDURE_STEP_START_DATE = "00400244"
PERFORMED_PROCEDURE_STEP_START_TIME = "00400245"
MANUFACTURER_MODEL_NAME = "00081090"
INSTANCE_NUMBER = "00200013"
ROWS = "00280010"
COLUMNS = "00280011"
BITS_ALLOCATED = "00280100"
NUMBER_OF_FRAMES = "00280008"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"
SCHEDULED_PROCEDURE_STEP_ID = "00400009"
REQUESTED_PROCEDURE_ID = "00401001"

Columns = dict[str, str | int | None]

#: The values an integer column holds: PostgreSQL's INTEGER, which is also the range of
#: an IS value (PS3.5 Table 6.2-1); every US value fits too.
INTEGER_COLUMN_RANGE = range(-(2**31), 2**31)


@dataclass(frozen=True)
class IndexColumns:
    """Column values for the Study, Series and Instance rows, keyed by column name."""

    study: Columns
    series: Columns
    instance: Columns


def index_columns(meta: DicomJson, invalid: Collection[str] | None = None) -> IndexColumns:
    """The columns of one instance; `invalid` names the attributes validation refused
    (None: not known, so every value is checked)."""
    return IndexColumns(study_columns(meta, invalid), series_columns(meta, invalid), instance_columns(meta, invalid))


def study_columns(meta: DicomJson, invalid: Collection[str] | None = None) -> Columns:
    def text(tag: str) -> str | None:
        return _searchable(meta, tag, invalid)

    name = text(PATIENT_NAME)
    referring = text(REFERRING_PHYSICIAN_NAME)
    return {
        "patient_name": name,
        "patient_name_key": name_key(name),
        "patient_id": text(PATIENT_ID),
        "patient_birth_date": text(PATIENT_BIRTH_DATE),
        "patient_sex": text(PATIENT_SEX),
        "study_date": text(STUDY_DATE),
        "study_time": normalize_time(text(STUDY_TIME)),
        "accession_number": text(ACCESSION_NUMBER),
        "referring_physician_name_key": name_key(referring),
        "patient_name_words": name_words(name),
        "referring_physician_name_words": name_words(referring),
        "study_id": text(STUDY_ID),
        "study_description": text(STUDY_DESCRIPTION),
    }


def series_columns(meta: DicomJson, invalid: Collection[str] | None = None) -> Columns:
    return {
        "modality": _searchable(meta, MODALITY, invalid),
        "series_number": _searchable_integer(meta, SERIES_NUMBER, invalid),
        "series_description": _searchable(meta, SERIES_DESCRIPTION, invalid),
        "performed_procedure_step_start_date": _searchable(meta, PERFORMED_PROCEDURE_STEP_START_DATE, invalid),
        "performed_procedure_step_start_time": normalize_time(
            _searchable(meta, PERFORMED_PROCEDURE_STEP_START_TIME, invalid)
        ),
        "manufacturer_model_name": _searchable(meta, MANUFACTURER_MODEL_NAME, invalid),
    }


def instance_columns(meta: DicomJson, invalid: Collection[str] | None = None) -> Columns:
    """InstanceNumber is matched, so held to validity; the pixel description columns serve
    retrieval (frame counts, rendering), so they keep any value their column can hold."""
    return {
        "instance_number": _searchable_integer(meta, INSTANCE_NUMBER, invalid),
        "rows": _integer(meta, ROWS),
        "columns": _integer(meta, COLUMNS),
        "bits_allocated": _integer(meta, BITS_ALLOCATED),
        "number_of_frames": _integer(meta, NUMBER_OF_FRAMES),
    }


def request_attributes(meta: DicomJson) -> list[tuple[str | None, str | None]]:
    """(ScheduledProcedureStepID, RequestedProcedureID) of each Request Attributes Sequence item."""
    items = (meta.get(REQUEST_ATTRIBUTES_SEQUENCE) or {}).get("Value") or []
    return [
        (string_value(item, SCHEDULED_PROCEDURE_STEP_ID), string_value(item, REQUESTED_PROCEDURE_ID))
        for item in items
        if isinstance(item, dict)
    ]


def _searchable(meta: DicomJson, tag: str, invalid: Collection[str] | None) -> str | None:
    """An attribute's first value for a column, or None when absent or when any of its
    values is invalid (as STOW decides: validation.invalid_attributes)."""
    value = string_value(meta, tag)
    if value is None:
        return None
    if invalid is not None:
        return None if tag in invalid else value
    element = meta.get(tag) or {}
    vr = element.get("vr")
    return value if vr and all(is_valid_value(vr, _text(v)) for v in element.get("Value") or ()) else None


def _searchable_integer(meta: DicomJson, tag: str, invalid: Collection[str] | None) -> int | None:
    """An integer attribute's first value for a matched column: as `_searchable` decides, and
    within the column's range."""
    return None if _searchable(meta, tag, invalid) is None else _integer(meta, tag)


def _integer(meta: DicomJson, tag: str) -> int | None:
    """An integer attribute's first value, or None when its column cannot hold it."""
    value = int_value(meta, tag)
    return value if value is not None and value in INTEGER_COLUMN_RANGE else None


def _text(value: object) -> object:
    """A DICOM JSON value as validation sees it: a person name by its components' text."""
    if isinstance(value, dict):  # PN: {"Alphabetic": ..., "Ideographic": ..., "Phonetic": ...}
        return "=".join(str(value.get(group) or "") for group in ("Alphabetic", "Ideographic", "Phonetic")).rstrip("=")
    return value
