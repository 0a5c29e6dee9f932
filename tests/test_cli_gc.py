"""`flask dicom gc`: the orphan sweep between blob store and index."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from dicom_factory import make_instance, to_bytes

from backends.base import MIN_TEMP_AGE_SECONDS, STALE_TEMP_SECONDS
from backends.local import LocalBlobStore
from dicomserver import Settings, close_app, create_app
from dicomserver.cli import format_duration, parse_duration
from dicomserver.ingest import blob_created, blob_key


def _stored(client, app):
    ds = make_instance()
    client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    index = app.extensions["dicomserver"].index
    index.connect()
    (row,) = index.instances(ds.StudyInstanceUID)
    index.close()
    return ds, row.blob_key


def test_blob_key_carries_its_creation_time():
    key = blob_key("1.2", "1.2.3", "1.2.3.4", now=1_700_000_000)
    assert key.startswith("1.2/1.2.3/1.2.3.4_1700000000-") and key.endswith(".dcm")
    assert blob_created(key) == 1_700_000_000
    assert blob_created("1.2/1.2.3/1.2.3.4/1700000000-0123abcd.dcm") == 1_700_000_000  # the earlier layout
    assert blob_created("1.2/1.2.3/1.2.3.4/0123abcd.dcm") is None


def test_gc_removes_old_orphans_and_dangling_rows(app, client):
    store = app.extensions["dicomserver"].store
    kept, kept_key = _stored(client, app)
    lost, lost_key = _stored(client, app)
    store.delete(lost_key)  # the index row now points at nothing
    old_orphan = blob_key("1.9", "1.9.1", "1.9.1.1", now=time.time() - 7200)
    fresh_orphan = blob_key("1.9", "1.9.1", "1.9.1.2")
    for key in (old_orphan, fresh_orphan):
        store.put(key, io.BytesIO(b"orphan"))
    runner = app.test_cli_runner()

    dry = runner.invoke(args=["dicom", "gc", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"orphan blob: {old_orphan} (would remove)" in dry.output
    assert fresh_orphan not in dry.output  # in flight: younger than the grace period
    assert set(store.list()) == {kept_key, old_orphan, fresh_orphan}

    result = runner.invoke(args=["dicom", "gc", "--grace", "0s"])
    assert result.exit_code == 0, result.output
    assert f"index row without blob: {lost.StudyInstanceUID}/{lost.SeriesInstanceUID}/{lost.SOPInstanceUID}" in result.output
    assert set(store.list()) == {kept_key}
    assert client.get(f"/v2/studies/{lost.StudyInstanceUID}/metadata").status_code == 404
    assert client.get(f"/v2/studies/{kept.StudyInstanceUID}/metadata").status_code == 200
    feed = client.get("/v2/changefeed").json
    assert feed[-1]["action"] == "delete" and feed[-1]["sopInstanceUid"] == lost.SOPInstanceUID

    clean = runner.invoke(args=["dicom", "gc"])
    assert "0 blobs without an index row, 0 index rows without a blob, 0 temporary files" in clean.output


def test_gc_rejects_bad_duration(app):
    result = app.test_cli_runner().invoke(args=["dicom", "gc", "--grace", "soon"])
    assert result.exit_code != 0
    assert "not a duration" in result.output


# -- temporary files of interrupted writes (a worker killed mid-put, a full disk) ----------


@pytest.fixture
def local_app(tmp_path):
    app = create_app(Settings(blobstore_url=str(tmp_path / "blobs"), database_url=f"sqlite:///{tmp_path / 'index.db'}"))
    yield app
    close_app(app)


def _temp_file(store, name: str, age: float, size: int = 10) -> Path:
    path = Path(store.root) / ".tmp" / name
    path.write_bytes(b"x" * size)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_gc_reports_and_removes_old_temp_files(local_app):
    store = local_app.extensions["dicomserver"].store
    crashed = _temp_file(store, "put-crashed.part", age=2 * 3600, size=1234)
    paused = _temp_file(store, "put-paused.part", age=MIN_TEMP_AGE_SECONDS + 60)
    running = _temp_file(store, "put-running.part", age=10)
    runner = local_app.test_cli_runner()

    dry = runner.invoke(args=["dicom", "gc", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "3 temporary files" in dry.output
    assert "temporary file of an interrupted write: .tmp/put-crashed.part, 1234 bytes (would remove)" in dry.output
    assert "put-paused" not in dry.output and "put-running" not in dry.output  # younger than the grace (1h)
    assert "2 temporary file(s)" in dry.output
    assert crashed.exists()

    result = runner.invoke(args=["dicom", "gc", "--grace", "0s"])
    assert result.exit_code == 0, result.output
    assert ".tmp/put-crashed.part, 1234 bytes (removing)" in result.output
    assert ".tmp/put-paused.part, 10 bytes (removing)" in result.output
    # whatever the grace, a file written to within MIN_TEMP_AGE_SECONDS may be a running put
    assert "put-running" not in result.output and "1 temporary file(s)" in result.output
    assert not crashed.exists() and not paused.exists() and running.exists()


def test_gc_grace_defaults_to_the_start_up_sweep_age(local_app):
    assert format_duration(STALE_TEMP_SECONDS) == "1h" and parse_duration("1h") == STALE_TEMP_SECONDS
    assert format_duration(90) == "90s" and format_duration(2 * 86400) == "2d"
    help_text = local_app.test_cli_runner().invoke(args=["dicom", "gc", "--help"]).output
    assert "default: 1h" in help_text


def test_start_up_sweep_removes_temp_files_older_than_the_grace(tmp_path):
    """A restarted worker frees a crashed put's space after an hour, not a day; it never
    touches a file young enough to be another worker's running put."""
    store = LocalBlobStore(tmp_path / "blobs")
    crashed = _temp_file(store, "put-crashed.part", age=STALE_TEMP_SECONDS + 60)
    running = _temp_file(store, "put-running.part", age=STALE_TEMP_SECONDS - 600)
    LocalBlobStore(tmp_path / "blobs")  # a worker starting
    assert not crashed.exists()
    assert running.exists()
    assert STALE_TEMP_SECONDS <= 3600
