"""Data partitions (DICOMWEB_PARTITIONS): every study-data route under /v{n}/partitions/{name},
the same UIDs stored in two partitions and kept apart by STOW, WADO, /metadata, QIDO, delete,
the change feed and the blob keys; the reference's 400s; GET /partitions; the default partition
holding what was stored with the feature off. On SQLite + local disk and PostgreSQL + S3."""
from __future__ import annotations

import dataclasses
import io
import re

import pydicom
import pytest
from auth_fixtures import bearer
from dicom_factory import make_instance, to_bytes

from dicomserver import ConfigError, close_app, create_app
from dicomserver.partitions import DEFAULT_NAME

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.10.1011.7.1", "1.2.826.0.1.3680043.10.1011.7.2", "1.2.826.0.1.3680043.10.1011.7.3"
INSTANCE = f"/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
DISABLED = b"Data partitions feature is disabled."
MISSING = b"PartitionName value is missing in the route segment."
INVALID = b"The specified PartitionName is invalid."
UNKNOWN = b"Specified PartitionName does not exist."


@pytest.fixture
def app(settings):
    app = create_app(dataclasses.replace(settings, partitions=True, operations_runner=False))
    app.config["TESTING"] = True
    yield app
    close_app(app)


def stow(client, partition: str, name: str, *, rows: int = 8, path: str = "/studies"):
    """Store the one test instance (same UIDs every time) with PatientName `name` into `partition`."""
    ds = make_instance(study=STUDY, series=SERIES, sop=SOP, PatientName=name, rows=rows, columns=rows)
    return client.post(f"/v2/partitions/{partition}{path}", data=to_bytes(ds), headers=DICOM)


def patient_name(part10: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(part10)).PatientName)


def test_the_same_uids_in_two_partitions_are_kept_apart(client, app):
    stored_a = stow(client, "hospital-a", "A^Patient")
    stored_b = stow(client, "hospital.b", "B^Patient", rows=16, path=f"/studies/{STUDY}")  # creates it too
    assert stored_a.status_code == stored_b.status_code == 200
    assert stored_b.json["00081190"]["Value"] == [f"http://localhost/v2/partitions/hospital.b/studies/{STUDY}"]
    (url_a,) = [item["00081190"]["Value"][0] for item in stored_a.json["00081199"]["Value"]]
    assert url_a == f"http://localhost/v2/partitions/hospital-a{INSTANCE}"
    # WADO: each partition's own file.
    for partition, name in (("hospital-a", "A^Patient"), ("hospital.b", "B^Patient")):
        retrieved = client.get(f"/v2/partitions/{partition}{INSTANCE}", headers={"Accept": "application/dicom"})
        assert retrieved.status_code == 200
        assert patient_name(retrieved.data) == name
        (meta,) = client.get(f"/v2/partitions/{partition}{INSTANCE}/metadata").json
        assert meta["00100010"]["Value"] == [{"Alphabetic": name}]
        assert meta["7FE00010"]["BulkDataURI"] == f"http://localhost/v2/partitions/{partition}{INSTANCE}/bulkdata/7FE00010"
        pixels = client.get(meta["7FE00010"]["BulkDataURI"].removeprefix("http://localhost"),
                            headers={"Accept": "application/octet-stream"})
        assert pixels.status_code == 200 and len(pixels.data) == (64 if partition == "hospital-a" else 256) * 2
        (found,) = client.get(f"/v2/partitions/{partition}/studies?PatientName={name}").json
        assert found["0020000D"]["Value"] == [STUDY]
        assert found["00081190"]["Value"] == [f"http://localhost/v2/partitions/{partition}/studies/{STUDY}"]
        assert client.get(f"/v2/partitions/{partition}/instances").json[0]["00100010"]["Value"] == [
            {"Alphabetic": name}
        ]
    assert client.get("/v2/partitions/hospital-a/studies?PatientName=B^Patient").json == []
    # The same UIDs again in a partition is a duplicate there, and only there.
    again = stow(client, "hospital-a", "A^Again")
    assert again.status_code == 409 and again.json["00081198"]["Value"][0]["00081197"]["Value"] == [45070]
    # Delete in one partition: the other keeps its instance.
    assert client.delete(f"/v2/partitions/hospital-a/studies/{STUDY}").status_code == 204
    assert client.get(f"/v2/partitions/hospital-a{INSTANCE}/metadata").status_code == 404
    assert client.get(f"/v2/partitions/hospital-a/studies/{STUDY}/instances").json == []
    assert client.get(f"/v2/partitions/hospital.b{INSTANCE}/metadata").status_code == 200
    # The change feed (global) names each entry's partition, and derives each state within it.
    feed = client.get("/v2/changefeed?includeMetadata=false").json
    assert [(e["partitionName"], e["action"], e["state"]) for e in feed] == [
        ("hospital-a", "create", "deleted"), ("hospital.b", "create", "current"), ("hospital-a", "delete", "deleted"),
    ]
    (current,) = [e for e in client.get("/v2/changefeed").json if e["state"] == "current"]
    assert current["metadata"]["7FE00010"]["BulkDataURI"].startswith("http://localhost/v2/partitions/hospital.b/")


