"""An export survives the death of its server: gunicorn (master and workers) is killed with
SIGKILL halfway through the operation, restarted on the same data, and the operation
completes, resumed by the restarted server once the dead runner's lease has expired; every
exported file equals the stored one. On SQLite + local disk exporting to a folder, and on
PostgreSQL + S3 (moto's server mode) exporting to an S3 prefix.
"""
from __future__ import annotations

import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import start_server, stop_server
from operation_restart import QUICK_TAKEOVER, finished, kill_when
from s3_fixtures import postgres_s3_archive

pytestmark = pytest.mark.live

ROOT = "1.2.826.0.1.3680043.10.1011.78"
INSTANCES = 24
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}
#: Small batches with a pause after each: the export takes a few seconds, long enough to be
#: caught halfway; a short lease so the restarted server takes over soon after.
ENV = {"DICOMWEB_EXPORT_BATCH": "2", "DICOMWEB_EXPORT_PAUSE": "0.25", **QUICK_TAKEOVER}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """(server environment, destination body, reader of an exported file by key)."""
    if request.param == "sqlite":
        root = tmp_path / "exports"

        def read_file(key: str) -> bytes | None:
            path = root / "run" / key
            return path.read_bytes() if path.exists() else None

        yield ({"DICOMWEB_EXPORT_ROOT": str(root)}, {"type": "folder", "settings": {"path": "run"}}, read_file)
        return
    with postgres_s3_archive(request.getfixturevalue("postgres").url(), "export") as (env, s3, bucket):
        env["DICOMWEB_EXPORT_S3_BUCKETS"] = bucket

        def read_object(key: str) -> bytes | None:
            try:
                return s3.get_object(Bucket=bucket, Key=f"exports/run/{key}")["Body"].read()
            except s3.exceptions.NoSuchKey:
                return None

        yield env, {"type": "s3", "settings": {"bucket": bucket, "prefix": "exports/run"}}, read_object


def test_an_export_killed_halfway_completes_after_restart(backend, tmp_path):
    server_env, destination, read = backend
    env = {**ENV, **server_env}
    server = start_server(tmp_path / "data", workers=2, threads=4, env=env, new_session=True)
    keys = []
    try:
        for n in range(INSTANCES):
            ds = make_instance(study=f"{ROOT}.{n % 3 + 1}")
            keys.append(f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}")
            assert requests.post(f"{server.url}/v2/studies", data=to_bytes(ds), headers=DICOM,
                                 timeout=60).status_code == 200
        body = {"source": {"type": "identifiers", "settings": {"values": [f"{ROOT}.{n}" for n in (1, 2, 3, 9)]}},
                "destination": destination}
        started = requests.post(f"{server.url}/v2/export", json=body, timeout=30)
        assert started.status_code == 202, started.text
        path = started.json()["href"].removeprefix(server.url)
    except BaseException:
        stop_server(server)
        raise
    state = kill_when(server, lambda: requests.get(server.url + path, timeout=30).json(),
                      lambda state: state["percentComplete"] >= 20)
    assert 20 <= state["percentComplete"] < 100
    assert sum(read(f"{key}.dcm") is not None for key in keys) < INSTANCES  # caught halfway

    restarted = start_server(tmp_path / "data", workers=2, threads=4, env=env)
    try:
        done = finished(restarted, path)
        assert done["startedTime"] == state["startedTime"]  # the same operation, resumed
        results = done["results"]
        assert (results["exported"], results["skipped"], results["failed"]) == (INSTANCES, 1, 0), results
        for key in keys:
            study, series, sop = key.split("/")
            stored = requests.get(f"{restarted.url}/v2/studies/{study}/series/{series}/instances/{sop}",
                                  headers=AS_STORED, timeout=30)
            assert stored.status_code == 200
            assert read(f"{key}.dcm") == stored.content, key
        log = read(f"{done['operationId']}/errors.log")
        assert log is not None and f"{ROOT}.9" in log.decode() and len(log.decode().splitlines()) == 1
    finally:
        stop_server(restarted)
