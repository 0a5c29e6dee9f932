"""Export (POST /export): the reference server's request and answers, the export operation
(the stored files copied byte for byte to <study>/<series>/<instance>.dcm, the error log,
the counts, resumed after a crash), and the places a request may not write to. On SQLite +
local disk with a folder destination, and on PostgreSQL + S3 with an S3 prefix on moto."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import threading
import time
from typing import Any

import boto3
import pytest
from dicom_factory import make_instance, to_bytes
from s3_fixtures import empty_bucket, new_bucket
from test_openapi import _operation, check_answer

from dicomserver import close_app, create_app
from dicomserver.export import export
from dicomserver.operations import Run

STUDY_A, STUDY_B, SERIES_B = "1.2.826.0.1.3680043.10.1011.5.1", "1.2.826.0.1.3680043.10.1011.5.2", "1.2.826.0.1.5.3"
MISSING = "1.2.826.0.1.3680043.10.1011.5.99"


@pytest.fixture
def bucket(settings, request):
    """An S3 bucket on moto to export to, when the archive is on S3 (PostgreSQL + S3); else None."""
    if not settings.blobstore_url.startswith("s3://"):
        yield None
        return
    request.getfixturevalue("moto_s3")
    name = new_bucket("export")
    yield name
    client = boto3.client("s3")
    empty_bucket(client, name, remove=True)
    client.close()


@pytest.fixture
def app(settings, tmp_path, bucket):
    """The app without its operations thread (tests run operations when they choose), exports
    allowed under tmp_path/exports and to the test bucket, two instances a batch."""
    app = create_app(dataclasses.replace(
        settings, operations_runner=False, export_batch=2, export_root=str(tmp_path / "exports"),
        export_s3_buckets=(bucket,) if bucket else (), audit_log=str(tmp_path / "audit.jsonl"),
    ))
    app.config["TESTING"] = True
    yield app
    close_app(app)


class Destination:
    """Where a test exports to (a folder on SQLite + local, an S3 prefix on PostgreSQL + S3) and
    what it finds there."""

    def __init__(self, root: str, bucket: str | None):
        self.root, self.bucket = root, bucket

    def body(self) -> dict[str, Any]:
        if self.bucket is None:
            return {"type": "folder", "settings": {"path": "run/one"}}
        return {"type": "s3", "settings": {"bucket": self.bucket, "prefix": "exports/one"}}

    def read(self, key: str) -> bytes | None:
        if self.bucket is None:
            path = os.path.join(self.root, "run", "one", *key.split("/"))
            if not os.path.exists(path):
                return None
            with open(path, "rb") as file:
                return file.read()
        client = boto3.client("s3")
        try:
            return client.get_object(Bucket=self.bucket, Key=f"exports/one/{key}")["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        finally:
            client.close()


@pytest.fixture
def destination(tmp_path, bucket):
    return Destination(str(tmp_path / "exports"), bucket)


@pytest.fixture
def stow(client):
    def post(**attributes: Any) -> Any:
        ds = make_instance(**attributes)
        response = client.post("/v2/studies", data=to_bytes(ds),
                               headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
        assert response.status_code == 200, response.data
        return ds

    return post


def _export(client, values: list[str], destination: Any, status: int = 202, version: str = "v2"):
    body = {"source": {"type": "identifiers", "settings": {"values": values}}, "destination": destination}
    response = client.post(f"/{version}/export", json=body)
    assert response.status_code == status, response.data
    return response


def _stored(app, index, sop: str) -> bytes:
    (blob,) = index.stored_blobs(sop)
    with app.extensions["dicomserver"].store.open(blob.blob_key) as stream:
        return stream.read()


def _error_lines(destination: Destination, operation_id: str) -> list[dict[str, Any]]:
    text = destination.read(f"{operation_id}/errors.log")
    return [json.loads(line) for line in (text or b"").decode().splitlines()]


def test_export_copies_the_stored_files_and_logs_what_matched_nothing(
    client, stow, run_ops, app, index, destination, tmp_path
):
    a1 = stow(study=STUDY_A)
    a2 = stow(study=STUDY_A)
    b1 = stow(study=STUDY_B, series=SERIES_B)
    stow(study=STUDY_B, series=SERIES_B)  # not asked for
    response = _export(client, [STUDY_A, f"{STUDY_B}/{SERIES_B}/{b1.SOPInstanceUID}", MISSING,
                                f"{STUDY_A}/{a1.SeriesInstanceUID}"],  # covered by STUDY_A: exported once
                       destination.body())
    started = response.get_json()
    assert set(started) == {"id", "href"} and response.headers["Location"] == started["href"]
    waiting = client.get(started["href"])
    assert waiting.status_code == 202 and waiting.get_json()["status"] == "notStarted"
    assert waiting.get_json()["resources"] == [
        f"http://localhost/v2/studies/{STUDY_A}",
        f"http://localhost/v2/studies/{STUDY_B}/series/{SERIES_B}/instances/{b1.SOPInstanceUID}",
        f"http://localhost/v2/studies/{MISSING}",
    ]

    assert run_ops() == 1
    done = client.get(started["href"])
    assert done.status_code == 200, done.data
    document = done.get_json()
    assert document["type"] == "export" and document["status"] == "succeeded" and document["percentComplete"] == 100
    results = document["results"]
    assert {k: results[k] for k in ("exported", "skipped", "failed")} == {"exported": 3, "skipped": 1, "failed": 0}
    assert results["errorHref"].endswith(f"{started['id']}/errors.log")
    for ds in (a1, a2, b1):
        key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert destination.read(key) == _stored(app, index, ds.SOPInstanceUID), key
    openapi = client.get("/openapi.json").get_json()  # the answers are the documented ones
    check_answer(openapi, _operation(openapi, app, "POST", "/v2/export"), response)
    check_answer(openapi, _operation(openapi, app, "GET", started["href"].removeprefix("http://localhost")), done)
    (line,) = _error_lines(destination, started["id"])
    assert line["identifier"] == MISSING and "no stored instance" in line["error"]
    dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    # The audit trail records the request (it sends patient data out of the archive).
    records = [json.loads(text) for text in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(r["method"] == "POST" and r["action"] == "export" and r["status"] == 202 for r in records), records


def test_v1_answers_as_v2_and_calls_success_completed(client, stow, run_ops, destination):
    stow(study=STUDY_A)
    started = _export(client, [STUDY_A], destination.body(), version="v1").get_json()
    assert started["href"].startswith("http://localhost/v1/operations/")
    run_ops()
    assert client.get(started["href"]).get_json()["status"] == "completed"


def test_an_instance_lost_during_the_export_is_a_failure_in_the_error_log(
    client, stow, run_ops, app, index, destination
):
    kept, lost = stow(study=STUDY_A), stow(study=STUDY_A)
    started = _export(client, [STUDY_A], destination.body()).get_json()
    (blob,) = index.stored_blobs(lost.SOPInstanceUID)
    app.extensions["dicomserver"].store.delete(blob.blob_key)  # as a DELETE between the page read and its copy
    run_ops()
    results = client.get(started["href"]).get_json()["results"]
    assert (results["exported"], results["skipped"], results["failed"]) == (1, 0, 1)
    (line,) = _error_lines(destination, started["id"])
    assert line["identifier"] == f"{STUDY_A}/{lost.SeriesInstanceUID}/{lost.SOPInstanceUID}"
    assert destination.read(f"{STUDY_A}/{kept.SeriesInstanceUID}/{kept.SOPInstanceUID}.dcm") is not None
    assert destination.read(f"{STUDY_A}/{lost.SeriesInstanceUID}/{lost.SOPInstanceUID}.dcm") is None


def test_a_crashed_export_resumes_from_its_checkpoint(client, stow, run_ops, app, index, destination):
    """Runner A copies one batch and dies (no release); runner B resumes after A's checkpoint
    once A's lease has expired, and every file ends up exported once, whole."""
    instances = [stow(study=STUDY_A) for _ in range(5)]
    operation_id = _export(client, [STUDY_A, MISSING], destination.body()).get_json()["id"]
    settings = dataclasses.replace(app.extensions["dicomserver"].settings, operations_lease_seconds=0.05)
    record = index.claim_operation("A", dt.timedelta(seconds=0.05), ["export"])
    assert record is not None
    stop = threading.Event()
    run_a = Run(index, record, "A", settings, stop)
    run_a.pause = lambda seconds: stop.set()  # type: ignore[method-assign]  # A dies after its first batch
    export(run_a)
    checkpoint = index.operation(operation_id).checkpoint
    assert checkpoint["results"]["exported"] == 2 and checkpoint["item"] == 0
    state = client.get(f"/v2/operations/{operation_id}").get_json()
    assert state["status"] == "running" and state["percentComplete"] == 40
    written = [ds for ds in instances
               if destination.read(f"{STUDY_A}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm") is not None]
    assert len(written) == 2

    time.sleep(0.1)  # A's lease runs out (no assertion on time: only the expiry is waited for)
    assert run_ops("B") == 1
    record = index.operation(operation_id)
    assert record.status == "succeeded" and record.attempts == 2
    results = record.checkpoint["results"]
    assert (results["exported"], results["skipped"], results["failed"]) == (5, 1, 0)
    for ds in instances:
        key = f"{STUDY_A}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert destination.read(key) == _stored(app, index, ds.SOPInstanceUID)
    assert [line["identifier"] for line in _error_lines(destination, operation_id)] == [MISSING]


