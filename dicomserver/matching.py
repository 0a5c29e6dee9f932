"""QIDO-RS query parameters → typed matching filters (PS3.18 §8.3.4, PS3.4 C.2.2.2).

One class per PS3.4 matching type (single value, UID list, wildcard, range,
universal); which attribute is searchable at which level is the table
`SEARCHABLE` below. Parsing happens before any SQL is built, so a malformed key or
value is a 400 with a message, never a 500.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from .dicomjson import name_key, normalize_time
from .errors import InvalidQuery
from .query_tags import InvalidTag, normalize_datetime
from .searchable import INTEGER_COLUMN_RANGE
from .uids import normalize_uid

STUDY, SERIES, INSTANCE = "study", "series", "instance"
LEVEL_ORDER = {STUDY: 0, SERIES: 1, INSTANCE: 2}


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: str  # GGGGEEEE
    level: str
    kind: str  # uid, string, name, date, time, datetime, int, number, modalities
    #: The extended query tag's id in the index; None for the attributes of SEARCHABLE.
    extended: int | None = None


def _attr(keyword: str, level: str, kind: str) -> Attribute:
    """An attribute by keyword; 'Sequence.Keyword' names an attribute inside a sequence item."""
    tag = ".".join(f"{tag_for_keyword(k):08X}" for k in keyword.split("."))
    return Attribute(keyword, tag, level, kind)


#: Searchable attributes: PS3.18 Table 10.6.1-5 (required matching keys), plus a few.
SEARCHABLE: dict[str, Attribute] = {
    a.tag: a
    for a in (
        _attr("StudyInstanceUID", STUDY, "uid"),
        _attr("PatientName", STUDY, "name"),
        _attr("PatientID", STUDY, "string"),
        _attr("PatientBirthDate", STUDY, "date"),
        _attr("PatientSex", STUDY, "string"),
        _attr("StudyDate", STUDY, "date"),
        _attr("StudyTime", STUDY, "time"),
        _attr("AccessionNumber", STUDY, "string"),
        _attr("ReferringPhysicianName", STUDY, "name"),
        _attr("StudyID", STUDY, "string"),
        _attr("StudyDescription", STUDY, "string"),
        _attr("ModalitiesInStudy", STUDY, "modalities"),
        _attr("SOPClassesInStudy", STUDY, "sopclasses"),
        _attr("SeriesInstanceUID", SERIES, "uid"),
        _attr("Modality", SERIES, "string"),
        _attr("SeriesNumber", SERIES, "int"),
        _attr("SeriesDescription", SERIES, "string"),
        _attr("PerformedProcedureStepStartDate", SERIES, "date"),
        _attr("PerformedProcedureStepStartTime", SERIES, "time"),
        _attr("ManufacturerModelName", SERIES, "string"),
        _attr("RequestAttributesSequence.ScheduledProcedureStepID", SERIES, "string"),
        _attr("RequestAttributesSequence.RequestedProcedureID", SERIES, "string"),
        _attr("SOPInstanceUID", INSTANCE, "uid"),
        _attr("SOPClassUID", INSTANCE, "uid"),
        _attr("InstanceNumber", INSTANCE, "int"),
    )
}

RESERVED = {"limit", "offset", "fuzzymatching", "includefield"}

#: The largest signed 64-bit integer: SQL's LIMIT and OFFSET, and change-feed sequence
#: numbers, hold no more in either database.
INT64_MAX = 2**63 - 1
#: An optionally signed whole number in ASCII digits (int() would also take '1_000' and
#: other scripts' digits).
_WHOLE_NUMBER = re.compile(r"([+-]?)([0-9]+)")


# -- matchers -----------------------------------------------------------------
@dataclass(frozen=True)
class SingleValue:
    value: str | int | float


@dataclass(frozen=True)
class ValueList:
    values: tuple[str, ...]


@dataclass(frozen=True)
class Wildcard:
    """A pattern with '*' (any run) and '?' (one character)."""

    pattern: str


@dataclass(frozen=True)
class Range:
    lower: str | None
    upper: str | None


@dataclass(frozen=True)
class FuzzyName:
    """PS3.18 fuzzymatching for PN: every word is a prefix of a name component word."""

    words: tuple[str, ...]


@dataclass(frozen=True)
class DateTimeRange:
    """A DA range and a TM range on a Date/Time pair, matched as one date-time (PS3.4 C.2.2.2.5.1)."""

    lower: str | None  # YYYYMMDDHHMMSS.ffffff
    upper: str | None


Matcher = SingleValue | ValueList | Wildcard | Range | FuzzyName | DateTimeRange


@dataclass(frozen=True)
class Filter:
    attribute: Attribute
    matcher: Matcher


@dataclass
class QidoQuery:
    level: str
    filters: list[Filter] = field(default_factory=list)
    includefields: set[str] = field(default_factory=set)  # GGGGEEEE
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0
    limit_was_capped: bool = False
    #: Keys that are valid DICOM attributes but not searchable here (ignored; Warning).
    ignored: list[str] = field(default_factory=list)
    #: Other things the server did not do as asked, for Warning headers.
    warnings: list[str] = field(default_factory=list)


def resolve_tag(key: str) -> str | None:
    """A keyword ('PatientName') or hex tag ('00100010') as GGGGEEEE, or None.

    Dotted paths ('RequestAttributesSequence.RequestedProcedureID', '00400275.00401001')
    name attributes inside sequence items and resolve to 'GGGGEEEE.GGGGEEEE'.
    """
    parts = []
    for segment in key.split("."):
        if re.fullmatch(r"[0-9A-Fa-f]{8}", segment):
            parts.append(segment.upper())
            continue
        tag = tag_for_keyword(segment)
        if tag is None:
            return None
        parts.append(f"{tag:08X}")
    return ".".join(parts)


def _display(tag: str) -> str:
    return ".".join(keyword_for_tag(int(t, 16)) or t for t in tag.split("."))


def parse_query(
    args: list[tuple[str, str]],
    level: str,
    *,
    default_limit: int,
    max_limit: int,
    extended: Mapping[str, Attribute] | None = None,
) -> QidoQuery:
    """Turn the request's query pairs into a QidoQuery for `level`; `extended` adds the
    extended query tags that are ready and enabled, by tag."""
    query = QidoQuery(level=level, limit=default_limit)
    seen: set[str] = set()
    raw_filters: list[tuple[Attribute, str]] = []
    limit_given = False
    for raw_key, raw_value in args:
        key = raw_key.strip()
        lowered = key.lower()
        if lowered in RESERVED:
            if lowered == "includefield":
                _parse_includefield(query, raw_value)
            elif lowered == "limit":
                query.limit = parse_count("limit", raw_value, minimum=1, clamp=True)
                limit_given = True
            elif lowered == "offset":
                # Past the end of every table: the same empty page as the offset asked for.
                query.offset = parse_count("offset", raw_value, minimum=0, clamp=True)
            else:
                query.fuzzy = _parse_bool("fuzzymatching", raw_value)
            continue
        tag = resolve_tag(key)
        if tag is None:
            raise InvalidQuery(
                f"unknown query parameter {key!r}: not a DICOM keyword or tag, nor one of "
                "limit, offset, fuzzymatching, includefield"
            )
        if tag in seen:
            raise InvalidQuery(f"attribute {key!r} is given more than once")
        seen.add(tag)
        attribute = SEARCHABLE.get(tag)
        if attribute is None and extended:
            attribute = extended.get(tag)
        if attribute is None or LEVEL_ORDER[attribute.level] > LEVEL_ORDER[level]:
            query.ignored.append(_display(tag))
            continue
        raw_filters.append((attribute, raw_value.strip()))
    _build_filters(query, raw_filters)
    if query.limit > max_limit:
        query.limit = max_limit
        query.limit_was_capped = True
    elif not limit_given:
        query.limit_was_capped = True  # the server's default page size applies
    return query


#: Date/Time attribute pairs matched as one date-time when both are ranges.
_DATE_TIME_PAIRS = (
    ("StudyDate", "StudyTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
)


def _build_filters(query: QidoQuery, raw_filters: list[tuple[Attribute, str]]) -> None:
    by_keyword: dict[str, Matcher] = {}
    attributes: dict[str, Attribute] = {}
    for attribute, value in raw_filters:
        if value == "" or value == "*":
            continue  # universal matching: every entity matches
        if ("*" in value or "?" in value) and attribute.kind not in ("string", "name"):
            query.warnings.append(
                f"wildcard matching is not supported for {attribute.keyword}; the condition was ignored"
            )
            continue
        if attribute.kind == "name" and query.fuzzy and "*" not in value and "?" not in value:
            words = tuple((name_key(value) or "").replace("^", " ").replace("=", " ").split())
            matcher: Matcher | None = FuzzyName(words) if words else None
            if matcher is None:
                continue
        else:
            matcher = _parse_matcher(attribute, value)
        by_keyword[attribute.keyword] = matcher
        attributes[attribute.keyword] = attribute
    for date_keyword, time_keyword in _DATE_TIME_PAIRS:
        date, time = by_keyword.get(date_keyword), by_keyword.get(time_keyword)
        if (
            isinstance(time, Range)
            and isinstance(date, (Range, SingleValue))
            and _is_time_range_query(raw_filters, time_keyword)
        ):
            by_keyword[date_keyword] = _combine(date, time)
            del by_keyword[time_keyword]
    for keyword, matcher in by_keyword.items():
        if (
            isinstance(matcher, (Range, DateTimeRange))
            and matcher.lower
            and matcher.upper
            and matcher.lower > matcher.upper
        ):
            raise InvalidQuery(f"{keyword}: the range starts after it ends")
    query.filters = [Filter(attributes[k], m) for k, m in by_keyword.items()]


def _is_time_range_query(raw_filters: list[tuple[Attribute, str]], time_keyword: str) -> bool:
    """Only an explicit TM range ('a-b', 'a-', '-b') combines with the date."""
    return any(a.keyword == time_keyword and "-" in v for a, v in raw_filters)


def _combine(date: Range | SingleValue, time: Range) -> DateTimeRange:
    date_lower: str | None
    date_upper: str | None
    if isinstance(date, SingleValue):
        date_lower = date_upper = str(date.value)
    else:
        date_lower, date_upper = date.lower, date.upper
    lower = date_lower + (time.lower or "000000.000000") if date_lower else None
    upper = date_upper + (time.upper or "235959.999999") if date_upper else None
    return DateTimeRange(lower, upper)


def _parse_includefield(query: QidoQuery, raw: str) -> None:
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() == "all":
            query.include_all = True
            continue
        tag = resolve_tag(item)
        if tag is None:
            raise InvalidQuery(f"includefield {item!r} is not a DICOM keyword or tag")
        query.includefields.add(tag)


def parse_count(name: str, raw: str, *, minimum: int, maximum: int = INT64_MAX, clamp: bool = False) -> int:
    """A whole-number query parameter of at least `minimum`: above `maximum`, `maximum`
    when `clamp`, else a 400. Digits beyond 64 bits are never converted (Python refuses
    to convert more than a few thousand), so a number of any length is answered."""
    value = _whole_number(raw)
    if value is None:
        raise InvalidQuery(f"{name}={shown(raw)} is not a whole number")
    if value < minimum:
        raise InvalidQuery(f"{name} must be at least {minimum}, got {shown(raw)}")
    if value > maximum:
        if clamp:
            return maximum
        raise InvalidQuery(f"{name} must be between {minimum} and {maximum}, got {shown(raw)}")
    return value


def _whole_number(raw: str) -> int | None:
    """`raw` as an integer, a number beyond 64 bits as one just beyond INT64_MAX (or
    below -INT64_MAX), or None when it is not a whole number."""
    match = _WHOLE_NUMBER.fullmatch(raw.strip())
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    magnitude = int(digits) if len(digits) <= 19 else INT64_MAX + 1
    return -magnitude if sign == "-" else magnitude


def shown(raw: str) -> str:
    """A client's value quoted for an error message, cut short: one clear sentence, not an echo."""
    return repr(raw if len(raw) <= 24 else raw[:20] + "...")


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise InvalidQuery(f"{name}={raw!r} must be true or false")


