"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json.

Built from one table, `ROUTES`: a row per route and method, naming its path (under /v1
and /v2 unless the row says otherwise), the query parameters and headers it reads, its
request body and every status it answers, with the body of each. What every route
shares (the authentication answers, the HTTP server's own refusals, X-Request-Id) is
added by `document`, so a row says only what is particular to its route. The QIDO
parameters come from `matching.SEARCHABLE`, the frame media types from `media`, so the
description follows the code. tests/test_openapi.py compares ROUTES with the app's URL
map: a route added without a row fails the suite, naming the route.

A new route is one `Route(...)` in the function of its service (or in a new function
added to ROUTES), e.g. an unversioned public one:
    Route("GET", "/metrics", "Prometheus metrics", "Operations",
          {200: _answer("the metrics", _binary("text/plain"))}, action=None, versions=("",))
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from .bulk_update import MAX_STUDIES as MAX_UPDATE_STUDIES
from .changes import PAGE_SIZES
from .events import TYPES as EVENT_TYPES
from .export import MAX_IDENTIFIERS as MAX_EXPORT_IDENTIFIERS
from .fhir_audit import DEFAULT_COUNT, FHIR_JSON, MAX_COUNT
from .matching import INSTANCE, LEVEL_ORDER, SERIES, STUDY
from .matching import SEARCHABLE as _SEARCHABLE
from .media import DICOM, DICOM_JSON, EVENT_STREAM, FRAME_MEDIA_TYPES, MULTIPART_RELATED, OCTET_STREAM
from .query_tags import LEVELS as XQT_LEVELS
from .query_tags import MAX_TAGS, SUPPORTED_VRS
from .searchable import INTEGER_COLUMN_RANGE
from .uids import MAX_UID_LENGTH

Json = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
VERSIONS = ("v1", "v2")
#: PS3.5 §9.1 as this server reads a UID in a path (it also strips trailing spaces and NULs).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
TEXT = "text/plain"
HTML = "text/html"
JSON = "application/json"
#: The rendered resources' media types (render.MEDIA_TYPES; render itself needs the optional
#: `render` extra, so it is not imported here: tests/test_openapi.py checks they agree).
RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")

#: Statuses the HTTP server answers before the app sees the request (gunicorn, and the
#: worker in gunicorn_worker.py), so any route may answer them. Their bodies are HTML
#: (gunicorn's) or text (the worker's).
HTTP_SERVER_ANSWERS: dict[int, tuple[str, tuple[str, ...]]] = {
    400: ("a malformed request line or header field, or a Transfer-Encoding other than chunked (answered by "
          "the HTTP server)", (HTML,)),
    408: ("the request head stopped arriving (DICOMWEB_HEAD_TIMEOUT)", (TEXT,)),
    414: ("the request line is longer than 4094 bytes", (HTML,)),
    417: ("an Expect header other than 100-continue", (HTML,)),
    431: ("the request head is over 64 KiB, or has over 100 header fields or one over 8190 bytes", (TEXT, HTML)),
    501: ("a Transfer-Encoding this server does not know", (HTML,)),
}


@dataclass(frozen=True)
class Route:
    """One route and method as a client sees it; `document` turns it into operations."""

    method: str
    #: The OpenAPI path template after the version prefix ('/studies/{study}').
    path: str
    summary: str
    tag: str
    #: Status → response object (`_answer`, `_error`), the statuses particular to this route.
    responses: Mapping[int, Json]
    #: Names of components.parameters: query parameters and headers (path ones come from the path).
    parameters: tuple[str, ...] = ()
    #: Name of components.requestBodies.
    body: str | None = None
    #: The data action the route declares (services.web.requires); None: public.
    action: str | None = "read"
    #: The prefixes it is served under; "" is unversioned.
    versions: tuple[str, ...] = VERSIONS
    description: str = ""
    #: Path parameter → components.parameters name, where it is not the parameter's own name.
    path_parameters: Mapping[str, str] = field(default_factory=dict)
    #: Study data: also served under /{version}/partitions/{partition_name} (data partitions).
    partitioned: bool = False

    def paths(self) -> list[str]:
        """The full path of each operation this row describes."""
        paths = [f"/{v}{self.path}" if v else self.path for v in self.versions]
        if self.partitioned:
            paths += [f"/{v}/partitions/{{partition_name}}{self.path}" for v in self.versions]
        return paths


def _partitioned(routes: Iterable[Route]) -> list[Route]:
    """The routes of study data, which data partitions serve under a partition too."""
    return [replace(route, partitioned=True) for route in routes]


_PARTITION_ERRORS = (
    "data partitions (DICOMWEB_PARTITIONS): a /partitions/{partition_name} segment while they are off, none "
    "while they are on, an invalid partition name, or one no STOW has created (only STOW creates partitions)"
)


# -- building blocks -----------------------------------------------------------------
def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Json:
    return _ref("schemas", name)


def _answer(description: str, content: Mapping[str, Json | None] | None = None, headers: Iterable[str] = ()) -> Json:
    """A response object: media type → schema (None: a binary or empty body), and headers by
    name (components.headers)."""
    answer: Json = {"description": description}
    if content:
        answer["content"] = {media_type: ({"schema": s} if s else {}) for media_type, s in content.items()}
    names = list(headers)
    if names:
        answer["headers"] = {name: _ref("headers", name) for name in names}
    return answer


def _error(description: str, headers: Iterable[str] = ()) -> Json:
    """An error answer: a text/plain message saying what was wrong (services/web.py)."""
    return _answer(description, {TEXT: _schema("Message")}, headers)


def _binary(*media_types: str) -> dict[str, Json | None]:
    return dict.fromkeys(media_types)


def _multipart(part_type: str) -> str:
    return f'{MULTIPART_RELATED}; type="{part_type}"'


DICOM_JSON_ARRAY = {DICOM_JSON: _schema("DicomDatasets")}
MISSING_BLOB = _error(
    "the index lists an instance whose file is missing from the blob store (a fault of the archive)"
)
NOT_ACCEPTABLE = "the Accept header allows no representation this resource offers (the message lists them)"


# -- parameters ----------------------------------------------------------------------
def _path(name: str, description: str, schema: Json) -> Json:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _query(name: str, description: str, schema: Json, **extra: Any) -> Json:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema, **extra}


def _header(name: str, description: str, schema: Json) -> Json:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


def _uid(description: str) -> Json:
    return {"type": "string", "pattern": UID_PATTERN, "maxLength": MAX_UID_LENGTH, "description": description}


def _count(minimum: int, maximum: int | None = None, default: int | None = None) -> Json:
    schema: Json = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    if default is not None:
        schema["default"] = default
    return schema


_UID_LIST = r"^[0-9]+(\.[0-9]+)*([,\\][0-9]+(\.[0-9]+)*)*$"
_DATE = r"[0-9]{8}"
_TIME = r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?"
#: How a QIDO value of each matching kind (matching.Attribute.kind) is written.
_QIDO_VALUES: dict[str, tuple[Json, str]] = {
    "uid": ({"type": "string", "pattern": _UID_LIST}, "a UID, or a list separated by , or \\"),
    "name": ({"type": "string"}, "exact, or a wildcard with * and ?; case- and accent-insensitive"),
    "string": ({"type": "string"}, "exact, a wildcard with * and ?, or a list separated by \\"),
    "date": ({"type": "string", "pattern": f"^({_DATE}|{_DATE}-|-{_DATE}|{_DATE}-{_DATE})$"},
             "YYYYMMDD, or a range A-B, A- or -B"),
    "time": ({"type": "string", "pattern": f"^({_TIME}|{_TIME}-|-{_TIME}|{_TIME}-{_TIME})$"},
             "HHMMSS[.ffffff] (or shorter), or a range"),
    "int": ({"type": "integer", "minimum": INTEGER_COLUMN_RANGE.start, "maximum": INTEGER_COLUMN_RANGE.stop - 1},
            "an integer"),
    "modalities": ({"type": "string"}, "a modality or a list separated by , or \\: studies with a series of one"),
    "sopclasses": ({"type": "string"}, "a SOP Class UID or a list: studies with an instance of one"),
}


