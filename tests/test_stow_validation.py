"""STOW validation: strict on the identifying UIDs, lenient (stored with a warning) on the rest."""
from __future__ import annotations

import pytest
from dicom_factory import make_instance, to_bytes
from pydicom.uid import ImplicitVRLittleEndian

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


def stow(client, ds, version="v2"):
    return client.post(f"/{version}/studies", data=to_bytes(ds), headers=DICOM)


def comments(item) -> list[str]:
    return [c["00000902"]["Value"][0] for c in item.get("00741048", {}).get("Value", [])]


def test_invalid_attribute_is_stored_with_warning_and_not_indexed(client):
    ds = make_instance(study="1.7.1", StudyDate="2024-01-05", PatientAge="46")
    response = stow(client, ds)
    assert response.status_code == 202
    (item,) = response.json["00081199"]["Value"]
    assert item["00081196"]["Value"] == [45062]  # B006: elements discarded (from the index)
    text = comments(item)
    assert any("(0008,0020) StudyDate" in c for c in text)
    assert any("(0010,1010) PatientAge" in c for c in text)
    # Stored as sent: the metadata still shows the value ...
    (meta,) = client.get("/v2/studies/1.7.1/metadata").json
    assert meta["00080020"]["Value"] == ["2024-01-05"]
    # ... but it is not searchable: no date range or exact date matches it.
    assert client.get("/v2/studies?StudyDate=20240101-20241231").json == []
    assert client.get("/v2/studies?StudyDate=2024-01-05").status_code == 400
    assert len(client.get("/v2/studies?StudyInstanceUID=1.7.1").json) == 1


def test_warnings_keep_200_on_v1(client):
    response = stow(client, make_instance(StudyDate="yesterday"), version="v1")
    assert response.status_code == 200
    assert response.json["00081199"]["Value"][0]["00081196"]["Value"] == [45062]


def test_implicit_vr_is_stored_with_45063(client):
    ds = make_instance(transfer_syntax=ImplicitVRLittleEndian)
    response = stow(client, ds)
    assert response.status_code == 202
    (item,) = response.json["00081199"]["Value"]
    assert item["00081196"]["Value"] == [45063]
    assert any("Implicit VR" in c for c in comments(item))
    assert client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata").status_code == 200


def test_clean_instance_has_no_warning(client):
    response = stow(client, make_instance())
    assert response.status_code == 200
    (item,) = response.json["00081199"]["Value"]
    assert "00081196" not in item and "00741048" not in item


def test_one_comment_per_missing_required_attribute(client):
    ds = make_instance()
    del ds.SOPClassUID
    ds.SeriesInstanceUID = "1.2.x"
    response = stow(client, ds)
    assert response.status_code == 409
    (item,) = response.json["00081198"]["Value"]
    assert item["00081197"]["Value"] == [43264]
    text = comments(item)
    assert len(text) == 2
    assert "SOPClassUID (0008,0016) is missing" in text[0]
    assert "SeriesInstanceUID (0020,000E)" in text[1]


def test_invalid_value_in_a_sequence_is_reported(client):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.abc"
    item.ReferencedSOPClassUID = "1.2.3"
    response = stow(client, make_instance(ReferencedImageSequence=[item]))
    assert response.status_code == 202
    text = comments(response.json["00081199"]["Value"][0])
    assert any("ReferencedImageSequence item 1 > (0008,1155) ReferencedSOPInstanceUID" in c for c in text)


def test_tutorial_samples_are_clean(client):
    from dicom_samples import sample

    for name in ("blue-circle.dcm", "green-square.dcm", "red-triangle.dcm"):
        response = client.post("/v2/studies", data=sample(name).read_bytes(), headers=DICOM)
        assert response.status_code == 200
        assert "00081196" not in response.json["00081199"]["Value"][0]


_VALUES = {
    "AE": ["STORESCP", "", "A" * 16, "A" * 17, "bad\\x01", "x\n"],
    "AS": ["045Y", "45Y", "045X", "045Y\n"],
    "CS": ["ORIGINAL", "lower", "A" * 17, "WITH SPACE", "HYPHEN-", "A\n"],
    "DA": ["20240101", "20241301", "2024010", "20240101-20240201", "-20240101", "20240101\n"],
    "DS": ["2.5", " 1e3 ", "abc", "1" * 17, "-0.0", "+.5", "1.\n"],
    "DT": ["20240101083000.123456+0100", "2024", "20241301", "x"],
    "IS": ["12", " -3 ", "1.5", "1" * 13, "12\n"],
    "LO": ["text", "x" * 64, "x" * 65, "back\\slash"],
    "LT": ["x" * 10240, "x" * 10241],
    "SH": ["short", "x" * 17],
    "ST": ["x" * 1024, "x" * 1025],
    "TM": ["083000", "083000.123456", "250000", "0830", "083000-093000", "083000\n"],
    "UI": ["1.2.3", "1.02.3", "1..2", "1.2.3a", "9" * 65, "1.2\n"],
    "UR": ["http://example.org/a b", "http://x/\u00e9", "http://x/ "],
    "UT": ["anything \x01 goes"],
    "PN": ["Doe^John", "A" * 65],
}
_NUMBERS = {
    "US": [0, 65535, 65536, -1], "SS": [-32768, 32767, 32768], "UL": [0, 2**32, -1], "SL": [2**31, -(2**31)],
    "UV": [2**64, 0], "SV": [2**63, -(2**63)], "FL": [1.5, 2, "x"], "FD": [0.1, True],
}


@pytest.mark.parametrize("vr", sorted({**_VALUES, **_NUMBERS}))
def test_quick_validity_check_never_passes_what_pydicom_refuses(vr):
    """validation._surely_valid short-cuts pydicom's validate_value: it may say 'ask pydicom'
    for a valid value, never 'valid' for an invalid one (the STOW warnings depend on it)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    from dicomserver.validation import _surely_valid

    for value in _VALUES.get(vr, []) + _NUMBERS.get(vr, []):
        try:
            validate_value(vr, value, config.RAISE)
            valid = True
        except (ValueError, TypeError):
            valid = False
        assert valid or not _surely_valid(vr, value), (vr, value)
