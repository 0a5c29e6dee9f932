"""Frame offsets recorded at STOW, so a frame is served by ranged reads of the blob.

The frame map is JSON kept on the Instance row:
- native pixel data: {"native": [value_offset, frame_length, number_of_frames]}
- encapsulated:      {"fragments": [[[offset, length], ...] per frame]}
Offsets are absolute byte positions in the stored file. Finding them needs only
item headers (seek, never read the pixel data), so memory stays flat for any size.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import IO

from pydicom.dataset import Dataset

from .transfer_syntax import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
_ITEM = 0xE000
_SEQUENCE_DELIMITER = 0xE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: JPEG SOI and JPEG 2000 SOC markers: a fragment starting with one starts a frame.
_FRAME_START_MARKERS = (b"\xff\xd8", b"\xff\x4f\xff\x51")


class FrameMapError(ValueError):
    pass


def native_frame_length(ds: Dataset) -> int | None:
    """Bytes per frame of native pixel data (no pad byte), or None if not byte-aligned."""
    rows = int(ds.get("Rows") or 0)
    columns = int(ds.get("Columns") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 0)
    if not rows or not columns or not bits:
        return None
    total_bits = rows * columns * samples * bits
    if total_bits % 8:
        return None
    return total_bits // 8


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def build_frame_map(fp: IO[bytes], ds: Dataset, transfer_syntax: str, encapsulated: bool) -> dict | None:
    """Locate every frame of the pixel data that starts at fp's current position.

    `fp` must be positioned at the Pixel Data tag (where pydicom stops with
    stop_before_pixels=True). Returns None when the instance has no pixel data or
    its frames cannot be located by offset (deflated data, unaligned bit-packed frames).
    """
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    big_endian = transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    header = _read_element_header(fp, big_endian, implicit)
    if header is None:
        return None
    tag, length = header
    if tag != PIXEL_DATA_TAG:
        return None
    value_offset = fp.tell()
    frames = number_of_frames(ds)
    if length != _UNDEFINED_LENGTH and not encapsulated:
        frame_length = native_frame_length(ds)
        if frame_length is None or frame_length * frames > length:
            return None
        return {"native": [value_offset, frame_length, frames]}
    if length != _UNDEFINED_LENGTH:
        raise FrameMapError("encapsulated Pixel Data must have undefined length")
    return {"fragments": _encapsulated_frames(fp, ds, frames)}


def _read_element_header(fp: IO[bytes], big_endian: bool, implicit: bool) -> tuple[tuple[int, int], int] | None:
    start = fp.read(8)
    if len(start) < 8:
        return None
    order = ">" if big_endian else "<"
    group, element = struct.unpack(order + "HH", start[:4])
    if implicit:
        (length,) = struct.unpack("<L", start[4:8])
        return (group, element), length
    vr = start[4:6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        more = fp.read(4)
        if len(more) < 4:
            return None
        (length,) = struct.unpack(order + "L", more)
    else:
        (length,) = struct.unpack(order + "H", start[6:8])
    return (group, element), length


def _read_items(fp: IO[bytes]) -> Iterator[tuple[int, int]]:
    """Yield (value offset, length) of each item up to the sequence delimiter."""
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise FrameMapError("encapsulated Pixel Data ends without a sequence delimiter")
        group, element, length = struct.unpack("<HHL", head)
        if group != 0xFFFE:
            raise FrameMapError("malformed item in encapsulated Pixel Data")
        if element == _SEQUENCE_DELIMITER:
            return
        if element != _ITEM or length == _UNDEFINED_LENGTH:
            raise FrameMapError("malformed item in encapsulated Pixel Data")
        offset = fp.tell()
        yield offset, length
        fp.seek(offset + length)


def _encapsulated_frames(fp: IO[bytes], ds: Dataset, frames: int) -> list[list[list[int]]]:
    items = list(_read_items(fp))
    if not items:
        raise FrameMapError("encapsulated Pixel Data has no Basic Offset Table item")
    (bot_offset, bot_length), fragments = items[0], items[1:]
    if not fragments:
        raise FrameMapError("encapsulated Pixel Data has no fragments")
    first_item_start = fragments[0][0] - 8

    starts: list[int] | None = None
    if bot_length:
        fp.seek(bot_offset)
        table = fp.read(bot_length)
        starts = [first_item_start + v for v in struct.unpack(f"<{bot_length // 4}L", table)]
    elif "ExtendedOffsetTable" in ds:
        table = ds.ExtendedOffsetTable
        starts = [first_item_start + v for v in struct.unpack(f"<{len(table) // 8}Q", table)]

    if starts is not None:
        if len(starts) != frames:
            raise FrameMapError("offset table does not list one offset per frame")
        grouped: list[list[list[int]]] = [[] for _ in starts]
        index = -1
        for offset, length in fragments:
            while index + 1 < len(starts) and offset - 8 >= starts[index + 1]:
                index += 1
            if index < 0:
                raise FrameMapError("offset table does not match the fragments")
            grouped[index].append([offset, length])
        if any(not g for g in grouped):
            raise FrameMapError("offset table does not match the fragments")
        return grouped
    if frames == 1:
        return [[[o, n] for o, n in fragments]]
    if len(fragments) == frames:
        return [[[o, n]] for o, n in fragments]
    # Several fragments per frame and no table: a frame starts where a codec stream starts.
    grouped = []
    for offset, length in fragments:
        fp.seek(offset)
        head = fp.read(4)
        if not grouped or any(head.startswith(m) for m in _FRAME_START_MARKERS):
            grouped.append([])
        grouped[-1].append([offset, length])
    if len(grouped) != frames:
        raise FrameMapError("cannot tell which fragments belong to which frame")
    return grouped


def frame_ranges(frame_map_json: str, frame_number: int) -> list[tuple[int, int]]:
    """Byte ranges (start, length) making up one 1-based frame."""
    frame_map = json.loads(frame_map_json)
    if "native" in frame_map:
        offset, length, _count = frame_map["native"]
        return [(offset + (frame_number - 1) * length, length)]
    return [(o, n) for o, n in frame_map["fragments"][frame_number - 1]]


def frame_count(frame_map_json: str) -> int:
    frame_map = json.loads(frame_map_json)
    if "native" in frame_map:
        return frame_map["native"][2]
    return len(frame_map["fragments"])