def test_the_audit_trail_names_the_partition(client):
    assert stow(client, "audited", "A^P").status_code == 200
    assert client.get("/v2/partitions/nobody/studies").status_code == 400
    assert client.get("/v2/changefeed").status_code == 200
    found = {}
    for entry in client.get("/v2/audit").json["entry"]:
        details = {d["type"]: d["valueString"] for d in entry["resource"]["entity"][0]["detail"]}
        found[(details["method"], details["route"])] = details.get("partition")
    assert found == {
        ("POST", "/v2/partitions/<partition_name>/studies"): "audited",
        ("GET", "/v2/partitions/<partition_name>/studies"): None,  # refused: an unknown name is not recorded
        ("GET", "/v2/changefeed"): None,
    }


def test_extended_query_tags_are_global_and_match_within_a_partition(client, app):
    """Tags are defined once at the base URL; the re-index covers every partition, and a QIDO on
    a tag matches in the partition of its request; errors name their instance's partition."""
    for partition, station in (("a", "CT1"), ("b", "X" * 17)):  # SH is at most 16 characters: an error
        ds = make_instance(study=STUDY, series=SERIES, sop=SOP, StationName=station)
        assert client.post(f"/v2/partitions/{partition}/studies", data=to_bytes(ds), headers=DICOM).status_code in (
            200, 202)
    assert client.post("/v2/extendedquerytags", json=[{"path": "StationName", "level": "Series"}]).status_code == 202
    from dicomserver.operations import default_handlers, run_pending

    archive = app.extensions["dicomserver"]
    archive.index.connect()
    run_pending(archive.index, archive.settings, default_handlers())
    archive.index.close()
    (error,) = client.get("/v2/extendedquerytags/StationName/errors").json
    assert (error["partitionName"], error["sopInstanceUid"]) == ("b", SOP)
    client.patch("/v2/extendedquerytags/StationName", json={"queryStatus": "Enabled"})
    assert len(client.get("/v2/partitions/a/series?StationName=CT1").json) == 1
    assert client.get("/v2/partitions/b/series?StationName=CT1").json == []


def test_each_partition_has_blob_keys_of_its_own(client, app):
    assert stow(client, DEFAULT_NAME, "D^Patient").status_code == 200
    assert stow(client, "other", "O^Patient").status_code == 200
    index = app.extensions["dicomserver"].index
    index.connect()
    try:
        keys = {blob.partition_key: blob.blob_key for blob in index.stored_blobs()}
    finally:
        index.close()
    assert keys[1].startswith(f"{STUDY}/{SERIES}/{SOP}_")  # the default partition: the layout without partitions
    assert re.fullmatch(rf"partitions/2/{STUDY}/{SERIES}/{SOP}_\d+-[0-9a-f]{{32}}\.dcm", keys[2])
    assert app.extensions["dicomserver"].store.exists(keys[2])