def _qido_parameters() -> dict[str, Json]:
    """One query parameter per searchable attribute, by keyword and by tag (either may be used)."""
    parameters: dict[str, Json] = {}
    for attribute in _SEARCHABLE.values():
        schema, how = _QIDO_VALUES[attribute.kind]
        for name in (attribute.keyword, attribute.tag):
            other = attribute.tag if name == attribute.keyword else attribute.keyword
            parameters[f"qido.{name}"] = _query(
                name, f"Match {attribute.keyword} ({attribute.level} level): {how}. Same as {other}; "
                "give one of the two. Empty or * matches anything.", schema
            )
    parameters["qido.includefield"] = _query(
        "includefield", "Attributes to return besides the defaults: keywords or tags, comma-separated and/or "
        "repeated, or `all` (every stored attribute). An unknown name is a 400.",
        {"type": "array", "items": {"type": "string", "pattern": r"^(all|[0-9A-Fa-f]{8}|[A-Za-z][A-Za-z0-9.]*)$"}},
        style="form", explode=True,
    )
    parameters["qido.limit"] = _query(
        "limit", "Results per page (capped at DICOMWEB_QIDO_MAX_LIMIT, default 1000; the default page is "
        "DICOMWEB_QIDO_DEFAULT_LIMIT, 100). A Warning header says when the cap or default cut the results.",
        _count(1),
    )
    parameters["qido.offset"] = _query("offset", "Results to skip.", _count(0, default=0))
    parameters["qido.fuzzymatching"] = _query(
        "fuzzymatching", "Person names match when every word of the value starts a word of the name.",
        {"type": "boolean", "default": False},
    )
    return parameters


def _qido(level: str) -> tuple[str, ...]:
    """The QIDO parameters of a search at `level`: its attributes and those of the levels above.
    (Any other DICOM keyword or tag is accepted and ignored with a Warning.)"""
    names = [
        f"qido.{name}"
        for a in _SEARCHABLE.values()
        if LEVEL_ORDER[a.level] <= LEVEL_ORDER[level]
        for name in (a.keyword, a.tag)
    ]
    return (*names, "qido.includefield", "qido.limit", "qido.offset", "qido.fuzzymatching")


_FHIR_DATE = (r"^(eq|ge|gt|le|lt)?[1-9][0-9]{3}(-[0-9]{2}(-[0-9]{2}"
              r"(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?$")


