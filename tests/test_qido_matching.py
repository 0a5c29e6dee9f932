"""QIDO matching types of PS3.4 C.2.2.2 beyond the basics: fuzzy names, sequences,
combined date-time ranges, computed attributes, unsupported matching and percent-encoding."""
from __future__ import annotations

import pytest
from dicom_factory import make_instance, to_bytes
from pydicom.dataset import Dataset

MR = "1.2.840.10008.5.1.4.1.1.4"


def _request_item(step_id: str, procedure_id: str) -> Dataset:
    item = Dataset()
    item.ScheduledProcedureStepID = step_id
    item.RequestedProcedureID = procedure_id
    return item


@pytest.fixture
def archive(client):
    specs = [
        dict(study="1.5.1", series="1.5.1.1", PatientName="Doe^John^Q", ReferringPhysicianName="House^Gregory",
             StudyDate="20240105", StudyTime="220000", RequestAttributesSequence=[_request_item("SPS1", "RP1"), _request_item("SPS2", "RP2")]),
        dict(study="1.5.2", series="1.5.2.1", PatientName="Dóe^Jane", StudyDate="20240106", StudyTime="080000",
             PerformedProcedureStepStartDate="20240106", PerformedProcedureStepStartTime="093000",
             RequestAttributesSequence=[_request_item("SPS3", "RP3")]),
        dict(study="1.5.3", series="1.5.3.1", PatientName="Johnson^Mary", StudyDate="20240106", StudyTime="230000"),
        dict(study="1.5.3", series="1.5.3.2", PatientName="Johnson^Mary", StudyDate="20240106", StudyTime="230000",
             SOPClassUID=MR, Modality="MR"),
    ]
    for spec in specs:
        response = client.post("/v2/studies", data=to_bytes(make_instance(**spec)), headers={"Content-Type": "application/dicom"})
        assert response.status_code == 200, response.data
    return specs


def studies(client, query: str) -> list[str]:
    response = client.get(f"/v2/studies?{query}")
    assert response.status_code == 200, response.data
    return [r["0020000D"]["Value"][0] for r in response.json]


def series(client, query: str) -> list[str]:
    response = client.get(f"/v2/series?{query}")
    assert response.status_code == 200, response.data
    return [r["0020000E"]["Value"][0] for r in response.json]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("PatientName=joh&fuzzymatching=true", ["1.5.1", "1.5.3"]),  # word prefix of any component
        ("fuzzymatching=true&PatientName=do", ["1.5.1", "1.5.2"]),  # accent-insensitive, order-free params
        ("PatientName=jo%20do&fuzzymatching=true", ["1.5.1"]),  # every word must match
        ("PatientName=ohn&fuzzymatching=true", []),  # not a prefix
        ("PatientName=q&fuzzymatching=true", ["1.5.1"]),  # middle name component
        ("PatientName=joh&fuzzymatching=false", []),  # exact without fuzzy
        ("ReferringPhysicianName=greg&fuzzymatching=true", ["1.5.1"]),
        ("PatientName=*ohn*&fuzzymatching=true", ["1.5.1", "1.5.3"]),  # wildcards still apply
    ],
)
def test_fuzzy_person_names(client, archive, query, expected):
    assert studies(client, query) == expected


@pytest.mark.parametrize(
    "query,expected",
    [
        ("RequestAttributesSequence.ScheduledProcedureStepID=SPS2", ["1.5.1.1"]),
        ("00400275.00401001=RP3", ["1.5.2.1"]),
        ("RequestAttributesSequence.RequestedProcedureID=RP*", ["1.5.1.1", "1.5.2.1"]),
        ("RequestAttributesSequence.ScheduledProcedureStepID=NONE", []),
    ],
)
def test_sequence_matching(client, archive, query, expected):
    assert series(client, query) == expected


def test_sequence_attribute_is_returned(client, archive):
    (result,) = client.get("/v2/series?RequestAttributesSequence.ScheduledProcedureStepID=SPS3").json
    items = result["00400275"]["Value"]
    assert items[0]["00400009"]["Value"] == ["SPS3"]


@pytest.mark.parametrize(
    "query,expected",
    [
        # 22:00 on the 5th to 08:00 on the 6th: one range across midnight, not two separate ranges.
        ("StudyDate=20240105-20240106&StudyTime=2100-0900", ["1.5.1", "1.5.2"]),
        ("StudyDate=20240106&StudyTime=0700-0900", ["1.5.2"]),
        ("StudyDate=20240106-&StudyTime=2200-", ["1.5.3"]),
        ("StudyDate=-20240105&StudyTime=-2300", ["1.5.1"]),
        ("StudyTime=2100-2330", ["1.5.1", "1.5.3"]),  # time range alone: every day
    ],
)
def test_combined_date_time_ranges(client, archive, query, expected):
    assert studies(client, query) == expected


def test_combined_performed_procedure_step(client, archive):
    query = "PerformedProcedureStepStartDate=20240106&PerformedProcedureStepStartTime=0900-1000"
    assert series(client, query) == ["1.5.2.1"]
    query = "PerformedProcedureStepStartDate=20240106&PerformedProcedureStepStartTime=1000-1100"
    assert series(client, query) == []


def test_sop_classes_in_study(client, archive):
    (study,) = client.get("/v2/studies?StudyInstanceUID=1.5.3&includefield=SOPClassesInStudy").json
    assert study["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2", MR]
    assert studies(client, f"SOPClassesInStudy={MR}") == ["1.5.3"]
    assert "00080062" not in client.get("/v2/studies?StudyInstanceUID=1.5.3").json[0]


def test_wildcard_on_unsupported_kind_is_ignored_with_warning(client, archive):
    response = client.get("/v2/studies?StudyDate=2024*")
    assert response.status_code == 200
    assert len(response.json) == 3
    assert "wildcard matching is not supported for StudyDate" in response.headers["Warning"]


def test_percent_encoded_values(client, archive):
    assert studies(client, "PatientName=Doe%5EJohn%5E%2A") == ["1.5.1"]
    assert studies(client, "StudyInstanceUID=1.5.1%2C1.5.2") == ["1.5.1", "1.5.2"]
    assert studies(client, "00100010=%2Aary") == ["1.5.3"]


def test_includefield_repeated_comma_and_hex(client, archive):
    response = client.get("/v2/studies?StudyInstanceUID=1.5.1&includefield=00321032,PatientSex&includefield=StudyID")
    assert response.status_code == 200


def test_ohif_study_list_query(client, archive):
    query = (
        "limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030"
        "&PatientName=*john*&00100020=*PID*&StudyDate=20240101-20240131"
    )
    assert studies(client, query) == ["1.5.1", "1.5.3"]
    query = "StudyInstanceUID=1.5.1%5C1.5.3"  # backslash-joined UID list, as OHIF sends
    assert studies(client, query) == ["1.5.1", "1.5.3"]
