"""Bulk data (PS3.18 §8.4.1.2, §10.4): the BulkDataURIs that /metadata hands out."""
from __future__ import annotations

from flask import Blueprint, Response, request

from ..bulkdata import retrieve_bulkdata
from ..media import parse_accept
from ..uids import require_uids
from .web import archive, partition, requires, stream

bp = Blueprint("bulkdata", __name__)


@bp.get("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path:tag_path>")
@requires("read")
def bulkdata(study: str, series: str, instance: str, tag_path: str) -> Response:
    uids = require_uids(study, series, instance)
    accept = parse_accept(request.headers.get("Accept"))
    # RFC 9110 §14.2: range handling is defined for GET only (Flask routes HEAD here too).
    ranged = request.method == "GET"
    range_headers = (request.headers.get("Range"), request.headers.get("If-Range")) if ranged else (None, None)
    return stream(retrieve_bulkdata(archive(), uids, tag_path, accept, *range_headers, partition=partition()))
