"""STOW validation: strict on the identifying UIDs, lenient (stored with a warning) on the rest."""
from __future__ import annotations

from pydicom.uid import ImplicitVRLittleEndian

from dicom_factory import make_instance, to_bytes

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
