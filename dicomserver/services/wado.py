"""WADO-RS (PS3.18 §10.4): study, series, instance, metadata and frames."""
from __future__ import annotations

from flask import Blueprint, Response, request

from .. import retrieve
from ..media import negotiate_retrieve, parse_accept, require_json
from ..transcode import log_capabilities
from ..uids import parse_frame_list, require_uids
from .web import archive, base_url, partition, requires, stream

bp = Blueprint("wado", __name__)
# Probe the installed codecs once, when the app is built, and log what can be transcoded.
bp.record_once(lambda _state: log_capabilities())


def _original() -> bool:
    """`msdicom-request-original: true` (any case): the version first stored, as the reference reads it."""
    value = request.headers.get(retrieve.ORIGINAL_VERSION_HEADER)
    return value is not None and value.lower() == "true"


@bp.get("/studies/<study>")
@bp.get("/studies/<study>/series/<series>")
@bp.get("/studies/<study>/series/<series>/instances/<instance>")
@requires("read")
def retrieve_instances(study: str, series: str | None = None, instance: str | None = None) -> Response:
    uids = require_uids(study, series, instance)
    resource = "instance" if instance else ("series" if series else "study")
    renditions = negotiate_retrieve(parse_accept(request.headers.get("Accept")), resource)
    return stream(retrieve.retrieve_instances(archive(), uids, renditions, original=_original(), partition=partition()))


@bp.get("/studies/<study>/metadata")
@bp.get("/studies/<study>/series/<series>/metadata")
@bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
@requires("read")
def metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    uids = require_uids(study, series, instance)
    require_json(parse_accept(request.headers.get("Accept")))
    found = retrieve.metadata(
        archive(), uids, base_url(), request.headers.get("Accept-Encoding"), original=_original(), partition=partition()
    )
    if request.if_none_match.contains_weak(found.etag):  # If-None-Match compares weakly (RFC 9110 13.1.2)
        return Response(status=304, headers=list(found.headers))
    return stream(found.body())


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
@requires("read")
def frames(study: str, series: str, instance: str, frames: str) -> Response:
    uids = require_uids(study, series, instance)
    numbers = parse_frame_list(frames)
    renditions = negotiate_retrieve(parse_accept(request.headers.get("Accept")), "frames")
    return stream(retrieve.retrieve_frames(archive(), uids, numbers, renditions, partition=partition()))
