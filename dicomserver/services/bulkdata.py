"""Bulk data (PS3.18 §8.4.1.2, §10.4): the BulkDataURIs that /metadata hands out.

Every URI resolves by ranged reads at the byte offsets recorded at STOW: the stored
file is never parsed. Pixel Data answers all of its value: native pixel data as one
part, encapsulated pixel data as one part per frame. A single-part answer honours an
HTTP Range header (206), so a client can fetch a slice of a large value.
"""
from __future__ import annotations

import json
import re
from functools import partial

import pydicom
from flask import Blueprint, Response, request

from ..errors import BadRequest, NotAcceptable, NotFound
from ..extensions import server
from ..frames import frame_count, frame_ranges
from ..media import OCTET_STREAM, parse_accept
from ..multipart import MultipartWriter
from ..retrieve import Part, multipart_body, ranges_chunks
from ..uids import require_uid

bp = Blueprint("bulkdata", __name__)

PIXEL_DATA = "7FE00010"
_PATH = re.compile(r"[0-9A-F]{8}(/[0-9]+/[0-9A-F]{8})*")
#: Largest file whose Pixel Data is found by parsing it whole (deflated files only).
MAX_PARSED_BYTES = 256 * 1024 * 1024

Ranges = list[tuple[int, int]]  # (offset, length) in the stored file


@bp.get("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<path:tag_path>")
def bulkdata(study: str, series: str, instance: str, tag_path: str) -> Response:
    uids = (
        require_uid(study, "StudyInstanceUID"),
        require_uid(series, "SeriesInstanceUID"),
        require_uid(instance, "SOPInstanceUID"),
    )
    path = tag_path.upper()
    if not _PATH.fullmatch(path):
        raise BadRequest(f"invalid bulk data path {tag_path!r}: expected GGGGEEEE[/item/GGGGEEEE...]")
    state = server()
    (row,) = state.index.instances(*uids)
    if path == PIXEL_DATA and row.frames is None:
        return _parsed_pixel_data(state.store, row)
    parts, content_type = _locate(row, path)
    multipart = _wants_multipart(len(parts))
    key = row.blob_key
    if not multipart:
        ranges = parts[0]
        total = sum(n for _, n in ranges)
        byte_range = request.range.range_for_length(total) if request.range else None
        if request.range and byte_range is None:
            return Response(status=416, headers={"Content-Range": f"bytes */{total}"})
        if byte_range is not None:
            start, stop = byte_range
            response = Response(
                ranges_chunks(state.store, key, _slice(ranges, start, stop)), status=206, content_type=content_type
            )
            response.content_length = stop - start
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{total}"
        else:
            response = Response(ranges_chunks(state.store, key, ranges), content_type=content_type)
            response.content_length = total
        response.headers["Accept-Ranges"] = "bytes"
        return response
    part_headers = {"Content-Type": content_type}
    body = multipart_body(
        MultipartWriter(),
        OCTET_STREAM,
        [Part(part_headers, sum(n for _, n in r), partial(ranges_chunks, state.store, key, r)) for r in parts],
    )
    response = Response(body.chunks, content_type=body.content_type)
    response.content_length = body.length
    return response


def _parsed_pixel_data(store, row) -> Response:
    """Pixel Data of a file without recorded offsets (deflated): parse it, within a bound."""
    if row.rows is None:
        raise NotFound(f"instance {row.sop_instance_uid} has no pixel data")
    if row.size > MAX_PARSED_BYTES:
        raise NotAcceptable(
            f"the Pixel Data of instance {row.sop_instance_uid} cannot be located without parsing the "
            f"file, which this server does only up to {MAX_PARSED_BYTES} bytes"
        )
    with store.open(row.blob_key) as fp:
        value = pydicom.dcmread(fp).get("PixelData")
    if value is None:
        raise NotFound(f"instance {row.sop_instance_uid} has no pixel data")
    content_type = f"{OCTET_STREAM}; transfer-syntax={row.transfer_syntax_uid}"
    if not _wants_multipart(1):
        return Response(value, content_type=content_type)
    writer = MultipartWriter()
    body = writer.part_head({"Content-Type": content_type}) + value + writer.close()
    return Response(body, content_type=writer.content_type(OCTET_STREAM))


def _locate(row, path: str) -> tuple[list[Ranges], str]:
    """The byte ranges of each part of a bulk data value, and the parts' media type."""
    if path == PIXEL_DATA:
        if row.frames is None:
            raise NotFound(f"instance {row.sop_instance_uid} has no pixel data that can be served")
        frame_map = json.loads(row.frames)
        content_type = f"{OCTET_STREAM}; transfer-syntax={row.transfer_syntax_uid}"
        if "native" in frame_map:
            offset, frame_length, count = frame_map["native"]
            return [[(offset, frame_length * count)]], content_type
        return [frame_ranges(row.frames, n) for n in range(1, frame_count(row.frames) + 1)], content_type
    locations = json.loads(row.bulkdata or "{}")
    if path not in locations:
        raise NotFound(f"instance {row.sop_instance_uid} has no bulk data at {path}")
    offset, length = locations[path]
    return [[(offset, length)]], OCTET_STREAM


def _wants_multipart(parts: int) -> bool:
    """multipart/related unless the client asks for (or a Range implies) a single part."""
    for r in parse_accept(request.headers.get("Accept")):
        if r.mimetype == OCTET_STREAM and parts == 1:
            return False
        if r.mimetype in ("multipart/related", "multipart/*"):
            if (r.params.get("type") or OCTET_STREAM).lower() in (OCTET_STREAM, "*/*", "application/*"):
                return True
        if r.mimetype in ("*/*", "application/*"):
            return not (request.range and parts == 1)
    raise NotAcceptable(
        'bulk data is offered as multipart/related; type="application/octet-stream" '
        "or (for a single value) application/octet-stream"
    )


def _slice(ranges: Ranges, start: int, stop: int) -> Ranges:
    """The sub-ranges covering bytes [start, stop) of the concatenated ranges."""
    out: Ranges = []
    position = 0
    for offset, length in ranges:
        lo, hi = max(start, position), min(stop, position + length)
        if lo < hi:
            out.append((offset + lo - position, hi - lo))
        position += length
    return out

