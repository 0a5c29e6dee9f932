"""Frame offsets recorded at STOW, so a frame is served by ranged reads of the blob.

The frame map is JSON kept on the Instance row:
- native pixel data: {"native": [value_offset, frame_length, number_of_frames]}
- encapsulated:      {"fragments": [[[offset, length], ...] per frame]}
Offsets are absolute byte positions in the stored file. Finding them needs only
item headers (seek, never read the pixel data), so memory stays flat for any size.

The same walk checks the Pixel Data against the file and the Image Pixel module: a
value longer than the rest of the file, item structure that does not parse, or fewer
bytes or fragments than the frames need is a `PixelDataError`, and the instance is
refused. Frames that are all there but cannot be told apart by offset (deflated
files, bit-packed frames, fragments without an offset table) are served by decoding.
"""
from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from typing import IO, Any

from pydicom.dataset import Dataset

from .transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    IMAGE_MEDIA_TYPES,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE,
)
from .validation import STANDARD_VRS

log = logging.getLogger(__name__)

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
#: Pixel Data, Float Pixel Data and Double Float Pixel Data: where pydicom stops the header.
PIXEL_TAGS = {
    (0x7FE0, 0x0010): "Pixel Data",
    (0x7FE0, 0x0008): "Float Pixel Data",
    (0x7FE0, 0x0009): "Double Float Pixel Data",
}
_ITEM = 0xE000
_SEQUENCE_DELIMITER = 0xE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit VRs whose length field has 32 bits (PS3.5 §7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: JPEG SOI and JPEG 2000 SOC markers: a fragment starting with one starts a frame.
_FRAME_START_MARKERS = (b"\xff\xd8", b"\xff\x4f\xff\x51")
#: Encapsulated syntaxes of still images, where every frame has at least one fragment
#: (PS3.5 A.4); a video stream (MPEG, HEVC) may hold many frames in one fragment.
_FRAME_FRAGMENTS = frozenset(syntax for syntaxes in IMAGE_MEDIA_TYPES.values() for syntax in syntaxes)


class FrameMapError(ValueError):
    """The frames are all there but cannot be located by offset (they are served by decoding)."""


class PixelDataError(ValueError):
    """The Pixel Data is not what its header and the Image Pixel module say; the message says how."""


@dataclass(frozen=True)
class ImagePixel:
    """The Image Pixel attributes that size native pixel data (PS3.3 C.7.6.3); None when
    absent or not a number (validation reports an undecodable value, not this module)."""

    rows: int | None
    columns: int | None
    samples_per_pixel: int
    bits_allocated: int | None
    number_of_frames: int
    photometric_interpretation: str

    @classmethod
    def of(cls, ds: Dataset) -> ImagePixel:
        return cls(
            _int(ds, _ROWS),
            _int(ds, _COLUMNS),
            _int(ds, _SAMPLES_PER_PIXEL) or 1,
            _int(ds, _BITS_ALLOCATED),
            max(_int(ds, _NUMBER_OF_FRAMES) or 1, 1),
            str(_value(ds, _PHOTOMETRIC_INTERPRETATION) or "").strip(),
        )

    def frame_length(self) -> int | None:
        """Bytes per frame (no pad byte), or None if not byte-aligned or not known."""
        if not self.rows or not self.columns or not self.bits_allocated:
            return None
        total_bits = self.rows * self.columns * self.samples_per_pixel * self.bits_allocated
        return None if total_bits % 8 else total_bits // 8

    def needed_bytes(self) -> int | None:
        """Bytes all frames need (PS3.5 §8.1.1; YBR_FULL_422: PS3.3 C.7.6.3.1.2), counted as
        pydicom counts them; None when the attributes do not say."""
        rows, columns, bits = self.rows, self.columns, self.bits_allocated
        if not rows or not columns or not bits or (bits != 1 and bits % 8):
            return None
        values = rows * columns * self.samples_per_pixel * self.number_of_frames
        length = (values + 7) // 8 if bits == 1 else values * (bits // 8)
        if self.photometric_interpretation == "YBR_FULL_422":
            length = length // 3 * 2  # two luminance samples share one pair of chrominance samples
        return length


_ROWS, _COLUMNS, _SAMPLES_PER_PIXEL, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280002, 0x00280100
_NUMBER_OF_FRAMES, _PHOTOMETRIC_INTERPRETATION = 0x00280008, 0x00280004


def _value(ds: Dataset, tag: int) -> Any:
    element = ds.get(tag)
    return None if element is None else element.value


def _int(ds: Dataset, tag: int) -> int | None:
    try:
        value = _value(ds, tag)
        return None if value is None or value == "" else int(value)
    except Exception:  # an undecodable or malformed value: validation reports it
        return None


def number_of_frames(ds: Dataset) -> int:
    return max(_int(ds, _NUMBER_OF_FRAMES) or 1, 1)


def build_frame_map(fp: IO[bytes], ds: Dataset, transfer_syntax: str, size: int) -> dict | None:
    """Check the pixel data element that starts at fp's position and locate its frames.

    `fp` must be positioned where pydicom stopped reading the header with
    stop_before_pixels=True, `size` is the size of the file. Leaves fp after the element.
    Raises PixelDataError when the element runs past the end of the file, its items do
    not parse, or it holds fewer bytes or fragments than the frames need. Returns None
    when there is no pixel data or its frames cannot be located by offset.
    """
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    start = fp.tell()
    big_endian, implicit = transfer_syntax == EXPLICIT_VR_BIG_ENDIAN, transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    header = read_element_header(fp, big_endian, implicit)
    if header is None or header[0] not in PIXEL_TAGS:
        fp.seek(start)
        return None
    tag, vr, length = header
    name = f"{PIXEL_TAGS[tag]} ({tag[0]:04X},{tag[1]:04X})"
    if vr is not None and vr not in STANDARD_VRS:
        raise PixelDataError(f"{name} has the value representation {vr!r}, which DICOM does not define")
    value_offset = fp.tell()
    if length == _UNDEFINED_LENGTH:
        items = _read_items(fp, name, size)
        try:
            return {"fragments": _encapsulated_frames(fp, ds, transfer_syntax, name, items)}
        except FrameMapError as exc:
            log.info("frames of an instance cannot be located by offset: %s", exc)
            return None
        finally:
            fp.seek(items.end)
    if value_offset + length > size:
        raise PixelDataError(
            f"{name} has a value length of {length} bytes, but only {size - value_offset} bytes remain in the file"
        )
    fp.seek(value_offset + length)
    if transfer_syntax not in NATIVE:
        return None  # encapsulated data must have undefined length; a syntax we do not know, we cannot check
    image = ImagePixel.of(ds)
    needed = image.needed_bytes()
    if needed is not None and needed > length:
        raise PixelDataError(
            f"{name} holds {length} bytes, but Rows x Columns x Samples per Pixel x Bits Allocated "
            f"x Number of Frames needs {needed}"
        )
    frame_length, frames = image.frame_length(), image.number_of_frames
    if tag != PIXEL_DATA_TAG or frame_length is None or frame_length * frames > length:
        return None
    return {"native": [value_offset, frame_length, frames]}


def read_element_header(
    fp: IO[bytes], big_endian: bool, implicit: bool
) -> tuple[tuple[int, int], str | None, int] | None:
    """(tag, VR or None in implicit VR, value length) of the element at fp; None at the end of the file.

    An explicit VR file may hold an element in implicit VR (some writers do so for
    Pixel Data): two bytes that are not capital letters where the VR should be mean
    implicit VR, as pydicom reads them.
    """
    start = fp.read(8)
    if len(start) < 8:
        return None
    order = ">" if big_endian else "<"
    group, element = struct.unpack(order + "HH", start[:4])
    vr = start[4:6]
    if implicit or not (b"AA" <= vr <= b"ZZ"):
        (length,) = struct.unpack(order + "L", start[4:8])
        return (group, element), None, length
    if vr in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return None
        (length,) = struct.unpack(order + "L", more)
    else:
        (length,) = struct.unpack(order + "H", start[6:8])
    return (group, element), vr.decode("latin-1"), length


class _Items(list[tuple[int, int]]):
    """(value offset, length) of each item of encapsulated pixel data; `end` is after its delimiter."""

    end: int = 0


def _read_items(fp: IO[bytes], name: str, size: int) -> _Items:
    """Every item up to the Sequence Delimitation Item (PS3.5 A.4), each checked against the file."""
    items = _Items()
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise PixelDataError(f"{name} ends without a Sequence Delimitation Item")
        group, element, length = struct.unpack("<HHL", head)
        if group != 0xFFFE or element not in (_ITEM, _SEQUENCE_DELIMITER):
            raise PixelDataError(
                f"{name} has ({group:04X},{element:04X}) where an item or the Sequence Delimitation Item must be"
            )
        if element == _SEQUENCE_DELIMITER:
            items.end = fp.tell()
            return items
        if length == _UNDEFINED_LENGTH:
            raise PixelDataError(f"{name} has an item of undefined length")
        offset = fp.tell()
        if offset + length > size:
            raise PixelDataError(
                f"{name} has an item of {length} bytes, but only {size - offset} bytes remain in the file"
            )
        items.append((offset, length))
        fp.seek(offset + length)


def _encapsulated_frames(
    fp: IO[bytes], ds: Dataset, transfer_syntax: str, name: str, items: list[tuple[int, int]]
) -> list[list[list[int]]]:
    """The fragments of each frame; PixelDataError when there are fewer frames than Number of Frames."""
    if not items:
        raise PixelDataError(f"{name} has no Basic Offset Table item")
    (bot_offset, bot_length), fragments = items[0], items[1:]
    frames = number_of_frames(ds)
    # Each frame of a still image has at least one fragment; a video stream need not.
    per_frame = transfer_syntax in _FRAME_FRAGMENTS
    if not fragments or (per_frame and len(fragments) < frames):
        raise PixelDataError(
            f"{name} holds {len(fragments)} fragment(s), fewer than the {frames} frame(s) of Number of Frames"
        )
    first_item_start = fragments[0][0] - 8

    starts: list[int] | None = None
    try:
        if bot_length:
            fp.seek(bot_offset)
            table = fp.read(bot_length)
            starts = [first_item_start + v for v in struct.unpack(f"<{bot_length // 4}L", table[: bot_length // 4 * 4])]
        elif "ExtendedOffsetTable" in ds:
            table = ds.ExtendedOffsetTable
            starts = [first_item_start + v for v in struct.unpack(f"<{len(table) // 8}Q", table[: len(table) // 8 * 8])]
    except Exception:  # an offset table that cannot be read is ignored, as decoders may ignore it
        starts = None

    if starts is not None:
        if per_frame and len(starts) < frames:
            raise PixelDataError(
                f"the offset table of {name} lists {len(starts)} frame(s), fewer than the {frames} of Number of Frames"
            )
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
