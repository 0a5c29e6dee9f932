"""A re-index of extended query tags survives the death of its server: gunicorn (master and
workers) is killed with SIGKILL halfway through the operation, restarted on the same data,
and the operation completes, resumed by the restarted server once the dead runner's lease
has expired. On SQLite + local disk, and on PostgreSQL + S3 (moto's server mode).
"""
from __future__ import annotations

import sqlite3
import time

import psycopg2
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import start_server, stop_server
from operation_restart import QUICK_TAKEOVER, kill_when
from s3_fixtures import postgres_s3_archive

pytestmark = pytest.mark.live

ROOT = "1.2.826.0.1.3680043.10.1011.77"
INSTANCES = 24
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
#: Small batches with a pause after each: the re-index takes a few seconds, long enough to be
#: caught halfway; a short lease so the restarted server takes over soon after.
ENV = {"DICOMWEB_REINDEX_BATCH": "2", "DICOMWEB_REINDEX_PAUSE": "0.25", **QUICK_TAKEOVER}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """The server's environment: SQLite + local disk (live_servers' default), or PostgreSQL + S3."""
    if request.param == "sqlite":
        yield {}
        return
    with postgres_s3_archive(request.getfixturevalue("postgres").url(), "reindex") as (env, _, _):
        yield env


def _stored_status(env: dict, data_dir, operation_id: str) -> str:
    """The operation's status read from the index itself, without asking the server."""
    url = env.get("DICOMWEB_DATABASE_URL")
    if url is None:  # live_servers' default: SQLite under the data folder
        with sqlite3.connect(data_dir / "index.db", timeout=30) as db:
            row = db.execute("SELECT status FROM operation WHERE id = ?", (operation_id,)).fetchone()
    else:
        with psycopg2.connect(url) as db, db.cursor() as cursor:
            cursor.execute("SELECT status FROM operation WHERE id = %s", (operation_id,))
            row = cursor.fetchone()
    return row[0]


def _operation(url: str, href_path: str) -> requests.Response:
    return requests.get(url + href_path, timeout=30)


def test_a_reindex_killed_halfway_completes_after_restart(backend, tmp_path):
    env = {**ENV, **backend}
    server = start_server(tmp_path / "data", workers=2, threads=4, env=env, new_session=True)
    try:
        for n in range(INSTANCES):
            body = to_bytes(make_instance(study=f"{ROOT}.{n + 1}", PatientWeight=str(50 + n)))
            assert requests.post(f"{server.url}/v2/studies", data=body, headers=DICOM, timeout=60).status_code == 200
        added = requests.post(f"{server.url}/v2/extendedquerytags", json=[{"path": "PatientWeight", "level": "Study"}],
                              timeout=30)
        assert added.status_code == 202, added.text
        path = added.json()["href"].removeprefix(server.url)
    except BaseException:
        stop_server(server)
        raise
    state = kill_when(server, lambda: _operation(server.url, path).json(), lambda state: state["percentComplete"] >= 20)
    assert 20 <= state["percentComplete"] < 100

    restarted = start_server(tmp_path / "data", workers=2, threads=4, env=env)
    try:
        # No request but start_server's health check until it is done (gunicorn_conf starts
        # each worker's runner as the worker starts; the check alone would wake only one).
        for _ in range(600):  # the dead runner's lease expires, a new runner resumes
            if _stored_status(env, tmp_path / "data", path.rsplit("/", 1)[1]) not in ("notStarted", "running"):
                break
            time.sleep(0.1)
        answer = _operation(restarted.url, path)
        assert answer.status_code == 200, answer.text
        done = answer.json()
        assert done["status"] == "succeeded", done
        assert done["startedTime"] == state["startedTime"]  # the same operation, resumed
        tag = requests.get(f"{restarted.url}/v2/extendedquerytags/PatientWeight", timeout=30).json()
        assert tag["status"] == "Ready" and tag["queryStatus"] == "Enabled" and "errors" not in tag
        for n in range(INSTANCES):
            found = requests.get(f"{restarted.url}/v2/studies", params={"PatientWeight": str(50 + n)}, timeout=30)
            assert [s["0020000D"]["Value"][0] for s in found.json()] == [f"{ROOT}.{n + 1}"], n
    finally:
        stop_server(restarted)
