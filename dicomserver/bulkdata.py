"""Bulk data (PS3.18 §8.4.1.2, §10.4): the values behind the BulkDataURIs of /metadata.

Every URI resolves by ranged reads at the byte offsets recorded at STOW: the stored
file is never parsed. Pixel Data answers all of its value: native pixel data as one
part, encapsulated pixel data as one part per frame. A value that is one part honours an
HTTP Range (206), so a client can fetch a slice of a large value (`byte_range` says
which Range headers are honoured, refused with 416, or ignored): as the bare bytes, or,
to a multipart Accept, as the one part of a multipart/related body whose part headers
carry the Content-Range (dicomweb-client's `byte_range` reads it so). Only Pixel Data
without recorded frame offsets (a deflated file, whose offsets mean nothing, or frames
STOW could not locate) is found by parsing the file, within a bound.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial

import pydicom

from backends.base import BlobStore

from .archive import Archive
from .errors import BadRequest, NotAcceptable, NotFound
from .frames import frame_count, frame_ranges
from .index import StoredInstance
from .media import MULTIPART_RELATED, OCTET_STREAM, MediaRange, parse_media_type, refused
from .metrics import open_blob
from .multipart import MultipartWriter
from .partitions import DEFAULT, Partition
from .retrieve import Body, Part, multipart_body, ranges_chunks
from .transfer_syntax import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN

PIXEL_DATA = "7FE00010"
_PATH = re.compile(r"[0-9A-F]{8}(/[0-9]+/[0-9A-F]{8})*")
#: Largest file whose Pixel Data is found by parsing it whole (deflated files only).
MAX_PARSED_BYTES = 256 * 1024 * 1024

Ranges = list[tuple[int, int]]  # (offset, length) in the stored file
#: The bytes [start, stop) of a value, as chunks.
ReadRange = Callable[[int, int], Iterable[bytes]]
#: A byte-range-spec: first-pos "-" [last-pos], or "-" suffix-length (RFC 9110 §14.1.2).
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
#: Positions longer than this are past the end of any value (10**19 > 2**63).
_MAX_POSITION_DIGITS = 19
_ACCEPT_RANGES = ("Accept-Ranges", "bytes")


def byte_range(header: str | None, length: int, *, if_range: str | None = None) -> range | None:
    """The bytes a Range header asks of a representation of `length` bytes (RFC 9110 §14).

    None: send the whole representation (200). That is the answer without a Range, and
    to one a server may or must ignore: a unit other than bytes (§14.2), a syntax error
    such as a last-pos before its first-pos or a blank inside a range (§14.1.1), more than
    one range (§14.2 lets a server ignore any Range; this one sends no multipart/byteranges),
    any If-Range (§13.1.5: no validator of these answers can match, as they carry none),
    and a suffix range of an empty representation (no Content-Range can describe it).
    An empty range: not satisfiable (416): a first-pos at or past the end, or a suffix
    length of 0 (§14.1.1).
    Otherwise the bytes to send (206); a last-pos past the end or a suffix longer than
    the representation is cut to it (§14.1.2). Positions of any length are understood.
    """
    if header is None or if_range is not None:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec for spec in (item.strip() for item in range_set.split(",")) if spec]  # §5.6.1.2: empty elements
    match = _RANGE_SPEC.fullmatch(specs[0]) if len(specs) == 1 else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = _position(last)
        if suffix == 0:
            return range(0)
        return range(max(length - suffix, 0), length) if length else None
    start = _position(first)
    if last and _position(last) < start:
        return None
    if start >= length:
        return range(0)
    return range(start, min(_position(last) + 1, length) if last else length)


def _position(digits: str) -> int:
    """A position's digits as a number; one too long for any length as a number past every end."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_POSITION_DIGITS else 10**_MAX_POSITION_DIGITS


def retrieve_bulkdata(
    archive: Archive,
    uids: tuple[str, str | None, str | None],
    tag_path: str,
    accept: Sequence[MediaRange],
    range_header: str | None = None,
    if_range: str | None = None,
    *,
    partition: Partition = DEFAULT,
) -> Body:
    """The value at `tag_path` ('GGGGEEEE[/item/GGGGEEEE...]') of one instance; `range_header`
    and `if_range` are the request's Range and If-Range (None when absent, and for any
    method but GET, the only one range handling is defined for: RFC 9110 §14.2)."""
    path = tag_path.upper()
    if not _PATH.fullmatch(path):
        raise BadRequest(f"invalid bulk data path {tag_path!r}: expected GGGGEEEE[/item/GGGGEEEE...]")
    (row,) = archive.index.instances(*uids, partition=partition)
    store = archive.store
    if path == PIXEL_DATA:
        _require_syntax(accept, row, _pixel_syntax(row))
    if path == PIXEL_DATA and row.frames is None:
        return _parsed_pixel_data(store, row, accept, range_header, if_range)
    parts, content_type = _locate(row, path)
    if any(start + length > row.size for ranges in parts for start, length in ranges):
        # An instance stored before STOW checked lengths: answer before the status line,
        # never with a body cut short.
        raise NotFound(
            f"the value at {tag_path} of instance {row.sop_instance_uid} is not in the stored file, "
            "which ends before it"
        )
    total = sum(n for _, n in parts[0])
    requested = byte_range(range_header, total, if_range=if_range) if len(parts) == 1 else None
    read = partial(_stored_bytes, store, row.blob_key, parts[0])
    if not _wants_multipart(accept, len(parts), requested is not None, content_type):
        return _single_part(content_type, total, requested, read)
    if requested is not None:
        return _ranged_part(content_type, total, requested, read)
    headers = {"Content-Type": content_type}
    body = multipart_body(
        MultipartWriter(),
        OCTET_STREAM,
        [Part(headers, sum(n for _, n in r), partial(ranges_chunks, store, row.blob_key, r)) for r in parts],
    )
    # A value of one part takes a Range (answered in one part); one part per frame does not.
    return replace(body, headers=(_ACCEPT_RANGES,)) if len(parts) == 1 else body


