"""Which values reach the index's searchable columns: valid ones only, checked once.

STOW hands over the attributes validation refused; when the index re-picks a study's
latest instance after a delete, the stored JSON is checked again (searchable.py).
"""
from __future__ import annotations

from dicom_factory import make_instance, to_bytes

from dicomserver.searchable import STUDY_DATE, index_columns

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}

META = {
    "00080020": {"vr": "DA", "Value": ["2024-01-05"]},  # invalid DA
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00080060": {"vr": "CS", "Value": ["MR"]},
    "00200013": {"vr": "IS", "Value": [7]},
}


def test_values_are_checked_when_validity_is_not_known():
    columns = index_columns(META)
    assert columns.study["study_date"] is None
    assert columns.study["patient_name"] == "Doe^Jane" and columns.study["patient_name_key"] == "DOE^JANE"
    assert columns.series["modality"] == "MR"
    assert columns.instance["instance_number"] == 7


def test_stow_verdict_is_used_as_given():
    # What STOW refused is left out; what it accepted is not checked again.
    assert index_columns(META, invalid=frozenset()).study["study_date"] == "2024-01-05"
    refused = index_columns(META, invalid=frozenset({STUDY_DATE, "00080060"}))
    assert refused.study["study_date"] is None and refused.series["modality"] is None
    assert refused.study["patient_name"] == "Doe^Jane"


def test_after_a_delete_the_new_latest_instance_is_indexed_by_its_valid_values(client):
    study, series = "1.7.2", "1.7.2.1"
    older = make_instance(study=study, series=series, sop="1.7.2.1.1", StudyDate="not a date", PatientID="OLD")
    newer = make_instance(study=study, series=series, sop="1.7.2.1.2", StudyDate="20240105", PatientID="NEW")
    for ds in (older, newer):
        assert client.post("/v2/studies", data=to_bytes(ds), headers=DICOM).status_code in (200, 202)
    assert len(client.get("/v2/studies?StudyDate=20240105").json) == 1  # the latest instance's date
    assert client.delete(f"/v2/studies/{study}/series/{series}/instances/1.7.2.1.2").status_code == 204
    # The study's attributes now come from the older instance: its PatientID is searchable,
    # its invalid StudyDate is not, whatever the range.
    assert len(client.get("/v2/studies?PatientID=OLD").json) == 1
    assert client.get("/v2/studies?StudyDate=20240105").json == []
    assert client.get("/v2/studies?StudyDate=19000101-29991231").json == []


def test_an_attribute_with_any_invalid_value_is_not_searchable_either_way(client):
    """STOW and the re-pick after a delete agree: one bad value keeps the attribute out."""
    study, series = "1.7.3", "1.7.3.1"
    long_value = "X" * 80  # LO allows 64 characters
    first = make_instance(study=study, series=series, sop="1.7.3.1.1", ManufacturerModelName=["ModelA", long_value])
    second = make_instance(study=study, series=series, sop="1.7.3.1.2", ManufacturerModelName="ModelB")
    for ds in (first, second):
        assert client.post("/v2/studies", data=to_bytes(ds), headers=DICOM).status_code in (200, 202)
    assert client.get("/v2/series?ManufacturerModelName=ModelA").json == []
    assert client.delete(f"/v2/studies/{study}/series/{series}/instances/1.7.3.1.2").status_code == 204
    assert client.get("/v2/series?ManufacturerModelName=ModelA").json == []
    assert len(client.get(f"/v2/studies/{study}/series").json) == 1
