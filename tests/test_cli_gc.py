"""`flask dicom gc`: the orphan sweep between blob store and index."""
from __future__ import annotations

import io
import time

from dicom_factory import make_instance, to_bytes

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
    assert "0 blobs without an index row, 0 index rows without a blob" in clean.output


def test_gc_rejects_bad_duration(app):
    result = app.test_cli_runner().invoke(args=["dicom", "gc", "--grace", "soon"])
    assert result.exit_code != 0
    assert "not a duration" in result.output