def test_instances_stored_after_the_export_began_are_not_part_of_it(client, stow, run_ops, destination, index):
    stow(study=STUDY_A)
    operation_id = _export(client, [STUDY_A], destination.body()).get_json()["id"]
    record = index.claim_operation("A", dt.timedelta(minutes=5), ["export"])
    assert record is not None
    stop = threading.Event()
    stop.set()  # A takes its snapshot of the index, then stops before its first batch
    export(Run(index, record, "A", xapp_settings(client), stop))
    later = stow(study=STUDY_A)
    index.release_operation(operation_id, "A")
    run_ops()
    assert index.operation(operation_id).checkpoint["results"]["exported"] == 1
    assert destination.read(f"{STUDY_A}/{later.SeriesInstanceUID}/{later.SOPInstanceUID}.dcm") is None


def xapp_settings(client) -> Any:
    return client.application.extensions["dicomserver"].settings


FOLDER = {"type": "folder", "settings": {"path": "out"}}
SOURCE = {"type": "identifiers", "settings": {"values": [STUDY_A]}}


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"),
    ({"destination": FOLDER}, "source"),
    ({"source": {"type": "query", "settings": {}}, "destination": FOLDER}, "identifiers"),
    ({"source": {"type": "identifiers", "settings": {"values": []}}, "destination": FOLDER}, "non-empty"),
    ({"source": {"type": "identifiers", "settings": {"values": ["1.2.3/x"]}}, "destination": FOLDER}, "value 0"),
    ({"source": {"type": "identifiers", "settings": {"values": ["1.2/1.3/1.4/1.5"]}}, "destination": FOLDER},
     "value 0"),
    ({"source": {"type": "identifiers", "settings": {"values": [7]}}, "destination": FOLDER}, "value 0"),
    ({"source": SOURCE}, "destination"),
    ({"source": SOURCE, "destination": {"type": "azureblob", "settings": {"blobContainerUri": "https://x"}}},
     '"folder" or "s3"'),
    ({"source": SOURCE, "destination": {"type": "folder", "settings": {"path": "/etc"}}}, "relative"),
    ({"source": SOURCE, "destination": {"type": "folder", "settings": {"path": "../out"}}}, "relative"),
    ({"source": SOURCE, "destination": {"type": "folder", "settings": {"path": "a/../../out"}}}, "relative"),
    ({"source": SOURCE, "destination": {"type": "folder", "settings": {"path": ".hidden"}}}, "relative"),
    ({"source": SOURCE, "destination": {"type": "folder", "settings": {"path": "a", "mode": "x"}}}, "only"),
    ({"source": SOURCE, "destination": {"type": "s3", "settings": {"bucket": "elsewhere"}}}, "DICOMWEB_EXPORT_S3"),
    ({"source": SOURCE, "destination": {"type": "s3", "settings": {"bucket": "b", "secretAccessKey": "k"}}},
     "credentials"),
])
def test_malformed_bodies_and_forbidden_destinations_are_400(client, body, message):
    response = client.post("/v2/export", json=body)
    assert response.status_code == 400, response.data
    assert message in response.get_data(as_text=True)
    assert client.post("/v2/export", data=b"{not json", content_type="application/json").status_code == 400


