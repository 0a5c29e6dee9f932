"""WADO-RS (PS3.18 §10.4): study, series, instance, metadata and frames."""
from __future__ import annotations

import zlib

from flask import Blueprint, Response, request
from werkzeug.wsgi import wrap_file

from ..errors import NotFound
from ..dicomjson import absolute_uris
from ..extensions import base_url, server
from ..media import DICOM_JSON, negotiate_retrieve, parse_accept, require_json
from ..retrieve import Body, choose, frames_body, instances_body
from ..transcode import log_capabilities
from ..uids import parse_frame_list, require_uid

bp = Blueprint("wado", __name__)
# Probe the installed codecs once, when the app is built, and log what can be transcoded.
bp.record_once(lambda _state: log_capabilities())


def _uids(study: str, series: str | None = None, instance: str | None = None):
    return (
        require_uid(study, "StudyInstanceUID"),
        require_uid(series, "SeriesInstanceUID") if series is not None else None,
        require_uid(instance, "SOPInstanceUID") if instance is not None else None,
    )


@bp.get("/studies/<study>")
@bp.get("/studies/<study>/series/<series>")
@bp.get("/studies/<study>/series/<series>/instances/<instance>")
def retrieve(study: str, series: str | None = None, instance: str | None = None) -> Response:
    uids = _uids(study, series, instance)
    resource = "instance" if instance else ("series" if series else "study")
    renditions = negotiate_retrieve(parse_accept(request.headers.get("Accept")), resource)
    state = server()
    instances = state.index.instances(*uids)
    rendition = choose(renditions, instances, state.settings)
    return _stream(instances_body(state.store, instances, rendition, state.settings))


@bp.get("/studies/<study>/metadata")
@bp.get("/studies/<study>/series/<series>/metadata")
@bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
def metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    uids = _uids(study, series, instance)
    require_json(parse_accept(request.headers.get("Accept")))
    documents, version = server().index.metadata(*uids)
    root = base_url()
    # The representation depends on the versioned base URL (absolute BulkDataURIs).
    etag = f"{version}-{zlib.crc32(root.encode()):08x}"
    if etag in request.if_none_match:
        return Response(status=304, headers={"ETag": f'"{etag}"'})
    # Each instance's DICOM JSON was serialised at STOW: join, never re-parse.
    body = absolute_uris("[" + ",".join(documents) + "]", root)
    response = Response(body, content_type=DICOM_JSON)
    response.set_etag(etag)
    return response


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
def frames(study: str, series: str, instance: str, frames: str) -> Response:
    uids = _uids(study, series, instance)
    numbers = parse_frame_list(frames)
    renditions = negotiate_retrieve(parse_accept(request.headers.get("Accept")), "frames")
    state = server()
    (row,) = state.index.instances(*uids)
    rendition = choose(renditions, [row], state.settings, frames=True)
    return _stream(frames_body(state.store, row, numbers, rendition, state.settings))


def _stream(body: Body) -> Response:
    if body.local_path is not None:
        # A single stored file: let the WSGI server use sendfile where it can.
        try:
            chunks = wrap_file(request.environ, open(body.local_path, "rb"))
        except FileNotFoundError:
            raise NotFound("the instance was deleted while it was being retrieved") from None
    else:
        chunks = body.chunks
    response = Response(chunks, content_type=body.content_type, direct_passthrough=True)
    if body.length is not None:  # else unknown (transcoded parts): sent chunked
        response.content_length = body.length
    return response
