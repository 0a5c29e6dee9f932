"""A reader of a Part 10 file's element stream that converts values straight from bytes.

STOW parses, validates and converts to DICOM JSON every element of every instance.
Through pydicom that costs about a millisecond of CPU per instance, most of it in
building DataElement values no one keeps. This module reads the common case (a file
in explicit or implicit VR little endian, native or encapsulated pixel data, the
default, Latin-1 or UTF-8 character set, every value valid) from the raw bytes: tag,
VR, length and value offset per element, values above the defer size left unread, and
each value converted and checked per VR as `dicomjson.py` and `validation.py` do it.

It is exact or it declines: whatever it does not handle the way pydicom would (big
endian, deflate, other character sets, UN that pydicom would read as a known VR,
ambiguous implicit VRs other than 'US or SS', an invalid value,
any structure that is not plainly well formed) raises `Unhandled` before any result
exists, and the caller takes the pydicom path, which then decides the outcome and its
message. tests/test_header.py runs both paths over every sample file and compares.
"""
from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import IO, Any

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.uid import UID, AllTransferSyntaxes
from pydicom.valuerep import MAX_VALUE_LEN, STR_VR_REGEXES

from .dicomjson import BulkMap, DicomJson
from .transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from .validation import _TEXT_VRS, STANDARD_VRS, _surely_valid

# pydicom's own tables of the tags it reads specially; private names, so a pydicom that moves
# them leaves the fast path declining every such tag (and the LUT descriptors as of 3.0).
try:
    from pydicom.filewriter import _AMBIGUOUS_US_SS_TAGS
except ImportError:  # pragma: no cover - depends on the pydicom release
    _AMBIGUOUS_US_SS_TAGS = set()
try:
    from pydicom.tag import _LUT_DESCRIPTOR_TAGS
except ImportError:  # pragma: no cover
    _LUT_DESCRIPTOR_TAGS = (0x00281101, 0x00281102, 0x00281103, 0x00283002)


class Unhandled(Exception):
    """The fast reader does not handle this file exactly as pydicom would: use pydicom."""


#: Transfer syntaxes read here: the little endian ones pydicom reads without inflating.
FAST_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN}
    | {
        str(ts)
        for ts in AllTransferSyntaxes
        if UID(ts).is_encapsulated and UID(ts).is_little_endian and not UID(ts).is_deflated
    }
)
#: Where pydicom's stop_before_pixels stops: Pixel Data, Float and Double Float Pixel Data.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})  # and UN, once check_unknown says pydicom keeps it
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VRS = {vr.encode(): vr for vr in STANDARD_VRS}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_CHARSET = 0x00080005
#: Specific Character Set values whose text decodes with one Python codec, as pydicom maps them.
_ENCODINGS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
#: struct formats of the binary number VRs.
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
_NUMBER_FORMATS = {vr: (struct.calcsize("<" + fmt), fmt) for vr, fmt in _NUMBERS.items()}
#: (longest value, regex) of each VR validation._surely_valid checks a text value of:
#: the same tables, so a value passed here is one pydicom's validate_value passes.
_CHECKS = {vr: (MAX_VALUE_LEN.get(vr), STR_VR_REGEXES.get(vr)) for vr in _TEXT_VRS}
_TEXT_DECODED = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})  # decoded with the character set
_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})
_STRING = frozenset({"AS", "CS", "DA", "DT", "TM"})
#: pydicom reads values up to this size; larger ones at the top level are skipped (ingest._DEFER_SIZE).
DEFER_SIZE = 64 * 1024
_CHUNK = 64 * 1024
_MAX_FALLBACK_INLINE = 1 << 20
_dictionary_vrs: dict[int, str] = {}
_US_OR_SS = "US or SS"
_PIXEL_REPRESENTATION = 0x00280103
#: LUT Descriptors, whose first value pydicom reads as US whatever the VR says.
_LUT_DESCRIPTORS = frozenset(int(tag) for tag in _LUT_DESCRIPTOR_TAGS)


