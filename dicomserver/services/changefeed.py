"""Change feed (non-standard, the reference server's): /changefeed and /changefeed/latest.

v1 pages by sequence (`offset` = last sequence seen); v2 by time window
(`startTime` inclusive, `endTime` exclusive, `offset` = entries to skip).
"""
from __future__ import annotations

import json

from flask import Blueprint, Response, request

from ..changes import entry_json, parse_bool, parse_int, parse_time
from ..errors import BadRequest
from ..dicomjson import absolute_uris
from ..extensions import api_version, base_url, server

bp = Blueprint("changefeed", __name__)


def _arg(name: str) -> str | None:
    """Query parameters are matched case-insensitively, as ASP.NET binds them."""
    lowered = name.lower()
    for key, value in request.args.items():
        if key.lower() == lowered:
            return value
    return None


def _json(value) -> Response:
    return Response(absolute_uris(json.dumps(value), base_url()), content_type="application/json")


@bp.get("/changefeed")
def changefeed() -> Response:
    include_metadata = parse_bool("includeMetadata", _arg("includeMetadata"), True)
    index = server().index
    if api_version() == "v1":
        rows = index.changes(
            after_sequence=parse_int("offset", _arg("offset"), 0, 0),
            limit=parse_int("limit", _arg("limit"), 10, 1, 100),
        )
    else:
        start = parse_time("startTime", _arg("startTime"))
        end = parse_time("endTime", _arg("endTime"))
        if start is not None and end is not None and end <= start:
            raise BadRequest("endTime must be later than startTime")
        rows = index.changes(
            start=start,
            end=end,
            offset=parse_int("offset", _arg("offset"), 0, 0),
            limit=parse_int("limit", _arg("limit"), 100, 1, 200),
        )
    return _json([entry_json(change, current, include_metadata) for change, current in rows])


@bp.get("/changefeed/latest")
def latest() -> Response:
    include_metadata = parse_bool("includeMetadata", _arg("includeMetadata"), True)
    rows = server().index.changes(limit=1, newest_first=True)
    if not rows:
        return Response(status=204)
    change, current = rows[0]
    return _json(entry_json(change, current, include_metadata))