def _parameters() -> dict[str, Json]:
    frame = r"[1-9][0-9]{0,8}"
    return {
        "partition_name": _path(
            "partition_name", "A data partition (only with DICOMWEB_PARTITIONS on; created by the first STOW to it)",
            {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        ),
        "study": _path("study", "StudyInstanceUID", _uid("a UID: digits and dots, at most 64 characters")),
        "series": _path("series", "SeriesInstanceUID", _uid("a UID")),
        "instance": _path("instance", "SOPInstanceUID", _uid("a UID")),
        "frames": _path(
            "frames", "Frame numbers, from 1, comma-separated (at most 10000)",
            {"type": "string", "pattern": f"^{frame}(,{frame})*$"},
        ),
        "frame": _path(
            "frames", "One frame number, from 1 (a rendered frame resource renders one frame)",
            {"type": "string", "pattern": f"^{frame}$"},
        ),
        "tag_path": _path(
            "tag_path", "The BulkDataURI's path: a tag GGGGEEEE, or sequence tag / item (from 0) / tag ...",
            {"type": "string", "pattern": r"^[0-9A-Fa-f]{8}(/[0-9]+/[0-9A-Fa-f]{8})*$"},
        ),
        "record_id": _path("record_id", "The AuditEvent's id", {"type": "string", "pattern": "^[0-9]+$"}),
        "xqt.tag_path": _path(
            "tag_path", "The extended query tag: GGGGEEEE, or a standard tag's keyword",
            {"type": "string", "pattern": r"^([0-9A-Fa-f]{8}|[A-Za-z][A-Za-z0-9]*)$"},
        ),
        "workitem": _path("uid", "The workitem's UID (SOPInstanceUID), or for a global subscription "
                          "1.2.840.10008.5.1.4.34.5 (filtered: 1.2.840.10008.5.1.4.34.5.1)", _uid("a UID")),
        "ae_title": _path("ae_title", "The subscriber's AE title (1 to 16 characters, no backslash)",
                          {"type": "string", "minLength": 1, "maxLength": 16}),
        "ups.filter": _query("filter", "A filtered global subscription's matching keys: attribute=value pairs, "
                             "comma-separated (the search's keys)", {"type": "string"}),
        "ups.deletionlock": _query("deletionlock", "true: ask for a deletion lock (recorded; workitems are never "
                                   "deleted)", {"type": "string", "enum": ["true", "false"]}),
        "ups.limit": _query("limit", "Workitems per page", _count(1, 200, 100)),
        "ups.offset": _query("offset", "Workitems to skip", _count(0, default=0)),
        "ups.includefield": _query("includefield", "Attributes to return besides the required ones, or all",
                                   {"type": "string"}),
        "ups.fuzzymatching": _query("fuzzymatching", "true: PatientName matches word prefixes",
                                    {"type": "string"}),
        "operation_id": _path("operation_id", "The operation's id", {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}),
        "webhook_id": _path("webhook_id", "The webhook subscription's id",
                            {"type": "string", "pattern": "^[0-9a-f]{32}$"}),
        "webhooks.limit": _query("limit", "Deliveries to show, newest first", _count(1, 1000, 100)),
        "xqt.limit": _query("limit", "Entries per page", _count(1, 200, 100)),
        "xqt.offset": _query("offset", "Entries to skip", _count(0, default=0)),
        "path": _path("path", "Anything: the path is not served", {"type": "string"}),
        **_qido_parameters(),
        "msdicom-request-original": _header(
            "msdicom-request-original", "true (any case): the version first stored of instances a bulk update "
            "changed since (the reference server's header); anything else or absent: the current version",
            {"type": "string"},
        ),
        "If-None-Match": _header(
            "If-None-Match", "The ETag of an earlier answer: 304 when nothing changed since",
            {"type": "string"},
        ),
        "Range": _header(
            "Range", "One byte range (bytes=first-last, bytes=first-, bytes=-suffix) of a single-part answer: "
            "206; several ranges, another unit or a malformed one: the whole value (200)",
            {"type": "string"},
        ),
        "If-Range": _header("If-Range", "Any value makes the server send the whole value (200)", {"type": "string"}),
        "Accept-Encoding": _header(
            "Accept-Encoding", "gzip (or x-gzip, or *) with a non-zero quality: the answer in gzip, one member "
            "(RFC 9110 q-values; gzip;q=0 or no header: no coding)", {"type": "string"},
        ),
        "rendered.accept": _query(
            "accept", "The media type(s) wanted, as in an Accept header; when present, used instead of it",
            {"type": "string"},
        ),
        "rendered.quality": _query("quality", "JPEG quality (PNG and GIF ignore it)", _count(1, 100, 90)),
        "rendered.viewport": _query(
            "viewport", "vw,vh or vw,vh,sx,sy,sw,sh: the source region scaled to fit vwxvh (1..8192), "
            "preserving the aspect ratio",
            {"type": "string", "pattern": r"^[1-9][0-9]{0,3},[1-9][0-9]{0,3}(,[0-9]{0,4},[0-9]{0,4}"
                                          r"(,(-?[1-9][0-9]{0,3})?){2})?$"},
        ),
        "rendered.window": _query(
            "window", "center,width[,function]: linear (default), linear-exact or sigmoid; replaces the VOI of "
            "grayscale images",
            {"type": "string", "pattern": r"^-?[0-9]{1,6}(\.[0-9]{1,3})?,[1-9][0-9]{0,5}(\.[0-9]{1,3})?"
                                          r"(,(linear|linear-exact|sigmoid))?$"},
        ),
        "rendered.annotation": _query(
            "annotation", "Ignored: the image has no annotations, and a Warning header says so", {"type": "string"},
        ),
        "rendered.iccprofile": _query("iccprofile", "Ignored (output is sRGB without a profile)", {"type": "string"}),
        "changefeed.includeMetadata": _query(
            "includeMetadata", "Include each instance's current DICOM JSON", {"type": "boolean", "default": True},
        ),
        "changefeed.Last-Event-ID": _header(
            "Last-Event-ID", "A stream (Accept: text/event-stream) starts after this sequence (a reconnecting "
            "EventSource sends the last id it received); before offset or startTime",
            {"type": "string", "pattern": "^[0-9]+$"},
        ),
        "changefeed.v1.offset": _query(
            "offset", "The last sequence number seen (a stream: it starts after it; none: after the newest entry)",
            _count(0, default=0),
        ),
        "changefeed.v1.limit": _query("limit", "Entries per page", _count(1, PAGE_SIZES["v1"][1], PAGE_SIZES["v1"][0])),
        "changefeed.v2.offset": _query("offset", "Entries to skip", _count(0, default=0)),
        "changefeed.v2.limit": _query("limit", "Entries per page", _count(1, PAGE_SIZES["v2"][1], PAGE_SIZES["v2"][0])),
        "changefeed.v2.startTime": _query(
            "startTime", "First instant (inclusive), ISO 8601 with a time zone (a stream: from the first entry at "
            "or after it; none: after the newest entry)",
            {"type": "string", "format": "date-time"},
        ),
        "changefeed.v2.endTime": _query(
            "endTime", "Last instant (exclusive), ISO 8601 with a time zone; after startTime",
            {"type": "string", "format": "date-time"},
        ),
        "audit.date": _query(
            "date", "[eq|ge|gt|le|lt]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][Z|±hh:mm]]]] (FHIR); repeat for a range",
            {"type": "array", "items": {"type": "string", "pattern": _FHIR_DATE}}, style="form", explode=True,
        ),
        "audit.subject": _query(
            "subject", "The caller (a token's sub, an API key's name, anonymous)", {"type": "string"},
        ),
        "audit.study": _query("study", "A StudyInstanceUID", _uid("a UID")),
        "audit._count": _query("_count", "Records per page", _count(1, MAX_COUNT, DEFAULT_COUNT)),
        "audit._cursor": _query("_cursor", "Where the next page starts (from the `next` link)", _count(1, 2**62)),
        "browser.name": _query("name", "PatientName: the beginning of any of its words, or a wildcard with * and ?",
                               {"type": "string"}),
        "browser.id": _query("id", "PatientID: exact, or a wildcard with * and ?", {"type": "string"}),
        "browser.from": _query("from", "First StudyDate, YYYY-MM-DD or YYYYMMDD", {"type": "string"}),
        "browser.to": _query("to", "Last StudyDate, YYYY-MM-DD or YYYYMMDD", {"type": "string"}),
        "browser.page": _query("page", "Page number, from 1 (25 studies a page)", {"type": "string"}),
    }


# -- schemas -------------------------------------------------------------------------
def _element(vr: str, items: Json, *, min_items: int = 1, max_items: int | None = None) -> Json:
    value: Json = {"type": "array", "items": items, "minItems": min_items}
    if max_items is not None:
        value["maxItems"] = max_items
    return {"type": "object", "required": ["vr", "Value"], "additionalProperties": False,
            "properties": {"vr": {"const": vr}, "Value": value}}


def _schemas() -> dict[str, Json]:
    uid = {"type": "string", "pattern": UID_PATTERN}
    url = {"type": "string", "format": "uri"}
    one_url = _element("UR", url, max_items=1)
    comments = _element("SQ", {"type": "object", "required": ["00000902"], "additionalProperties": False,
                               "properties": {"00000902": _element("LO", {"type": "string"})}})
    reason = _element("US", {"type": "integer", "minimum": 0, "maximum": 65535}, max_items=1)
    sop = {"00081150": _element("UI", uid, max_items=1), "00081155": _element("UI", uid, max_items=1)}
    return {
        "Message": {"type": "string", "description": "What was wrong, in one sentence"},
        "PersonName": {
            "type": "object", "additionalProperties": False,
            "properties": {group: {"type": "string"} for group in ("Alphabetic", "Ideographic", "Phonetic")},
        },
        "DicomAttribute": {
            "type": "object",
            "description": "One attribute (PS3.18 Annex F.2.2): its VR and its values, InlineBinary or BulkDataURI",
            "required": ["vr"],
            "additionalProperties": False,
            "properties": {
                "vr": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "Value": {"type": "array", "items": {"anyOf": [
                    {"type": ["string", "number", "null"]}, _schema("PersonName"), _schema("DicomDataset"),
                ]}},
                "InlineBinary": {"type": "string", "contentEncoding": "base64"},
                "BulkDataURI": url,
            },
        },
        "DicomDataset": {
            "type": "object",
            "description": "A DICOM JSON dataset (PS3.18 Annex F): attributes by tag GGGGEEEE",
            "propertyNames": {"pattern": "^[0-9A-F]{8}$"},
            "additionalProperties": _schema("DicomAttribute"),
        },
        "DicomDatasets": {"type": "array", "items": _schema("DicomDataset")},
        "StoreInstancesResponse": {
            "type": "object",
            "description": "The Store Instances Response (PS3.18 §10.5.3): RetrieveURL of the study (when the "
                           "path names one and something was stored), FailedSOPSequence, ReferencedSOPSequence",
            "additionalProperties": False,
            "properties": {
                "00081190": one_url,
                "00081198": _element("SQ", {
                    "type": "object", "required": ["00081197"], "additionalProperties": False,
                    "properties": {**sop, "00081197": reason, "00741048": comments},
                }),
                "00081199": _element("SQ", {
                    "type": "object", "required": ["00081150", "00081155", "00081190"], "additionalProperties": False,
                    "properties": {**sop, "00081190": one_url, "00081196": reason, "00741048": comments},
                }),
            },
        },
        "ChangeFeedEntry": {
            "type": "object",
            "required": ["sequence", "partitionName", "studyInstanceUid", "seriesInstanceUid", "sopInstanceUid",
                         "action", "timestamp", "state"],
            "additionalProperties": False,
            "properties": {
                "sequence": {"type": "integer", "minimum": 1},
                "partitionName": {"type": "string", "description": "the instance's data partition "
                                  "(Microsoft.Default when partitions are off)"},
                "studyInstanceUid": uid,
                "seriesInstanceUid": uid,
                "sopInstanceUid": uid,
                "action": {"enum": ["create", "update", "delete"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "state": {"enum": ["current", "replaced", "deleted"]},
                "metadata": _schema("DicomDataset"),
            },
        },
        "ChangeFeed": {"type": "array", "items": _schema("ChangeFeedEntry")},
        "Partitions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["partitionKey", "partitionName", "createdDate"],
                "additionalProperties": False,
                "properties": {
                    "partitionKey": {"type": "integer", "minimum": 1},
                    "partitionName": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "createdDate": {"type": "string", "format": "date-time"},
                },
            },
        },
        "AuditEvent": {
            "type": "object",
            "description": "A FHIR R4 AuditEvent (docs/security.md lists its fields and codes)",
            "required": ["resourceType", "id", "type", "subtype", "action", "recorded", "outcome", "agent",
                         "source", "entity"],
            "properties": {
                "resourceType": {"const": "AuditEvent"},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "action": {"enum": ["C", "R", "U", "D", "E"]},
                "recorded": {"type": "string", "format": "date-time"},
                "outcome": {"enum": ["0", "4", "8"]},
                "outcomeDesc": {"type": "string"},
                "type": {"type": "object"},
                "subtype": {"type": "array", "items": {"type": "object"}},
                "agent": {"type": "array", "items": {"type": "object"}, "minItems": 1},
                "source": {"type": "object"},
                "entity": {"type": "array", "items": {"type": "object"}, "minItems": 1},
            },
        },
        "AuditBundle": {
            "type": "object",
            "description": "A FHIR R4 searchset Bundle of AuditEvents, newest first",
            "required": ["resourceType", "type", "link", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {"const": "searchset"},
                "link": {"type": "array", "items": {
                    "type": "object", "required": ["relation", "url"],
                    "properties": {"relation": {"enum": ["self", "next"]}, "url": url},
                }},
                "entry": {"type": "array", "items": {
                    "type": "object", "required": ["fullUrl", "resource"],
                    "properties": {"fullUrl": url, "resource": _schema("AuditEvent"), "search": {"type": "object"}},
                }},
            },
        },
        "Health": {
            "type": "object", "required": ["status"], "additionalProperties": False,
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object", "required": ["status", "checks"], "additionalProperties": False,
            "properties": {
                "status": {"enum": ["ok", "unavailable"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "Per dependency (index, blobstore): ok, or failed: why"},
            },
        },
        "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"]},
        **_webhook_schemas(),
        "OperationReference": {
            "type": "object", "required": ["id", "href"], "additionalProperties": False,
            "properties": {"id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "href": url},
        },
        "Operation": {
            "type": "object", "additionalProperties": False,
            "required": ["operationId", "type", "createdTime", "lastUpdatedTime", "status", "percentComplete",
                         "resources", "errors"],
            "properties": {
                "operationId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "type": {"enum": ["reindex", "export", "update"]},
                "createdTime": {"type": "string", "format": "date-time"},
                "lastUpdatedTime": {"type": "string", "format": "date-time"},
                "startedTime": {"type": "string", "format": "date-time"},
                "endedTime": {"type": "string", "format": "date-time"},
                "status": {"enum": ["notStarted", "running", "succeeded", "failed", "canceled", "completed"],
                           "description": "/v1 says completed where /v2 says succeeded (as the reference)"},
                "percentComplete": {"type": "integer", "minimum": 0, "maximum": 100},
                "resources": {"type": "array", "items": url, "description": "What the operation works on"},
                "errors": {"type": "array", "items": {"type": "string"}, "description": "Why it failed"},
                "results": {
                    "type": "object", "additionalProperties": False,
                    "description": "export: the files written, the identifiers that matched nothing (skipped), "
                                   "the instances that could not be copied (failed), and where errors.log is; "
                                   "update: the studies processed, updated and failed, the instances updated, "
                                   "and the errors (as the reference words them)",
                    "properties": {
                        "exported": {"type": "integer", "minimum": 0},
                        "skipped": {"type": "integer", "minimum": 0},
                        "failed": {"type": "integer", "minimum": 0},
                        "errorHref": {"type": "string"},
                        "studyProcessed": {"type": "integer", "minimum": 0},
                        "studyUpdated": {"type": "integer", "minimum": 0},
                        "studyFailed": {"type": "integer", "minimum": 0},
                        "instanceUpdated": {"type": "integer", "minimum": 0},
                        "errors": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "ExtendedQueryTag": {
            "type": "object", "additionalProperties": False,
            "required": ["path", "vr", "level", "status", "queryStatus"],
            "properties": {
                "path": {"type": "string", "pattern": "^[0-9A-F]{8}$"},
                "vr": {"enum": sorted(SUPPORTED_VRS)},
                "privateCreator": {"type": "string", "maxLength": 64},
                "level": {"enum": list(XQT_LEVELS)},
                "status": {"enum": ["Adding", "Ready"]},
                "queryStatus": {"enum": ["Enabled", "Disabled"]},
                "errors": {
                    "type": "object", "required": ["count", "href"], "additionalProperties": False,
                    "properties": {"count": {"type": "integer", "minimum": 1}, "href": url},
                },
                "operation": _schema("OperationReference"),
            },
        },
        "ExtendedQueryTags": {"type": "array", "items": _schema("ExtendedQueryTag")},
        "ExtendedQueryTagErrors": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["partitionName", "studyInstanceUid", "seriesInstanceUid", "sopInstanceUid", "createdTime",
                         "errorMessage"],
            "properties": {
                "partitionName": {"type": "string"},
                "studyInstanceUid": uid, "seriesInstanceUid": uid, "sopInstanceUid": uid,
                "createdTime": {"type": "string", "format": "date-time"},
                "errorMessage": {"type": "string"},
            },
        }},
    }


def _headers() -> dict[str, Json]:
    def header(description: str, schema: Json | None = None, *, required: bool = False) -> Json:
        return {"description": description, "required": required, "schema": schema or {"type": "string"}}

    return {
        "X-Request-Id": header(
            "This request's id, also in its audit record and in the message of an unexpected 500",
            {"type": "string", "pattern": "^[0-9a-f]{32}$"}, required=True,
        ),
        "X-Request-Id-If-Served": header(
            "This request's id when the app answered (the HTTP server's own refusals carry none)",
            {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        ),
        "Warning": header('299 <host> "…": something was ignored or cut (unsupported parameters, page size)'),
        "ETag": header("Changes whenever an instance of the resource is added, replaced or deleted", required=True),
        "WWW-Authenticate": header('Bearer authorization_uri="…", resource_id="…", realm="…"'
                                   '[, error="invalid_token"]', required=True),
        "Retry-After": header("Seconds to wait before retrying", {"type": "integer", "minimum": 0}),
        "Content-Range": header("bytes first-last/length (206), bytes */length (416)",
                                {"type": "string", "pattern": r"^bytes ([0-9]+-[0-9]+|\*)/[0-9]+$"}, required=True),
        "Accept-Ranges": header("bytes", {"const": "bytes"}),
        "Vary": header("The request headers the answer was negotiated on: Accept, Accept-Encoding"),
        "Content-Encoding": header("gzip, when Accept-Encoding allowed it", {"const": "gzip"}),
        "Location": header("The operation's absolute URL", {"type": "string", "format": "uri"}, required=True),
        "Content-Location": header("The subscriber's event channel: the ws:// or wss:// URL of its WebSocket",
                                   {"type": "string", "format": "uri"}, required=True),
        "erroneous-dicom-attributes": header(
            "Extended query tags the search matched on whose re-index could not index every instance "
            "(they were re-enabled after it), comma-separated"
        ),
    }


def _request_bodies() -> dict[str, Json]:
    binary = {"type": "string", "format": "binary"}
    return {
        "stow": {
            "required": True,
            "description": "DICOM Part 10 instances: multipart/related (type application/dicom, or "
                           "application/dicom+json with bulk data parts; the boundary may be omitted) or a single "
                           "application/dicom file. At most DICOMWEB_MAX_INSTANCE_BYTES per instance.",
            "content": {
                _multipart(DICOM): {"schema": binary},
                _multipart(DICOM_JSON): {"schema": binary},
                DICOM: {"schema": binary},
            },
        },
        "extendedquerytags.add": {
            "required": True,
            "description": f"The tags to add (at most {MAX_TAGS} on the server); member names are read "
                           "case-insensitively. A standard tag by keyword or GGGGEEEE (vr optional: the "
                           "dictionary's); a private tag GGGGxxEE with its vr and privateCreator.",
            "content": {JSON: {"schema": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["path", "level"],
                "properties": {
                    "path": {"type": "string"},
                    "vr": {"enum": sorted(SUPPORTED_VRS)},
                    "privateCreator": {"type": "string", "maxLength": 64},
                    "level": {"type": "string", "description": "Study, Series or Instance (any case)"},
                },
            }}}},
        },
        "workitem": {
            "required": True,
            "description": "A JSON array holding one DICOM JSON dataset (the first item is used)",
            "content": {DICOM_JSON: {"schema": _schema("DicomDatasets")}},
        },
        "export": {
            "required": True,
            "description": "What to export (study, study/series or study/series/instance UIDs) and where: a folder "
                           "under DICOMWEB_EXPORT_ROOT, or a bucket of DICOMWEB_EXPORT_S3_BUCKETS (the server's "
                           "credentials; endpointUrl one of DICOMWEB_EXPORT_S3_ENDPOINTS). Member names and types "
                           "are read case-insensitively.",
            "content": {JSON: {"schema": {
                "type": "object", "required": ["source", "destination"],
                "properties": {
                    "source": {"type": "object", "required": ["type", "settings"], "properties": {
                        "type": {"const": "identifiers"},
                        "settings": {"type": "object", "required": ["values"], "properties": {
                            "values": {"type": "array", "minItems": 1, "maxItems": MAX_EXPORT_IDENTIFIERS,
                                       "items": {"type": "string"}},
                        }},
                    }},
                    "destination": {"oneOf": [
                        {"type": "object", "required": ["type", "settings"], "properties": {
                            "type": {"const": "folder"},
                            "settings": {"type": "object", "required": ["path"], "additionalProperties": False,
                                         "properties": {"path": {"type": "string"}}},
                        }},
                        {"type": "object", "required": ["type", "settings"], "properties": {
                            "type": {"const": "s3"},
                            "settings": {"type": "object", "required": ["bucket"], "additionalProperties": False,
                                         "properties": {"bucket": {"type": "string"}, "prefix": {"type": "string"},
                                                        "endpointUrl": {"type": "string"}}},
                        }},
                    ]},
                },
            }}},
        },
        "bulkUpdate": {
            "required": True,
            "description": f"The studies (1 to {MAX_UPDATE_STUDIES} StudyInstanceUIDs, no repeats) and the attributes "
                           "to set in each of their instances, as DICOM JSON with the dictionary's vr: Patient "
                           "Identification and Demographic attributes, ReferringPhysicianName, AccessionNumber, "
                           "StudyDescription (docs/conformance.md lists them). An element without Value empties it. "
                           "Member names are read case-insensitively.",
            "content": {JSON: {"schema": {
                "type": "object", "required": ["studyInstanceUids", "changeDataset"],
                "properties": {
                    "studyInstanceUids": {"type": "array", "minItems": 1, "maxItems": MAX_UPDATE_STUDIES,
                                          "uniqueItems": True, "items": {"type": "string"}},
                    "changeDataset": {"type": "object", "minProperties": 1, "additionalProperties": {
                        "type": "object", "required": ["vr"],
                        "properties": {"vr": {"type": "string"}, "Value": {"type": "array"}},
                    }},
                },
            }}},
        },
        **_webhook_bodies(),
        "extendedquerytags.update": {
            "required": True,
            "description": "Whether QIDO matches on the tag",
            "content": {JSON: {"schema": {
                "type": "object", "required": ["queryStatus"], "additionalProperties": False,
                "properties": {"queryStatus": {"enum": ["Enabled", "Disabled"]}},
            }}},
        },
    }


# -- the table -----------------------------------------------------------------------
_LEVEL_PATHS = {
    STUDY: "/studies/{study}",
    SERIES: "/studies/{study}/series/{series}",
    INSTANCE: "/studies/{study}/series/{series}/instances/{instance}",
}
_FRAMES = _LEVEL_PATHS[INSTANCE] + "/frames/{frames}"
_UID_ERRORS = "a malformed UID in the path"
_NOT_FOUND = "no such study, series or instance"


def _stow_routes() -> list[Route]:
    stored = _answer("the Store Instances Response", {DICOM_JSON: _schema("StoreInstancesResponse")})
    responses = {
        200: _answer("every instance stored (PUT: stored or replaced); on /v1 also with warnings",
                     stored["content"]),
        202: _answer("some stored and some failed; on /v2 also every one stored but some with a WarningReason",
                     stored["content"]),
        400: _error("a malformed study UID in the path; an empty body; a multipart body with no parts, or "
                    "malformed before any part was stored; malformed chunked transfer coding"),
        406: _error("the Accept header allows no JSON (use application/dicom+json)"),
        408: _error("the body stopped arriving for DICOMWEB_BODY_READ_TIMEOUT; the unfinished instance is "
                    "not stored"),
        409: _answer("no instance stored: each failure is in FailedSOPSequence", stored["content"]),
        413: _error("an instance larger than DICOMWEB_MAX_INSTANCE_BYTES"),
        415: _error("a Content-Type other than multipart/related (type application/dicom or "
                    "application/dicom+json) or application/dicom"),
        503: _answer("nothing stored: the blob store or the index is unavailable (the response dataset fails "
                     "each part with 272), or DICOMWEB_MAX_UPLOADS uploads are already in progress "
                     "(text/plain, with Retry-After)",
                     {DICOM_JSON: _schema("StoreInstancesResponse"), TEXT: _schema("Message")}, ["Retry-After"]),
        507: _answer("nothing stored: the archive is out of storage space (each part fails with 272)",
                     {DICOM_JSON: _schema("StoreInstancesResponse"), TEXT: _schema("Message")}),
    }
    routes = []
    for path in ("/studies", "/studies/{study}"):
        into = " into the study of the path (an instance of another study fails with 43265)" if "{" in path else ""
        routes += [
            Route("POST", path, f"Store instances{into} (STOW-RS)", "STOW-RS", responses, body="stow",
                  action="write", description="An instance already stored fails with 45070."),
            Route("PUT", path, f"Store or replace instances{into} (upsert, non-standard)", "STOW-RS", responses,
                  body="stow", action="write",
                  description="As POST, but an instance already stored is replaced (the change feed says update)."),
        ]
    return routes


def _retrieve_routes() -> list[Route]:
    routes = []
    for level, path in _LEVEL_PATHS.items():
        media: dict[str, Json | None] = _binary(_multipart(DICOM))
        if level == INSTANCE:
            media[DICOM] = None
        routes.append(Route("GET", path, f"Retrieve the {level}'s instances (WADO-RS)", "WADO-RS", {
            200: _answer("the instances, each part application/dicom; transfer-syntax=<the one it carries>. "
                         "Accept: multipart/related; type=\"application/dicom\"[; transfer-syntax=UID|*]"
                         + (", or application/dicom[; transfer-syntax=…] for the instance alone" if level == INSTANCE
                            else "") + "; */* or none: multipart in the stored syntax", media),
            400: _error(_UID_ERRORS),
            404: _error(_NOT_FOUND),
            406: _error(NOT_ACCEPTABLE + ", or a transfer syntax the instances cannot be transcoded to"),
            500: MISSING_BLOB,
        }, parameters=("msdicom-request-original",)))
        routes.append(Route("GET", f"{path}/metadata", f"Retrieve the {level}'s metadata (WADO-RS)", "WADO-RS", {
            200: _answer("the DICOM JSON of each instance; binary values over DICOMWEB_BULKDATA_THRESHOLD, and "
                         "Pixel Data, as absolute BulkDataURIs; streamed (chunked) past 50 instances, in gzip when "
                         "Accept-Encoding allows it (then a weak ETag of its own)", DICOM_JSON_ARRAY,
                         ["ETag", "Vary", "Content-Encoding"]),
            304: _answer("If-None-Match named the current ETag of the variant asked for", headers=["ETag", "Vary"]),
            400: _error(_UID_ERRORS),
            404: _error(_NOT_FOUND),
            406: _error("the Accept header allows no JSON (use application/dicom+json)"),
        }, parameters=("If-None-Match", "Accept-Encoding", "msdicom-request-original")))
    frame_types = sorted(FRAME_MEDIA_TYPES)
    routes.append(Route("GET", _FRAMES, "Retrieve frames (WADO-RS)", "WADO-RS", {
        200: _answer("the frames in the order asked: multipart/related (type application/octet-stream or an image "
                     "type) one part per frame, or a single frame alone; decoded or transcoded as Accept asks",
                     _binary(_multipart(OCTET_STREAM), *(_multipart(t) for t in frame_types), OCTET_STREAM,
                             *frame_types)),
        400: _error(_UID_ERRORS + ", a malformed frame list, or several frames for a single-part Accept"),
        404: _error(_NOT_FOUND + ", no pixel data, or a frame past NumberOfFrames"),
        406: _error(NOT_ACCEPTABLE + ", or a transfer syntax the frames cannot be transcoded to"),
        500: MISSING_BLOB,
    }))
    routes.append(Route("GET", _LEVEL_PATHS[INSTANCE] + "/bulkdata/{tag_path}", "Retrieve a bulk data value",
                        "WADO-RS", {
        200: _answer("the value: multipart/related; type=\"application/octet-stream\" (Pixel Data: one part per "
                     "frame when encapsulated), or application/octet-stream alone for a single part",
                     _binary(_multipart(OCTET_STREAM), OCTET_STREAM), ["Accept-Ranges"]),
        206: _answer("the byte range asked for (single-part answers, GET)", _binary(OCTET_STREAM),
                     ["Content-Range", "Accept-Ranges"]),
        400: _error(_UID_ERRORS + " or bulk data path"),
        404: _error(_NOT_FOUND + ", or no bulk data value at that path"),
        406: _error(NOT_ACCEPTABLE + "; bulk data is never transcoded (the frames resource transcodes)"),
        416: _error("the range starts at or past the end of the value", ["Content-Range", "Accept-Ranges"]),
        500: MISSING_BLOB,
    }, parameters=("Range", "If-Range")))
    return routes


def _rendered_routes() -> list[Route]:
    routes = []
    for level, path in (*_LEVEL_PATHS.items(), ("frame", _FRAMES)):
        for resource in ("rendered", "thumbnail"):
            what = "frame 1 of " + (f"the {level}'s representative image" if level in (STUDY, SERIES) else
                                    "the instance") if level != "frame" else "the frame"
            size = " shrunk to fit 128x128 unless a viewport is given" if resource == "thumbnail" else ""
            routes.append(Route(
                "GET", f"{path}/{resource}",
                f"{resource.capitalize()} image of {what}", "Rendered", {
                    200: _answer(f"one image{size}: JPEG (default), PNG or GIF, from the accept parameter or the "
                                 "Accept header", _binary(*RENDERED_MEDIA_TYPES), ["ETag", "Warning", "Vary"]),
                    304: _answer("If-None-Match named the current ETag (same stored instance and parameters)",
                                 headers=["ETag"]),
                    400: _error(_UID_ERRORS + ", frame number or parameter (the message names it)"),
                    404: _error(_NOT_FOUND + ", a frame past NumberOfFrames, or no pixel data"),
                    406: _error("no acceptable image type; no codec for the stored transfer syntax; an unsupported "
                                "photometric interpretation; larger than DICOMWEB_MAX_RENDER_BYTES; or the "
                                "server was installed without the render extra"),
                    500: MISSING_BLOB,
                },
                parameters=(*(f"rendered.{p}" for p in ("accept", "quality", "viewport", "window", "annotation",
                                                          "iccprofile")), "If-None-Match"),
                path_parameters={"frames": "frame"},  # one frame, not a list
            ))
    return routes


def _qido_routes() -> list[Route]:
    responses = {
        200: _answer("the matches (an empty array when none), oldest first", DICOM_JSON_ARRAY,
                     ["Warning", "erroneous-dicom-attributes"]),
        400: _error("an unknown or repeated parameter, a malformed value, limit, offset or fuzzymatching; "
                    + _UID_ERRORS),
        406: _error("the Accept header allows no JSON (use application/dicom+json)"),
    }
    searches = [
        ("/studies", STUDY, "studies"),
        ("/series", SERIES, "series"),
        ("/studies/{study}/series", SERIES, "series of a study"),
        ("/instances", INSTANCE, "instances"),
        ("/studies/{study}/instances", INSTANCE, "instances of a study"),
        ("/studies/{study}/series/{series}/instances", INSTANCE, "instances of a series"),
    ]
    return [
        Route("GET", path, f"Search for {what} (QIDO-RS)", "QIDO-RS", responses, parameters=_qido(level))
        for path, level, what in searches
    ]


def _delete_routes() -> list[Route]:
    return [
        Route("DELETE", path, f"Delete the {level} (non-standard)", "Delete", {
            204: _answer("deleted, with everything below it"),
            400: _error(_UID_ERRORS),
            404: _error("nothing matched (so a repeated delete is 404)"),
        }, action="delete")
        for level, path in _LEVEL_PATHS.items()
    ]


def _changefeed_routes() -> list[Route]:
    page = "one page of entries, sequence ascending"
    events = (
        "or, to Accept: text/event-stream (preferred over application/json), Server-Sent Events: `retry:` "
        "first, then each entry as `id: <sequence>` and `data: <the entry's JSON, as in the JSON page>` (event "
        "type message), live entries as they are committed and `: keep-alive` comments, until the client leaves, "
        "the server stops or DICOMWEB_CHANGEFEED_MAX_STREAM_SECONDS pass"
    )
    feed = _answer(f"{page}; {events}", {
        JSON: _schema("ChangeFeed"),
        EVENT_STREAM: {"type": "string", "description": "text/event-stream (WHATWG HTML, Server-sent events)"},
    })
    bad = _error("a malformed parameter (or, on /v2, endTime not after startTime); a stream: a malformed "
                 "Last-Event-ID, or endTime (or, on /v2, offset)")
    busy = _error("a stream, while the process serves DICOMWEB_CHANGEFEED_MAX_STREAMS streams or is stopping",
                  ["Retry-After"])
    stream = ("changefeed.Last-Event-ID",)
    return [
        Route("GET", "/changefeed", "Change feed: pages by sequence, or a stream (non-standard)", "Change feed",
              {200: feed, 400: bad, 503: busy}, versions=("v1",),
              parameters=("changefeed.v1.offset", "changefeed.v1.limit", "changefeed.includeMetadata", *stream)),
        Route("GET", "/changefeed", "Change feed: pages by time window, or a stream (non-standard)", "Change feed",
              {200: feed, 400: bad, 503: busy}, versions=("v2",),
              parameters=("changefeed.v2.startTime", "changefeed.v2.endTime", "changefeed.v2.offset",
                          "changefeed.v2.limit", "changefeed.includeMetadata", *stream)),
        Route("GET", "/changefeed/latest", "The newest change-feed entry (non-standard)", "Change feed", {
            200: _answer("the newest entry", {JSON: _schema("ChangeFeedEntry")}),
            204: _answer("the feed is empty"),
            400: bad,
        }, parameters=("changefeed.includeMetadata",)),
    ]


def _audit_routes() -> list[Route]:
    not_acceptable = _error("the Accept header allows no JSON (use application/fhir+json)")
    return [
        Route("GET", "/audit", "Search the audit trail (FHIR R4 AuditEvent)", "Audit", {
            200: _answer("a searchset Bundle, newest first", {FHIR_JSON: _schema("AuditBundle")}),
            400: _error("an unknown, repeated or malformed parameter"),
            406: not_acceptable,
        }, action="audit", parameters=("audit.date", "audit.subject", "audit.study", "audit._count",
                                        "audit._cursor")),
        Route("GET", "/audit/{record_id}", "One audit record (FHIR R4 AuditEvent)", "Audit", {
            200: _answer("the AuditEvent", {FHIR_JSON: _schema("AuditEvent")}),
            404: _error("no such record, or past DICOMWEB_AUDIT_RETENTION_DAYS"),
            406: not_acceptable,
        }, action="audit"),
    ]


def _extended_query_tag_routes() -> list[Route]:
    tag = {"tag_path": "xqt.tag_path"}
    bad_path = "the tag path is neither 8 hex digits nor a keyword"
    missing = _error("no such extended query tag")
    one = _answer("the tag", {JSON: _schema("ExtendedQueryTag")})
    return [
        Route("POST", "/extendedquerytags", "Add extended query tags (non-standard)", "Extended query tags", {
            202: _answer("added (status Adding); the re-index operation follows", {JSON: _schema("OperationReference")},
                         ["Location"]),
            400: _error("the body is not a JSON array of valid definitions (the message says which and why), "
                        f"or the server would keep more than {MAX_TAGS} tags"),
            409: _error("a tag exists already, or a re-index is under way"),
        }, body="extendedquerytags.add", action="manageExtendedQueryTags"),
        Route("GET", "/extendedquerytags", "List the extended query tags (non-standard)", "Extended query tags", {
            200: _answer("one page of tags", {JSON: _schema("ExtendedQueryTags")}),
            400: _error("a malformed limit or offset"),
        }, parameters=("xqt.limit", "xqt.offset")),
        Route("GET", "/extendedquerytags/{tag_path}", "One extended query tag (non-standard)", "Extended query tags",
              {200: one, 400: _error(bad_path), 404: missing}, path_parameters=tag),
        Route("PATCH", "/extendedquerytags/{tag_path}", "Enable or disable QIDO on an extended query tag",
              "Extended query tags", {
                  200: one, 400: _error(f"{bad_path}, or the body is not {{\"queryStatus\": ...}}"), 404: missing,
              }, body="extendedquerytags.update", action="manageExtendedQueryTags", path_parameters=tag),
        Route("DELETE", "/extendedquerytags/{tag_path}", "Remove an extended query tag and its values",
              "Extended query tags", {204: _answer("removed"), 400: _error(bad_path), 404: missing},
              action="manageExtendedQueryTags", path_parameters=tag),
        Route("GET", "/extendedquerytags/{tag_path}/errors", "The values an extended query tag could not index",
              "Extended query tags", {
                  200: _answer("one page of errors, oldest first", {JSON: _schema("ExtendedQueryTagErrors")}),
                  400: _error(f"{bad_path}, or a malformed limit or offset"), 404: missing,
              }, parameters=("xqt.limit", "xqt.offset"), path_parameters=tag),
        *_partitioned([Route(
            "POST", "/export", "Export studies, series or instances to a folder or S3 (non-standard)", "Export", {
                202: _answer("accepted; the export operation follows", {JSON: _schema("OperationReference")},
                             ["Location"]),
                400: _error("the body is malformed, an identifier is not UIDs, or the destination is not one the "
                            "server allows or can write (the message says which)"),
            }, body="export", action="export",
        )]),
        *_partitioned(Route(
            "POST", path, "Update patient and study attributes of studies (non-standard)" + alias, "Bulk update", {
                202: _answer("accepted; the update operation follows", {JSON: _schema("OperationReference")},
                             ["Location"]),
                400: _error("the body is malformed, a StudyInstanceUID is invalid or repeated, there are more than "
                            f"{MAX_UPDATE_STUDIES}, or the changeDataset names an attribute that cannot be updated or "
                            "a value invalid for its VR (one DICOM100 line each, as the reference words them)"),
                404: _error("on /v1: bulk update is served under /v2 only (as the reference)"),
                409: _error("another update operation is queued or running (one at a time, as the reference)"),
            }, body="bulkUpdate", action="write") for path, alias in (
            ("/studies/$bulkUpdate", ""), ("/studies/$bulkupdate", " (the reference's client spelling)"),
        )),
        Route("GET", "/partitions", "The data partitions (non-standard)", "Data partitions", {
            200: _answer("every partition, Microsoft.Default first", {JSON: _schema("Partitions")}),
            400: _error("data partitions are off (DICOMWEB_PARTITIONS)"),
        }),
        Route("GET", "/operations/{operation_id}", "A long-running operation's status (non-standard)", "Operations", {
            200: _answer("the operation has ended (succeeded, failed, canceled)", {JSON: _schema("Operation")}),
            202: _answer("the operation has not ended yet", {JSON: _schema("Operation")}, ["Location"]),
            400: _error("not an operation id (32 hex digits)"),
            404: _error("no such operation"),
        }),
    ]


def _webhook_schemas() -> dict[str, Json]:
    time = {"type": "string", "format": "date-time"}
    maybe_time = {"type": ["string", "null"], "format": "date-time"}
    webhook = {
        "type": "object", "additionalProperties": False,
        "required": ["id", "url", "events", "description", "partition", "active", "created", "updated"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "url": {"type": "string", "format": "uri"},
            "events": {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
            "description": {"type": ["string", "null"]},
            "partition": {"type": ["string", "null"]},
            "active": {"type": "boolean"},
            "created": time, "updated": time,
            "secret": {"type": "string", "description": "only in the answer to POST, when the server made it"},
            "lastDelivery": {"oneOf": [{"type": "null"}, _schema("WebhookDelivery")]},
        },
    }
    return {
        "Webhook": webhook,
        "Webhooks": {"type": "array", "items": _schema("Webhook")},
        "WebhookDelivery": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "eventId", "eventType", "eventTime", "status", "attempts", "lastAttempt",
                         "lastStatus", "lastError", "nextAttempt"],
            "properties": {
                "id": {"type": "integer"}, "eventId": {"type": "string", "format": "uuid"},
                "eventType": {"type": "string"}, "eventTime": time,
                "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": {"type": "integer", "minimum": 0},
                "lastAttempt": maybe_time, "lastStatus": {"type": ["integer", "null"]},
                "lastError": {"type": ["string", "null"]}, "nextAttempt": maybe_time,
            },
        },
        "WebhookDeliveries": {"type": "array", "items": _schema("WebhookDelivery")},
        "WebhookPing": {
            "type": "object", "additionalProperties": False, "required": ["eventId", "type"],
            "properties": {"eventId": {"type": "string", "format": "uuid"}, "type": {"const": "webhook.ping"}},
        },
    }


def _webhook_bodies() -> dict[str, Json]:
    members = {
        "url": {"type": "string", "description": "http(s); a public address unless DICOMWEB_WEBHOOKS_ALLOWED_HOSTS "
                                                 "allows it; no credentials"},
        "events": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(EVENT_TYPES)}},
        "secret": {"type": "string", "pattern": "^whsec_[A-Za-z0-9+/=]+$",
                   "description": "Standard Webhooks secret (a 24 to 64 byte key); the server makes one if absent"},
        "description": {"type": ["string", "null"], "maxLength": 1024},
        "partition": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.-]{1,64}$",
                      "description": "only this data partition's events (default: every partition)"},
        "active": {"type": "boolean"},
    }
    return {
        "webhooks.create": {"required": True, "description": "A webhook subscription (docs/events.md)",
                            "content": {JSON: {"schema": {"type": "object", "required": ["url", "events"],
                                                          "additionalProperties": False, "properties": members}}}},
        "webhooks.update": {"required": True, "description": "The members to change",
                            "content": {JSON: {"schema": {"type": "object", "additionalProperties": False,
                                                          "properties": members}}}},
    }