@dataclass(slots=True)
class Element:
    """One element as read: `offset` is where its value starts in the file; `value` is
    None when it was too large to read (top level only); `items` for a sequence.

    `tell` is the value offset pydicom records (relative to the value of the nearest
    enclosing defined-length sequence), which `dicomjson` adds up to locate bulk data."""

    tag: int
    vr: str
    length: int
    offset: int
    tell: int
    value: bytes | None = None
    items: list[list[Element]] | None = None
    #: The element's DICOM JSON, once converted (binary and sequences: never).
    json: dict[str, Any] | None = None


@dataclass
class Header:
    transfer_syntax: str
    implicit: bool
    elements: list[Element]
    #: Where the Pixel Data element (or the end of the data set) starts.
    pixel_offset: int


class _Source:
    """The file, read forward in chunks: each element header and value is sliced from a buffer."""

    def __init__(self, fp: IO[bytes], size: int, start: int = 0):
        self.fp = fp
        self.size = size
        self.base = start
        fp.seek(start)
        self.data = fp.read(min(size - start, _CHUNK))

    def ensure(self, pos: int, n: int) -> int:
        """Index in self.data of file offset `pos`, with n bytes there; Unhandled past the end."""
        off = pos - self.base
        if off < 0 or off + n > len(self.data):
            if pos + n > self.size:
                raise Unhandled("read past the end")
            self.fp.seek(pos)
            self.data = self.fp.read(max(n, _CHUNK))
            self.base = pos
            off = 0
            if n > len(self.data):
                raise Unhandled("the file is shorter than its size")
        return off


def read_header(fp: IO[bytes], size: int, *, stop_after: int | None = None) -> Header:
    """Parse the file meta and every element before Pixel Data (or, with `stop_after`, up to
    that tag, as `ingest.identify` reads); Unhandled for anything unusual."""
    if size < 144:
        raise Unhandled("too short")
    src = _Source(fp, size)
    off = src.ensure(128, 4)
    if src.data[off : off + 4] != b"DICM":
        raise Unhandled("no DICM")
    meta, pos = _read_dataset(src, 132, size, False, 0, top=True, meta=True)
    transfer_syntax = None
    for element in meta:
        if element.tag == 0x00020010:
            assert element.value is not None
            transfer_syntax = element.value.decode("latin-1").rstrip("\0 ")
    if transfer_syntax is None or transfer_syntax not in FAST_SYNTAXES or pos >= size:
        raise Unhandled("transfer syntax")
    implicit = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    off = src.ensure(pos, 8)
    first = src.data[off + 4 : off + 6]
    if implicit and all(0x40 < c < 0x5B for c in first):
        raise Unhandled("implicit VR announced, explicit found")  # pydicom would switch
    elements, pixel_offset = _read_dataset(src, pos, size, implicit, 0, top=True, stop_after=stop_after)
    return Header(transfer_syntax, implicit, elements, pixel_offset)


def read_trailer(fp: IO[bytes], start: int, size: int, implicit: bool) -> None:
    """Check the elements after Pixel Data as `ingest._check_after_pixel_data` would pass them."""
    src = _Source(fp, size, start)
    if implicit and size - start >= 8:
        off = src.ensure(start, 8)
        first = src.data[off + 4 : off + 6]
        if all(0x40 < c < 0x5B for c in first):
            raise Unhandled("implicit VR announced, explicit found")
    _read_dataset(src, start, size, implicit, 0, top=False, trailer=True)


def _dictionary_vr(tag: int) -> str | None:
    """pydicom's dictionary VR of a public tag, None for an unknown one (cached: known tags
    are finitely many; unknown ones are not cached, so input cannot grow the cache)."""
    vr = _dictionary_vrs.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
        _dictionary_vrs[tag] = vr
    return vr


_EXPLICIT_HEADER = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEADER = struct.Struct("<HHL").unpack_from
_LONG_LENGTH = struct.Struct("<L").unpack_from


