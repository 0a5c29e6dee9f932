"""DELETE cascades and the change feed (v1 by sequence, v2 by time window)."""
from __future__ import annotations

import datetime as dt

from dicom_factory import make_instance, to_bytes
from dicom_samples import SERIES_BLUE, SERIES_GREEN_RED, SOP_RED, STUDY_UID


def test_delete_levels_then_404(client, app, tutorial_study):
    store = app.extensions["dicomserver"].store
    assert len(list(store.list())) == 3
    red = f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/instances/{SOP_RED}"
    assert client.delete(red, headers={"Accept": "anything/at+all"}).status_code == 204
    assert client.delete(red).status_code == 404
    assert client.get(red, headers={"Accept": "*/*"}).status_code == 404
    assert len(list(store.list())) == 2
    series = f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}"
    assert client.delete(series).status_code == 204
    assert client.delete(series).status_code == 404
    (study,) = client.get("/v2/studies", query_string={"StudyInstanceUID": STUDY_UID}).json
    assert study["00201206"]["Value"] == [1] and study["00201208"]["Value"] == [1]
    assert client.delete(f"/v1/studies/{STUDY_UID}").status_code == 204
    assert client.delete(f"/v1/studies/{STUDY_UID}").status_code == 404
    assert client.get("/v2/studies", query_string={"StudyInstanceUID": STUDY_UID}).json == []
    assert client.get("/v2/series", query_string={"SeriesInstanceUID": SERIES_BLUE}).json == []
    assert list(store.list()) == []


def test_delete_bad_uid_is_400(client):
    assert client.delete("/v2/studies/abc").status_code == 400
    assert client.delete("/v2/studies/1.2/series/1.x").status_code == 400


def test_delete_keeps_index_when_blob_delete_fails(client, app, tutorial_study, monkeypatch):
    store = app.extensions["dicomserver"].store
    from backends.base import StorageUnavailable

    def failing(key):
        raise StorageUnavailable("disk gone")

    monkeypatch.setattr(store, "delete", failing)
    # The index commit already happened: the delete succeeds; blobs become orphans, not dangling rows.
    assert client.delete(f"/v2/studies/{STUDY_UID}").status_code == 204
    assert client.get(f"/v2/studies/{STUDY_UID}/metadata").status_code == 404


def _store(client, ds, method="POST"):
    return client.open("/v2/studies", method=method, data=to_bytes(ds), headers={"Content-Type": "application/dicom"})


def test_changefeed_v1_sequence_paging_and_states(client):
    a, b = make_instance(), make_instance()
    _store(client, a)
    _store(client, b)
    client.delete(f"/v2/studies/{a.StudyInstanceUID}")
    _store(client, a)  # re-created
    feed = client.get("/v1/changefeed").json
    assert [e["sequence"] for e in feed] == [1, 2, 3, 4]
    assert [(e["action"], e["state"]) for e in feed] == [
        ("create", "replaced"),
        ("create", "current"),
        ("delete", "replaced"),
        ("create", "current"),
    ]
    entry = feed[1]
    assert entry["sopInstanceUid"] == b.SOPInstanceUID
    assert entry["studyInstanceUid"] == b.StudyInstanceUID
    assert entry["seriesInstanceUid"] == b.SeriesInstanceUID
    assert entry["metadata"]["00080018"]["Value"] == [b.SOPInstanceUID]
    assert dt.datetime.fromisoformat(entry["timestamp"]).tzinfo is not None
    assert [e["sequence"] for e in client.get("/v1/changefeed?offset=2&limit=1").json] == [3]
    assert "metadata" not in client.get("/v1/changefeed?includeMetadata=false").json[0]
    assert client.get("/v1/changefeed?limit=101").status_code == 400
    assert client.get("/v1/changefeed?limit=0").status_code == 400
    assert client.get("/v1/changefeed?offset=-1").status_code == 400
    assert client.get("/v1/changefeed?includeMetadata=maybe").status_code == 400


def test_changefeed_deleted_state_and_latest(client):
    assert client.get("/v2/changefeed/latest").status_code == 204
    a = make_instance()
    _store(client, a)
    client.delete(f"/v2/studies/{a.StudyInstanceUID}")
    feed = client.get("/v2/changefeed").json
    assert [(e["action"], e["state"]) for e in feed] == [("create", "deleted"), ("delete", "deleted")]
    assert all("metadata" not in e for e in feed)
    latest = client.get("/v2/changefeed/latest").json
    assert latest["sequence"] == 2 and latest["action"] == "delete"


def test_changefeed_v2_time_window(client):
    _store(client, make_instance())
    now = dt.datetime.now(dt.timezone.utc)
    before = (now - dt.timedelta(minutes=5)).isoformat()
    after = (now + dt.timedelta(minutes=5)).isoformat()
    assert len(client.get("/v2/changefeed", query_string={"startTime": before, "endTime": after}).json) == 1
    assert client.get("/v2/changefeed", query_string={"startTime": after}).json == []
    assert client.get("/v2/changefeed", query_string={"endTime": before}).json == []
    assert client.get("/v2/changefeed", query_string={"startTime": "2024-01-01T00:00:00"}).status_code == 400
    assert client.get("/v2/changefeed", query_string={"startTime": after, "endTime": before}).status_code == 400
    assert client.get("/v2/changefeed", query_string={"startTime": "yesterday"}).status_code == 400
    assert client.get("/v2/changefeed?limit=201").status_code == 400


def test_put_replace_changes(client):
    a = make_instance()
    _store(client, a, "PUT")
    _store(client, a, "PUT")
    _store(client, a, "PUT")
    feed = client.get("/v2/changefeed").json
    assert [(e["action"], e["state"]) for e in feed] == [
        ("create", "replaced"),
        ("update", "replaced"),
        ("update", "current"),
    ]
    assert len(client.get("/v2/instances").json) == 1
