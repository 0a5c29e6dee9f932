"""The audit trail: one JSON line per request that touches patient data or is refused,
naming who, from where, what and the outcome, never an attribute value or a token."""
from __future__ import annotations

import json

import pytest
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings, close_app, create_app

STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


@pytest.fixture
def audited(tmp_path):
    def build(**settings):
        app = create_app(
            Settings(
                blobstore_url=str(tmp_path / "blobs"),
                database_url=f"sqlite:///{tmp_path / 'index.db'}",
                audit_log=str(tmp_path / "audit" / "audit.jsonl"),
                **settings,
            )
        )
        apps.append(app)
        return app

    apps: list = []
    yield build
    for app in apps:
        close_app(app)


def records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]


def test_each_patient_data_request_leaves_one_record(audited, tmp_path):
    client = audited().test_client()
    ds = make_instance(PatientName="Secret^Name", PatientID="MRN-12345")
    stored = client.post("/v2/studies", data=to_bytes(ds), headers=STOW)
    instance = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    client.get(instance + "/metadata")
    client.get("/v2/studies?PatientID=MRN-12345")
    client.get("/healthz")  # no patient data: no record
    client.delete(f"/v2/studies/{ds.StudyInstanceUID}")
    stow, metadata, search, delete = records(tmp_path)
    assert stow["method"] == "POST" and stow["route"] == "/v2/studies"
    assert stow["action"] == "write" and stow["status"] == 200 and stow["subject"] == "anonymous"
    assert stow["study"] == ds.StudyInstanceUID  # not in the path: the study it stored
    assert stow["request_id"] == stored.headers["X-Request-Id"]
    assert metadata["action"] == "read" and metadata["instance"] == ds.SOPInstanceUID
    assert metadata["study"] == ds.StudyInstanceUID and metadata["series"] == ds.SeriesInstanceUID
    assert metadata["bytes"] > 0 and metadata["client"] == "127.0.0.1"
    assert search["route"] == "/v2/studies" and search["status"] == 200
    assert metadata["route"] == "/v2/studies/<study>/series/<series>/instances/<instance>/metadata"
    assert delete["action"] == "delete" and delete["status"] == 204
    text = (tmp_path / "audit" / "audit.jsonl").read_text()
    assert "Secret" not in text and "MRN-12345" not in text  # never an attribute value, query values included


def test_refused_requests_are_recorded_without_the_token(audited, tmp_path):
    keys = tmp_path / "keys.json"
    app = audited(auth_tokens_file=str(keys))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["dicom", "create-api-key", "--name", "viewer-7", "--role", "globalReader"])
    key = result.output.strip().splitlines()[-1]
    client = app.test_client()
    client.get("/v2/studies")  # no token: 401
    client.post("/v2/studies", data=b"x", headers={**STOW, "Authorization": f"Bearer {key}"})  # reader: 403
    client.get("/v2/studies", headers={"Authorization": f"Bearer {key}"})
    missing, forbidden, allowed = records(tmp_path)
    assert (missing["status"], missing["subject"]) == (401, "-")
    assert (forbidden["status"], forbidden["subject"], forbidden["action"]) == (403, "viewer-7", "write")
    assert (allowed["status"], allowed["subject"]) == (200, "viewer-7")
    assert key not in (tmp_path / "audit" / "audit.jsonl").read_text()


def test_the_trail_can_be_turned_off(tmp_path):
    app = create_app(
        Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}", audit_log=None)
    )
    assert app.test_client().get("/v2/studies").status_code == 200
    assert Settings.from_env({"DICOMWEB_AUDIT_LOG": "off"}).audit_log is None
    close_app(app)


def test_the_client_behind_a_trusted_proxy_is_the_address_the_proxy_appended(audited, tmp_path):
    client = audited(trusted_proxies=("10.0.0.5",)).test_client()
    forged = {"X-Forwarded-For": "1.2.3.4, 192.0.2.7"}  # the client sent 1.2.3.4; the proxy saw 192.0.2.7
    client.get("/v2/studies", headers=forged, environ_base={"REMOTE_ADDR": "10.0.0.5"})
    client.get("/v2/studies", headers=forged, environ_base={"REMOTE_ADDR": "198.51.100.1"})  # not a proxy
    via_proxy, direct = records(tmp_path)
    assert via_proxy["client"] == "192.0.2.7" and direct["client"] == "198.51.100.1"