def _read_dataset(
    src: _Source,
    pos: int,
    end: int | None,
    implicit: bool,
    origin: int,
    *,
    top: bool = False,
    meta: bool = False,
    trailer: bool = False,
    stop_after: int | None = None,
) -> tuple[list[Element], int]:
    """Elements from `pos` to `end` (None: to an Item Delimitation Item); (elements, where it ended).

    `origin` is the file offset pydicom's value offsets are relative to here."""
    elements: list[Element] = []
    append = elements.append
    last_tag = -1
    limit = src.size if end is None else end
    stop_at_pixels = top and not meta and not trailer
    deferring = (top or trailer) and not meta
    data, base = src.data, src.base
    while True:
        if end is not None and pos >= end:
            if pos != end:
                raise Unhandled("overrun")
            return elements, pos
        if pos + 8 > limit:
            if stop_at_pixels and pos == limit:
                return elements, pos
            raise Unhandled("truncated element")
        off = pos - base
        if off < 0 or off + 12 > len(data):
            off = src.ensure(pos, 12 if pos + 12 <= limit else 8)
            data, base = src.data, src.base
        if implicit:
            group, elem, length = _IMPLICIT_HEADER(data, off)
        else:
            group, elem, vr_bytes, length = _EXPLICIT_HEADER(data, off)
        tag = group << 16 | elem
        if meta and group != 2:
            return elements, pos
        if stop_at_pixels and (tag in PIXEL_TAGS or (stop_after is not None and tag > stop_after)):
            return elements, pos
        if tag == _ITEM_END and end is None:
            if _LONG_LENGTH(data, off + 4)[0] != 0:
                raise Unhandled("item delimiter with a length")
            return elements, pos + 8
        if tag <= last_tag or group == 0x0000 or group == 0xFFFE or (group == 2) != meta or tag in _LUT_DESCRIPTORS:
            raise Unhandled("unordered, duplicate or unusual tag")
        if tag == _CHARSET and not top:
            raise Unhandled("character set in an item")
        last_tag = tag
        if implicit:
            if group & 1 or elem == 0:
                raise Unhandled("private or group length tag in implicit VR")
            vr = _dictionary_vr(tag)
            if vr is None or (" or " in vr and not (vr == _US_OR_SS and top and tag in _AMBIGUOUS_US_SS_TAGS)):
                raise Unhandled("no single dictionary VR")  # 'US or SS' is resolved by the Converter
            value_pos = pos + 8
        else:
            vr = _VRS.get(vr_bytes)
            if vr is None or (vr == "UN" and length == _UNDEFINED):
                raise Unhandled("VR")  # pydicom reads UN of undefined length as an implicit VR sequence
            if vr_bytes in _LONG_VRS:
                if pos + 12 > limit:
                    raise Unhandled("truncated element")
                (length,) = _LONG_LENGTH(data, off + 8)
                value_pos = pos + 12
            else:
                value_pos = pos + 8
        element = Element(tag, vr, length, value_pos, value_pos - origin)
        if vr == "SQ":
            if length == _UNDEFINED:
                element.items, pos = _read_items(src, value_pos, None, implicit, origin)
            else:
                if value_pos + length > limit:
                    raise Unhandled("sequence past the end")
                element.items, pos = _read_items(src, value_pos, value_pos + length, implicit, value_pos)
            data, base = src.data, src.base
        else:
            pos = value_pos + length
            if length == _UNDEFINED or pos > limit:
                raise Unhandled("undefined length or past the end")
            if deferring and length > DEFER_SIZE:
                if vr not in _BULK_VRS and vr != "UN":
                    raise Unhandled("large non-binary value")
            else:
                voff = value_pos - base
                if voff + length > len(data):
                    voff = src.ensure(value_pos, length)
                    data, base = src.data, src.base
                element.value = data[voff : voff + length]
        append(element)


