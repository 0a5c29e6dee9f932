"""QIDO-RS through the Flask test client: the six resources, matching, paging, errors."""
from __future__ import annotations

import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import SERIES_GREEN_RED, SOP_RED, STUDY_UID

STUDY_A, STUDY_B, STUDY_C = "1.2.3.1", "1.2.3.2", "1.2.3.3"


@pytest.fixture
def archive(client):
    """Three studies with distinct attributes (and one with two series)."""
    study_a = dict(study=STUDY_A, PatientName="Doe^John", PatientID="P1", StudyDate="20240105", StudyTime="083000",
                   AccessionNumber="ACC_1", ReferringPhysicianName="Ref^Doc", StudyID="S1",
                   StudyDescription="Chest 100%")
    specs = [
        dict(study_a, series="1.2.3.1.1", Modality="CT", InstanceNumber=1, SeriesNumber=1),
        dict(study_a, series="1.2.3.1.2", Modality="MR", InstanceNumber=2, SeriesNumber=2),
        dict(study_a, series="1.2.3.1.2", Modality="MR", InstanceNumber=3, SeriesNumber=2),
        dict(study=STUDY_B, series="1.2.3.2.1", PatientName="Müller^Jürgen", PatientID="P2", StudyDate="20240210",
             StudyTime="141500", AccessionNumber="ACCX1", Modality="CT", InstanceNumber=1),
        dict(study=STUDY_C, series="1.2.3.3.1", PatientName="Smith^Anna", PatientID="P3", StudyDate="20231231",
             Modality="US", InstanceNumber=7),
    ]
    sops = []
    for spec in specs:
        ds = make_instance(**spec)
        response = client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
        assert response.status_code == 200
        sops.append(ds.SOPInstanceUID)
    return sops


def uids(response, tag="0020000D") -> list[str]:
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == "application/dicom+json"
    return [item[tag]["Value"][0] for item in response.json]


def q(client, path, **params):
    return client.get(path, query_string=params, headers={"Accept": "application/dicom+json"})


def test_tutorial_searches(client, tutorial_study):
    assert uids(q(client, "/v1/studies", StudyInstanceUID=STUDY_UID)) == [STUDY_UID]
    assert uids(q(client, "/v1/series", SeriesInstanceUID=SERIES_GREEN_RED), "0020000E") == [SERIES_GREEN_RED]
    assert uids(q(client, f"/v1/studies/{STUDY_UID}/series", SeriesInstanceUID=SERIES_GREEN_RED), "0020000E") == [SERIES_GREEN_RED]
    assert uids(q(client, "/v2/instances", SOPInstanceUID=SOP_RED), "00080018") == [SOP_RED]
    assert uids(q(client, f"/v2/studies/{STUDY_UID}/instances", SOPInstanceUID=SOP_RED), "00080018") == [SOP_RED]
    assert uids(
        q(client, f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/instances", SOPInstanceUID=SOP_RED), "00080018"
    ) == [SOP_RED]


def test_study_defaults_and_computed(client, archive):
    (study,) = q(client, "/v2/studies", StudyInstanceUID=STUDY_A).json
    assert study["00201206"] == {"vr": "IS", "Value": [2]}  # NumberOfStudyRelatedSeries
    assert study["00201208"] == {"vr": "IS", "Value": [3]}  # NumberOfStudyRelatedInstances
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}  # ModalitiesInStudy
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert study["00080056"]["Value"] == ["ONLINE"]
    assert study["00081190"]["Value"] == [f"http://localhost/v2/studies/{STUDY_A}"]
    for tag in ("00080020", "00080030", "00080050", "00080090", "00100020", "00200010"):
        assert tag in study
    assert "00080060" not in study  # Modality is a series attribute


def test_series_and_instance_defaults(client, archive):
    series = q(client, f"/v2/studies/{STUDY_A}/series").json
    assert [s["00201209"]["Value"][0] for s in series] == [1, 2]
    assert [s["00080060"]["Value"][0] for s in series] == ["CT", "MR"]
    assert all("00100010" not in s for s in series)  # study attrs are fixed by the path
    all_series = q(client, "/v2/series", Modality="MR").json
    assert all_series[0]["00100010"]["Value"][0]["Alphabetic"] == "Doe^John"
    instances = q(client, f"/v2/studies/{STUDY_A}/series/1.2.3.1.2/instances").json
    assert [i["00200013"]["Value"][0] for i in instances] == [2, 3]
    for tag in ("00080016", "00080018", "00280010", "00280011", "00280100"):
        assert tag in instances[0]
    assert instances[0]["00081190"]["Value"][0].endswith(f"/series/1.2.3.1.2/instances/{archive[1]}")


