"""DICOM JSON (PS3.18 Annex F) for stored instances, and typed reads from it.

The JSON is produced once at STOW, kept in the index, and is then the single source
for `/metadata`, QIDO answers and the index's searchable columns. Binary elements
(OB, OD, OF, OL, OV, OW, UN) up to a threshold are inlined (InlineBinary); larger ones
become a BulkDataURI, and their byte range in the stored file is recorded so the
URI is served by a ranged read, never by parsing the file. Elements whose values
pydicom cannot convert are left out and reported, so one bad attribute never makes
an instance unstorable.

BulkDataURIs are stored relative, behind BASE_URL_PLACEHOLDER, and made absolute
when served (`absolute_uris`), because the server's public URL is only known per request.
"""
from __future__ import annotations

import base64
import json
import re
import unicodedata
from typing import IO, Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Stands for the versioned API root in stored BulkDataURIs (JSON-escaped as \u0001).
BASE_URL_PLACEHOLDER = "\x01"
_PLACEHOLDER_IN_JSON = json.dumps(BASE_URL_PLACEHOLDER)[1:-1]
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Largest value inlined when its location in the file cannot be recorded.
_MAX_FALLBACK_INLINE = 1 << 20

DicomJson = dict[str, dict[str, Any]]
#: Bulk data locations: "GGGGEEEE[/item/GGGGEEEE...]" -> [offset, length] in the stored file.
BulkMap = dict[str, list[int]]
#: An element as `Dataset.get_item(keep_deferred=True)` returns it: raw until first accessed.
_Element = DataElement | RawDataElement


def tag_key(tag: int) -> str:
    return f"{int(tag):08X}"


#: pydicom's number VRs (jsonrep.convert_to_python_number): values become int or float.
_INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV", "US or SS"})
_FLOAT_VRS = frozenset({"DS", "FD", "FL"})
#: VRs whose JSON form element_json leaves to pydicom (names, tags, binary).
_PYDICOM_VRS = frozenset({"PN", "AT", "SQ", "US or SS or OW", "US or OW", "OB or OW"}) | BULK_VRS


def element_json(element: DataElement) -> dict[str, Any]:
    """An element's DICOM JSON, as pydicom's `to_json_dict` writes it.

    STOW converts every element of every instance: for text and number values this
    does the same in a fraction of pydicom's time (tests/test_dicomjson.py compares the
    two on every sample file); names, tags and binary values still go through pydicom.
    """
    vr = element.VR
    if vr in _PYDICOM_VRS:
        return element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 62)
    value = element.value
    if value is None:
        return {"vr": vr}
    if isinstance(value, (str, bytes)):
        if not value:
            return {"vr": vr}
        values: list[Any] = [value]
    elif isinstance(value, (MultiValue, list, tuple)):
        if not value:
            return {"vr": vr}
        values = [value] if len(value) == 1 else list(value)
    elif hasattr(value, "read"):  # a buffered value: pydicom knows how to measure it
        return element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 62)
    else:
        values = [value]
    if vr == "IS":
        values = [_integer_string(v) if v is not None else empty_value_for_VR(vr) for v in values]
    elif vr in _INT_VRS:
        values = [int(v) if v is not None else empty_value_for_VR(vr) for v in values]
    elif vr in _FLOAT_VRS:
        values = [float(v) if v is not None else empty_value_for_VR(vr) for v in values]
    else:
        values = standard_strings(vr, values)
    return {"vr": vr, "Value": values}


def standard_strings(vr: str, values: list[Any]) -> list[Any]:
    """Where PS3.18 says otherwise than pydicom's to_json_dict: an empty value among several
    is null (F.2.5), and a CS value's leading and trailing spaces are not part of it
    (PS3.5 Table 6.2-1: 'DERIVED \\SECONDARY' is DERIVED, SECONDARY)."""
    if vr == "CS":
        values = [v.strip(" ") if isinstance(v, str) else v for v in values]
    if len(values) > 1:
        values = [None if v == "" else v for v in values]
    return values


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _integer_string(value: Any) -> int:
    """An IS value as the digits the file holds: pydicom parses a value too long for IS
    through a float, which would change a 30-digit number's last digits."""
    text = getattr(value, "original_string", None)
    if isinstance(text, str) and _INTEGER.fullmatch(text := text.strip()):
        return int(text)
    return int(value)


def dataset_to_json(
    ds: Dataset,
    *,
    fp: IO[bytes] | None = None,
    instance_path: str | None = None,
    inline_threshold: int = 1024,
) -> tuple[DicomJson, list[str], BulkMap]:
    """Convert a dataset (read without pixel data) to DICOM JSON.

    `fp` is the file `ds` was read from (offsets are checked against it) and
    `instance_path` is '/studies/…/instances/…' for BulkDataURIs; without them,
    binary values above the threshold are left out. Returns the JSON, the tags that
    could not be converted, and the bulk data locations.
    """
    converter = _Converter(fp, instance_path, inline_threshold)
    out = converter.dataset(ds, base=0, path="")
    return out, converter.skipped, converter.bulk


