"""The audit trail as FHIR R4: AuditEvent resources and searchset Bundles (GET /audit).

Each stored record (index/audit.py) becomes an AuditEvent with the basic fields of
IHE BALP: type `rest` and the RESTful interaction as subtype, the action code, when,
the outcome, three agents (the user as the token named them, the client's address as
Source Role ID, this server as Destination Role ID), this server as the source, and
the entities: the request (X-Request-Id) and the study, with series and instance as
details. Searches: `date` (FHIR prefixes eq, ge, gt, le, lt; repeatable for a range),
`subject`, `study`, `_count`, and `_cursor` to continue a page (the `next` link).
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from .audit import iso_time
from .errors import BadRequest, NotAcceptable, NotFound
from .index import AuditQuery, AuditRecord, Index
from .matching import parse_count
from .media import parse_accept, refused
from .uids import require_uid

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT = 100
MAX_COUNT = 1000

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_EVENT_TYPE_REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                    "display": "Restful Operation"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_SOURCE_TYPE = [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                 "display": "Application Server"}]
_USER = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP",
                     "display": "information recipient"}]}
_CLIENT = {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]}
_SERVER = {"coding": [{"system": _DCM, "code": "110152", "display": "Destination Role ID"}]}
_REQUEST_ID = {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId",
               "display": "X-Request-Id"}
_SYSTEM_OBJECT = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
                  "display": "System Object"}
_REPORT = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3", "display": "Report"}
_STUDY_UID = {"coding": [{"system": _DCM, "code": "110180", "display": "Study Instance UID"}]}

#: Records of the DIMSE gateway (dimse.py) name the service as their method: the AuditEvent
#: type is DICOM's (PS3.15 A.5: instances transferred, query, security alert for a refusal),
#: the subtype the RESTful interaction it is the equivalent of, the outcome from the DIMSE status.
_DIMSE: dict[str, tuple[str, str, dict[str, str]]] = {
    "C-STORE": ("create", "C", {"system": _DCM, "code": "110104", "display": "DICOM Instances Transferred"}),
    "C-GET": ("read", "R", {"system": _DCM, "code": "110104", "display": "DICOM Instances Transferred"}),
    "C-MOVE": ("read", "R", {"system": _DCM, "code": "110104", "display": "DICOM Instances Transferred"}),
    "C-FIND": ("search-type", "E", {"system": _DCM, "code": "110112", "display": "Query"}),
    # Storage commitment: the archive is asked which of the named instances it holds.
    "N-ACTION": ("operation", "E", {"system": _DCM, "code": "110112", "display": "Query"}),
    "C-ECHO": ("operation", "E", {"system": _DCM, "code": "110113", "display": "Security Alert"}),
    "A-ASSOCIATE": ("operation", "E", {"system": _DCM, "code": "110113", "display": "Security Alert"}),
}
#: DIMSE statuses that say the archive failed (out of resources, processing failure,
#: sub-operations failed), not the request: a serious failure (FHIR outcome 8).
_DIMSE_SERIOUS = frozenset({0xA700, 0x0110, 0xA702})
#: Routes ending so are searches (QIDO, the change feed, this trail); other GETs are reads.
_SEARCH_ENDS = ("/studies", "/series", "/instances", "/changefeed", "/changefeed/latest", "/audit")
_DIGITS = re.compile(r"[0-9]+")
_SEARCH_PARAMETERS = ("date", "subject", "study", "_count", "_cursor")


def require_fhir_json(accept: str | None) -> str:
    """The media type to answer with, or 406 when the Accept header allows no JSON."""
    ranges = parse_accept(accept)
    wanted = (FHIR_JSON, "application/json", "application/*", "*/*")
    if not refused(ranges, FHIR_JSON) and any(r.mimetype in wanted for r in ranges):
        return FHIR_JSON
    raise NotAcceptable("the Accept header allows no media type /audit offers; use application/fhir+json")


def search(index: Index, arguments: Sequence[tuple[str, str]], base_url: str) -> dict[str, Any]:
    """A searchset Bundle of the records matching the query parameters, newest first."""
    query = _query(arguments)
    rows = index.audit_records(replace(query, limit=query.limit + 1))  # one more: is there a next page?
    more, rows = len(rows) > query.limit, rows[: query.limit]
    kept = [(name, value) for name, value in arguments if name != "_cursor"]
    links = [{"relation": "self", "url": _url(base_url, arguments)}]
    if more:
        links.append({"relation": "next", "url": _url(base_url, [*kept, ("_cursor", str(rows[-1][0]))])})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"fullUrl": f"{base_url}/audit/{record_id}", "resource": audit_event(record_id, record, base_url),
             "search": {"mode": "match"}}
            for record_id, record in rows
        ],
    }


def read(index: Index, record_id: str, base_url: str) -> dict[str, Any]:
    """One AuditEvent by id; 404 when it never existed or has passed the retention."""
    found = index.audit_record(int(record_id)) if _DIGITS.fullmatch(record_id) and len(record_id) < 19 else None
    if found is None:
        raise NotFound(f"AuditEvent/{record_id} does not exist (or is past the retention period)")
    return audit_event(*found, base_url)


def audit_event(record_id: int, record: AuditRecord, base_url: str) -> dict[str, Any]:
    dimse = _DIMSE.get(record.method)
    interaction, action = (dimse[0], dimse[1]) if dimse is not None else _interaction(record)
    agents: list[dict[str, Any]] = []
    if record.subject != "-":
        agents.append({"type": _USER, "who": {"identifier": {"value": record.subject}}, "requestor": True})
    agents.append({"type": _CLIENT, "requestor": record.subject == "-",
                   "network": {"address": record.client, "type": "2"}})
    agents.append({"type": _SERVER, "who": {"display": "dicomserver"}, "requestor": False,
                   "network": {"address": base_url, "type": "5"}})
    details = [{"type": "method", "valueString": record.method}, {"type": "route", "valueString": record.route}]
    if record.bytes is not None:
        details.append({"type": "bytes", "valueString": str(record.bytes)})
    if record.partition is not None:
        details.append({"type": "partition", "valueString": record.partition})
    entities: list[dict[str, Any]] = [
        {"what": {"identifier": {"value": record.request_id}}, "type": _REQUEST_ID, "detail": details}
    ]
    if record.study is not None:
        study: dict[str, Any] = {
            "what": {"identifier": {"type": _STUDY_UID, "system": "urn:dicom:uid", "value": f"urn:oid:{record.study}"}},
            "type": _SYSTEM_OBJECT,
            "role": _REPORT,
        }
        parts = [("SeriesInstanceUID", record.series), ("SOPInstanceUID", record.instance)]
        if any(uid for _, uid in parts):
            study["detail"] = [{"type": name, "valueString": uid} for name, uid in parts if uid]
        entities.append(study)
    return {
        "resourceType": "AuditEvent",
        "id": str(record_id),
        "type": dimse[2] if dimse is not None else _EVENT_TYPE_REST,
        "subtype": [{"system": _INTERACTION, "code": interaction}],
        "action": action,
        "recorded": iso_time(record.time),
        "outcome": _dimse_outcome(record.status) if dimse is not None else (
            "0" if record.status < 400 else ("4" if record.status < 500 else "8")),
        "outcomeDesc": f"DIMSE 0x{record.status:04X}" if dimse is not None else f"HTTP {record.status}",
        "agent": agents,
        "source": {"observer": {"display": "dicomserver"}, "type": _SOURCE_TYPE},
        "entity": entities,
    }


def _dimse_outcome(status: int) -> str:
    """Success, warning and cancel are successes; a refusal or bad request a minor failure."""
    if status in (0x0000, 0x0001, 0xFE00) or 0xB000 <= status <= 0xBFFF:
        return "0"
    return "8" if status in _DIMSE_SERIOUS else "4"


def _interaction(record: AuditRecord) -> tuple[str, str]:
    """The FHIR RESTful interaction and AuditEvent action code of a request."""
    if record.method == "POST":
        return "create", "C"
    if record.method == "PUT":
        return "update", "U"
    if record.method == "DELETE":
        return "delete", "D"
    if record.route.endswith(_SEARCH_ENDS):
        return "search-type", "E"
    return "read", "R"


def _query(arguments: Sequence[tuple[str, str]]) -> AuditQuery:
    unknown = sorted({name for name, _ in arguments if name not in _SEARCH_PARAMETERS})
    if unknown:
        raise BadRequest(
            f"unknown search parameter(s) {', '.join(unknown)}; /audit takes {', '.join(_SEARCH_PARAMETERS)}"
        )
    values: dict[str, list[str]] = {}
    for name, value in arguments:
        values.setdefault(name, []).append(value)
    for name in ("subject", "study", "_count", "_cursor"):
        if len(values.get(name, [])) > 1:
            raise BadRequest(f"{name} may be given once")
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    for raw in values.get("date", []):
        low, high = _date_bounds(raw)
        if low is not None:
            since = low if since is None else max(since, low)
        if high is not None:
            until = high if until is None else min(until, high)
    return AuditQuery(
        since=since,
        until=until,
        subject=_one(values, "subject"),
        study=require_uid(study, "study") if (study := _one(values, "study")) is not None else None,
        before_id=_number(values, "_cursor", 1, 2**62),
        limit=_number(values, "_count", 1, MAX_COUNT) or DEFAULT_COUNT,
    )


def _one(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return found[0] if found else None


def _number(values: dict[str, list[str]], name: str, low: int, high: int) -> int | None:
    raw = _one(values, name)
    if raw is None:
        return None
    return parse_count(name, raw, minimum=low, maximum=high)


_DATE = re.compile(
    r"(?P<prefix>eq|ge|gt|le|lt)?(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,6})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _date_bounds(raw: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The [since, until) a FHIR date parameter allows, in naive UTC.

    A value stands for the whole interval its precision names (2026-12 is all of
    December): `ge`/`gt` bound from its start/end, `le`/`lt` up to its end/start, `eq`
    (the default) keeps the interval.
    """
    match = _DATE.fullmatch(raw)
    if match is None:
        raise BadRequest(
            f"date={raw!r} is invalid: expected [eq|ge|gt|le|lt] and YYYY, YYYY-MM, YYYY-MM-DD or "
            "YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm] (percent-encode + as %2B)"
        )
    part = match.groupdict()
    try:
        start, end = _interval(part)
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"date={raw!r} is invalid: {exc}") from None
    prefix = part["prefix"] or "eq"
    return {
        "eq": (start, end),
        "ge": (start, None),
        "gt": (end, None),
        "le": (None, end),
        "lt": (None, start),
    }[prefix]


def _interval(part: dict[str, str | None]) -> tuple[dt.datetime, dt.datetime]:
    year = int(part["year"] or 0)
    if part["month"] is None:
        return dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)
    month = int(part["month"])
    if part["day"] is None:
        start = dt.datetime(year, month, 1)
        return start, dt.datetime(year + month // 12, month % 12 + 1, 1)
    day = dt.datetime(year, month, int(part["day"]))
    if part["hour"] is None:
        return day, day + dt.timedelta(days=1)
    moment = day.replace(hour=int(part["hour"]), minute=int(part["minute"] or 0))
    step = dt.timedelta(minutes=1)
    if part["second"] is not None:
        moment = moment.replace(second=int(part["second"]))
        step = dt.timedelta(seconds=1)
        if part["fraction"]:
            digits = part["fraction"][1:]
            moment = moment.replace(microsecond=int(digits.ljust(6, "0")))
            step = dt.timedelta(microseconds=10 ** (6 - len(digits)))
    zone = part["zone"]
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        moment -= sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return moment, moment + step


def _url(base_url: str, arguments: Sequence[tuple[str, str]]) -> str:
    return f"{base_url}/audit" + (f"?{urlencode(list(arguments))}" if arguments else "")