def _parse_matcher(attribute: Attribute, value: str) -> Matcher:
    kind = attribute.kind
    name = attribute.keyword
    if kind == "uid":
        uids = re.split(r"[,\\]", value)
        normalized = [normalize_uid(u.strip()) for u in uids]
        if any(u is None for u in normalized):
            raise InvalidQuery(f"{name}={value!r} is not a UID or a list of UIDs")
        valid = cast("list[str]", normalized)  # none is None, as just checked
        return ValueList(tuple(valid)) if len(valid) > 1 else SingleValue(valid[0])
    if kind == "date":
        return _date_matcher(name, value)
    if kind == "time":
        return _time_matcher(name, value)
    if kind == "datetime":
        return _datetime_matcher(name, value)
    if kind == "number":
        return _number_matcher(name, value)
    if kind == "int":
        number = _whole_number(value)
        if number is None:
            raise InvalidQuery(f"{name}={shown(value)} is not an integer")
        if number not in INTEGER_COLUMN_RANGE:
            raise InvalidQuery(
                f"{name}={shown(value)} is out of range: an IS value lies between "
                f"{INTEGER_COLUMN_RANGE.start} and {INTEGER_COLUMN_RANGE.stop - 1}"
            )
        return SingleValue(number)
    if kind in ("modalities", "sopclasses"):
        items = [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]
        return ValueList(tuple(items))
    if kind == "name":
        value = name_key(value) or ""
    if "*" in value or "?" in value:
        return Wildcard(value)
    if kind == "string" and ("\\" in value):
        return ValueList(tuple(v for v in value.split("\\")))
    return SingleValue(value)


