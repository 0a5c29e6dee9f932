"""Bulk update (POST /v2/studies/$bulkUpdate): the reference server's request, validation and
answers; the update operation (new file versions with the changed attributes and the same
pixel data, QIDO, /metadata and the change feed following them, the original kept and served
with `msdicom-request-original`, a second update keeping the first original), DELETE, gc and
verify knowing both versions, a streamed rewrite of a large instance, and a crash between a new
blob and its commit. On SQLite + local disk and on PostgreSQL + S3 (moto)."""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes, write_large_instance
from dicom_samples import MR_IMPLICIT_WINDOWED, RGB_BIG_ENDIAN, RGB_DEFLATED, RGB_RLE, sample
from pydicom.uid import ImplicitVRLittleEndian
from test_openapi import _operation, check_answer

from dicomserver import bulk_update, close_app, create_app
from dicomserver.stow_json import IMPLEMENTATION_CLASS_UID
from dicomserver.verify import verify

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.10.1011.7.1", "1.2.826.0.1.3680043.10.1011.7.2"
SERIES_A1, SERIES_A2, SERIES_B = "1.2.826.0.1.3680043.10.1011.7.11", "1.2.826.0.1.3680043.10.1011.7.12", \
    "1.2.826.0.1.3680043.10.1011.7.21"
MISSING = "1.2.826.0.1.3680043.10.1011.7.99"
NEW_NAME = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Corrected^Name"}]}}
CHANGE = {
    **NEW_NAME,
    "00100020": {"vr": "LO", "Value": ["NEW-ID"]},
    "00080050": {"vr": "SH", "Value": ["ACC-NEW"]},
    "00081030": {"vr": "LO", "Value": ["Corrected description"]},
}
DICOM_ANY = {"Accept": "application/dicom; transfer-syntax=*"}
ORIGINAL = {"msdicom-request-original": "true"}


@pytest.fixture
def app(settings, tmp_path):
    """The app without its operations thread (tests run operations when they choose), two
    instances a batch (so a study of three takes two batches)."""
    app = create_app(dataclasses.replace(settings, operations_runner=False, update_batch=2,
                                         audit_log=str(tmp_path / "audit.jsonl")))
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def archive(app):
    return app.extensions["dicomserver"]