def test_get_partitions_lists_them(client):
    (default,) = client.get("/v2/partitions").json
    assert default["partitionKey"] == 1 and default["partitionName"] == DEFAULT_NAME
    assert stow(client, "Site_7", "S^P").status_code == 200
    listed = client.get("/v1/partitions")
    assert listed.status_code == 200 and listed.content_type == "application/json"
    assert [(p["partitionKey"], p["partitionName"]) for p in listed.json] == [(1, DEFAULT_NAME), (2, "Site_7")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", listed.json[1]["createdDate"])


def test_the_reference_400s_with_partitions_on(client):
    for method, path in (("GET", "/v2/studies"), ("POST", "/v2/studies"), ("GET", f"/v2{INSTANCE}/metadata"),
                         ("DELETE", f"/v2/studies/{STUDY}"), ("GET", "/v1/instances"), ("POST", "/v2/export")):
        answer = client.open(path, method=method, headers=DICOM)
        assert (answer.status_code, answer.data.strip()) == (400, MISSING), (method, path)
    for name in ("a*b", "x" * 65, "a%20b", "caf%C3%A9"):
        answer = client.post(f"/v2/partitions/{name}/studies", data=b"", headers=DICOM)
        assert (answer.status_code, answer.data.strip()) == (400, INVALID), name
    assert client.get("/v2/partitions/" + "x" * 64 + "/studies").data.strip() == UNKNOWN  # 64 characters: valid
    for method, path in (("GET", "/studies"), ("GET", f"{INSTANCE}"), ("DELETE", f"/studies/{STUDY}"),
                         ("GET", f"/studies/{STUDY}/rendered")):
        answer = client.open(f"/v2/partitions/nobody{path}", method=method)
        assert (answer.status_code, answer.data.strip()) == (400, UNKNOWN), (method, path)
    assert client.get("/v2/partitions").json[-1]["partitionName"] == DEFAULT_NAME  # no request above created one
    # Not partitioned, as the reference: they answer at the base URL with partitions on.
    assert client.get("/v2/changefeed").status_code == 200
    assert client.get("/v2/extendedquerytags").status_code == 200
    assert client.get("/v2/partitions/x/changefeed").status_code == 404


def test_the_reference_400s_with_partitions_off(app_factory):
    client = app_factory().test_client()
    for method, path in (("GET", "/v2/partitions/p/studies"), ("POST", "/v2/partitions/p/studies"),
                         ("GET", f"/v2/partitions/{DEFAULT_NAME}{INSTANCE}"), ("GET", "/v2/partitions")):
        answer = client.open(path, method=method, headers=DICOM)
        assert (answer.status_code, answer.data.strip()) == (400, DISABLED), (method, path)


def test_data_stored_with_partitions_off_is_in_the_default_partition(settings):
    off = create_app(dataclasses.replace(settings, operations_runner=False))
    ds = make_instance(study=STUDY, series=SERIES, sop=SOP, PatientName="Before^On")
    assert off.test_client().post("/v2/studies", data=to_bytes(ds), headers=DICOM).status_code == 200
    feed = off.test_client().get("/v2/changefeed").json
    assert feed[0]["partitionName"] == DEFAULT_NAME
    assert feed[0]["metadata"]["7FE00010"]["BulkDataURI"].startswith(f"http://localhost/v2/studies/{STUDY}/")
    close_app(off)
    on = create_app(dataclasses.replace(settings, partitions=True, operations_runner=False))
    client = on.test_client()
    try:
        assert client.get(f"/v2{INSTANCE}/metadata").status_code == 400
        (meta,) = client.get(f"/v2/partitions/{DEFAULT_NAME}{INSTANCE}/metadata").json
        assert meta["00100010"]["Value"] == [{"Alphabetic": "Before^On"}]
        assert stow(client, "new", "After^On").status_code == 200  # the same UIDs, another partition
    finally:
        close_app(on)
    # Partitions besides the default: the feature cannot be turned off again (the reference refuses too).
    with pytest.raises(ConfigError, match="DICOMWEB_PARTITIONS"):
        create_app(dataclasses.replace(settings, operations_runner=False))


def test_partitioned_routes_need_the_same_actions(app_factory, auth_settings, identity_provider):
    app = app_factory(partitions=True, **auth_settings)
    client = app.test_client()
    reader, writer = (bearer(identity_provider.token(roles=[role])) for role in ("globalReader", "globalWriter"))
    ds = to_bytes(make_instance(study=STUDY, series=SERIES, sop=SOP))
    assert client.post("/v2/partitions/p/studies", data=ds, headers=DICOM).status_code == 401
    assert client.post("/v2/partitions/p/studies", data=ds, headers={**DICOM, **reader}).status_code == 403
    assert client.get("/v2/partitions", headers=reader).json[-1]["partitionName"] == DEFAULT_NAME  # not created
    assert client.get("/v2/partitions").status_code == 401
    assert client.post("/v2/partitions/p/studies", data=ds, headers={**DICOM, **writer}).status_code == 200
    assert client.get(f"/v2/partitions/p{INSTANCE}/metadata", headers=reader).status_code == 200
    assert client.delete(f"/v2/partitions/p/studies/{STUDY}", headers=reader).status_code == 403
    for rule in app.url_map.iter_rules():
        if "partition_name" in rule.arguments:
            view = app.view_functions[rule.endpoint]
            plain = app.view_functions[rule.endpoint.removeprefix("partitioned_")]
            assert view is plain and view.required_action, rule.rule


def test_cors_answers_the_partitioned_routes(app_factory):
    client = app_factory(partitions=True, cors_origins=("*",)).test_client()
    preflight = client.options("/v2/partitions/p/studies", headers={
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "POST",
    })
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert client.get("/v2/partitions/p/studies", headers={"Origin": "https://x"}).headers[
        "Access-Control-Allow-Origin"] == "*"


def test_export_reads_the_partition_of_its_request(settings, tmp_path):
    from dicomserver.operations import default_handlers, run_pending

    app = create_app(dataclasses.replace(settings, partitions=True, operations_runner=False,
                                         export_root=str(tmp_path / "exports")))
    client = app.test_client()
    try:
        assert stow(client, "a", "A^Patient").status_code == 200
        assert stow(client, "b", "B^Patient").status_code == 200
        body = {"source": {"type": "identifiers", "settings": {"values": [STUDY]}},
                "destination": {"type": "folder", "settings": {"path": "out"}}}
        started = client.post("/v2/partitions/b/export", json=body)
        assert started.status_code == 202
        assert started.json["href"].startswith("http://localhost/v2/operations/")  # operations are not partitioned
        archive = app.extensions["dicomserver"]
        archive.index.connect()
        run_pending(archive.index, archive.settings, default_handlers())
        archive.index.close()
        assert client.get(started.json["href"]).json["status"] == "succeeded"
        exported = (tmp_path / "exports" / "out" / STUDY / SERIES / f"{SOP}.dcm").read_bytes()
        assert patient_name(exported) == "B^Patient"
    finally:
        close_app(app)


def test_import_into_a_partition(tmp_path):
    from cli_fixtures import archive_env
    from click.testing import CliRunner

    from dicomserver.cli import main

    source = tmp_path / "src"
    source.mkdir()
    ds = make_instance(study=STUDY, series=SERIES, sop=SOP, PatientName="Imported^Twice")
    (source / "one.dcm").write_bytes(to_bytes(ds))
    env = archive_env(tmp_path / "archive")
    runner = CliRunner()
    refused = runner.invoke(main, ["import", "--partition", "site", str(source)], env=env)
    assert refused.exit_code == 2 and "DICOMWEB_PARTITIONS is off" in refused.output
    env["DICOMWEB_PARTITIONS"] = "on"
    for args in (["--partition", "site"], []):
        done = runner.invoke(main, ["import", "--no-progress", *args, str(source)], env=env, catch_exceptions=False)
        assert done.exit_code == 0 and "stored: 1" in done.output, done.output
    bad = runner.invoke(main, ["import", "--partition", "a/b", str(source)], env=env)
    assert bad.exit_code == 2 and "invalid" in bad.output
    from dicomserver import Settings

    app = create_app(Settings(blobstore_url=env["DICOMWEB_BLOBSTORE_URL"], database_url=env["DICOMWEB_DATABASE_URL"],
                              partitions=True, operations_runner=False))
    client = app.test_client()
    try:
        for partition in ("site", DEFAULT_NAME):
            assert client.get(f"/v2/partitions/{partition}{INSTANCE}/metadata").status_code == 200
        # gc and verify see every partition's blobs as referenced.
        gc = runner.invoke(main, ["gc", "--dry-run", "--grace", "0s"], env=env, catch_exceptions=False)
        assert gc.exit_code == 0 and "2 indexed instances, 0 blobs without an index row" in gc.output, gc.output
        verify = runner.invoke(main, ["verify", "--hashes", "--grace", "0s"], env=env, catch_exceptions=False)
        assert verify.exit_code == 0 and "verify: 2 index rows, 2 blobs" in verify.output, verify.output
    finally:
        close_app(app)


def test_bulk_update_changes_the_study_of_its_partition_only(client, app):
    """The request's study UIDs are looked up in its partition; the new version's blob key carries
    that partition's prefix; the other partition's study with the same UIDs is untouched."""
    from dicomserver.operations import default_handlers, run_pending

    assert stow(client, "a", "A^Patient").status_code == 200
    assert stow(client, "b", "B^Patient").status_code == 200
    body = {"studyInstanceUids": [STUDY], "changeDataset": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}}}
    started = client.post("/v2/partitions/a/studies/$bulkUpdate", json=body)  # a's study is stored first
    assert started.status_code == 202, started.data
    assert started.json["href"].startswith("http://localhost/v2/operations/")  # operations are not partitioned
    archive = app.extensions["dicomserver"]
    archive.index.connect()
    try:
        run_pending(archive.index, archive.settings, default_handlers())
        keys = {(blob.partition_key, blob.original): blob.blob_key for blob in archive.index.stored_blobs()}
    finally:
        archive.index.close()
    status = client.get(started.json["href"]).json
    assert status["status"] == "succeeded" and status["results"]["studyUpdated"] == 1, status
    wado = {"Accept": "application/dicom"}
    assert patient_name(client.get(f"/v2/partitions/a{INSTANCE}", headers=wado).data) == "New^Name"
    original = client.get(f"/v2/partitions/a{INSTANCE}", headers={**wado, "msdicom-request-original": "true"})
    assert patient_name(original.data) == "A^Patient"
    assert patient_name(client.get(f"/v2/partitions/b{INSTANCE}", headers=wado).data) == "B^Patient"
    assert client.get("/v2/partitions/b/studies?PatientName=New^Name").json == []
    assert len(client.get("/v2/partitions/a/studies?PatientName=New^Name").json) == 1
    assert keys[(2, False)].startswith("partitions/2/") and keys[(2, True)].startswith("partitions/2/")
    assert (3, True) not in keys
    (entry,) = [e for e in client.get("/v2/changefeed?includeMetadata=false").json if e["action"].lower() == "update"]
    assert entry["partitionName"] == "a"