def _webhook_routes() -> list[Route]:
    one = {"webhook_id": "webhook_id"}
    missing = _error("no such webhook (or not 32 hex digits)")
    tag = "Webhooks"
    return [
        Route("POST", "/webhooks", "Subscribe to events (non-standard)", tag, {
            201: _answer("the subscription, with its secret when the server made it (shown only now)",
                         {JSON: _schema("Webhook")}, ["Location"]),
            400: _error("the body is malformed, an event type is unknown, the secret is not a Standard Webhooks "
                        "secret, or the url is not http(s), carries credentials or targets a non-public address"),
        }, body="webhooks.create", action="admin"),
        Route("GET", "/webhooks", "The webhook subscriptions (non-standard)", tag,
              {200: _answer("every subscription, oldest first", {JSON: _schema("Webhooks")})}, action="admin"),
        Route("GET", "/webhooks/{webhook_id}", "One webhook subscription and its last delivery", tag,
              {200: _answer("the subscription", {JSON: _schema("Webhook")}), 404: missing},
              action="admin", path_parameters=one),
        Route("PATCH", "/webhooks/{webhook_id}", "Change a webhook subscription", tag, {
            200: _answer("the subscription as changed", {JSON: _schema("Webhook")}),
            400: _error("the body is malformed or a member is invalid (as for POST)"), 404: missing,
        }, body="webhooks.update", action="admin", path_parameters=one),
        Route("DELETE", "/webhooks/{webhook_id}", "Remove a webhook subscription and its deliveries", tag,
              {204: _answer("removed"), 404: missing}, action="admin", path_parameters=one),
        Route("GET", "/webhooks/{webhook_id}/deliveries", "A webhook subscription's recent deliveries", tag, {
            200: _answer("deliveries, newest first", {JSON: _schema("WebhookDeliveries")}),
            400: _error("a malformed limit"), 404: missing,
        }, parameters=("webhooks.limit",), action="admin", path_parameters=one),
        Route("POST", "/webhooks/{webhook_id}/ping", "Send a webhook.ping event to one subscription", tag, {
            202: _answer("queued: it is delivered as any event", {JSON: _schema("WebhookPing")}), 404: missing,
        }, action="admin", path_parameters=one),
    ]