def _single_part(content_type: str, total: int, requested: range | None, read: ReadRange) -> Body:
    """A value as one part: whole (200), the range asked for (206), or none of it (416)."""
    if requested is None:
        return Body(content_type, total, read(0, total), headers=(_ACCEPT_RANGES,))
    if not requested:
        return _not_satisfiable(total)
    start, stop = requested.start, requested.stop
    return Body(
        content_type,
        stop - start,
        read(start, stop),
        status=206,
        headers=(("Content-Range", _content_range(requested, total)), _ACCEPT_RANGES),
    )


def _ranged_part(content_type: str, total: int, requested: range, read: ReadRange) -> Body:
    """The range asked for as the one part of a multipart/related body (206), or 416.

    The Content-Range is a part header, as in multipart/byteranges (RFC 9110 §14.6); the
    message carries none: its body is no slice of the value, and a cache must not store it
    as one.
    """
    if not requested:
        return _not_satisfiable(total)
    start, stop = requested.start, requested.stop
    headers = {"Content-Type": content_type, "Content-Range": _content_range(requested, total)}
    body = multipart_body(MultipartWriter(), OCTET_STREAM, [Part(headers, stop - start, lambda: read(start, stop))])
    return replace(body, status=206, headers=(_ACCEPT_RANGES,))


def _not_satisfiable(total: int) -> Body:
    """416, in text whatever the Accept: there is no value to frame."""
    why = f"the requested range is not satisfiable: the value is {total} bytes long\n".encode()
    return Body(
        "text/plain; charset=utf-8", len(why), (why,), status=416,
        headers=(("Content-Range", f"bytes */{total}"), _ACCEPT_RANGES),
    )


def _content_range(requested: range, total: int) -> str:
    return f"bytes {requested.start}-{requested.stop - 1}/{total}"


def _stored_bytes(store: BlobStore, key: str, ranges: Ranges, start: int, stop: int) -> Iterable[bytes]:
    """Bytes [start, stop) of the value stored at `ranges` of a blob."""
    return ranges_chunks(store, key, _slice(ranges, start, stop))


def _parsed_pixel_data(
    store: BlobStore, row: StoredInstance, accept: Sequence[MediaRange], range_header: str | None, if_range: str | None
) -> Body:
    """Pixel Data of a file without recorded offsets (deflated): parse it, within a bound."""
    if row.rows is None:
        raise NotFound(f"instance {row.sop_instance_uid} has no pixel data")
    if row.size > MAX_PARSED_BYTES:
        raise NotAcceptable(
            f"the Pixel Data of instance {row.sop_instance_uid} cannot be located without parsing the "
            f"file, which this server does only up to {MAX_PARSED_BYTES} bytes"
        )
    with open_blob(store, row.blob_key) as fp:
        value = pydicom.dcmread(fp).get("PixelData")
    if value is None:
        raise NotFound(f"instance {row.sop_instance_uid} has no pixel data")
    content_type = f"{OCTET_STREAM}; transfer-syntax={_pixel_syntax(row)}"
    whole = len(value)
    requested = byte_range(range_header, whole, if_range=if_range)

    def read(start: int, stop: int) -> list[bytes]:
        return [value if stop - start == whole else value[start:stop]]

    if not _wants_multipart(accept, 1, requested is not None, content_type):
        return _single_part(content_type, whole, requested, read)
    if requested is not None:
        return _ranged_part(content_type, whole, requested, read)
    writer = MultipartWriter()
    data = writer.part_head({"Content-Type": content_type}) + value + writer.close()
    return Body(writer.content_type(OCTET_STREAM), len(data), [data], headers=(_ACCEPT_RANGES,))


def _pixel_syntax(row: StoredInstance) -> str:
    """The transfer syntax Pixel Data is served in: the stored one, but a deflated file's
    Pixel Data comes out inflated (native, explicit VR little endian)."""
    return EXPLICIT_VR_LITTLE_ENDIAN if row.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else (
        row.transfer_syntax_uid
    )


def _require_syntax(accept: Sequence[MediaRange], row: StoredInstance, syntax: str) -> None:
    """Bulk data is served as stored: when every Accept entry names another transfer syntax, 406."""
    asked = [r.transfer_syntax for r in accept]
    if asked and all(a is not None and a not in ("*", syntax) for a in asked):
        raise NotAcceptable(
            f"the Pixel Data of instance {row.sop_instance_uid} is in transfer syntax {syntax} and bulk data "
            f"is not transcoded: ask for transfer-syntax={syntax} or *, or use the frames resource"
        )


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


def _wants_multipart(accept: Sequence[MediaRange], parts: int, ranged: bool, content_type: str) -> bool:
    """multipart/related unless the client asks for (or a Range implies) a single part."""
    _, params = parse_media_type(content_type)
    syntax = params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)  # PS3.18's default for octet-stream
    single = parts == 1 and not refused(accept, OCTET_STREAM, None, syntax)
    multi = not refused(accept, MULTIPART_RELATED, OCTET_STREAM, syntax)
    for r in accept:
        if r.mimetype in (OCTET_STREAM, "application/*") and single:
            return False
        if multi and r.mimetype in (MULTIPART_RELATED, "multipart/*") and (
            r.params.get("type") or OCTET_STREAM
        ).lower() in (OCTET_STREAM, "*/*", "application/*"):
            return True
        if r.mimetype == "*/*" and (single or multi):
            return not single or (multi and not ranged)
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