def _check_date(name: str, value: str) -> str:
    try:
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise InvalidQuery(f"{name}: {value!r} is not a date in YYYYMMDD form") from None
    return value


def _date_matcher(name: str, value: str) -> Matcher:
    if "-" not in value:
        return SingleValue(_check_date(name, value))
    lower: str | None
    upper: str | None
    lower, _, upper = value.partition("-")
    lower, upper = lower.strip(), upper.strip()
    if not lower and not upper:
        raise InvalidQuery(f"{name}: a range needs at least one bound, got {value!r}")
    lower = _check_date(name, lower) if lower else None
    upper = _check_date(name, upper) if upper else None
    if lower and upper and lower > upper:
        raise InvalidQuery(f"{name}: range {value!r} starts after it ends")
    return Range(lower, upper)


def _time_matcher(name: str, value: str) -> Matcher:
    def bound(text: str, upper: bool) -> str:
        normalized = normalize_time(text, upper=upper)
        if normalized is None:
            raise InvalidQuery(f"{name}: {text!r} is not a time in HHMMSS[.ffffff] form")
        return normalized

    if "-" not in value:
        return Range(bound(value, False), bound(value, True))
    lower, _, upper = value.partition("-")
    lower, upper = lower.strip(), upper.strip()
    if not lower and not upper:
        raise InvalidQuery(f"{name}: a range needs at least one bound, got {value!r}")
    lo = bound(lower, False) if lower else None
    hi = bound(upper, True) if upper else None
    # The order is checked once it is known whether a date combines with it.
    return Range(lo, hi)


