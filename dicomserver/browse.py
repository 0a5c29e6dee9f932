"""The study browser's data (services/browser.py): its search form as a QIDO query, and
QIDO's DICOM JSON results as the rows its pages show.

The browser searches with `search.search`, so a page lists what a QIDO client asking the
same gets: a patient name without wildcards matches the beginning of any word of the name
(PS3.18 fuzzymatching), with `*` or `?` it is a wildcard over the whole name; a patient ID
matches exactly or as a wildcard; the two dates bound a StudyDate range.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .archive import Archive
from .dicomjson import first_value
from .errors import BadRequest, NotFound
from .matching import INT64_MAX, SERIES, STUDY, parse_count, shown
from .search import search

#: Studies per page of the list (fewer if DICOMWEB_QIDO_MAX_LIMIT is lower).
PAGE_SIZE = 25
#: The largest page number whose offset SQL still holds.
MAX_PAGE = INT64_MAX // PAGE_SIZE
#: YYYY-MM-DD or YYYYMMDD (the separator used twice or not at all).
_FORM_DATE = re.compile(r"([0-9]{4})(-?)([0-9]{2})\2([0-9]{2})")


@dataclass(frozen=True)
class StudyFilter:
    """The search form as the page shows it again (dates as YYYY-MM-DD), and the page asked for."""

    patient_name: str = ""
    patient_id: str = ""
    date_from: str = ""
    date_to: str = ""
    page: int = 1

    def form(self) -> dict[str, str]:
        """The fields by their names in the form (which shows them again)."""
        return {"name": self.patient_name, "id": self.patient_id, "from": self.date_from, "to": self.date_to}

    def link_args(self, page: int) -> dict[str, str | int]:
        """The query of another page of the same search."""
        return {**{name: value for name, value in self.form().items() if value}, "page": page}

    def qido_args(self) -> list[tuple[str, str]]:
        args = []
        if self.patient_name:
            args.append(("PatientName", self.patient_name))
            if "*" not in self.patient_name and "?" not in self.patient_name:
                args.append(("fuzzymatching", "true"))
        if self.patient_id:
            args.append(("PatientID", self.patient_id))
        if self.date_from or self.date_to:
            args.append(("StudyDate", f"{self.date_from.replace('-', '')}-{self.date_to.replace('-', '')}"))
        return args


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_name: str
    patient_id: str
    study_date: str
    modalities: str
    description: str
    series_count: int
    instance_count: int
    #: The study in the configured viewer (DICOMWEB_VIEWER_URL), or None.
    viewer_link: str | None


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    number: str
    modality: str
    description: str
    instance_count: int


@dataclass(frozen=True)
class StudyList:
    filter: StudyFilter
    studies: list[StudySummary]
    #: The position of the page's first study in the whole list (1-based).
    first: int
    has_previous: bool
    has_next: bool
    #: What the search did not do as asked (QIDO's warnings).
    notes: list[str]


@dataclass(frozen=True)
class StudyDetail:
    study: StudySummary
    series: list[SeriesSummary]
    #: The study has more series than one QIDO page (DICOMWEB_QIDO_MAX_LIMIT) holds.
    more_series: bool


def parse_filter(args: Mapping[str, str]) -> StudyFilter:
    """The form's fields `name`, `id`, `from`, `to` and `page`; a bad date or page is a 400."""
    date_from = _form_date("from", args.get("from", ""))
    date_to = _form_date("to", args.get("to", ""))
    if date_from and date_to and date_from > date_to:
        raise BadRequest(f"the date range starts after it ends: from {date_from} to {date_to}")
    raw_page = args.get("page", "").strip()
    page = parse_count("page", raw_page, minimum=1, maximum=MAX_PAGE) if raw_page else 1
    return StudyFilter(args.get("name", "").strip(), args.get("id", "").strip(), date_from, date_to, page)


def _form_date(field: str, raw: str) -> str:
    """A date as typed (YYYY-MM-DD, as date inputs send it, or DICOM's YYYYMMDD) as YYYY-MM-DD."""
    text = raw.strip()
    if not text:
        return ""
    match = _FORM_DATE.fullmatch(text)
    try:
        if match is None:
            raise ValueError(text)
        return dt.date(int(match[1]), int(match[3]), int(match[4])).isoformat()
    except ValueError:
        raise BadRequest(f"the '{field}' date {shown(text)} is not a date: use YYYY-MM-DD, e.g. 2024-01-31") from None


