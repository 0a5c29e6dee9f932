"""Validation of stored data sets: their encoding (strict) and their values (lenient).

Encoding (`check_encoding`, and the decoding done by `invalid_attributes`): an element
whose value runs past the end of the file or of its sequence, whose VR is not one
DICOM defines, or whose bytes do not decode as its VR makes the instance unstorable:
what follows it cannot be found for sure, so its metadata, frames and transcodes
could not be served faithfully. Such an instance is refused at STOW.

Values (PS3.5 §6.2 VR rules): the four identifying UIDs are checked by STOW itself (a
bad one fails the instance). Every other attribute is checked here: an invalid value
never makes an instance unstorable (real archives hold imperfect data; the file is
kept as sent), but it is reported back as a STOW warning and is never put into a
searchable index column, so a malformed StudyDate cannot match a date range.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import MAX_VALUE_LEN, STR_VR_REGEXES, PersonName, validate_value

from .dicomjson import BULK_VRS

#: The value representations of PS3.5 Table 6.2-1. An explicit VR file naming another
#: cannot be decoded: even the size of its length field is uncertain (PS3.5 §7.1.2).
STANDARD_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_UNDEFINED_LENGTH = 0xFFFFFFFF


class UndecodableElement(ValueError):
    """An element cannot be decoded as encoded; the message names it and says why."""


def check_encoding(ds: Dataset, file_size: int | None) -> None:
    """Raise UndecodableElement for the first element, sequences included, whose value
    runs past the end of the file (`file_size`; None when offsets are not in the file,
    as in a deflated one) or of its sequence, whose VR is not a standard one, or whose
    sequence items cannot be parsed.

    Reads no value: lengths are compared with what was read or with the file size, and
    only sequences are parsed (their items are checked the same way).
    """
    _check_elements(ds, file_size, "", "the file")


def _check_elements(ds: Dataset, file_size: int | None, path: str, container: str) -> None:
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields its elements, not their tags
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement):  # a sequence of undefined length, parsed while reading
            element, inner = raw, container
        else:
            vr, length = raw.VR, raw.length
            if vr is not None and vr not in STANDARD_VRS:
                raise UndecodableElement(
                    f"{_where(path, tag)} has the value representation {vr!r}, which DICOM does not define"
                )
            if length != _UNDEFINED_LENGTH:
                if raw.value is None:  # deferred: skipped by a seek, so never checked by a read
                    remaining = None if file_size is None else file_size - raw.value_tell
                else:
                    remaining = len(raw.value)
                if remaining is not None and remaining < length:
                    raise UndecodableElement(
                        f"{_where(path, tag)} has a value length of {length} bytes, "
                        f"but only {max(remaining, 0)} bytes remain in {container}"
                    )
            if not _may_be_sequence(raw):
                continue
            try:
                element = ds[tag]
            except Exception:  # pydicom raises many types on malformed items
                raise UndecodableElement(f"{_where(path, tag)} is a sequence whose items cannot be parsed") from None
            inner = container if length == _UNDEFINED_LENGTH else "its sequence"
        if element.VR == "SQ":
            for number, item in enumerate(element.value or [], start=1):
                _check_elements(item, file_size, f"{_where(path, tag)} item {number} > ", inner)


def _may_be_sequence(raw: RawDataElement) -> bool:
    """Whether `raw` is a sequence: explicit SQ, or in implicit VR a SQ attribute of the
    dictionary. UN values stay opaque bytes here, as everywhere else in the server."""
    if raw.VR is not None:
        return bool(raw.VR == "SQ")
    try:
        return dictionary_VR(raw.tag) == "SQ"
    except KeyError:
        return False


def _where(path: str, tag: int) -> str:
    """'element (0010,0010) PatientName', after the sequence path of a nested element."""
    keyword = keyword_for_tag(tag)
    return f"{path or 'element '}{Tag(tag)!s} {keyword}".rstrip()


def _problem(vr: str, value: Any) -> str | None:
    """Why `value` is not valid for `vr`, or None."""
    if value is None or value == "":
        return None
    if vr in ("IS", "DS"):
        value = getattr(value, "original_string", None) or str(value)
    elif isinstance(value, PersonName):
        value = str(value)
    if _surely_valid(vr, value):
        return None
    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError) as exc:
        return str(exc).split(" Please see ")[0]
    return None


#: VRs whose pydicom validator checks a str value by at most type, length and regex.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_INT_RANGES = {
    "US": (0, 0xFFFF),
    "SS": (-0x8000, 0x7FFF),
    "UL": (0, 0xFFFFFFFF),
    "SL": (-0x80000000, 0x7FFFFFFF),
    "UV": (0, 0xFFFFFFFFFFFFFFFF),
    "SV": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}


def _surely_valid(vr: str, value: Any) -> bool:
    """True only where pydicom's validate_value would pass too (every check it could
    make, done at once): the usual valid value skips pydicom's slower path, and any
    other goes through it for its verdict and message."""
    if isinstance(value, str):
        if vr not in _TEXT_VRS or len(value) > MAX_VALUE_LEN.get(vr, len(value)):
            return False
        regex = STR_VR_REGEXES.get(vr)
        return regex is None or (regex.match(value) is not None and not value.endswith("\n"))
    if type(value) is int or type(value) is float:
        if vr in ("FL", "FD"):
            return True
        bounds = _INT_RANGES.get(vr)
        return bounds is not None and type(value) is int and bounds[0] <= value <= bounds[1]
    return False


def invalid_attributes(ds: Dataset, _path: str = "", _top: str | None = None) -> Iterator[tuple[str, str]]:
    """(top-level tag as GGGGEEEE, 'where: why') per invalid value, sequences included.

    The tag is the top-level attribute the value belongs to (a sequence's own tag for a
    value inside one), so the caller knows which attributes must not be indexed. A value
    that cannot be decoded at all (e.g. 3 bytes of US) raises UndecodableElement.
    """
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields its elements, not their tags
        raw = ds.get_item(tag, keep_deferred=True)
        if tag >> 16 == 0x0002 or (raw.VR and any(v in BULK_VRS for v in raw.VR.split(" or "))):
            continue  # binary values have no syntax to check; do not read them
        try:
            element = ds[tag]
        except Exception:  # pydicom raises many types for bytes that do not decode as the VR
            vr = raw.VR or _dictionary_vr(tag)
            size = f"{raw.length} bytes" if isinstance(raw, RawDataElement) else "value"
            raise UndecodableElement(f"{_where(_path, tag)}: its {size} cannot be decoded as {vr} values") from None
        vr = element.VR
        if vr in BULK_VRS:
            continue
        if vr == "SQ":
            name = f"{_path}{element.tag!s} {element.keyword}".rstrip()
            for number, item in enumerate(element.value or [], start=1):
                yield from invalid_attributes(item, f"{name} item {number} > ", _top or f"{int(tag):08X}")
            continue
        values = element.value if isinstance(element.value, (MultiValue, list)) else (element.value,)
        for value in values:
            problem = _problem(vr, value)
            if problem:
                yield _top or f"{int(tag):08X}", f"{_path}{element.tag!s} {element.keyword}".rstrip() + f": {problem}"
                break


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def is_valid_value(vr: str, value: Any) -> bool:
    """Whether one value is valid for its VR (PS3.5 §6.2)."""
    return _problem(vr, value) is None
