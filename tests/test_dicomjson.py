"""dicomjson.element_json against pydicom's DataElement.to_json_dict, element by element.

STOW writes every instance's DICOM JSON with element_json; it must say exactly what
pydicom says, for every element of every sample file (sequences walked), errors included.
"""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from dicom_samples import EVERY_SAMPLE, sample
from pydicom.data import DATA_ROOT

from dicomserver.dicomjson import element_json

#: The named samples, then every file the pydicom package itself ships (fixed by its version;
#: the pydicom-data files are not globbed, so its releases change nothing here).
FILES = list(
    dict.fromkeys(
        [str(sample(name)) for name in EVERY_SAMPLE]
        + sorted(
            str(p)
            for p in (Path(DATA_ROOT) / "test_files").rglob("*.dcm")
            if "no_meta" not in p.name and "bad" not in p.name
        )
    )
)


def _elements(ds):
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _elements(item)
        else:
            yield element


def _as_pydicom_writes_it(element):
    """The JSON text stored for the element (or the error), as pydicom would write it, with
    the two places where PS3.18 says otherwise put right (dicomjson.standard_strings)."""
    try:
        written = element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 62)
    except Exception as exc:  # element_json must fail on the same elements
        return type(exc)
    values = written.get("Value")
    if isinstance(values, list) and values and element.VR not in ("PN", "SQ", "AT") and all(
        isinstance(v, str) for v in values
    ):
        if element.VR == "CS":
            values = [v.strip(" ") for v in values]
        written["Value"] = [None if v == "" else v for v in values] if len(values) > 1 else values
    return json.dumps(written)


def _ours(element):
    try:
        return json.dumps(element_json(element))
    except Exception as exc:
        return type(exc)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1])
def test_element_json_is_what_pydicom_writes(path):
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        elements = list(_elements(ds))
    except Exception as exc:
        pytest.skip(f"pydicom cannot read it: {exc}")
    assert elements
    for element in elements:
        assert _ours(element) == _as_pydicom_writes_it(element), (element.tag, element.VR, element.value)


def test_files_cover_every_kind_of_value():
    """The comparison above means something only if the files hold these VRs."""
    seen = set()
    for path in FILES:
        try:
            seen |= {e.VR for e in _elements(pydicom.dcmread(path, stop_before_pixels=True, force=True))}
        except Exception:
            continue
    assert {"IS", "DS", "US", "UL", "FD", "FL", "SS", "SL", "CS", "DA", "TM", "UI", "LO", "SH"} <= seen, seen


@pytest.mark.parametrize(
    "vr, value",
    [
        ("IS", "12"), ("IS", ["1", "2"]), ("IS", None), ("DS", "2.50"), ("DS", ["1", "-0.0", "1e3"]), ("DS", ""),
        ("US", [1, 2]), ("SS", -3), ("FL", 1.5), ("FD", [0.1, 2.0]), ("UL", 4294967295),
        ("CS", ""), ("CS", None), ("CS", ["ORIGINAL", "PRIMARY"]), ("LO", ["a", ""]), ("UI", "1.2.3"),
        ("DA", "20240101"), ("TM", "083000.5"), ("UT", "x" * 2000), ("PN", "Doe^John=ド^ジョン"), ("AT", 0x00100010),
    ],
)
def test_element_json_on_values_built_in_code(vr, value):
    import warnings

    from pydicom.dataelem import DataElement

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        element = DataElement(0x00091001, vr, value)
    assert _ours(element) == _as_pydicom_writes_it(element)
