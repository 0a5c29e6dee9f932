"""STOW-RS (PS3.18 §10.5): POST/PUT /studies[/{study}], multipart/related or application/dicom.

The request body is read as a stream: each part is spooled (memory, then disk) and
stored as soon as its closing delimiter arrives, so memory stays flat for any size.
PUT is the reference server's upsert: new instances are stored, existing ones replaced.
"""
from __future__ import annotations

import json
from typing import Iterator

from flask import Blueprint, Response, request

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..extensions import api_version, base_url, server
from ..ingest import INVALID_DATASET, PartResult, spool
from ..media import DICOM, DICOM_JSON, JSON, MULTIPART_RELATED, parse_accept, parse_media_type, require_json
from ..multipart import End, MultipartError, PartData, PartEnd, PartStart, iter_events
from ..stow_json import BulkPart, MetadataRejected, build_part10, is_bulk_media_type
from ..uids import normalize_uid, require_uid

bp = Blueprint("stow", __name__)

#: Request body reads. gunicorn buffers up to 1 MiB of read-ahead and copies what is left
#: of it on every read, so reads of less than that copy the same bytes many times over.
READ_CHUNK = 1024 * 1024
#: A DICOM JSON metadata part is parsed whole: keep it bounded.
MAX_JSON_PART_BYTES = 64 * 1024 * 1024


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
        if part_type not in (DICOM, DICOM_JSON):
            raise UnsupportedMediaType(
                f'multipart/related with type="{part_type}" is not supported; use type="application/dicom" '
                'or type="application/dicom+json" (metadata and bulk data)'
            )
        results = _store_multipart(params.get("boundary"), part_type, study_uid, replace)
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


def _store_multipart(boundary: str | None, root_type: str, study_uid: str | None, replace: bool) -> list[PartResult]:
    """Store each Part 10 part as soon as it is complete; a truncated part is never stored.

    DICOM JSON parts (PS3.18 §10.5: metadata and bulk data) are assembled into Part 10
    files once the whole body has arrived, since their bulk data parts may follow them.
    """
    state = server()
    ingestor = state.ingestor
    results: list[PartResult] = []
    datasets: list[dict] = []
    bulk: dict[str, BulkPart] = {}
    events = iter_events(request.stream.read, boundary, chunk_size=READ_CHUNK)
    try:
        try:
            for event in events:
                if isinstance(event, End):
                    break
                if not isinstance(event, PartStart):
                    continue
                content_type = event.content_type or root_type
                media = parse_media_type(content_type)[0]
                if media in (DICOM_JSON, JSON):
                    datasets.extend(_json_datasets(events, results))
                    continue
                location = event.headers.get("content-location")
                if media != DICOM and location and is_bulk_media_type(media):
                    fp, size = _spool(_part_data(events))
                    bulk[location.strip()] = BulkPart(content_type, fp, size)
                    continue
                fp, size = _spool(_part_data(events))
                with fp:
                    if media != DICOM:
                        results.append(
                            PartResult(
                                failure_reason=INVALID_DATASET,
                                comments=[
                                    f"part media type {media!r} is not supported here; use application/dicom, "
                                    "or application/dicom+json with bulk data parts that have a Content-Location"
                                ],
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
        for metadata in datasets:
            results.append(_store_json_dataset(metadata, bulk, study_uid, replace))
    finally:
        for part in bulk.values():
            part.fp.close()
    if not results:
        raise BadRequest("the multipart/related body contains no DICOM instances")
    return results


def _json_datasets(events, results: list[PartResult]) -> list[dict]:
    """The datasets of one application/dicom+json part (a JSON array, or one object)."""
    settings = server().settings
    fp, _size = spool(
        _part_data(events),
        max_bytes=MAX_JSON_PART_BYTES,
        memory_bytes=settings.spool_memory_bytes,
        spool_dir=settings.spool_dir,
    )
    with fp:
        try:
            document = json.load(fp)
        except ValueError as exc:
            results.append(PartResult(failure_reason=INVALID_DATASET, comments=[f"the DICOM JSON part is not valid JSON: {exc}"]))
            return []
    items = document if isinstance(document, list) else [document]
    good = [item for item in items if isinstance(item, dict)]
    if len(good) != len(items):
        results.append(
            PartResult(failure_reason=INVALID_DATASET, comments=["the DICOM JSON part must be an array of DICOM JSON objects"])
        )
    return good


def _store_json_dataset(metadata: dict, bulk: dict[str, BulkPart], study_uid: str | None, replace: bool) -> PartResult:
    state = server()
    try:
        fp, size = build_part10(
            metadata, bulk, spool_dir=state.settings.spool_dir, memory_bytes=state.settings.spool_memory_bytes
        )
    except MetadataRejected as exc:
        return PartResult(
            sop_class_uid=_json_uid(metadata, "00080016"),
            sop_instance_uid=_json_uid(metadata, "00080018"),
            failure_reason=INVALID_DATASET,
            comments=[str(exc)],
        )
    with fp:
        if size > state.settings.max_instance_bytes:
            raise PayloadTooLarge(
                f"a DICOM instance is larger than this server's limit of {state.settings.max_instance_bytes} bytes"
            )
        return state.ingestor.ingest(fp, size, study_uid=study_uid, replace=replace)


def _json_uid(metadata: dict, key: str) -> str | None:
    values = (metadata.get(key) or {}).get("Value") or []
    return normalize_uid(str(values[0])) if values else None


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
