"""Value validation of stored attributes (PS3.5 §6.2 VR rules), strict where it must be.

The four identifying UIDs are checked by STOW itself (a bad one fails the instance).
Every other attribute is checked here: an invalid value never makes an instance
unstorable (real archives hold imperfect data; the file is kept as sent), but it
is reported back as a STOW warning and is never put into a searchable index column,
so a malformed StudyDate cannot match a date range.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import MAX_VALUE_LEN, STR_VR_REGEXES, PersonName, validate_value

from .dicomjson import BULK_VRS


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
    value inside one), so the caller knows which attributes must not be indexed.
    """
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields its elements, not their tags
        raw = ds.get_item(tag, keep_deferred=True)
        if tag >> 16 == 0x0002 or (raw.VR and any(v in BULK_VRS for v in raw.VR.split(" or "))):
            continue  # binary values have no syntax to check; do not read them
        try:
            element = ds[tag]
        except Exception as exc:  # the value could not even be converted
            yield _top or f"{int(tag):08X}", f"{_path}{Tag(tag)!s}: {exc}"
            continue
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


def is_valid_value(vr: str, value: Any) -> bool:
    """Whether one value is valid for its VR (PS3.5 §6.2)."""
    return _problem(vr, value) is None