def _stow(client, data: bytes) -> None:
    response = client.post("/v2/studies", data=data,
                           headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
    assert response.status_code in (200, 202), response.data  # 202: stored with a warning (implicit VR)


def _update(client, studies: list[str], change: dict[str, Any], status: int = 202, version: str = "v2",
            route: str = "$bulkUpdate"):
    response = client.post(f"/{version}/studies/{route}", json={"studyInstanceUids": studies, "changeDataset": change})
    assert response.status_code == status, response.data
    return response


def _instance_url(study: str, series: str, sop: str) -> str:
    return f"/v2/studies/{study}/series/{series}/instances/{sop}"


@pytest.fixture
def two_studies(client) -> dict[str, bytes]:
    """Study A: a 3-frame instance and a single-frame one in two series, and a third instance;
    study B: an implicit VR instance. The files as stored, by SOP Instance UID."""
    stored = {}
    for ds in (
        make_instance(study=STUDY_A, series=SERIES_A1, frames=3, rows=8, columns=8, PatientName="Old^Name"),
        make_instance(study=STUDY_A, series=SERIES_A2, PatientName="Old^Name", InstanceNumber=2),
        make_instance(study=STUDY_A, series=SERIES_A2, PatientName="Old^Name", InstanceNumber=3),
        make_instance(study=STUDY_B, series=SERIES_B, PatientName="Old^Name", transfer_syntax=ImplicitVRLittleEndian),
    ):
        data = to_bytes(ds)
        _stow(client, data)
        stored[ds.SOPInstanceUID] = data
    return stored


def _where(index, sop: str) -> tuple[str, str]:
    row = index.stored_blobs(sop)[0]  # the current version (the original, once updated, follows)
    return row.study_instance_uid, row.series_instance_uid


def _qido(client, url: str) -> list[dict[str, Any]]:
    response = client.get(url)
    assert response.status_code in (200, 204), response.data
    return response.get_json() if response.status_code == 200 else []


def _blob_keys(archive) -> set[str]:
    return set(archive.store.list())


# -- the request ----------------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    (b"[]", "JSON object"),
    (b"not json", "not JSON"),
    ({"changeDataset": NEW_NAME}, "'StudyInstanceUids' is missing or empty"),
    ({"studyInstanceUids": [], "changeDataset": NEW_NAME}, "'StudyInstanceUids' is missing or empty"),
    ({"studyInstanceUids": [f"1.2.3.{n}" for n in range(51)], "changeDataset": NEW_NAME},
     "exceeded maximum length '50'"),
    ({"studyInstanceUids": ["1.2.3", "1.2.x"], "changeDataset": NEW_NAME}, "not a valid UID"),
    ({"studyInstanceUids": [7], "changeDataset": NEW_NAME}, "not a valid UID"),
    ({"studyInstanceUids": ["1.2.3", "1.2.3"], "changeDataset": NEW_NAME}, "more than once"),
    ({"studyInstanceUids": ["1.2.3"]}, "'ChangeDataset' is missing or empty"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {}}, "'ChangeDataset' is missing or empty"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00080060": {"vr": "CS", "Value": ["MR"]}}},
     "DICOM100: (0008,0060) - Updating the tag is not supported"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}},
     "DICOM100: (0020,000D) - Updating the tag is not supported"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"PatientName": {"vr": "PN"}}},
     "Updating the tag is not supported"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00100030": {"vr": "DA", "Value": ["2024-01-02"]}}},
     "DICOM100: (0010,0030) - "),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00100040": {"vr": "CS", "Value": ["x" * 17]}}},
     "DICOM100: (0010,0040) - "),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00100010": {"vr": "LO", "Value": ["A"]}}},
     "vr 'PN'"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00101010": {"vr": "AS", "Value": ["forty"]}}},
     "DICOM100: (0010,1010) - "),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00101030": {"vr": "DS", "InlineBinary": "AAAA"}}},
     "no binary"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00100040": {"vr": "CS", "Value": ["M", "F"]}}},
     "DICOM100: (0010,0040) - the attribute takes one value"),
    ({"studyInstanceUids": ["1.2.3"], "changeDataset": {"00101030": {"vr": "DS", "Value": ["abc"]}}},
     "DICOM100: (0010,1030) - "),
])
def test_invalid_requests_are_400_with_the_reason(client, body, message):
    if isinstance(body, bytes):
        response = client.post("/v2/studies/$bulkUpdate", data=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v2/studies/$bulkUpdate", json=body)
    assert response.status_code == 400, response.data
    assert message in response.get_data(as_text=True)


def test_every_problem_of_the_change_dataset_is_listed(client):
    change = {"00080060": {"vr": "CS", "Value": ["MR"]}, "00100030": {"vr": "DA", "Value": ["yesterday"]}, **NEW_NAME}
    text = _update(client, ["1.2.3"], change, 400).get_data(as_text=True)
    assert "(0008,0060) - Updating the tag is not supported" in text and "DICOM100: (0010,0030)" in text
    assert "(0010,0010)" not in text


def test_v1_is_404_and_the_reference_clients_spelling_is_served(client, index):
    _update(client, ["1.2.3"], NEW_NAME, 404, version="v1")
    _update(client, ["1.2.3"], NEW_NAME, 404, version="v1", route="$bulkupdate")
    assert index.active_operations("update") == []
    started = _update(client, ["1.2.3"], NEW_NAME, route="$bulkupdate")
    assert started.get_json()["href"].endswith(started.get_json()["id"])


def test_updating_needs_the_write_action_and_is_audited(app_factory, auth_settings, identity_provider, tmp_path):
    audit_log = tmp_path / "audit.jsonl"
    client = app_factory(**auth_settings, operations_runner=False, audit_log=str(audit_log)).test_client()
    body = {"studyInstanceUids": [STUDY_A], "changeDataset": NEW_NAME}
    reader = {"Authorization": f"Bearer {identity_provider.token(roles=['globalReader'])}"}
    writer = {"Authorization": f"Bearer {identity_provider.token(roles=['globalWriter'])}"}
    assert client.post("/v2/studies/$bulkUpdate", json=body).status_code == 401
    assert client.post("/v2/studies/$bulkUpdate", json=body, headers=reader).status_code == 403
    assert client.post("/v2/studies/$bulkUpdate", json=body, headers=writer).status_code == 202
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert [(r["route"], r["action"], r["study"], r["status"]) for r in records if r["status"] == 202] == [
        ("/v2/studies/$bulkUpdate", "write", STUDY_A, 202)]


def test_one_update_at_a_time_and_unknown_studies_are_processed_not_failed(client, index, run_ops, app):
    started = _update(client, [MISSING], NEW_NAME)
    body = started.get_json()
    assert set(body) == {"id", "href"} and started.headers["Location"] == body["href"]
    conflict = _update(client, ["1.2.3"], NEW_NAME, 409)
    assert conflict.get_data(as_text=True).strip() == f"There is already an active update operation with ID '{body['id']}'."
    doc = client.get("/openapi.json").get_json()
    check_answer(doc, _operation(doc, app, "POST", "/v2/studies/$bulkUpdate"), conflict)
    assert run_ops() == 1
    status = client.get(body["href"])
    assert status.status_code == 200
    document = status.get_json()
    assert document["type"] == "update" and document["status"] == "succeeded"
    assert document["results"] == {"studyProcessed": 1, "studyUpdated": 0, "studyFailed": 0, "instanceUpdated": 0}
    check_answer(doc, doc["paths"]["/v2/operations/{operation_id}"]["get"], status)
    _update(client, [MISSING], NEW_NAME)  # the first one has ended


def test_the_request_resolves_studies_to_row_ids_once(client, index, two_studies):
    operation_id = _update(client, [STUDY_B, MISSING, STUDY_A], NEW_NAME).get_json()["id"]
    payload = index.operation(operation_id).payload
    ids = index.study_ids([STUDY_A, STUDY_B])
    assert payload["studies"] == [{"uid": STUDY_B, "id": ids[STUDY_B]}, {"uid": MISSING, "id": None},
                                  {"uid": STUDY_A, "id": ids[STUDY_A]}]
    assert payload["changeDataset"] == NEW_NAME


# -- the operation --------------------------------------------------------------------------


def test_update_writes_new_versions_and_keeps_the_originals(client, index, run_ops, archive, two_studies):
    sops = list(two_studies)
    multi = sops[0]
    metadata_url = f"/v2/studies/{STUDY_A}/metadata"
    etag = client.get(metadata_url).headers["ETag"]
    gzip_etag = client.get(metadata_url, headers={"Accept-Encoding": "gzip"}).headers["ETag"]
    before = client.get("/v2/changefeed/latest").get_json()["sequence"]

    started = _update(client, [STUDY_A, STUDY_B], CHANGE).get_json()
    assert client.get(started["href"]).status_code == 202
    assert run_ops() == 1
    document = client.get(started["href"]).get_json()
    assert document["status"] == "succeeded" and document["percentComplete"] == 100
    assert document["results"] == {"studyProcessed": 2, "studyUpdated": 2, "studyFailed": 0, "instanceUpdated": 4}

    # QIDO: the study columns follow the new values
    found = _qido(client, "/v2/studies?PatientID=NEW-ID")
    assert sorted(s["0020000D"]["Value"][0] for s in found) == [STUDY_A, STUDY_B]
    assert all(s["00100010"]["Value"][0]["Alphabetic"] == "Corrected^Name" for s in found)
    assert _qido(client, "/v2/studies?PatientName=Old*") == []
    assert _qido(client, "/v2/studies?PatientID=PID-1") == []
    by_accession = _qido(client, "/v2/studies?AccessionNumber=ACC-NEW&includefield=00081030")
    assert [s["00081030"]["Value"] for s in by_accession] == [["Corrected description"]] * 2
    instances = client.get(f"/v2/studies/{STUDY_A}/instances?includefield=00100010").get_json()
    assert {i["00100010"]["Value"][0]["Alphabetic"] for i in instances} == {"Corrected^Name"}

    # /metadata: new values, new ETags (the gzip cache is keyed by version)
    response = client.get(metadata_url)
    assert response.headers["ETag"] != etag
    assert {m["00100010"]["Value"][0]["Alphabetic"] for m in response.get_json()} == {"Corrected^Name"}
    assert client.get(metadata_url, headers={"Accept-Encoding": "gzip"}).headers["ETag"] != gzip_etag
    original_metadata = client.get(metadata_url, headers=ORIGINAL)
    assert {m["00100010"]["Value"][0]["Alphabetic"] for m in original_metadata.get_json()} == {"Old^Name"}
    assert original_metadata.headers["ETag"] != response.headers["ETag"]

    # WADO: the new file, same pixels; the original byte for byte with the header
    for sop, data in two_studies.items():
        study, series = _where(index, sop)
        url = _instance_url(study, series, sop)
        new = client.get(url, headers=DICOM_ANY)
        assert new.status_code == 200
        updated, first = pydicom.dcmread(io.BytesIO(new.data)), pydicom.dcmread(io.BytesIO(data))
        assert str(updated.PatientName) == "Corrected^Name" and updated.PatientID == "NEW-ID"
        assert updated.AccessionNumber == "ACC-NEW" and updated.StudyDescription == "Corrected description"
        assert updated.PixelData == first.PixelData and updated.file_meta.TransferSyntaxUID == \
            first.file_meta.TransferSyntaxUID
        assert updated.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert client.get(url, headers={**DICOM_ANY, **ORIGINAL}).data == data
        assert client.get(url, headers={**DICOM_ANY, "msdicom-request-original": "false"}).data == new.data
        assert client.get(f"{url}/metadata", headers=ORIGINAL).get_json()[0]["00100010"]["Value"] == [
            {"Alphabetic": "Old^Name"}]
    study_a = client.get(f"/v2/studies/{STUDY_A}", headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*', **ORIGINAL})
    assert study_a.status_code == 200 and all(two_studies[s] in study_a.data for s in sops[:3])

    # frames still cut at the right offsets
    study, series = _where(index, multi)
    first = pydicom.dcmread(io.BytesIO(two_studies[multi]))
    frame = client.get(f"{_instance_url(study, series, multi)}/frames/3",
                       headers={"Accept": "application/octet-stream; transfer-syntax=*"})
    assert frame.status_code == 200 and frame.data == first.PixelData[2 * 128: 3 * 128]
    assert frame.data == np.full((8, 8), 3, dtype=np.uint16).tobytes()

    # change feed: an update entry per instance, the create entries replaced
    feed = client.get("/v2/changefeed?startTime=2000-01-01T00:00:00Z&limit=100").get_json()
    updates = [e for e in feed if e["action"] == "update"]
    assert sorted(e["sopInstanceUid"] for e in updates) == sorted(sops)
    assert all(e["state"] == "current" and e["sequence"] > before for e in updates)
    assert all(e["state"] == "replaced" for e in feed if e["action"] == "create")

    # both versions are live: gc removes nothing, verify finds nothing wrong
    assert len(_blob_keys(archive)) == 8
    orphans = archive.find_orphans(0)
    assert orphans.blobs == [] and orphans.rows == [] and orphans.indexed == 8
    report = verify(archive, hashes=True, grace_seconds=0)
    assert report.problems == [] and report.rows == 8 and report.hashed == 8

    # a second update keeps the first original and replaces the current version
    first_versions = {sop: client.get(_instance_url(*_where(index, sop), sop), headers=DICOM_ANY).data for sop in sops}
    _update(client, [STUDY_A], {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Second^Name"}]}})
    assert run_ops() == 1
    assert len(_blob_keys(archive)) == 8  # the intermediate versions are gone
    for sop in sops[:3]:
        url = _instance_url(*_where(index, sop), sop)
        assert client.get(url, headers={**DICOM_ANY, **ORIGINAL}).data == two_studies[sop]
        latest = pydicom.dcmread(io.BytesIO(client.get(url, headers=DICOM_ANY).data))
        assert str(latest.PatientName) == "Second^Name" and latest.PatientID == "NEW-ID"
    assert client.get(_instance_url(*_where(index, sops[3]), sops[3]), headers=DICOM_ANY).data == \
        first_versions[sops[3]]
    assert verify(archive, hashes=True, grace_seconds=0).problems == []

    # DELETE removes both versions
    assert client.delete(f"/v2/studies/{STUDY_A}").status_code == 204
    assert not any(key.startswith(STUDY_A) for key in _blob_keys(archive))
    assert len(_blob_keys(archive)) == 2


def test_stow_replacing_an_updated_instance_removes_both_versions(client, run_ops, archive):
    ds = make_instance(study=STUDY_A, series=SERIES_A1)
    _stow(client, to_bytes(ds))
    _update(client, [STUDY_A], NEW_NAME)
    run_ops()
    assert len(_blob_keys(archive)) == 2
    replaced = client.put("/v2/studies", data=to_bytes(ds),
                          headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
    assert replaced.status_code == 200, replaced.data
    assert len(_blob_keys(archive)) == 1
    url = _instance_url(STUDY_A, SERIES_A1, ds.SOPInstanceUID)
    assert client.get(url, headers={**DICOM_ANY, **ORIGINAL}).data == to_bytes(ds)


def test_awkward_encodings_deflated_big_endian_rle_implicit_and_non_ascii(client, index, run_ops, archive):
    """Sample files in every encoding the rewrite treats apart (several share their UIDs: one
    at a time); a name needing UTF-8 in files without a character set."""
    change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]}}
    for name in (RGB_DEFLATED, RGB_BIG_ENDIAN, RGB_RLE, MR_IMPLICIT_WINDOWED):
        data = Path(sample(name)).read_bytes()
        _stow(client, data)
        sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        study, series = _where(index, sop)
        started = _update(client, [study], change).get_json()
        run_ops()
        document = client.get(started["href"]).get_json()
        assert document["results"]["instanceUpdated"] == 1, (name, document)
        url = _instance_url(study, series, sop)
        updated = pydicom.dcmread(io.BytesIO(client.get(url, headers=DICOM_ANY).data))
        first = pydicom.dcmread(io.BytesIO(data))
        assert str(updated.PatientName) == "Müller^Jürgen", name
        assert updated.file_meta.TransferSyntaxUID == first.file_meta.TransferSyntaxUID
        assert np.array_equal(updated.pixel_array, first.pixel_array), name
        assert client.get(url, headers={**DICOM_ANY, **ORIGINAL}).data == data
        meta = client.get(f"{url}/metadata").get_json()[0]
        assert meta["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
        assert _qido(client, f"/v2/studies?PatientName=muller*&StudyInstanceUID={study}") != []
        assert verify(archive, hashes=True, grace_seconds=0).problems == []
        assert client.delete(f"/v2/studies/{study}").status_code == 204
    assert _blob_keys(archive) == set()


def test_an_instance_that_cannot_be_updated_fails_its_study_as_the_reference_reports_it(
    client, index, run_ops, archive, two_studies
):
    victim = list(two_studies)[3]  # study B's one instance
    (row,) = index.stored_blobs(victim)
    archive.store.delete(row.blob_key)
    started = _update(client, [STUDY_A, STUDY_B], NEW_NAME).get_json()
    run_ops()
    response = client.get(started["href"])
    document = response.get_json()
    assert response.status_code == 200 and document["status"] == "failed"
    results = document["results"]
    assert (results["studyProcessed"], results["studyUpdated"], results["studyFailed"],
            results["instanceUpdated"]) == (2, 1, 1, 3)
    assert results["errors"][0] == f"Failed to update instances for study {STUDY_B}"
    assert results["errors"][1].startswith("Failed to update instance: the stored file is missing.")
    assert victim in results["errors"][1]
    assert document["errors"] == results["errors"] and document["percentComplete"] == 100


def test_a_crash_between_new_blobs_and_their_commit_leaves_gc_able_orphans(
    client, index, run_ops, archive, two_studies, monkeypatch
):
    """Blobs are durable before the commit: killed in between, the new blobs are orphans (no
    row names them) for `dicom gc`; the operation then resumes and completes."""
    started = _update(client, [STUDY_A, STUDY_B], NEW_NAME).get_json()
    before = _blob_keys(archive)
    apply_updates, discard_blob = type(index).apply_updates, bulk_update.discard_blob

    def crash(self, updates):
        raise RuntimeError("power cut")

    monkeypatch.setattr(type(index), "apply_updates", crash)
    monkeypatch.setattr(bulk_update, "discard_blob", lambda store, key: None)  # a crash cleans nothing up
    assert run_ops() == 0
    orphans = _blob_keys(archive) - before
    assert len(orphans) == 2  # the first batch's new versions
    assert sorted(archive.find_orphans(0).blobs) == sorted(orphans)
    assert client.get(started["href"]).get_json()["status"] == "running"

    monkeypatch.setattr(type(index), "apply_updates", apply_updates)  # (undo() would drop moto's environment)
    monkeypatch.setattr(bulk_update, "discard_blob", discard_blob)
    assert run_ops() == 1
    document = client.get(started["href"]).get_json()
    assert document["status"] == "succeeded" and document["results"]["instanceUpdated"] == 4
    for key in archive.find_orphans(0).blobs:
        archive.remove_orphan_blob(key)
    assert len(_blob_keys(archive)) == 8
    assert verify(archive, hashes=True, grace_seconds=0).problems == []
    for sop, data in two_studies.items():
        assert client.get(_instance_url(*_where(index, sop), sop), headers={**DICOM_ANY, **ORIGINAL}).data == data


def test_the_rewrite_of_a_large_instance_streams(client, index, run_ops, archive, settings, tmp_path):
    """A 96 MiB instance is rewritten holding about one copy chunk at a time (header in memory,
    the rest copied in 1 MiB chunks into the store's spool)."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the memory check runs once, on local disk")
    import tracemalloc

    path = tmp_path / "big.dcm"
    ds, frame = write_large_instance(path, study=STUDY_A, series=SERIES_A1)
    with path.open("rb") as file:
        response = client.post("/v2/studies", data=file,
                               headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.data
    _update(client, [STUDY_A], CHANGE)
    tracemalloc.start()
    try:
        assert run_ops() == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    url = _instance_url(STUDY_A, SERIES_A1, ds.SOPInstanceUID)
    last = client.get(f"{url}/frames/48", headers={"Accept": "application/octet-stream; transfer-syntax=*"})
    assert last.data == frame
    assert verify(archive, hashes=True, grace_seconds=0).problems == []


def test_a_missing_original_is_reported_by_verify_and_left_to_the_operator_by_gc(client, index, run_ops, archive):
    """gc removes rows whose blob is gone; an original's row is the instance's, whose current
    version is fine: gc leaves it, verify names the missing original."""
    ds = make_instance(study=STUDY_A, series=SERIES_A1)
    _stow(client, to_bytes(ds))
    _update(client, [STUDY_A], NEW_NAME)
    run_ops()
    original = next(row for row in index.stored_blobs(ds.SOPInstanceUID) if row.original)
    archive.store.delete(original.blob_key)
    assert archive.find_orphans(0).rows == []
    (problem,) = verify(archive, hashes=False, grace_seconds=0).problems
    assert problem.kind == "missing blob" and problem.blob_key == original.blob_key
    url = _instance_url(STUDY_A, SERIES_A1, ds.SOPInstanceUID)
    assert client.get(url, headers=DICOM_ANY).status_code == 200


def test_browsers_may_send_the_original_version_header_and_preflight_the_update(app_factory):
    client = app_factory(cors_origins=("https://viewer.example.org",)).test_client()
    for path, method, headers in (
        (f"/v2/studies/{STUDY_A}", "GET", "accept, msdicom-request-original"),
        ("/v2/studies/$bulkUpdate", "POST", "content-type, authorization"),
    ):
        response = client.options(path, headers={
            "Origin": "https://viewer.example.org", "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        })
        assert response.status_code == 200
        allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
        assert {h.strip() for h in headers.split(",")} <= allowed, (path, allowed)


def test_export_exports_the_current_version(app_factory, tmp_path):
    from dicomserver.operations import default_handlers, run_pending

    app = app_factory(operations_runner=False, export_root=str(tmp_path / "exports"))
    client, archive = app.test_client(), app.extensions["dicomserver"]
    ds = make_instance(study=STUDY_A, series=SERIES_A1)
    _stow(client, to_bytes(ds))
    _update(client, [STUDY_A], NEW_NAME)
    archive.index.connect()
    run_pending(archive.index, archive.settings, default_handlers())
    body = {"source": {"type": "identifiers", "settings": {"values": [STUDY_A]}},
            "destination": {"type": "folder", "settings": {"path": "out"}}}
    assert client.post("/v2/export", json=body).status_code == 202
    run_pending(archive.index, archive.settings, default_handlers())
    exported = (tmp_path / "exports" / "out" / STUDY_A / SERIES_A1 / f"{ds.SOPInstanceUID}.dcm").read_bytes()
    assert exported == client.get(_instance_url(STUDY_A, SERIES_A1, ds.SOPInstanceUID), headers=DICOM_ANY).data
    assert str(pydicom.dcmread(io.BytesIO(exported)).PatientName) == "Corrected^Name"