def _read_items(
    src: _Source, pos: int, end: int | None, implicit: bool, origin: int
) -> tuple[list[list[Element]], int]:
    """The items of a sequence from `pos` to `end` (None: to its Sequence Delimitation Item)."""
    items: list[list[Element]] = []
    while True:
        if end is not None and pos >= end:
            if pos != end:
                raise Unhandled("overrun")
            return items, pos
        off = src.ensure(pos, 8)
        tag_group, tag_elem, length = struct.unpack_from("<HHL", src.data, off)
        tag = tag_group << 16 | tag_elem
        if tag == _SEQUENCE_END and end is None:
            if length:
                raise Unhandled("sequence delimiter with a length")
            return items, pos + 8
        if tag != _ITEM:
            raise Unhandled("not an item")
        # An item whose elements are not in explicit VR (pydicom would switch to implicit VR
        # for it) stops _read_dataset at its first element, whose VR is not one DICOM defines.
        start = pos + 8
        if length == _UNDEFINED:
            elements, pos = _read_dataset(src, start, None, implicit, origin)
        else:
            if start + length > (src.size if end is None else end):
                raise Unhandled("item past the end")
            elements, pos = _read_dataset(src, start, start + length, implicit, origin)
        items.append(elements)


_UID_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)
_PIXEL_MODULE_TAGS = {
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280002: "SamplesPerPixel",
    0x00280100: "BitsAllocated",
    0x00280008: "NumberOfFrames",
    0x00280004: "PhotometricInterpretation",
    0x7FE00001: "ExtendedOffsetTable",
}


class PixelModule:
    """The few attributes `frames.build_frame_map` and `ingest._pixel_data_vr` read from a
    pydicom Dataset (`get` by tag or keyword, `in`, an attribute), with pydicom's values."""

    class _Value:
        def __init__(self, value: Any):
            self.value = value

    def __init__(self, values: dict[str, Any]):
        self._values = values
        self._tags = {tag: keyword for tag, keyword in _PIXEL_MODULE_TAGS.items() if keyword in values}

    def get(self, key: int | str, default: Any = None) -> Any:
        if isinstance(key, str):
            return self._values.get(key, default)
        keyword = self._tags.get(key)
        return default if keyword is None else self._Value(self._values[keyword])

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self.__dict__["_values"][keyword]
        except KeyError:
            raise AttributeError(keyword) from None


