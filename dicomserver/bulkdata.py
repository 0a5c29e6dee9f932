"""Bulk data (PS3.18 §8.4.1.2, §10.4): the values behind the BulkDataURIs of /metadata.

Every URI resolves by ranged reads at the byte offsets recorded at STOW: the stored
file is never parsed. Pixel Data answers all of its value: native pixel data as one
part, encapsulated pixel data as one part per frame. A single-part answer honours an
HTTP Range (206), so a client can fetch a slice of a large value. Only Pixel Data
without recorded frame offsets (a deflated file, whose offsets mean nothing, or frames
STOW could not locate) is found by parsing the file, within a bound.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from functools import partial

import pydicom

from backends.base import BlobStore

from .archive import Archive
from .errors import BadRequest, NotAcceptable, NotFound
from .frames import frame_count, frame_ranges
from .index import StoredInstance
from .media import OCTET_STREAM, MediaRange
from .multipart import MultipartWriter
from .retrieve import Body, Part, multipart_body, ranges_chunks

PIXEL_DATA = "7FE00010"
_PATH = re.compile(r"[0-9A-F]{8}(/[0-9]+/[0-9A-F]{8})*")
#: Largest file whose Pixel Data is found by parsing it whole (deflated files only).
MAX_PARSED_BYTES = 256 * 1024 * 1024

Ranges = list[tuple[int, int]]  # (offset, length) in the stored file
#: An HTTP Range header's byte range for a value of the given length: (start, stop), or
#: None when it cannot be satisfied (werkzeug's Range.range_for_length).
RangeForLength = Callable[[int], "tuple[int, int] | None"]


def retrieve_bulkdata(
    archive: Archive,
    uids: tuple[str, str | None, str | None],
    tag_path: str,
    accept: Sequence[MediaRange],
    byte_range: RangeForLength | None = None,
) -> Body:
    """The value at `tag_path` ('GGGGEEEE[/item/GGGGEEEE...]') of one instance."""
    path = tag_path.upper()
    if not _PATH.fullmatch(path):
        raise BadRequest(f"invalid bulk data path {tag_path!r}: expected GGGGEEEE[/item/GGGGEEEE...]")
    (row,) = archive.index.instances(*uids)
    store = archive.store
    if path == PIXEL_DATA and row.frames is None:
        return _parsed_pixel_data(store, row, accept, byte_range is not None)
    parts, content_type = _locate(row, path)
    if _wants_multipart(accept, len(parts), byte_range is not None):
        headers = {"Content-Type": content_type}
        return multipart_body(
            MultipartWriter(),
            OCTET_STREAM,
            [Part(headers, sum(n for _, n in r), partial(ranges_chunks, store, row.blob_key, r)) for r in parts],
        )
    ranges = parts[0]
    total = sum(n for _, n in ranges)
    accept_ranges = ("Accept-Ranges", "bytes")
    if byte_range is None:
        return Body(content_type, total, ranges_chunks(store, row.blob_key, ranges), headers=(accept_ranges,))
    satisfiable = byte_range(total)
    if satisfiable is None:
        return Body(content_type, 0, (), status=416, headers=(("Content-Range", f"bytes */{total}"), accept_ranges))
    start, stop = satisfiable
    return Body(
        content_type,
        stop - start,
        ranges_chunks(store, row.blob_key, _slice(ranges, start, stop)),
        status=206,
        headers=(("Content-Range", f"bytes {start}-{stop - 1}/{total}"), accept_ranges),
    )


def _parsed_pixel_data(store: BlobStore, row: StoredInstance, accept: Sequence[MediaRange], ranged: bool) -> Body:
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
    if not _wants_multipart(accept, 1, ranged):
        return Body(content_type, len(value), [value])
    writer = MultipartWriter()
    data = writer.part_head({"Content-Type": content_type}) + value + writer.close()
    return Body(writer.content_type(OCTET_STREAM), len(data), [data])


def _locate(row: StoredInstance, path: str) -> tuple[list[Ranges], str]:
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


def _wants_multipart(accept: Sequence[MediaRange], parts: int, ranged: bool) -> bool:
    """multipart/related unless the client asks for (or a Range implies) a single part."""
    for r in accept:
        if r.mimetype == OCTET_STREAM and parts == 1:
            return False
        if r.mimetype in ("multipart/related", "multipart/*") and (r.params.get("type") or OCTET_STREAM).lower() in (
            OCTET_STREAM,
            "*/*",
            "application/*",
        ):
            return True
        if r.mimetype in ("*/*", "application/*"):
            return not (ranged and parts == 1)
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