def find_studies(archive: Archive, criteria: StudyFilter, *, base_url: str) -> StudyList:
    """One page of the studies matching the form, in QIDO's order (arrival)."""
    size = min(PAGE_SIZE, archive.settings.qido_max_limit)
    offset = (criteria.page - 1) * size
    args = [*criteria.qido_args(), ("includefield", "StudyDescription"), ("limit", str(size)), ("offset", str(offset))]
    found = search(archive, STUDY, args, base_url=base_url)
    studies = [_study(result, archive.settings.viewer_url) for result in json.loads(found.body)]
    return StudyList(criteria, studies, offset + 1, criteria.page > 1, found.more, found.warnings)


def study_detail(archive: Archive, study_uid: str, *, base_url: str) -> StudyDetail:
    """A study and its series (by series number); NotFound when the archive has no such study."""
    args = [("StudyInstanceUID", study_uid), ("includefield", "StudyDescription"), ("limit", "1")]
    studies = json.loads(search(archive, STUDY, args, base_url=base_url).body)
    if not studies:
        raise NotFound(f"the archive has no study {study_uid}")
    limit = str(archive.settings.qido_max_limit)
    found = search(archive, SERIES, [("limit", limit)], base_url=base_url, study_uid=study_uid)
    series = sorted((_series(result) for result in json.loads(found.body)), key=_series_order)
    return StudyDetail(_study(studies[0], archive.settings.viewer_url), series, found.more)


def _study(result: dict[str, Any], viewer_url: str | None) -> StudySummary:
    uid = _text(result, "0020000D")
    modalities = (result.get("00080061") or {}).get("Value") or []
    return StudySummary(
        study_uid=uid,
        patient_name=person_name(first_value(result, "00100010")),
        patient_id=_text(result, "00100020"),
        study_date=display_date(_text(result, "00080020")),
        modalities=", ".join(str(m) for m in modalities),
        description=_text(result, "00081030"),
        series_count=_count(result, "00201206"),
        instance_count=_count(result, "00201208"),
        viewer_link=viewer_link(viewer_url, uid),
    )


def _series(result: dict[str, Any]) -> SeriesSummary:
    return SeriesSummary(
        series_uid=_text(result, "0020000E"),
        number=_text(result, "00200011"),
        modality=_text(result, "00080060"),
        description=_text(result, "0008103E"),
        instance_count=_count(result, "00201209"),
    )


def _series_order(series: SeriesSummary) -> tuple[bool, int, str]:
    """By SeriesNumber (IS, so digits), series without one last."""
    number = series.number.lstrip("+")
    known = number.isdigit()
    return (not known, int(number) if known else 0, series.series_uid)


def _text(result: dict[str, Any], tag: str) -> str:
    value = first_value(result, tag)
    return "" if value is None else str(value).strip()


def _count(result: dict[str, Any], tag: str) -> int:
    value = first_value(result, tag)
    return value if isinstance(value, int) else 0


def person_name(value: Any) -> str:
    """A PN value as people write it: 'Family^Given^Middle^Prefix^Suffix' → 'Family, Prefix Given
    Middle, Suffix' (the alphabetic group, else the ideographic or phonetic one)."""
    if isinstance(value, dict):
        value = value.get("Alphabetic") or value.get("Ideographic") or value.get("Phonetic")
    if not value:
        return ""
    family, given, middle, prefix, suffix = ([c.strip() for c in str(value).split("^")] + [""] * 5)[:5]
    forenames = " ".join(part for part in (prefix, given, middle) if part)
    name = ", ".join(part for part in (family, forenames) if part)
    return f"{name}, {suffix}" if name and suffix else name or suffix


def display_date(value: str) -> str:
    """A DA value (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    match = _FORM_DATE.fullmatch(value)
    if match is None or match[2]:
        return value
    try:
        return dt.date(int(match[1]), int(match[3]), int(match[4])).isoformat()
    except ValueError:
        return value


def viewer_link(viewer_url: str | None, study_uid: str) -> str | None:
    """The study in OHIF (its /viewer route takes StudyInstanceUIDs), or None without a viewer."""
    if viewer_url is None:
        return None
    return f"{viewer_url.rstrip('/')}/viewer?StudyInstanceUIDs={quote(study_uid, safe='')}"