def test_keys_as_hex_tags(client, archive):
    assert uids(q(client, "/v2/studies", **{"00100020": "P2"})) == [STUDY_B]
    assert uids(q(client, "/v2/studies", **{"0020000d": STUDY_C})) == [STUDY_C]


def test_uid_lists(client, archive):
    assert uids(q(client, "/v2/studies", StudyInstanceUID=f"{STUDY_A},{STUDY_C}")) == [STUDY_A, STUDY_C]
    assert uids(q(client, "/v2/studies", StudyInstanceUID=f"{STUDY_B}\\{STUDY_C}")) == [STUDY_B, STUDY_C]


@pytest.mark.parametrize(
    "value,expected",
    [
        ("20240105", [STUDY_A]),
        ("20240101-20240131", [STUDY_A]),
        ("20240106-", [STUDY_B]),
        ("-20240105", [STUDY_A, STUDY_C]),
        ("20231231-20240210", [STUDY_A, STUDY_B, STUDY_C]),
        ("", [STUDY_A, STUDY_B, STUDY_C]),
    ],
)
def test_date_ranges(client, archive, value, expected):
    assert uids(q(client, "/v2/studies", StudyDate=value)) == expected


def test_time_range(client, archive):
    assert uids(q(client, "/v2/studies", StudyTime="0800-0900")) == [STUDY_A]
    assert uids(q(client, "/v2/studies", StudyTime="14-")) == [STUDY_B]


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"PatientName": "doe*"}, [STUDY_A]),
        ({"PatientName": "DOE^JOHN"}, [STUDY_A]),
        ({"PatientName": "muller*"}, [STUDY_B]),  # accent-insensitive
        ({"PatientName": "*an?a"}, [STUDY_C]),
        ({"PatientID": "P?"}, [STUDY_A, STUDY_B, STUDY_C]),
        ({"PatientID": "p1"}, []),  # only names are case-insensitive
        ({"AccessionNumber": "ACC_*"}, [STUDY_A]),  # '_' is literal, not SQL's any-char
        ({"AccessionNumber": "ACC?1"}, [STUDY_A, STUDY_B]),
        ({"StudyDescription": "*100%"}, [STUDY_A]),
        ({"StudyDescription": "*%"}, [STUDY_A]),
        ({"ModalitiesInStudy": "MR"}, [STUDY_A]),
        ({"ModalitiesInStudy": "US,MR"}, [STUDY_A, STUDY_C]),
        ({"ModalitiesInStudy": ","}, []),  # an empty list matches nothing (and is valid SQL on PostgreSQL)
        ({"SOPClassesInStudy": "\\"}, []),
        ({"StudyID": "S1"}, [STUDY_A]),
    ],
)
def test_matching(client, archive, params, expected):
    assert uids(q(client, "/v2/studies", **params)) == expected


def test_parent_attributes_at_lower_levels(client, archive):
    assert uids(q(client, "/v2/instances", PatientID="P1", Modality="MR"), "00080018") == archive[1:3]
    assert uids(q(client, "/v2/instances", InstanceNumber="7"), "00080018") == [archive[4]]


def test_includefield(client, archive):
    (study,) = q(client, "/v2/studies", StudyInstanceUID=STUDY_A, includefield="StudyDescription,00100040").json
    assert study["00081030"]["Value"] == ["Chest 100%"]
    series = client.get(
        f"/v2/studies/{STUDY_A}/series?includefield=00200011&includefield=Rows", headers={"Accept": "application/json"}
    ).json
    assert series[0]["00200011"]["Value"] == [1] and series[0]["00280010"]["Value"] == [4]
    (everything,) = q(client, "/v2/instances", SOPInstanceUID=archive[0], includefield="all").json
    assert "00280004" in everything  # PhotometricInterpretation, not a default
    assert q(client, "/v2/studies", includefield="NoSuchKeyword").status_code == 400


def test_limit_offset_and_warning(client, archive):
    page = q(client, "/v2/instances", limit=2, offset=1)
    assert uids(page, "00080018") == archive[1:3]
    assert "Warning" not in page.headers
    assert q(client, "/v2/instances", offset=100).json == []
    assert q(client, "/v2/instances", limit=2).headers.get("Warning") is None