def test_a_folder_linked_outside_the_export_root_is_refused(client, tmp_path):
    (tmp_path / "exports").mkdir(exist_ok=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "exports" / "link")
    body = {"source": SOURCE, "destination": {"type": "folder", "settings": {"path": "link/run"}}}
    response = client.post("/v2/export", json=body)
    assert response.status_code == 400 and "outside the export root" in response.get_data(as_text=True)
    assert not (tmp_path / "outside" / "run").exists()
    body["destination"]["settings"]["path"] = "fine/run"
    assert client.post("/v2/export", json=body).status_code == 202


def test_destinations_must_be_enabled(settings, tmp_path):
    app = create_app(dataclasses.replace(settings, operations_runner=False))
    try:
        client = app.test_client()
        refused = client.post("/v2/export", json={"source": SOURCE, "destination": FOLDER})
        assert refused.status_code == 400 and "DICOMWEB_EXPORT_ROOT" in refused.get_data(as_text=True)
        s3 = {"type": "s3", "settings": {"bucket": "any-bucket"}}
        refused = client.post("/v2/export", json={"source": SOURCE, "destination": s3})
        assert refused.status_code == 400 and "DICOMWEB_EXPORT_S3_BUCKETS" in refused.get_data(as_text=True)
    finally:
        close_app(app)


