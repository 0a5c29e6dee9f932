"""Extended query tags and operations (/extendedquerytags, /operations/{id}), on SQLite + local disk
and on PostgreSQL + S3: the reference server's routes, bodies and statuses, the re-index
operation (resumed after a crash, never run twice), ingest-time indexing and QIDO matching."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Any

import pytest
from dicom_factory import make_instance, to_bytes
from pydicom.dataset import Dataset

from dicomserver import close_app, create_app
from dicomserver.extended_query_tags import reindex
from dicomserver.index.operations import LeaseLost
from dicomserver.operations import Run, run_pending

PRIVATE_CREATOR = "ACME 1.0"


@pytest.fixture
def app(settings):
    """The app without its operations thread: tests run operations when they choose (run_ops)."""
    app = create_app(dataclasses.replace(settings, operations_runner=False, reindex_batch=2))
    app.config["TESTING"] = True
    yield app
    close_app(app)


def _instance(study: str | None = None, *, private: Any = None, creator: str = PRIVATE_CREATOR,
              **attributes: Any) -> bytes:
    ds: Dataset = make_instance(study=study, **attributes)
    if private is not None:
        block = ds.private_block(0x0009, creator, create=True)
        block.add_new(0x01, "LO", private)
    return to_bytes(ds)


@pytest.fixture
def stow(client):
    def post(body: bytes, status: int = 200) -> None:
        response = client.post("/v2/studies", data=body,
                               headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
        assert response.status_code == status, response.data

    return post


def _add(client, *tags: dict[str, Any], status: int = 202):
    response = client.post("/v2/extendedquerytags", json=list(tags))
    assert response.status_code == status, response.data
    return response


def _uids(client, url: str, tag: str = "0020000D") -> list[str]:
    response = client.get(url)
    assert response.status_code == 200, response.data
    return sorted(item[tag]["Value"][0] for item in response.get_json())


# -- operations -----------------------------------------------------------------------------
def test_adding_answers_202_with_the_operation_that_reindexes(client, stow, run_ops):
    stow(_instance(PatientWeight="70.5"))
    added = _add(client, {"path": "PatientWeight", "level": "Study"})
    reference = added.get_json()
    assert set(reference) == {"id", "href"}
    assert added.headers["Location"] == reference["href"] == f"http://localhost/v2/operations/{reference['id']}"
    pending = client.get(f"/v2/operations/{reference['id']}")
    assert pending.status_code == 202 and pending.headers["Location"] == reference["href"]
    body = pending.get_json()
    assert body["status"] == "notStarted" and body["type"] == "reindex" and body["percentComplete"] == 0
    assert body["resources"] == ["http://localhost/v2/extendedquerytags/00101030"]
    assert client.get("/v2/extendedquerytags/PatientWeight").get_json()["operation"] == reference

    assert run_ops() == 1
    done = client.get(f"/v1/operations/{reference['id']}")
    assert done.status_code == 200
    body = done.get_json()
    assert body["status"] == "completed" and body["percentComplete"] == 100  # v1's word
    assert client.get(f"/v2/operations/{reference['id']}").get_json()["status"] == "succeeded"
    assert body["resources"] == ["http://localhost/v1/extendedquerytags/00101030"]
    assert body["startedTime"] <= body["endedTime"] and body["createdTime"] <= body["startedTime"]
    assert client.get("/v2/extendedquerytags/PatientWeight").get_json() == {
        "path": "00101030", "vr": "DS", "level": "Study", "status": "Ready", "queryStatus": "Enabled",
    }
    assert run_ops() == 0  # nothing is run twice


def test_operation_ids_are_checked(client):
    assert client.get("/v2/operations/not-an-id").status_code == 400
    assert client.get("/v2/operations/" + "ab" * 16).status_code == 404


def test_a_crashed_reindex_resumes_from_its_checkpoint(client, stow, index, app, run_ops):
    """Runner A claims, indexes one batch and dies (no release): once its lease has expired,
    runner B resumes after A's checkpoint and A's later writes are refused."""
    studies = [f"1.2.3.{n}" for n in range(1, 6)]
    for n, study in enumerate(studies):
        stow(_instance(study, PatientWeight=str(60 + n)))
    operation_id = _add(client, {"path": "PatientWeight", "level": "Study"}).get_json()["id"]
    settings = dataclasses.replace(app.extensions["dicomserver"].settings, operations_lease_seconds=0.05)
    record = index.claim_operation("A", dt.timedelta(seconds=0.05), ["reindex"])
    assert record is not None and record.attempts == 1
    stop = threading.Event()
    run_a = Run(index, record, "A", settings, stop)
    original_pause = run_a.pause
    run_a.pause = lambda seconds: stop.set()  # type: ignore[method-assign]  # A dies after its first batch
    reindex(run_a)
    run_a.pause = original_pause  # type: ignore[method-assign]
    assert index.operation(operation_id).checkpoint["after"] == 2  # one batch of two instances
    assert client.get(f"/v2/operations/{operation_id}").get_json()["percentComplete"] == 40

    time.sleep(0.1)  # A's lease runs out (no assertion on time: only the expiry is waited for)
    assert run_ops("B") == 1
    record = index.operation(operation_id)
    assert record.status == "succeeded" and record.attempts == 2
    assert _uids(client, "/v2/studies?PatientWeight=60") == ["1.2.3.1"]
    assert _uids(client, "/v2/studies?PatientWeight=64") == ["1.2.3.5"]
    with pytest.raises(LeaseLost), index.write_transaction():
        run_a.checkpoint({"after": 99}, 50)


def test_a_claimed_operation_is_not_claimed_again_while_its_lease_holds(client, index):
    _add(client, {"path": "PatientWeight", "level": "Study"})
    assert index.claim_operation("A", dt.timedelta(minutes=5), ["reindex"]) is not None
    assert index.claim_operation("B", dt.timedelta(minutes=5), ["reindex"]) is None


def test_the_server_thread_runs_operations(settings, stow):
    app = create_app(dataclasses.replace(settings, operations_poll_seconds=0.1))
    try:
        client = app.test_client()
        client.post("/v2/studies", data=_instance(PatientWeight="55"), headers={"Content-Type": "application/dicom"})
        href = _add(client, {"path": "PatientWeight", "level": "Study"}).get_json()["href"]
        for _ in range(600):  # waits for the thread, up to a minute; asserts nothing about how long it took
            if client.get(href).status_code == 200:
                break
            time.sleep(0.1)
        assert client.get(href).get_json()["status"] == "succeeded"
        assert len(client.get("/v2/studies?PatientWeight=55").get_json()) == 1
    finally:
        close_app(app)


# -- the tags' API --------------------------------------------------------------------------
@pytest.mark.parametrize("tags, message", [
    ({"path": "NoSuchKeyword", "level": "Study"}, "neither a tag"),
    ({"path": "PatientWeight", "level": "Patient"}, "level"),
    ({"path": "ReferencedStudySequence", "level": "Study"}, "sequence"),
    ({"path": "ImageComments", "level": "Instance"}, "cannot be indexed"),  # LT
    ({"path": "PatientWeight", "vr": "CS", "level": "Study"}, "not CS"),
    ({"path": "PatientWeight", "privateCreator": "X", "level": "Study"}, "no privateCreator"),
    ({"path": "00091001", "vr": "LO", "level": "Study"}, "needs a privateCreator"),
    ({"path": "00091001", "privateCreator": "X", "level": "Study"}, "needs a vr"),
    ({"path": "00090010", "vr": "LO", "privateCreator": "X", "level": "Study"}, "private creator"),
    ({"path": "PatientName", "level": "Study"}, "searchable already"),
    ({"level": "Study"}, "no path"),
    ({"path": 10101030, "level": "Study"}, "no path"),
])
def test_invalid_definitions_are_400(client, tags, message):
    response = _add(client, tags, status=400)
    assert message in response.get_data(as_text=True)
    assert client.get("/v2/extendedquerytags").get_json() == []


def test_malformed_bodies_are_400(client):
    for body in (b"", b"{", b"{}", b"[]", b"[1]"):
        response = client.post("/v2/extendedquerytags", data=body, content_type="application/json")
        assert response.status_code == 400, body
    twice = [{"path": "PatientWeight", "level": "Study"}, {"path": "00101030", "level": "Study"}]
    assert "more than once" in _add(client, *twice, status=400).get_data(as_text=True)


def test_an_existing_tag_or_a_running_reindex_is_409(client, run_ops):
    _add(client, {"path": "PatientWeight", "level": "Study"})
    busy = _add(client, {"path": "PatientSize", "level": "Study"}, status=409)
    assert "in progress" in busy.get_data(as_text=True)
    run_ops()
    assert "already exist" in _add(client, {"path": "00101030", "level": "Study"}, status=409).get_data(as_text=True)
    _add(client, {"PATH": "PatientSize", "Level": "series"})  # members and levels in any case


def test_list_get_patch_delete(client, run_ops):
    _add(client, {"path": "PatientWeight", "level": "Study"}, {"path": "BodyPartExamined", "level": "Series"},
         {"path": "00091001", "vr": "LO", "privateCreator": PRIVATE_CREATOR, "level": "Instance"})
    run_ops()
    listed = client.get("/v2/extendedquerytags").get_json()
    assert [t["path"] for t in listed] == ["00101030", "00180015", "00091001"]
    assert listed[2]["privateCreator"] == PRIVATE_CREATOR and listed[2]["level"] == "Instance"
    assert [t["path"] for t in client.get("/v2/extendedquerytags?Limit=1&offset=1").get_json()] == ["00180015"]
    assert client.get("/v2/extendedquerytags?limit=201").status_code == 400
    assert client.get("/v2/extendedquerytags?offset=-1").status_code == 400
    assert client.get("/v2/extendedquerytags/00180015").get_json()["vr"] == "CS"
    assert client.get("/v2/extendedquerytags/BodyPartExamined").get_json()["level"] == "Series"
    assert client.get("/v2/extendedquerytags/PatientSize").status_code == 404
    assert client.get("/v2/extendedquerytags/nope").status_code == 400

    patched = client.patch("/v2/extendedquerytags/00180015", json={"QueryStatus": "disabled"})
    assert patched.status_code == 200 and patched.get_json()["queryStatus"] == "Disabled"
    for body in ({"queryStatus": "off"}, {}, [], {"queryStatus": "Enabled", "x": 1}):
        assert client.patch("/v2/extendedquerytags/00180015", json=body).status_code == 400
    assert client.patch("/v2/extendedquerytags/PatientSize", json={"queryStatus": "Enabled"}).status_code == 404

    assert client.delete("/v2/extendedquerytags/BodyPartExamined").status_code == 204
    assert client.delete("/v2/extendedquerytags/00180015").status_code == 404
    assert client.get("/v2/extendedquerytags/00180015/errors").status_code == 404
    assert [t["path"] for t in client.get("/v2/extendedquerytags").get_json()] == ["00101030", "00091001"]


# -- indexing and matching ------------------------------------------------------------------
def test_qido_matches_tags_at_their_level_once_ready(client, stow, run_ops):
    stow(_instance("1.2.4.1", PatientWeight="70.50", BodyPartExamined="CHEST", private="alpha",
                   AcquisitionDateTime="20240102101500", ContentTime="101500"))
    stow(_instance("1.2.4.2", PatientWeight="80", BodyPartExamined="HEAD", private="beta", creator="OTHER",
                   AcquisitionDateTime="20250607", ContentTime="2359"))
    _add(client,
         {"path": "PatientWeight", "level": "Study"},
         {"path": "BodyPartExamined", "level": "Series"},
         {"path": "00091001", "vr": "LO", "privateCreator": PRIVATE_CREATOR, "level": "Instance"},
         {"path": "AcquisitionDateTime", "level": "Instance"},
         {"path": "ContentTime", "level": "Instance"})
    ignored = client.get("/v2/studies?PatientWeight=70.5")  # Adding: not searchable yet
    assert "PatientWeight" in ignored.headers["Warning"] and len(ignored.get_json()) == 2
    run_ops()
    assert _uids(client, "/v2/studies?PatientWeight=70.5") == ["1.2.4.1"]  # numbers match by value
    assert _uids(client, "/v2/studies?00101030=80\\70.5") == ["1.2.4.1", "1.2.4.2"]
    assert client.get("/v2/studies?PatientWeight=heavy").status_code == 400
    assert _uids(client, "/v2/series?BodyPartExamined=HEAD") == ["1.2.4.2"]
    assert _uids(client, "/v2/series?BodyPartExamined=CH*") == ["1.2.4.1"]
    series = client.get("/v2/series?BodyPartExamined=CHEST").get_json()
    assert series[0]["00180015"] == {"vr": "CS", "Value": ["CHEST"]}  # returned: it was matched on
    assert "BodyPartExamined" in client.get("/v2/studies?BodyPartExamined=HEAD").headers["Warning"]  # not study level
    # The private tag matches only under its own creator's block.
    assert _uids(client, "/v2/instances?00091001=alpha") == ["1.2.4.1"]
    assert client.get("/v2/instances?00091001=beta").get_json() == []
    assert _uids(client, "/v2/instances?AcquisitionDateTime=2024") == ["1.2.4.1"]
    assert _uids(client, "/v2/instances?AcquisitionDateTime=20250101-") == ["1.2.4.2"]
    assert _uids(client, "/v2/instances?ContentTime=2300-") == ["1.2.4.2"]
    assert client.get("/v2/instances?AcquisitionDateTime=2024+0100").status_code == 400


def test_instances_stored_after_the_tag_are_indexed_as_they_are_stored(client, stow, run_ops, index):
    _add(client, {"path": "PatientWeight", "level": "Study"})
    stow(_instance("1.2.5.1", PatientWeight="42"))  # while the tag is being added
    run_ops()
    stow(_instance("1.2.5.2", PatientWeight="43"))  # once it is ready
    assert _uids(client, "/v2/studies?PatientWeight=42") == ["1.2.5.1"]
    assert _uids(client, "/v2/studies?PatientWeight=43") == ["1.2.5.2"]


def test_a_study_matches_on_its_latest_instance(client, stow, run_ops):
    _add(client, {"path": "PatientWeight", "level": "Study"})
    run_ops()
    stow(_instance("1.2.6.1", PatientWeight="50", series="1.2.6.1.9", sop="1.2.6.1.1"))
    stow(_instance("1.2.6.1", PatientWeight="51", series="1.2.6.1.9", sop="1.2.6.1.2"))
    assert client.get("/v2/studies?PatientWeight=50").get_json() == []
    assert _uids(client, "/v2/studies?PatientWeight=51") == ["1.2.6.1"]
    assert client.delete("/v2/studies/1.2.6.1/series/1.2.6.1.9/instances/1.2.6.1.2").status_code == 204
    assert _uids(client, "/v2/studies?PatientWeight=50") == ["1.2.6.1"]  # the latest again


def test_invalid_values_are_errors_and_disable_the_tag(client, stow, run_ops):
    stow(_instance("1.2.7.1", PatientWeight="60"))
    stow(_instance("1.2.7.2", StationName="X" * 17), 202)  # SH is at most 16 characters: stored, a warning
    stow(_instance("1.2.7.3", StationName="CT1"))
    _add(client, {"path": "PatientWeight", "level": "Study"}, {"path": "StationName", "level": "Series"})
    run_ops()
    station = client.get("/v2/extendedquerytags/StationName").get_json()
    assert station["status"] == "Ready" and station["queryStatus"] == "Disabled"
    assert station["errors"] == {"count": 1, "href": "http://localhost/v2/extendedquerytags/00081010/errors"}
    assert client.get("/v2/extendedquerytags/PatientWeight").get_json()["queryStatus"] == "Enabled"
    errors = client.get("/v2/extendedquerytags/StationName/errors").get_json()
    assert [e["studyInstanceUid"] for e in errors] == ["1.2.7.2"]
    assert "not a valid SH value" in errors[0]["errorMessage"]
    assert client.get("/v2/extendedquerytags/StationName/errors?offset=1").get_json() == []
    assert "StationName" in client.get("/v2/series?StationName=CT1").headers["Warning"]  # disabled: ignored
    client.patch("/v2/extendedquerytags/StationName", json={"queryStatus": "Enabled"})
    found = client.get("/v2/series?StationName=CT1")
    assert [s["0020000D"]["Value"][0] for s in found.get_json()] == ["1.2.7.3"]
    assert found.headers["erroneous-dicom-attributes"] == "StationName"
    assert "erroneous-dicom-attributes" not in client.get("/v2/studies?PatientWeight=60").headers


def test_deleting_a_tag_removes_its_values(client, stow, run_ops, index):
    stow(_instance("1.2.8.1", PatientWeight="60"))
    _add(client, {"path": "PatientWeight", "level": "Study"})
    run_ops()
    assert client.delete("/v2/extendedquerytags/PatientWeight").status_code == 204
    assert index.db.execute_sql('SELECT COUNT(*) FROM "extended_query_tag_value"').fetchone()[0] == 0
    assert "PatientWeight" in client.get("/v2/studies?PatientWeight=60").headers["Warning"]
    _add(client, {"path": "PatientWeight", "level": "Study"})  # and it can be added again
    run_ops()
    assert _uids(client, "/v2/studies?PatientWeight=60") == ["1.2.8.1"]


def test_writing_needs_manage_extended_query_tags(auth_client, identity_provider):
    reader = {"Authorization": f"Bearer {identity_provider.token(roles=['globalReader'])}"}
    admin = {"Authorization": f"Bearer {identity_provider.token(roles=['globalAdmin'])}"}
    body = [{"path": "PatientWeight", "level": "Study"}]
    assert auth_client.post("/v2/extendedquerytags", json=body, headers=reader).status_code == 403
    assert auth_client.get("/v2/extendedquerytags", headers=reader).status_code == 200
    assert auth_client.post("/v2/extendedquerytags", json=body, headers=admin).status_code == 202
    assert auth_client.patch("/v2/extendedquerytags/PatientWeight", json={"queryStatus": "Disabled"},
                             headers=reader).status_code == 403
    assert auth_client.delete("/v2/extendedquerytags/PatientWeight", headers=reader).status_code == 403
    assert auth_client.get("/v2/extendedquerytags").status_code == 401


def test_at_most_128_tags(client, run_ops, monkeypatch):
    import dicomserver.index.extended as extended

    monkeypatch.setattr(extended, "MAX_TAGS", 2)
    _add(client, {"path": "PatientWeight", "level": "Study"}, {"path": "PatientSize", "level": "Study"})
    run_ops()
    assert "at most 2" in _add(client, {"path": "StationName", "level": "Series"}, status=400).get_data(as_text=True)


def test_a_tag_deleted_during_its_reindex_is_skipped(client, stow, index, app, run_ops):
    for n in range(4):
        stow(_instance(f"1.2.9.{n + 1}", PatientWeight=str(70 + n), StationName=f"S{n}"))
    operation_id = _add(client, {"path": "PatientWeight", "level": "Study"},
                        {"path": "StationName", "level": "Series"}).get_json()["id"]
    record = index.claim_operation("A", dt.timedelta(minutes=5), ["reindex"])
    stop = threading.Event()
    run = Run(index, record, "A", app.extensions["dicomserver"].settings, stop)
    run.pause = lambda seconds: stop.set()  # type: ignore[method-assign]  # stops after one batch
    reindex(run)
    assert client.delete("/v2/extendedquerytags/StationName").status_code == 204
    stop.clear()
    run.pause = lambda seconds: None  # type: ignore[method-assign]
    reindex(run)
    assert index.operation(operation_id).status == "succeeded"
    assert _uids(client, "/v2/studies?PatientWeight=73") == ["1.2.9.4"]
    assert [t["path"] for t in client.get("/v2/extendedquerytags").get_json()] == ["00101030"]


def test_invalid_values_stored_later_are_errors_too(client, stow, run_ops):
    _add(client, {"path": "StationName", "level": "Series"})
    run_ops()
    stow(_instance("1.2.10.1", StationName="Y" * 17), 202)
    stow(_instance("1.2.10.2", StationName="CT2"))
    tag = client.get("/v2/extendedquerytags/StationName").get_json()
    assert tag["errors"]["count"] == 1 and tag["queryStatus"] == "Enabled"  # only a re-index disables
    found = client.get("/v2/series?StationName=CT2")
    assert [s["0020000D"]["Value"][0] for s in found.get_json()] == ["1.2.10.2"]
    assert found.headers["erroneous-dicom-attributes"] == "StationName"


def test_person_names_and_uids(client, stow, run_ops):
    stow(_instance("1.2.11.1", series="1.2.11.1.1", PerformingPhysicianName="Müller^Hans", FrameOfReferenceUID="1.2.99.1"))
    stow(_instance("1.2.11.2", series="1.2.11.2.1", PerformingPhysicianName="Doe^Jane", FrameOfReferenceUID="1.2.99.2"))
    _add(client, {"path": "PerformingPhysicianName", "level": "Series"},
         {"path": "FrameOfReferenceUID", "level": "Series"})
    run_ops()
    assert _uids(client, "/v2/series?PerformingPhysicianName=muller^hans") == ["1.2.11.1"]  # case, accents
    assert _uids(client, "/v2/series?PerformingPhysicianName=ja&fuzzymatching=true") == ["1.2.11.2"]
    assert _uids(client, "/v2/series?PerformingPhysicianName=D*") == ["1.2.11.2"]
    assert _uids(client, "/v2/series?FrameOfReferenceUID=1.2.99.1,1.2.99.2") == ["1.2.11.1", "1.2.11.2"]
    assert client.get("/v2/series?FrameOfReferenceUID=1.x").status_code == 400


def test_a_stopping_server_gives_its_operation_back(settings, tmp_path):
    """close_app (and a worker's exit) stops the thread after its batch and releases the lease:
    another runner takes the operation over at once, without waiting for the lease to expire."""
    app = create_app(dataclasses.replace(settings, operations_poll_seconds=0.1, reindex_batch=1, reindex_pause=0.3))
    client = app.test_client()
    for n in range(6):
        client.post("/v2/studies", data=_instance(f"1.2.12.{n + 1}", PatientWeight=str(n + 1)),
                    headers={"Content-Type": "application/dicom"})
    href = _add(client, {"path": "PatientWeight", "level": "Study"}).get_json()["href"]
    for _ in range(600):  # until the thread has committed its first batch
        if client.get(href).get_json()["percentComplete"] > 0:
            break
        time.sleep(0.05)
    index = app.extensions["dicomserver"].index
    close_app(app)
    index.connect()
    try:
        claimed = index.claim_operation("B", dt.timedelta(minutes=1), ["reindex"])
        assert claimed is not None and claimed.status == "running" and 0 < claimed.checkpoint["done"] < 6
    finally:
        index.shutdown()


def test_concurrent_runners_run_each_operation_once(client, stow, index, app):
    """Four runners (threads, as four processes or hosts would be) race for one operation."""
    stow(_instance("1.2.13.1", PatientWeight="90"))
    _add(client, {"path": "PatientWeight", "level": "Study"})
    settings = app.extensions["dicomserver"].settings
    runs: list[str] = []

    def counted(run: Run) -> None:
        runs.append(run.record.id)
        reindex(run)

    def runner(name: str) -> None:
        index.connect()
        try:
            run_pending(index, settings, {"reindex": counted}, owner=name)
        finally:
            index.db.close()

    threads = [threading.Thread(target=runner, args=(f"R{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs) == 1
    run_pending(index, settings, {"reindex": counted}, owner="late")
    assert len(runs) == 1
    assert _uids(client, "/v2/studies?PatientWeight=90") == ["1.2.13.1"]
