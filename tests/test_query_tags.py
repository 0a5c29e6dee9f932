"""Extended query tags as values (query_tags.py): definitions accepted, values normalised for matching."""
from __future__ import annotations

import base64
import struct

import pytest

from dicomserver.query_tags import IndexedValue, InvalidTag, check_definition, normalize_datetime, value_of


def test_definitions_fill_in_the_vr_and_canonical_level():
    definition = check_definition("PatientWeight", None, None, "study")
    assert (definition.path, definition.vr, definition.level) == ("00101030", "DS", "Study")
    assert check_definition("00091001", "ss", " ACME ", "INSTANCE").private_creator == "ACME"
    assert check_definition("00280010", None, None, "Instance").vr == "US"  # Rows


@pytest.mark.parametrize("path, vr, creator", [
    ("00020010", None, None),  # file meta
    ("7FE00010", None, None),  # OB/OW: not indexable
    ("00091001", "LO", "X" * 65),
    ("00091001", "LO", "A\\B"),
])
def test_definitions_refused(path, vr, creator):
    with pytest.raises(InvalidTag):
        check_definition(path, vr, creator, "Study")


def test_values_are_normalised_for_matching():
    def value(vr: str, raw: object, tag: str = "00101030") -> IndexedValue | None:
        return value_of({tag: {"vr": vr, "Value": [raw]}}, tag, vr, None)

    assert value("DS", "1.50") == IndexedValue(number=1.5)
    assert value("FL", 0.10000000149011612) == IndexedValue(number=0.1)
    assert value("PN", {"Alphabetic": "Müller^Hans"}) == IndexedValue(text="MULLER^HANS")
    assert value("TM", "1015") == IndexedValue(text="101500.000000")
    assert value("DT", "2024010212") == IndexedValue(text="20240102120000.000000")
    assert value("CS", "") is None
    assert value_of({}, "00101030", "DS", None) is None
    for vr, raw in (("DS", "heavy"), ("SH", "X" * 17), ("DA", "2024-01-02"), ("UI", "1.a")):
        with pytest.raises(InvalidTag):
            value(vr, raw)


def test_private_values_count_only_under_their_creator():
    meta = {
        "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00091001": {"vr": "LO", "Value": ["alpha"]},
        "00090011": {"vr": "UN", "InlineBinary": base64.b64encode(b"OTHER ").decode()},
        "00091101": {"vr": "UN", "InlineBinary": base64.b64encode(struct.pack("<h", -7)).decode()},
        "00091102": {"vr": "UN", "InlineBinary": base64.b64encode(b"beta").decode()},
        "00091103": {"vr": "UN", "InlineBinary": base64.b64encode(b"abc").decode()},
    }
    assert value_of(meta, "00091001", "LO", "ACME 1.0") == IndexedValue(text="alpha")
    assert value_of(meta, "00091001", "LO", "OTHER") is None
    # Implicit VR (UN in the stored JSON): the bytes read with the declared VR, creators too.
    assert value_of(meta, "00091101", "SS", "OTHER") == IndexedValue(number=-7.0)
    assert value_of(meta, "00091102", "LO", "OTHER") == IndexedValue(text="beta")
    with pytest.raises(InvalidTag):
        value_of(meta, "00091103", "SL", "OTHER")  # 3 bytes are no whole SL


def test_datetime_bounds():
    assert normalize_datetime("2024") == "20240101000000.000000"
    assert normalize_datetime("2024", upper=True) == "20241231235959.999999"
    assert normalize_datetime("20240102101500.5+0100") == "20240102101500.500000"
    with pytest.raises(InvalidTag):
        normalize_datetime("20241301")
