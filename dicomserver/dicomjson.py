"""DICOM JSON (PS3.18 Annex F) for stored instances, and typed reads from it.

The JSON is produced once at STOW (pydicom's `to_json_dict`), kept in the index, and
is then the single source for `/metadata`, QIDO answers and the index's searchable
columns. Bulk binary elements (OB, OD, OF, OL, OV, OW, UN) are left out, as the
reference server does; elements whose values pydicom cannot convert are left out
and reported, so one bad attribute never makes an instance unstorable.
"""
from __future__ import annotations

import unicodedata
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import Tag

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DROP = "\x00dicomserver-drop\x00"

DicomJson = dict[str, dict[str, Any]]


def tag_key(tag: int) -> str:
    return f"{int(tag):08X}"


def dataset_to_json(ds: Dataset) -> tuple[DicomJson, list[str]]:
    """Convert a dataset (read without pixel data) to DICOM JSON.

    Returns the JSON object and a list of tags (GGGGEEEE) that were left out because
    their values could not be converted.
    """
    out: DicomJson = {}
    skipped: list[str] = []
    for tag in sorted(ds.keys()):
        raw = ds.get_item(tag)
        if raw is None or _is_bulk(_vr_of(raw)) or Tag(tag).group == 0x0002:
            continue
        key = tag_key(tag)
        try:
            element = ds[tag]
            if element.VR in BULK_VRS:
                continue
            value = element.to_json_dict(
                bulk_data_element_handler=lambda _el: _DROP, bulk_data_threshold=-1
            )
        except Exception:
            skipped.append(key)
            continue
        out[key] = _strip_bulk(value)
    return out, skipped


def _is_bulk(vr: str) -> bool:
    return any(v in BULK_VRS for v in vr.split(" or "))


def _vr_of(raw) -> str:
    """VR of a possibly not yet converted element (implicit VR files carry none)."""
    if raw.VR:
        return raw.VR
    try:
        return dictionary_VR(raw.tag)
    except KeyError:
        return "UN"


def _strip_bulk(element: dict[str, Any]) -> dict[str, Any]:
    """Remove binary elements nested inside sequence items."""
    if element.get("vr") == "SQ" and "Value" in element:
        element["Value"] = [
            {
                k: _strip_bulk(v)
                for k, v in item.items()
                if v.get("BulkDataURI") != _DROP and "InlineBinary" not in v
            }
            for item in element["Value"]
        ]
    return element


def first_value(meta: DicomJson, key: str) -> Any:
    """The first value of an attribute, or None when absent or empty."""
    element = meta.get(key)
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    return values[0]


def string_value(meta: DicomJson, key: str) -> str | None:
    value = first_value(meta, key)
    if value is None:
        return None
    if isinstance(value, dict):  # PN
        value = value.get("Alphabetic")
        if value is None:
            return None
    text = str(value).strip()
    return text or None


def int_value(meta: DicomJson, key: str) -> int | None:
    value = first_value(meta, key)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def name_key(name: str | None) -> str | None:
    """Fold a person name for case- and accent-insensitive matching."""
    if name is None:
        return None
    decomposed = unicodedata.normalize("NFKD", name)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    return folded.upper()


def name_words(name: str | None) -> str | None:
    """' WORD WORD …' of a folded person name: every name component is a word.

    Stored with a leading space so a word-prefix match is LIKE '% PREFIX%'.
    """
    key = name_key(name)
    if key is None:
        return None
    words = [w for w in key.replace("^", " ").replace("=", " ").split() if w]
    return " " + " ".join(words) if words else None


def normalize_time(value: str | None, *, upper: bool = False) -> str | None:
    """TM 'HH[MM[SS[.F{1,6}]]]' (or 'HH:MM:SS') as 'HHMMSS.ffffff' so text order is time order.

    With upper=True missing components are filled with their maximum, for the
    upper end of a range. Returns None when the value is not a valid time.
    """
    if value is None:
        return None
    text = value.strip().replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    if len(fraction) > 6:
        return None
    hh, mm, ss = whole[0:2], whole[2:4], whole[4:6]
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    fill = "9" if upper else "0"
    mm = mm or ("59" if upper else "00")
    ss = ss or ("59" if upper else "00")
    fraction = (fraction + fill * 6)[:6] if (fraction or upper) else "000000"
    return f"{hh}{mm}{ss}.{fraction}"
