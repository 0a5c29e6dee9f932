"""A bulk update survives the death of its server: gunicorn (master and workers) is killed with
SIGKILL halfway through the operation, restarted on the same data, and the operation completes,
resumed by the restarted server once the dead runner's lease has expired: every instance has
the new values, its original is served byte for byte with `msdicom-request-original`, and what
the killed batch wrote is at most a batch of orphan blobs (for `dicom gc`). On SQLite + local
disk and on PostgreSQL + S3 (moto's server mode).
"""
from __future__ import annotations

import io

import pydicom
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import start_server, stop_server
from operation_restart import QUICK_TAKEOVER, finished, kill_when
from s3_fixtures import postgres_s3_archive

pytestmark = pytest.mark.live

ROOT = "1.2.826.0.1.3680043.10.1011.79"
INSTANCES = 24
BATCH = 2
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}
#: Small batches with a pause after each: the update takes a few seconds, long enough to be
#: caught halfway; a short lease so the restarted server takes over soon after.
ENV = {"DICOMWEB_UPDATE_BATCH": str(BATCH), "DICOMWEB_UPDATE_PAUSE": "0.25", **QUICK_TAKEOVER}


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
    except BaseException:
        stop_server(server)
        raise
    state = kill_when(server, lambda: requests.get(server.url + path, timeout=30).json(),
                      lambda state: (state.get("results") or {}).get("instanceUpdated", 0) >= 4)
    assert 4 <= state["results"]["instanceUpdated"] < INSTANCES  # caught halfway

    restarted = start_server(tmp_path / "data", workers=2, threads=4, env=env)
    try:
        done = finished(restarted, path)
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