class _Converter:
    def __init__(self, fp: IO[bytes] | None, instance_path: str | None, inline_threshold: int):
        self.fp = fp
        self.instance_path = instance_path
        self.inline_threshold = inline_threshold
        self.skipped: list[str] = []
        self.bulk: BulkMap = {}

    def dataset(self, ds: Dataset, *, base: int | None, path: str) -> DicomJson:
        out: DicomJson = {}
        for tag in sorted(ds.keys()):
            if Tag(tag).group == 0x0002:
                continue
            key = tag_key(tag)
            try:
                raw = ds.get_item(tag, keep_deferred=True)
                vr = _vr_of(raw)
                if _is_bulk(vr):
                    value = self.binary(ds, tag, raw, base, path + key)
                elif vr == "SQ":
                    value = self.sequence(ds, tag, raw, base, path + key)
                else:
                    value = element_json(ds[tag])
            except Exception:
                self.skipped.append(path + key)
                continue
            if value is not None:
                out[key] = value
        return out

    def sequence(self, ds: Dataset, tag: int, raw: _Element, base: int | None, path: str) -> dict[str, Any]:
        # Items are parsed from the sequence's value, so nested offsets are relative to it.
        value_tell = _value_tell(raw)
        item_base = base + value_tell if base is not None and value_tell is not None else None
        items = [
            self.dataset(item, base=item_base, path=f"{path}/{number}/")
            for number, item in enumerate(ds[tag].value or [])
        ]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}

    def binary(self, ds: Dataset, tag: int, raw: _Element, base: int | None, path: str) -> dict[str, Any] | None:
        element_vr = "OW" if " or " in _vr_of(raw) else _vr_of(raw)
        length = raw.length if isinstance(raw, RawDataElement) else len(ds[tag].value or b"")
        if length == 0:
            return {"vr": element_vr}
        if length <= self.inline_threshold:
            return self.inline(ds, tag)
        offset = self.offset_of(ds, tag, raw, base)
        if offset is None or self.instance_path is None:
            return self.inline(ds, tag) if length <= _MAX_FALLBACK_INLINE and self.instance_path else None
        self.bulk[path] = [offset, length]
        return {"vr": element_vr, "BulkDataURI": bulk_data_uri(self.instance_path, path)}

    def inline(self, ds: Dataset, tag: int) -> dict:
        element = ds[tag]
        value = element.value or b""
        return {"vr": element.VR if element.VR in BULK_VRS else "OB", "InlineBinary": base64.b64encode(value).decode()}

    def offset_of(self, ds: Dataset, tag: int, raw: _Element, base: int | None) -> int | None:
        """Absolute offset of a defined-length value, checked against the file."""
        value_tell = _value_tell(raw)
        if self.fp is None or base is None or value_tell is None:
            return None
        if isinstance(raw, RawDataElement) and raw.length == _UNDEFINED_LENGTH:
            return None
        offset = base + value_tell
        if raw.value is not None:  # read already: check our arithmetic against the file
            probe = bytes(raw.value[:16])
            self.fp.seek(offset)
            if self.fp.read(len(probe)) != probe:
                return None
        return offset


def bulk_data_uri(instance_path: str, path: str) -> str:
    return f"{BASE_URL_PLACEHOLDER}{instance_path}/bulkdata/{path}"


#: How every stored BulkDataURI starts in JSON text (bulk_data_uri: the placeholder, then the
#: instance's path). Searched for with its '/' last, a rare byte in DICOM JSON, it is found in
#: half the time a needle ending in the placeholder's '1' takes (20 MB of `/metadata`: 18 ms).
_STORED_URI_IN_JSON = '"' + _PLACEHOLDER_IN_JSON + "/studies/"
_STORED_URI_IN_UTF8 = _STORED_URI_IN_JSON.encode()


def absolute_uris(text: str, base_url: str) -> str:
    """Make the stored BulkDataURIs in JSON text absolute under `base_url`."""
    return text.replace(_STORED_URI_IN_JSON, '"' + base_url + "/studies/")


def joined_absolute_uris(texts: list[bytes], base_url: str, *, leading_comma: bool = False) -> bytes:
    """The instances' texts (UTF-8) joined by commas (and one before them when asked), their
    BulkDataURIs made absolute.

    A stored URI's placeholder is escaped (`\\u0001`), and backslashes are rare in DICOM JSON,
    so no URI starts before an instance's first backslash, found at memchr speed: the search
    for the URIs covers only the rest (for a CT instance, the Pixel Data attribute at its end),
    not the whole text (a third of a 5,000-instance `/metadata`'s CPU).
    """
    absolute = ('"' + base_url + "/studies/").encode()
    fixed = [b""] if leading_comma else []
    for text in texts:
        backslash = text.find(b"\\")
        if backslash >= 0:
            start = max(backslash - 1, 0)  # the URI's opening quote comes just before it
            text = text[:start] + text[start:].replace(_STORED_URI_IN_UTF8, absolute)
        fixed.append(text)
    return b",".join(fixed)


def _value_tell(element: _Element) -> int | None:
    """Where an element's value starts, relative to what it was parsed from."""
    if isinstance(element, RawDataElement):
        return element.value_tell
    return getattr(element, "file_tell", None)


def _is_bulk(vr: str) -> bool:
    return any(v in BULK_VRS for v in vr.split(" or "))


def _vr_of(raw: _Element) -> str:
    """VR of a possibly not yet converted element (implicit VR files carry none)."""
    if raw.VR:
        return raw.VR
    try:
        return dictionary_VR(raw.tag)
    except KeyError:
        return "UN"


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