def test_an_endpoint_must_be_allowed(client, bucket):
    if bucket is None:
        pytest.skip("S3 destinations are tested with the PostgreSQL + S3 archive")
    s3 = {"type": "s3", "settings": {"bucket": bucket, "endpointUrl": "http://169.254.169.254"}}
    refused = client.post("/v2/export", json={"source": SOURCE, "destination": s3})
    assert refused.status_code == 400 and "DICOMWEB_EXPORT_S3_ENDPOINTS" in refused.get_data(as_text=True)


def test_exporting_needs_the_export_action(app_factory, auth_settings, identity_provider, tmp_path):
    client = app_factory(**auth_settings, operations_runner=False, export_root=str(tmp_path / "x")).test_client()
    body = {"source": SOURCE, "destination": FOLDER}
    reader = {"Authorization": f"Bearer {identity_provider.token(roles=['globalReader'])}"}
    admin = {"Authorization": f"Bearer {identity_provider.token(roles=['globalAdmin'])}"}
    assert client.post("/v2/export", json=body).status_code == 401
    assert client.post("/v2/export", json=body, headers=reader).status_code == 403
    assert client.post("/v2/export", json=body, headers=admin).status_code == 202


def test_unversioned_export_is_404(client):
    response = client.post("/export", json={})
    assert response.status_code == 404 and "/v2/export" in response.get_data(as_text=True)


def test_a_batch_of_slow_copies_keeps_its_lease(client, stow, app, index, destination, monkeypatch):
    """A batch whose files take longer than a third of the lease renews it between files, so
    that no other runner takes the operation over while it is being copied."""
    import dicomserver.export as module

    stow(study=STUDY_A)
    stow(study=STUDY_A)
    operation_id = _export(client, [STUDY_A], destination.body()).get_json()["id"]
    settings = dataclasses.replace(app.extensions["dicomserver"].settings, operations_lease_seconds=0.3)
    record = index.claim_operation("A", dt.timedelta(seconds=0.3), ["export"])
    copy, renewals = module._copy, []

    def slow_copy(*args: Any) -> None:
        time.sleep(0.15)  # past a third of the lease: the next file renews it first
        copy(*args)

    def renew(*args: Any, **kwargs: Any) -> None:
        renewals.append((args[2], kwargs.get("checkpoint")))
        original(*args, **kwargs)

    original = index.renew_lease
    monkeypatch.setattr(module, "_copy", slow_copy)
    monkeypatch.setattr(index, "renew_lease", renew)
    export(Run(index, record, "A", settings, threading.Event()))
    # A renewal of the full lease without a checkpoint: within the batch (finishing renews none).
    assert (dt.timedelta(seconds=0.3), None) in renewals, renewals
    assert index.operation(operation_id).status == "succeeded"


def test_a_stored_file_that_changed_is_not_exported(client, stow, run_ops, app, index, destination):
    """The copy is hashed on the way: a file that is not the one the archive received (same
    size, other bytes) is a failure in the log, and is not left at the destination."""
    good, bad = stow(study=STUDY_A), stow(study=STUDY_A)
    (blob,) = index.stored_blobs(bad.SOPInstanceUID)
    store = app.extensions["dicomserver"].store
    with store.open(blob.blob_key) as stream:
        data = bytearray(stream.read())
    data[-1] ^= 0xFF
    store.put(blob.blob_key, io.BytesIO(bytes(data)))
    started = _export(client, [STUDY_A], destination.body()).get_json()
    run_ops()
    results = client.get(started["href"]).get_json()["results"]
    assert (results["exported"], results["failed"]) == (1, 1)
    (line,) = _error_lines(destination, started["id"])
    assert line["identifier"] == f"{STUDY_A}/{bad.SeriesInstanceUID}/{bad.SOPInstanceUID}" and "SHA-256" in line["error"]
    assert destination.read(f"{STUDY_A}/{bad.SeriesInstanceUID}/{bad.SOPInstanceUID}.dcm") is None
    assert destination.read(f"{STUDY_A}/{good.SeriesInstanceUID}/{good.SOPInstanceUID}.dcm") is not None


def test_a_page_may_start_an_export(app_factory, tmp_path):
    """CORS as for the other POST routes: the preflight allows POST, the answer exposes Location."""
    origin = "https://viewer.example.org"
    client = app_factory(cors_origins=(origin,), operations_runner=False, export_root=str(tmp_path / "x")).test_client()
    preflight = client.options("/v2/export", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type",
    })
    assert preflight.status_code == 200 and "POST" in preflight.headers["Access-Control-Allow-Methods"]
    started = client.post("/v2/export", json={"source": SOURCE, "destination": FOLDER}, headers={"Origin": origin})
    assert started.status_code == 202 and started.headers["Access-Control-Allow-Origin"] == origin
    assert "location" in started.headers["Access-Control-Expose-Headers"].lower()