def test_server_cap_is_signalled(tmp_path, archive_factory=None):
    from dicomserver import Settings, create_app

    app = create_app(
        Settings(
            blobstore_url=str(tmp_path / "b"),
            database_url=f"sqlite:///{tmp_path / 'i.db'}",
            qido_default_limit=2,
            qido_max_limit=3,
        )
    )
    client = app.test_client()
    for _ in range(5):
        client.post("/v2/studies", data=to_bytes(make_instance()), headers={"Content-Type": "application/dicom"})
    default = client.get("/v2/instances")
    assert len(default.json) == 2
    assert "offset=2" in default.headers["Warning"]
    capped = client.get("/v2/instances?limit=50")
    assert len(capped.json) == 3
    assert default.headers["Warning"].startswith("299 ")
    assert "Warning" not in client.get("/v2/instances?limit=50&offset=3").headers


def test_no_match_is_empty_array(client, archive):
    response = q(client, "/v2/studies", PatientID="nobody")
    assert response.status_code == 200
    assert response.json == []


def test_attribute_not_searchable_is_ignored_with_warning(client, archive):
    response = q(client, "/v2/studies", Modality="CT")
    assert uids(response) == [STUDY_A, STUDY_B, STUDY_C]
    assert "Modality" in response.headers["Warning"]
    response = q(client, "/v2/studies", PatientWeight="70")
    assert "PatientWeight" in response.headers["Warning"]


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"NotAKeyword": "x"}, b"NotAKeyword"),
        ({"StudyDate": "2024-01-05"}, b"YYYYMMDD"),
        ({"StudyDate": "20241305"}, b"YYYYMMDD"),
        ({"StudyDate": "20240201-20240101"}, b"starts after"),
        ({"StudyDate": "-"}, b"bound"),
        ({"StudyTime": "25"}, b"HHMMSS"),
        ({"StudyInstanceUID": "1.2.abc"}, b"UID"),
        ({"limit": "0"}, b"limit"),
        ({"limit": "ten"}, b"limit"),
        ({"offset": "-1"}, b"offset"),
        ({"fuzzymatching": "maybe"}, b"fuzzymatching"),
    ],
)
def test_bad_queries_are_400(client, archive, params, fragment):
    response = q(client, "/v2/studies", **params)
    assert response.status_code == 400
    assert fragment in response.data


def test_bad_value_at_lower_level_is_400(client, archive):
    response = q(client, "/v2/series", SeriesNumber="one")
    assert response.status_code == 400
    assert b"integer" in response.data


def test_path_uids_and_accept(client, archive):
    assert q(client, "/v2/studies/1.2.x/series").status_code == 400
    assert q(client, f"/v2/studies/{STUDY_B}/series").json[0]["0020000E"]["Value"] == ["1.2.3.2.1"]
    assert q(client, "/v2/studies/9.9.9/instances").json == []
    assert client.get("/v2/studies", headers={"Accept": "application/dicom"}).status_code == 406
    assert client.get("/v2/studies", headers={"Accept": "*/*"}).status_code == 200


def test_latest_instance_wins_and_delete_refreshes(client):
    first = make_instance(study="1.2.5", series="1.2.5.1", PatientName="Old^Name")
    second = make_instance(study="1.2.5", series="1.2.5.1", PatientName="New^Name")
    for ds in (first, second):
        client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    assert uids(q(client, "/v2/studies", PatientName="New*")) == ["1.2.5"]
    assert client.delete(f"/v2/studies/1.2.5/series/1.2.5.1/instances/{second.SOPInstanceUID}").status_code == 204
    (study,) = q(client, "/v2/studies", PatientName="Old*").json
    assert study["00201208"]["Value"] == [1]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/studies",
        "/v2/series",
        "/v2/instances",
        f"/v2/studies/{STUDY_A}/series",
        f"/v2/studies/{STUDY_A}/instances",
        f"/v2/studies/{STUDY_A}/series/1.2.3.1.2/instances",
        "/v2/studies?ModalitiesInStudy=MR&includefield=SOPClassesInStudy",
        "/v2/instances?PatientName=Doe*&Modality=MR&includefield=00080061",
    ],
)
def test_results_from_stored_members_equal_results_from_full_json(client, archive, monkeypatch, path):
    """The text-assembled results (query.qido_members) are exactly what parsing the stored JSON gives."""
    from dicomserver.index import query

    fast = client.get(path)
    assert fast.status_code == 200 and fast.json
    monkeypatch.setattr(query, "QIDO_TAGS", frozenset())  # every search now parses the full DICOM JSON
    slow = client.get(path)
    assert fast.json == slow.json
    assert [sorted(item) for item in fast.json] == [list(item) for item in fast.json]  # tags in order
