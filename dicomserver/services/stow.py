"""STOW-RS (PS3.18 §10.5): POST/PUT /studies[/{study}], multipart/related or application/dicom.

The request body is read as a stream: each part is spooled (memory, then disk) and
stored as soon as its closing delimiter arrives, so memory stays flat for any size.
PUT is the reference server's upsert: new instances are stored, existing ones replaced.
"""
from __future__ import annotations

import json
from typing import Iterator

from flask import Blueprint, Response, request

from ..errors import BadRequest, UnsupportedMediaType
from ..extensions import api_version, base_url, server
from ..ingest import INVALID_DATASET, PartResult, spool
from ..media import DICOM, DICOM_JSON, MULTIPART_RELATED, parse_accept, parse_media_type, require_json
from ..multipart import End, MultipartError, PartData, PartEnd, PartStart, iter_events
from ..uids import require_uid

bp = Blueprint("stow", __name__)

READ_CHUNK = 64 * 1024


@bp.route("/studies", methods=["POST", "PUT"])
@bp.route("/studies/<study>", methods=["POST", "PUT"])
def store_instances(study: str | None = None) -> Response:
    require_json(parse_accept(request.headers.get("Accept")))
    study_uid = require_uid(study, "StudyInstanceUID") if study is not None else None
    replace = request.method == "PUT"
    mimetype, params = parse_media_type(request.headers.get("Content-Type", ""))
    if mimetype == DICOM:
        results = [_store_single(study_uid, replace)]
    elif mimetype == MULTIPART_RELATED:
        part_type = (params.get("type") or DICOM).lower()
        if part_type != DICOM:
            raise UnsupportedMediaType(
                f'multipart/related with type="{part_type}" is not supported; use type="application/dicom"'
            )
        results = _store_multipart(params.get("boundary"), study_uid, replace)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {mimetype or '(none)'!r} is not supported; send "
            'multipart/related; type="application/dicom" or application/dicom'
        )
    return _response(results, study_uid)


def _read_chunks() -> Iterator[bytes]:
    stream = request.stream
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def _spool(chunks):
    settings = server().settings
    return spool(
        chunks,
        max_bytes=settings.max_instance_bytes,
        memory_bytes=settings.spool_memory_bytes,
        spool_dir=settings.spool_dir,
    )


def _store_single(study_uid: str | None, replace: bool) -> PartResult:
    fp, size = _spool(_read_chunks())
    with fp:
        if size == 0:
            raise BadRequest("the request body is empty; send a DICOM Part 10 file")
        return server().ingestor.ingest(fp, size, study_uid=study_uid, replace=replace)


def _store_multipart(boundary: str | None, study_uid: str | None, replace: bool) -> list[PartResult]:
    """Store each part as soon as it is complete; a truncated part is never stored."""
    ingestor = server().ingestor
    results: list[PartResult] = []
    events = iter_events(request.stream.read, boundary, chunk_size=READ_CHUNK)
    try:
        for event in events:
            if isinstance(event, End):
                break
            if not isinstance(event, PartStart):
                continue
            media = parse_media_type(event.content_type)[0] if event.content_type else DICOM
            fp, size = _spool(_part_data(events))
            with fp:
                if media != DICOM:
                    results.append(
                        PartResult(
                            failure_reason=INVALID_DATASET,
                            comments=[f"part media type {media!r} is not supported; use application/dicom"],
                        )
                    )
                    continue
                results.append(ingestor.ingest(fp, size, study_uid=study_uid, replace=replace))
    except MultipartError as exc:
        stored = sum(r.stored for r in results)
        raise BadRequest(
            f"malformed multipart/related body: {exc} "
            f"({stored} instance(s) that arrived complete before the error were stored)"
        ) from None
    if not results:
        raise BadRequest("the multipart/related body contains no parts")
    return results


def _part_data(events) -> Iterator[bytes]:
    """The data chunks of the current part, up to its PartEnd."""
    for event in events:
        if isinstance(event, PartData):
            yield event.data
        elif isinstance(event, PartEnd):
            return
        else:  # the reader never yields another event inside a part
            raise MultipartError(f"unexpected {type(event).__name__} inside a part")
    raise MultipartError("multipart body ended before the closing boundary")


def _response(results: list[PartResult], study_uid: str | None) -> Response:
    """The STOW response dataset (PS3.18 §10.5.3) and its status: 200, 202 or 409."""
    root = base_url()
    referenced, failed = [], []
    for r in results:
        item = {}
        if r.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [r.sop_class_uid]}
        if r.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [r.sop_instance_uid]}
        comments = [{"00000902": {"vr": "LO", "Value": [c]}} for c in r.comments]
        if r.stored:
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    f"{root}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
                    f"/instances/{r.sop_instance_uid}"
                ],
            }
            if r.warning_reason is not None:
                item["00081196"] = {"vr": "US", "Value": [r.warning_reason]}
            if comments:
                item["00741048"] = {"vr": "SQ", "Value": comments}
            referenced.append(dict(sorted(item.items())))
        else:
            item["00081197"] = {"vr": "US", "Value": [r.failure_reason]}
            if comments:
                item["00741048"] = {"vr": "SQ", "Value": comments}
            failed.append(dict(sorted(item.items())))
    body: dict = {}
    if study_uid is not None and referenced:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study_uid}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    # As the reference server: warnings make a v2 answer 202; v1 keeps 200.
    warned = api_version() != "v1" and any(r.warning_reason is not None for r in results if r.stored)
    status = 409 if not referenced else (202 if failed or warned else 200)
    return Response(json.dumps(body), status=status, content_type=DICOM_JSON)