def _operations_routes() -> list[Route]:
    return [
        Route("GET", "/healthz", "Liveness: the process answers", "Operations",
              {200: _answer("alive", {JSON: _schema("Health")})}, action=None, versions=("",)),
        Route("GET", "/readyz", "Readiness: the index answers and the blob store is usable", "Operations", {
            200: _answer("ready", {JSON: _schema("Readiness")}),
            503: _answer("not ready: the failing check says why", {JSON: _schema("Readiness")}),
        }, action=None, versions=("",)),
        Route("GET", "/openapi.json", "This description of the API", "Operations",
              {200: _answer("the OpenAPI document", {JSON: _schema("OpenApiDocument")})}, action=None, versions=("",)),
        Route("GET", "/metrics", "Prometheus metrics (no patient data)", "Operations", {
            200: _answer("the metrics, Prometheus text format 0.0.4", _binary(TEXT)),
            401: _answer("DICOMWEB_METRICS_TOKEN is set and the request does not carry it as a bearer token: "
                         "an empty body", {TEXT: {"type": "string", "maxLength": 0}}, ["WWW-Authenticate"]),
        }, action=None, versions=("",)),
    ]


def _browser_routes() -> list[Route]:
    """The study browser's HTML pages (for people; not DICOMweb): errors are pages too."""
    def page(description: str) -> Json:
        return _answer(description, {HTML: {"type": "string"}})

    refused = {status: page(why) for status, why in (
        (401, "no valid bearer token (only when authentication is on)"),
        (403, "the token's roles do not grant read"),
        (503, "the index or the blob store cannot be reached"),
    )}
    return [
        Route("GET", "/", "The study browser: studies, searched and paged (HTML)", "Study browser", {
            200: page("a page of studies with the search form"),
            400: page("a malformed date, a range that starts after it ends, or a page that is not a whole number"),
            **refused,
        }, versions=("",), parameters=("browser.name", "browser.id", "browser.from", "browser.to", "browser.page")),
        Route("GET", "/browse/studies/{study}", "The study browser: one study and its series (HTML)", "Study browser", {
            200: page("the study's page"),
            400: page("a malformed StudyInstanceUID"),
            404: page("no such study"),
            **refused,
        }, versions=("",)),
    ]