def _datetime_matcher(name: str, value: str) -> Matcher:
    """DT, exact (a partial value is the span it names: '2024' is the whole year) or a range."""
    lower, dash, upper = value.partition("-")
    if value.count("-") > 1 or "+" in value:
        raise InvalidQuery(f"{name}: {value!r} is not a DT value or range (UTC offsets are not matched)")
    lower, upper = lower.strip(), upper.strip()
    if not dash:
        upper = lower
    if not lower and not upper:
        raise InvalidQuery(f"{name}: a range needs at least one bound, got {value!r}")
    try:
        lo = normalize_datetime(lower) if lower else None
        hi = normalize_datetime(upper, upper=True) if upper else None
    except InvalidTag as exc:
        raise InvalidQuery(f"{name}: {exc}") from None
    return Range(lo, hi)


def _number_matcher(name: str, value: str) -> Matcher:
    """A number, or a list separated by backslashes: matched by value ('1.50' finds 1.5)."""
    numbers = []
    for item in value.split("\\"):
        try:
            number = float(item.strip())
        except ValueError:
            raise InvalidQuery(f"{name}={shown(value)} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidQuery(f"{name}={shown(value)} is not a finite number")
        numbers.append(number)
    return SingleValue(numbers[0]) if len(numbers) == 1 else ValueList(tuple(numbers))  # type: ignore[arg-type]
