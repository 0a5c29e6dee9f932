"""Extended query tags as values: which tags and VRs can be indexed, and an instance's value of one.

An extended query tag (the reference server's name) makes one more attribute searchable at
a level. What gets indexed is the attribute's first value, normalised so that SQL compares
it as QIDO matches it: text for the string VRs (a person name folded as PatientName is, a
time as HHMMSS.ffffff, a date-time as YYYYMMDDHHMMSS.ffffff), a number for the numeric
ones. A value that is not valid for its VR is not indexed: the caller records why.

Private tags are indexed only where the data's private creator for the element's block is
the one the tag names, so the same element number of another vendor's block never matches.
An implicit-VR private element reaches the DICOM JSON as UN (InlineBinary): its bytes are
read with the VR the tag declares.
"""
from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from .dicomjson import DicomJson, name_key, normalize_time
from .validation import is_valid_value

#: The VRs an extended query tag may have (the reference's list).
SUPPORTED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "PN", "SH", "SL", "SS", "TM", "UI", "UL", "US"}
)
#: VRs indexed as numbers (matched by value: '1.50' finds 1.5).
NUMBER_VRS = frozenset({"DS", "FD", "FL", "IS", "SL", "SS", "UL", "US"})
#: How each VR is matched in QIDO (matching.Attribute.kind).
KIND = {
    **dict.fromkeys(("AE", "AS", "CS", "LO", "SH"), "string"),
    "PN": "name",
    "UI": "uid",
    "DA": "date",
    "TM": "time",
    "DT": "datetime",
    **dict.fromkeys(NUMBER_VRS, "number"),
}
LEVELS = ("Study", "Series", "Instance")
#: Most extended query tags a server keeps (the reference's limit).
MAX_TAGS = 128

_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_BINARY = {"FD": "<d", "FL": "<f", "SL": "<l", "SS": "<h", "UL": "<L", "US": "<H"}


class InvalidTag(ValueError):
    """A tag path, VR, private creator or level that cannot be an extended query tag."""


def parse_tag_path(path: str) -> str:
    """A tag path as GGGGEEEE (upper case): 8 hex digits, or a standard keyword."""
    text = path.strip()
    if _HEX_TAG.fullmatch(text):
        return text.upper()
    tag = tag_for_keyword(text)
    if tag is None:
        raise InvalidTag(f"{path!r} is neither a tag (8 hex digits) nor a DICOM keyword")
    return f"{tag:08X}"


def is_private(path: str) -> bool:
    return int(path[:4], 16) % 2 == 1


def name_of(path: str) -> str:
    """A tag's keyword, or its GGGGEEEE for a private or unknown one (as a query parameter names it)."""
    return keyword_for_tag(int(path, 16)) or path


def display(path: str) -> str:
    """A tag as people read it: its keyword, or (GGGG,EEEE) for a private or unknown one."""
    return keyword_for_tag(int(path, 16)) or f"({path[:4]},{path[4:]})"


@dataclass(frozen=True)
class TagDefinition:
    path: str
    vr: str
    private_creator: str | None
    level: str


def check_definition(path: str, vr: str | None, private_creator: str | None, level: str | None) -> TagDefinition:
    """A tag definition as the reference server accepts one, with the VR filled in; InvalidTag says why not."""
    tag = parse_tag_path(path)
    canonical_level = next((lv for lv in LEVELS if level is not None and lv.lower() == str(level).lower()), None)
    if canonical_level is None:
        raise InvalidTag(f"the level of {display(tag)} must be one of Study, Series, Instance, got {level!r}")
    group, element = int(tag[:4], 16), int(tag[4:], 16)
    vr = vr.strip().upper() if vr else None
    if group <= 0x0007 or group == 0xFFFE:
        raise InvalidTag(f"{display(tag)} is not an attribute of a dataset")
    if is_private(tag):
        if element < 0x1000:
            raise InvalidTag(f"{display(tag)} is a private creator or reserved element, not a private attribute")
        if not private_creator or not private_creator.strip():
            raise InvalidTag(f"the private tag {display(tag)} needs a privateCreator")
        if len(private_creator) > 64 or "\\" in private_creator:
            raise InvalidTag(f"privateCreator {private_creator!r} is not a valid LO value")
        if vr is None:
            raise InvalidTag(f"the private tag {display(tag)} needs a vr")
        private_creator = private_creator.strip()
    else:
        if private_creator:
            raise InvalidTag(f"{display(tag)} is a standard tag: it takes no privateCreator")
        try:
            dictionary = dictionary_VR(int(tag, 16))
        except KeyError:
            raise InvalidTag(f"{tag} is not a tag of the DICOM dictionary") from None
        if dictionary == "SQ":
            raise InvalidTag(f"{display(tag)} is a sequence: only attributes outside sequences can be indexed")
        if vr is None:
            vr = dictionary if dictionary in SUPPORTED_VRS else next(
                (v for v in dictionary.split(" or ") if v in SUPPORTED_VRS), dictionary
            )
        elif vr not in dictionary.split(" or "):
            raise InvalidTag(f"the vr of {display(tag)} is {dictionary}, not {vr}")
    if vr not in SUPPORTED_VRS:
        raise InvalidTag(
            f"{display(tag)} has VR {vr}, which cannot be indexed; supported: {', '.join(sorted(SUPPORTED_VRS))}"
        )
    return TagDefinition(tag, vr, private_creator, canonical_level)