def _workitem_routes() -> list[Route]:
    """UPS-RS (PS3.18 §11) and its subscriptions; the event channel is a WebSocket."""
    uid = {"uid": "workitem"}
    bad = "a malformed UID or body, or a rule of PS3.4 Table CC.2.5-3 broken (the message says which)"
    warned = ["Warning"]
    tag = "Worklist (UPS-RS)"
    none = _error("no such workitem")
    answer = _answer("done; a warning, if any, in the body and the Warning header", {TEXT: _schema("Message")}, warned)
    return [
        *_partitioned([
            Route("POST", "/workitems", "Create a workitem (UID as the first query parameter's name, or in the "
                  "dataset)", tag, {
                      201: _answer("created", headers=["Location"]),
                      400: _error(bad), 409: _error("a workitem with that UID exists"),
                      415: _error("the body is not application/dicom+json"),
                  }, body="workitem", action="write"),
            Route("GET", "/workitems", "Search for workitems", tag, {
                200: _answer("the matches", DICOM_JSON_ARRAY), 204: _answer("no match"),
                400: _error("an unknown or malformed matching key, limit or offset"),
                406: _error(NOT_ACCEPTABLE),
            }, parameters=("ups.limit", "ups.offset", "ups.includefield", "ups.fuzzymatching")),
            Route("GET", "/workitems/{uid}", "Retrieve a workitem (without its TransactionUID)", tag, {
                200: _answer("the workitem (one DICOM JSON object, as the reference answers)",
                             {DICOM_JSON: _schema("DicomDataset")}), 400: _error(bad), 404: none,
                406: _error(NOT_ACCEPTABLE),
            }, path_parameters=uid),
            Route("POST", "/workitems/{uid}", "Update a workitem (TransactionUID as the first query parameter's name "
                  "once IN PROGRESS)", tag, {
                      200: answer, 400: _error(bad + "; a wrong TransactionUID or a final state", warned),
                      404: _error("no such workitem", warned),
                      409: _error("the workitem changed meanwhile", warned),
                      415: _error("the body is not application/dicom+json", warned),
                  }, body="workitem", action="write", path_parameters=uid),
            Route("PUT", "/workitems/{uid}/state", "Change a workitem's state (claim, complete, cancel)", tag, {
                200: answer, 400: _error(bad + "; a transition PS3.4 does not allow", warned),
                404: _error("no such workitem", warned), 409: _error("the workitem changed meanwhile", warned),
                415: _error("the body is not application/dicom+json", warned),
            }, body="workitem", action="write", path_parameters=uid),
            Route("POST", "/workitems/{uid}/cancelrequest", "Request a workitem's cancellation", tag, {
                202: _answer("a SCHEDULED workitem is canceled; an IN PROGRESS one's performer is told",
                             {TEXT: _schema("Message")}),
                400: _error(bad), 404: _error("no such workitem"),
                409: _error("the workitem is COMPLETED or CANCELED already", warned),
                415: _error("the body is not application/dicom+json"),
            }, body="workitem", action="write", path_parameters=uid),
            Route("POST", "/workitems/{uid}/subscribers/{ae_title}", "Subscribe an AE title to a workitem's events, "
                  "or globally", tag, {
                      201: _answer("subscribed; Content-Location names the event channel", {TEXT: _schema("Message")},
                                   ["Content-Location"]),
                      400: _error("a malformed UID, AE title or filter"), 404: none,
                  }, action="write", path_parameters=uid, parameters=("ups.filter", "ups.deletionlock")),
            Route("DELETE", "/workitems/{uid}/subscribers/{ae_title}", "Unsubscribe an AE title (a global UID: from "
                  "everything)", tag, {
                      200: _answer("unsubscribed", {TEXT: _schema("Message")}),
                      400: _error("a malformed UID or AE title"), 404: none,
                  }, action="write", path_parameters=uid),
            Route("POST", "/workitems/{uid}/subscribers/{ae_title}/suspend", "Suspend a global subscription", tag, {
                200: _answer("suspended: workitems subscribed so far stay", {TEXT: _schema("Message")}),
                400: _error("not a global subscription UID, or a malformed AE title"),
            }, action="write", path_parameters=uid),
        ]),
        Route("GET", "/subscribers/{ae_title}", "Open the AE title's event channel (a WebSocket upgrade)", tag, {
            101: _answer("switching to the WebSocket protocol: event reports follow as DICOM JSON text messages"),
            400: _error("not a WebSocket upgrade, or a malformed AE title"),
            503: _error("this server process holds DICOMWEB_MAX_EVENT_CHANNELS channels already", ["Retry-After"]),
        }),
    ]