class Converter:
    """Converts a header's values as `dicomjson.dataset_to_json` would, and checks them as
    `validation.invalid_attributes` would: Unhandled for any value not plainly valid."""

    def __init__(self, header: Header, fp: IO[bytes]):
        self.header = header
        self.fp = fp
        self.encoding = _encoding(header.elements)
        if header.implicit:
            _resolve_us_or_ss(header.elements)
        self.instance_path = ""
        self.inline_threshold = 0
        self.bulk: BulkMap = {}

    def identifying_uids(self) -> dict[int, str | None]:
        """The text of each identifying UID by tag ('' when empty, None when absent)."""
        uids: dict[int, str | None] = dict.fromkeys(_UID_TAGS)
        for element in self.header.elements:
            if element.tag in uids:
                values = self.value(element).get("Value")
                if values is not None and len(values) != 1:
                    raise Unhandled("several values of an identifying UID")
                uids[element.tag] = "" if values is None else values[0]
            elif element.tag > 0x0020000E:
                break
        return uids

    def pixel_module(self) -> PixelModule:
        """The Image Pixel values pydicom's Dataset would hold (one value each)."""
        values: dict[str, Any] = {}
        for element in self.header.elements:
            keyword = _PIXEL_MODULE_TAGS.get(element.tag)
            if keyword is not None:
                values[keyword] = self.pixel_value(element)
        return PixelModule(values)

    def pixel_value(self, element: Element) -> Any:
        if element.vr in _BULK_VRS:
            if element.length == 0:
                return None
            if element.value is None:
                self.fp.seek(element.offset)
                return self.fp.read(element.length)
            return element.value
        values = self.value(element).get("Value")
        if values is None:
            return None if element.vr in _NUMBERS else ""
        if len(values) != 1:
            raise Unhandled("a multi-valued Image Pixel attribute")
        return values[0]

    def to_json(self, instance_path: str, inline_threshold: int) -> tuple[DicomJson, BulkMap]:
        """The DICOM JSON and bulk data map of the header."""
        self.instance_path = instance_path
        self.inline_threshold = inline_threshold
        self.bulk = {}
        return self.dataset(self.header.elements, 0, ""), self.bulk

    def dataset(self, elements: list[Element], base: int, path: str) -> DicomJson:
        out: DicomJson = {}
        for element in elements:
            key = f"{element.tag:08X}"
            vr = element.vr
            if vr == "UN":
                self.check_unknown(element, elements)
                value = self.binary(element, base, path + key)
                if value is None:
                    continue
            elif vr in _BULK_VRS:
                value = self.binary(element, base, path + key)
                if value is None:
                    continue
            elif vr == "SQ":
                item_base = base + element.tell
                items = [
                    self.dataset(item, item_base, f"{path}{key}/{number}/")
                    for number, item in enumerate(element.items or ())
                ]
                value = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                value = self.value(element)
            out[key] = value
        return out

    def value(self, element: Element) -> dict[str, Any]:
        """An element's DICOM JSON (`dicomjson.element_json`), Unhandled unless its value is valid."""
        converted = element.json
        if converted is None:
            converted = element.json = self._value(element.vr, element.value)
        return converted

    def _value(self, vr: str, raw: bytes | None) -> dict[str, Any]:
        if not raw:
            return {"vr": vr}
        checks = _CHECKS.get(vr)
        if checks is not None:  # a text VR (as validation._surely_valid has them)
            if vr in _TEXT_DECODED:
                if b"\x1b" in raw:
                    raise Unhandled("escape sequence")
                try:
                    text = raw.decode(self.encoding)
                except UnicodeDecodeError:
                    raise Unhandled("undecodable text") from None
                if vr in _SINGLE_TEXT:
                    values = [text.rstrip("\0 ")]
                else:
                    values = [v.rstrip("\0 ") for v in text.split("\\")]
            else:
                text = raw.decode("latin-1")
                if vr in _STRING:
                    values = text.rstrip(" \x00").split("\\")
                elif vr == "UI":
                    values = text.rstrip("\0 ").split("\\")
                elif vr == "DS":
                    return self.numbers(vr, text.strip().rstrip(" \x00").split("\\"), float)
                elif vr == "IS":
                    return self.numbers(vr, text.rstrip(" \x00").split("\\"), int)
                elif vr == "AE":
                    values = [v.strip() for v in text.split("\\")]
                else:  # UR
                    values = [text.rstrip()]
            longest, regex = checks
            for v in values:
                if v and (
                    (longest is not None and len(v) > longest)
                    or (regex is not None and (regex.match(v) is None or v.endswith("\n")))
                ):
                    raise Unhandled("a value to validate")
            if len(values) == 1:
                if not values[0]:
                    return {"vr": vr}
                return {"vr": vr, "Value": [values[0].strip(" ")] if vr == "CS" else values}
            if vr == "CS":  # dicomjson.standard_strings
                values = [v.strip(" ") for v in values]
            return {"vr": vr, "Value": [v if v != "" else None for v in values]}
        number = _NUMBER_FORMATS.get(vr)
        if number is not None:
            size, fmt = number
            count, rest = divmod(len(raw), size)
            if rest:
                raise Unhandled("number of the wrong length")
            numbers = list(struct.unpack(f"<{count}{fmt}", raw))
            return {"vr": vr, "Value": numbers}
        if vr == "PN":
            if b"\x1b" in raw:
                raise Unhandled("escape sequence")
            try:
                text = raw.rstrip(b"\x00 ").decode(self.encoding)
            except UnicodeDecodeError:
                raise Unhandled("undecodable text") from None
            return self.person_name(text.split("\\"))
        if vr == "AT":
            if len(raw) % 4:
                raise Unhandled("AT of the wrong length")
            tags = struct.unpack(f"<{len(raw) // 2}H", raw)
            return {"vr": vr, "Value": [f"{tags[i] << 16 | tags[i + 1]:08X}" for i in range(0, len(tags), 2)]}
        raise Unhandled("VR")

    @staticmethod
    def numbers(vr: str, values: list[str], kind: type) -> dict[str, Any]:
        if len(values) == 1 and not values[0].strip():
            return {"vr": vr}
        out = []
        for v in values:
            text = v.strip()
            if not text or not _surely_valid(vr, text):
                raise Unhandled("a number to validate")
            number = kind(text)
            if kind is int and not -(2**31) <= number < 2**31:
                raise Unhandled("IS out of range")
            out.append(number)
        return {"vr": vr, "Value": out}

    @staticmethod
    def person_name(values: list[str]) -> dict[str, Any]:
        if values == [""]:
            return {"vr": "PN"}
        out = []
        for v in values:
            groups = v.split("=")
            if len(groups) > 3 or any(len(g) > 64 for g in groups):
                raise Unhandled("a name to validate")
            while groups and not groups[-1]:
                groups.pop()
            if not groups:
                raise Unhandled("a name without components")  # pydicom cannot convert it
            name = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                name["Ideographic"] = groups[1]
            if len(groups) > 2:
                name["Phonetic"] = groups[2]
            out.append(name)
        return {"vr": "PN", "Value": out}

    def check_unknown(self, element: Element, elements: list[Element]) -> None:
        """Unhandled unless pydicom keeps this UN element UN (hooks.raw_element_vr replaces
        it with a dictionary VR, a private one included, when it knows the tag)."""
        tag = element.tag
        if not tag >> 16 & 1:
            if _dictionary_vr(tag) is not None:
                raise Unhandled("UN of a known tag")
            return
        if 0x0010 <= tag & 0xFFFF <= 0x00FF:
            raise Unhandled("UN private creator")
        if not tag & 0xFF00:
            return
        creator_tag = tag & 0xFFFF0000 | (tag & 0xFF00) >> 8
        creator = next((e for e in elements if e.tag == creator_tag), None)
        if creator is None:
            return
        if creator.vr != "LO":
            raise Unhandled("a private creator that is not LO")
        values = self.value(creator).get("Value")
        if not values:
            return
        if len(values) != 1:
            raise Unhandled("several private creators")
        try:
            private_dictionary_VR(tag, values[0])
        except KeyError:
            return
        raise Unhandled("UN of a known private tag")

    def binary(self, element: Element, base: int, path: str) -> dict[str, Any] | None:
        """Inline or bulk data, as `dicomjson._Converter.binary` decides."""
        vr, length = element.vr, element.length
        if length == 0:
            return {"vr": vr}
        if length <= self.inline_threshold:
            return self.inline(element)
        offset = base + element.tell
        if offset != element.offset:
            # pydicom's offsets in undefined-length sequences are not file offsets: probe as dicomjson does
            assert element.value is not None
            probe = element.value[:16]
            self.fp.seek(offset)
            if self.fp.read(len(probe)) != probe:
                return self.inline(element) if length <= _MAX_FALLBACK_INLINE else None
        self.bulk[path] = [offset, length]
        return {"vr": vr, "BulkDataURI": f"\x01{self.instance_path}/bulkdata/{path}"}

    def inline(self, element: Element) -> dict[str, Any]:
        value = element.value
        if value is None:
            self.fp.seek(element.offset)
            value = self.fp.read(element.length)
        return {"vr": element.vr, "InlineBinary": base64.b64encode(value).decode()}


def _encoding(elements: list[Element]) -> str:
    """The Python codec of the data set's Specific Character Set, as pydicom maps it."""
    for element in elements:
        if element.tag == _CHARSET:
            assert element.value is not None
            names = element.value.decode("latin-1").rstrip(" \x00").split("\\")
            if len(names) != 1 or names[0] not in _ENCODINGS:
                raise Unhandled("character set")
            return _ENCODINGS[names[0]]
        if element.tag > _CHARSET:
            break
    return "latin-1"


def _resolve_us_or_ss(elements: list[Element]) -> None:
    """Give the top-level 'US or SS' elements of an implicit VR file the VR pydicom gives them
    (filewriter.correct_ambiguous_vr_element): US when Pixel Representation is 0, else SS."""
    ambiguous = [element for element in elements if element.vr == _US_OR_SS]
    if not ambiguous:
        return
    representation = next((e for e in elements if e.tag == _PIXEL_REPRESENTATION), None)
    if representation is None or representation.vr != "US" or representation.length != 2:
        raise Unhandled("'US or SS' without a Pixel Representation")
    assert representation.value is not None
    vr = "US" if representation.value == b"\x00\x00" else "SS"
    for element in ambiguous:
        element.vr = vr