@dataclass(frozen=True)
class IndexedValue:
    text: str | None = None
    number: float | None = None


def value_of(meta: DicomJson, path: str, vr: str, private_creator: str | None) -> IndexedValue | None:
    """The value to index of one instance (None: absent or empty); InvalidTag if it is not valid for `vr`."""
    if private_creator is not None and not _creator_matches(meta, path, private_creator):
        return None
    element = meta.get(path)
    if not element:
        return None
    values = element.get("Value")
    if not values and "InlineBinary" in element:
        values = _decode_binary(element["InlineBinary"], vr)
    if not values:
        return None
    value = values[0]
    if value is None or value == "":
        return None
    return _normalised(vr, value)


def _creator_matches(meta: DicomJson, path: str, private_creator: str) -> bool:
    creator = meta.get(f"{path[:4]}00{path[4:6]}") or {}
    values = creator.get("Value") or []
    if not values and "InlineBinary" in creator:
        values = _decode_binary(creator["InlineBinary"], "LO")
    return bool(values) and str(values[0]).strip() == private_creator


def _decode_binary(inline: str, vr: str) -> list[Any]:
    """An implicit-VR value (UN in the DICOM JSON) read as `vr` (little endian)."""
    try:
        raw = base64.b64decode(inline)
    except ValueError:
        return []
    if vr in _BINARY:
        fmt = _BINARY[vr]
        size = struct.calcsize(fmt)
        if not raw or len(raw) % size:
            raise InvalidTag(f"{len(raw)} bytes are not a whole number of {vr} values")
        return [struct.unpack_from(fmt, raw, offset)[0] for offset in range(0, len(raw), size)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTag("the value is not text") from None
    return [v.strip(" \x00") for v in text.split("\\")]


def _normalised(vr: str, value: Any) -> IndexedValue:
    if vr == "PN":
        text = value.get("Alphabetic") if isinstance(value, dict) else str(value)
        if not text:
            return IndexedValue()
        _require(is_valid_value("PN", text), vr, text)
        return IndexedValue(text=name_key(text.strip()))
    if vr in NUMBER_VRS:
        if isinstance(value, str):
            text = value.strip()
            _require(is_valid_value(vr, text), vr, text)
            number = float(text)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise InvalidTag(f"{value!r} is not a number")
        if number != number or number in (float("inf"), float("-inf")):
            raise InvalidTag(f"{value!r} is not a finite number")
        if vr == "FL":  # a 32-bit float's digits (0.1 is stored as 0.100000001...): what was meant
            number = float(f"{number:.7g}")
        return IndexedValue(number=number)
    text = str(value).strip()
    _require(is_valid_value(vr, text), vr, text)
    if vr == "TM":
        time = normalize_time(text)
        _require(time is not None, vr, text)
        return IndexedValue(text=time)
    if vr == "DT":
        return IndexedValue(text=normalize_datetime(text))
    if vr == "UI":
        text = text.rstrip("\x00")
    return IndexedValue(text=text)


def _require(ok: bool, vr: str, value: Any) -> None:
    if not ok:
        shown = repr(value if len(str(value)) <= 64 else str(value)[:60] + "...")
        raise InvalidTag(f"{shown} is not a valid {vr} value")


_DT = re.compile(r"([0-9]{4})([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?(\.[0-9]{1,6})?([+-][0-9]{4})?")


def normalize_datetime(text: str, *, upper: bool = False) -> str:
    """DT 'YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]' as 'YYYYMMDDHHMMSS.ffffff' (the offset dropped: local time,
    as the reference treats it); missing components take their least value, or their greatest with `upper`."""
    match = _DT.fullmatch(text.strip())
    if match is None:
        raise InvalidTag(f"{text!r} is not a DT value (YYYY[MM[DD[HH[MM[SS[.ffffff]]]]]])")
    year, month, day, hour, minute, second, fraction, _offset = match.groups()
    low = ("01", "01", "00", "00", "00")
    high = ("12", "31", "23", "59", "59")
    parts = [month, day, hour, minute, second]
    filled = [p if p is not None else (high if upper else low)[i] for i, p in enumerate(parts)]
    if not (1 <= int(filled[0]) <= 12 and 1 <= int(filled[1]) <= 31 and int(filled[2]) <= 23
            and int(filled[3]) <= 59 and int(filled[4]) <= 60):
        raise InvalidTag(f"{text!r} is not a DT value")
    digits = (fraction or ".")[1:]
    digits = (digits + ("9" if upper else "0") * 6)[:6]
    return f"{year}{''.join(filled)}.{digits}"