#: The DICOMweb roots, as services/__init__.py answers them without a version prefix.
UNVERSIONED_ROOTS = (
    "studies", "series", "instances", "changefeed", "audit", "extendedquerytags", "operations", "export",
    "partitions", "webhooks", "workitems", "subscribers",
)


def _unversioned_routes() -> list[Route]:
    routes = []
    for root in UNVERSIONED_ROOTS:
        for path in (f"/{root}", f"/{root}/{{path}}"):
            for method in ("GET", "POST", "PUT", "DELETE"):
                responses = {404: _error("not served: the message names the versioned path (/v2…)")}
                if method in ("POST", "PUT"):
                    responses[503] = _error("DICOMWEB_MAX_UPLOADS uploads are already in progress", ["Retry-After"])
                routes.append(Route(method, path, "Not served: DICOMweb paths need a version prefix", "Unversioned",
                                    responses, action=None, versions=("",)))
    return routes


ROUTES: tuple[Route, ...] = (
    *_partitioned(_stow_routes()),
    *_partitioned(_retrieve_routes()),
    *_partitioned(_rendered_routes()),
    *_partitioned(_qido_routes()),
    *_partitioned(_delete_routes()),
    *_changefeed_routes(),
    *_audit_routes(),
    *_extended_query_tag_routes(),
    *_webhook_routes(),
    *_workitem_routes(),
    *_operations_routes(),
    *_browser_routes(),
    *_unversioned_routes(),
)


