"""A bulk update survives the death of its server: gunicorn (master and workers) is killed with
SIGKILL halfway through the operation, restarted on the same data, and the operation completes,
resumed by the restarted server once the dead runner's lease has expired: every instance has
the new values, its original is served byte for byte with `msdicom-request-original`, and what
the killed batch wrote is at most a batch of orphan blobs (for `dicom gc`). On SQLite + local
disk and on PostgreSQL + S3 (moto's server mode).
"""
from __future__ import annotations

import io
import os
import signal
import time

import pydicom
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import start_server, stop_server
from s3_fixtures import postgres_s3_archive

pytestmark = pytest.mark.live

ROOT = "1.2.826.0.1.3680043.10.1011.79"
INSTANCES = 24
BATCH = 2
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}
#: Small batches with a pause after each: the update takes a few seconds, long enough to be
#: caught halfway; a short lease so the restarted server takes over soon after.
ENV = {
    "DICOMWEB_UPDATE_BATCH": str(BATCH),
    "DICOMWEB_UPDATE_PAUSE": "0.25",
    "DICOMWEB_OPERATIONS_LEASE_SECONDS": "2",
    "DICOMWEB_OPERATIONS_POLL_SECONDS": "0.2",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """(server environment, the number of blobs stored now, or None when not counted)."""
    if request.param == "sqlite":
        blobs = tmp_path / "data" / "blobs"
        yield {}, lambda: sum(1 for path in blobs.rglob("*.dcm") if ".tmp" not in path.parts)
        return
    with postgres_s3_archive(request.getfixturevalue("postgres").url(), "update") as (env, _s3, _bucket):
        yield env, lambda: None


def test_a_bulk_update_killed_halfway_completes_after_restart(backend, tmp_path):
    env, count_blobs = backend
    env = {**ENV, **env}
    server = start_server(tmp_path / "data", workers=2, threads=4, env=env, new_session=True)
    stored: dict[str, bytes] = {}
    try:
        for n in range(INSTANCES):
            ds = make_instance(study=f"{ROOT}.{n % 3 + 1}", PatientName="Old^Name")
            data = to_bytes(ds)
            stored[f"{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"] = data
            assert requests.post(f"{server.url}/v2/studies", data=data, headers=DICOM, timeout=60).status_code == 200
        body = {"studyInstanceUids": [f"{ROOT}.{n}" for n in (1, 2, 3)],
                "changeDataset": {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "New^Name"}]}}}
        started = requests.post(f"{server.url}/v2/studies/$bulkUpdate", json=body, timeout=30)
        assert started.status_code == 202, started.text
        path = started.json()["href"].removeprefix(server.url)
        for _ in range(1200):  # until the operation is under way, not done (it takes seconds)
            state = requests.get(server.url + path, timeout=30).json()
            if state["status"] == "running" and (state.get("results") or {}).get("instanceUpdated", 0) >= 4:
                break
            assert state["status"] in ("notStarted", "running"), state
            time.sleep(0.02)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    finally:
        stop_server(server)
    assert 4 <= state["results"]["instanceUpdated"] < INSTANCES  # caught halfway

    restarted = start_server(tmp_path / "data", workers=2, threads=4, env=env)
    try:
        for _ in range(600):  # the dead runner's lease expires, a new runner resumes
            answer = requests.get(restarted.url + path, timeout=30)
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        done = answer.json()
        assert done["status"] == "succeeded", done
        assert done["startedTime"] == state["startedTime"]  # the same operation, resumed
        assert done["results"] == {"studyProcessed": 3, "studyUpdated": 3, "studyFailed": 0,
                                   "instanceUpdated": INSTANCES}, done
        for resource, data in stored.items():
            url = f"{restarted.url}/v2/studies/{resource}"
            current = requests.get(url, headers=AS_STORED, timeout=30)
            assert str(pydicom.dcmread(io.BytesIO(current.content)).PatientName) == "New^Name"
            original = requests.get(url, headers={**AS_STORED, "msdicom-request-original": "true"}, timeout=30)
            assert original.content == data, resource
        blobs = count_blobs()
        if blobs is not None:  # two versions each, and at most the killed batch's new blobs unindexed
            assert 2 * INSTANCES <= blobs <= 2 * INSTANCES + BATCH, blobs
    finally:
        stop_server(restarted)