# -- the document --------------------------------------------------------------------
#: Statuses many routes share, kept once in components.responses under these names: the
#: HTTP server's refusals (every route) and, for routes that declare a data action, the
#: authentication answers and an unreachable index, blob store or token issuer.
_SHARED = {status: f"HttpServer{status}" for status in HTTP_SERVER_ANSWERS}
_SHARED_WITH_ACTION = {401: "Unauthenticated", 403: "Forbidden", 503: "Unavailable"}


def _shared_responses() -> dict[str, Json]:
    answers = {
        401: _answer("no valid bearer token (only when authentication is on): an empty body",
                     {TEXT: {"type": "string", "maxLength": 0}}, ["WWW-Authenticate"]),
        403: _error("the token's roles do not grant the route's data action: Authorization failed."),
        503: _error("the index database, the blob store or the token issuer's keys cannot be reached; try again "
                    "later"),
    }
    for status, (description, media_types) in HTTP_SERVER_ANSWERS.items():
        answers[status] = _answer(description, {m: _schema("Message") for m in media_types})
    names = {**_SHARED, **_SHARED_WITH_ACTION}
    return {names[status]: _with_request_id(status, answer) for status, answer in answers.items()}


def _with_request_id(status: int, answer: Json) -> Json:
    """Every answer of the app carries X-Request-Id; the HTTP server's own refusals do not."""
    name = "X-Request-Id-If-Served" if status in HTTP_SERVER_ANSWERS else "X-Request-Id"
    return {**answer, "headers": {name: _ref("headers", name), **answer.get("headers", {})}}


def _merge(own: Json, extra: Json) -> Json:
    """Two answers for one status: both descriptions, every media type and header."""
    merged = dict(own)
    merged["description"] = f"{own['description']}; or {extra['description']}"
    for key in ("content", "headers"):
        if key in own or key in extra:
            merged[key] = {**extra.get(key, {}), **own.get(key, {})}
    return merged


def _responses(route: Route, shared: Mapping[str, Json]) -> Json:
    """The route's own answers, and the shared ones: by reference, or merged into its own
    answer for the same status (a route's 400 may also come from the HTTP server)."""
    names = {**_SHARED, **(_SHARED_WITH_ACTION if route.action is not None else {})}
    answers: dict[int, Json] = {s: _with_request_id(s, answer) for s, answer in route.responses.items()}
    if route.partitioned:
        refused = _with_request_id(400, _error(_PARTITION_ERRORS))
        answers[400] = _merge(answers[400], refused) if 400 in answers else refused
    for status, name in names.items():
        answers[status] = _merge(answers[status], shared[name]) if status in answers else _ref("responses", name)
    return {str(status): answers[status] for status in sorted(answers)}


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.strip("/").replace(".", "_").split("/")]
    return "_".join([method.lower(), *words])


def _operation(route: Route, path: str, shared: Mapping[str, Json]) -> Json:
    names = [segment[1:-1] for segment in path.split("/") if segment.startswith("{")]
    path_parameters = [route.path_parameters.get(name, name) for name in names]
    operation: Json = {
        "operationId": _operation_id(route.method, path),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": _responses(route, shared),
    }
    parameters = [*path_parameters, *route.parameters]
    if parameters:
        operation["parameters"] = [_ref("parameters", name) for name in parameters]
    if route.description:
        operation["description"] = route.description
    if route.body is not None:
        operation["requestBody"] = _ref("requestBodies", route.body)
    if route.action is None:
        operation["security"] = []  # public: no token needed even when authentication is on
    else:
        operation["x-data-action"] = route.action  # what the token's roles must grant (docs/security.md)
    return operation


def _paths(shared: Mapping[str, Json]) -> Json:
    paths: Json = {}
    for route in ROUTES:
        for path in route.paths():
            paths.setdefault(path, {})[route.method.lower()] = _operation(route, path, shared)
    return {path: paths[path] for path in sorted(paths)}


def document(server_url: str, *, auth_required: bool) -> Json:
    """The OpenAPI document of this server as reached at `server_url` (no trailing slash)."""
    doc: Json = json.loads(_document_text(server_url, auth_required))
    return doc


def document_text(server_url: str, *, auth_required: bool) -> str:
    """`document` as JSON text, built once per server URL."""
    return _document_text(server_url, auth_required)


@lru_cache(maxsize=32)
def _document_text(server_url: str, auth_required: bool) -> str:
    shared = _shared_responses()
    doc: Json = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "dicomserver DICOMweb API",
            "version": "v2",
            "description": "DICOMweb (PS3.18) STOW-RS, WADO-RS, QIDO-RS, rendered resources, plus delete, change "
                           "feed and audit trail, under /v1 and /v2 (the reference server's layout). Error bodies are "
                           "text/plain messages. The conformance statement (docs/conformance.md) says what each "
                           "endpoint does. Accept negotiation: each answer lists the media types it may carry; "
                           "parameters such as transfer-syntax are described in its text. Every GET also answers "
                           "HEAD, and every path OPTIONS (CORS preflights, before authentication). An unexpected "
                           "fault is a 500 naming the request id (X-Request-Id); it is listed only where the "
                           "archive itself can cause it.",
        },
        "servers": [{"url": server_url}],
        "tags": [{"name": name} for name in dict.fromkeys(route.tag for route in ROUTES)],
        "security": [{"bearerAuth": []}] if auth_required else [{"bearerAuth": []}, {}],
        "paths": _paths(shared),
        "components": {
            "schemas": _schemas(),
            "responses": shared,
            "parameters": _parameters(),
            "headers": _headers(),
            "requestBodies": _request_bodies(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A JWT from the configured OIDC issuer, or an API key (dcm_…). Needed only when "
                                   "authentication is on (DICOMWEB_AUTH_AUTHORITY or DICOMWEB_AUTH_TOKENS_FILE)",
                }
            },
        },
    }
    return json.dumps(doc)
