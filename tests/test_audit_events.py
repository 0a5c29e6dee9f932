"""The audit trail in the index: FHIR R4 AuditEvents at /audit, filtered by date, subject and
study, kept for the retention period, written in batches that survive a failing database."""
from __future__ import annotations

import datetime as dt
import os
import threading

import pytest
from auth_fixtures import bearer
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings
from dicomserver.audit import AuditStore
from dicomserver.fhir_audit import _date_bounds
from dicomserver.index import AuditQuery, AuditRecord

STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
FHIR = "application/fhir+json"


def events(client, query: str = "", **headers) -> list[dict]:
    response = client.get(f"/v2/audit{query}", headers=headers)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == FHIR
    bundle = response.json
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "searchset")
    return [entry["resource"] for entry in bundle["entry"]]


def study_of(event: dict) -> str | None:
    for entity in event["entity"]:
        identifier = entity["what"]["identifier"]
        if identifier.get("system") == "urn:dicom:uid":
            return identifier["value"].removeprefix("urn:oid:")
    return None


def request_id_of(event: dict) -> str:
    (transaction,) = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
    return transaction["what"]["identifier"]["value"]


def detail(event: dict, name: str) -> str | None:
    for entity in event["entity"]:
        for item in entity.get("detail", []):
            if item["type"] == name:
                return item["valueString"]
    return None


def record(when: dt.datetime, **fields) -> AuditRecord:
    values = dict(request_id="0" * 32, subject="someone", client="192.0.2.1", method="GET", route="/v2/studies",
                  action="read", study=None, series=None, instance=None, status=200, bytes=10)
    values.update(fields)
    return AuditRecord(time=when, **values)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def test_each_request_becomes_an_audit_event_with_the_basic_fields(client):
    ds = make_instance(PatientName="Secret^Name", PatientID="MRN-777")
    stored = client.post("/v2/studies", data=to_bytes(ds), headers=STOW)
    instance = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    client.get(instance + "/metadata")
    client.get("/v2/studies?PatientID=MRN-777")
    client.put(f"/v2/studies/{ds.StudyInstanceUID}", data=to_bytes(ds), headers=STOW)
    client.get("/v2/studies/1.2.3.999")  # 404
    client.delete(f"/v2/studies/{ds.StudyInstanceUID}")
    delete, missing, put, search, metadata, stow = events(client)[:6]  # newest first

    assert [e["subtype"][0]["code"] for e in (stow, metadata, search, put, missing, delete)] == [
        "create", "read", "search-type", "update", "read", "delete"]
    assert [e["action"] for e in (stow, metadata, search, put, missing, delete)] == ["C", "R", "E", "U", "R", "D"]
    assert [e["outcome"] for e in (stow, metadata, missing)] == ["0", "0", "4"]
    assert missing["outcomeDesc"] == "HTTP 404"
    assert stow["type"]["code"] == "rest" and stow["resourceType"] == "AuditEvent"
    assert request_id_of(stow) == stored.headers["X-Request-Id"]
    assert study_of(stow) == ds.StudyInstanceUID  # STOW to /studies: the study it stored
    assert study_of(metadata) == ds.StudyInstanceUID and study_of(search) is None
    assert detail(metadata, "SeriesInstanceUID") == ds.SeriesInstanceUID
    assert detail(metadata, "SOPInstanceUID") == ds.SOPInstanceUID
    assert detail(metadata, "route") == "/v2/studies/<study>/series/<series>/instances/<instance>/metadata"
    user, source, destination = metadata["agent"]
    assert user["who"]["identifier"]["value"] == "anonymous" and user["requestor"] is True
    assert source["network"] == {"address": "127.0.0.1", "type": "2"}
    assert destination["network"]["address"] == "http://localhost/v2"
    recorded = dt.datetime.strptime(metadata["recorded"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(recorded - utcnow()) < dt.timedelta(minutes=1)
    # The event can be read on its own, and the trail names no attribute value.
    alone = client.get(f"/v2/audit/{metadata['id']}")
    assert alone.status_code == 200 and alone.json == metadata
    text = client.get("/v2/audit?_count=1000").data.decode()
    assert "Secret" not in text and "MRN-777" not in text


def test_a_stow_of_two_studies_is_found_under_each(client):
    first, second = make_instance(), make_instance()
    body, boundary = b"", "XyZ"
    for ds in (first, second):
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(ds) + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    response = client.post("/v2/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert response.status_code == 200
    for ds in (first, second):
        (event,) = events(client, f"?study={ds.StudyInstanceUID}")
        assert request_id_of(event) == response.headers["X-Request-Id"]


def test_filters_by_study_subject_and_date(auth_client, identity_provider):
    admin = bearer(identity_provider.token(roles=["globalAdmin"], sub="admin-1"))
    reader = bearer(identity_provider.token(roles=["globalReader"], sub="reader-2"))
    ds = make_instance()
    assert auth_client.post("/v2/studies", data=to_bytes(ds), headers={**STOW, **admin}).status_code == 200
    auth_client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata", headers=reader)
    auth_client.get("/v2/studies", headers=reader)
    auth_client.delete(f"/v2/studies/{ds.StudyInstanceUID}", headers=reader)  # 403, recorded too

    by_reader = events(auth_client, "?subject=reader-2", **admin)
    assert [e["action"] for e in by_reader] == ["D", "E", "R"]
    assert by_reader[0]["outcome"] == "4" and by_reader[0]["outcomeDesc"] == "HTTP 403"
    assert all(e["agent"][0]["who"]["identifier"]["value"] == "reader-2" for e in by_reader)
    of_study = events(auth_client, f"?study={ds.StudyInstanceUID}", **admin)
    assert [e["action"] for e in of_study] == ["D", "R", "C"]
    assert events(auth_client, f"?study={ds.StudyInstanceUID}&subject=admin-1", **admin)[0]["action"] == "C"
    day = by_reader[0]["recorded"][:10]  # the day they were recorded (the test may cross midnight)
    assert len(events(auth_client, f"?date={day}&subject=reader-2", **admin)) == 3
    assert events(auth_client, "?date=lt2000-01-01&subject=reader-2", **admin) == []
    hour_ago = (utcnow() - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    in_an_hour = (utcnow() + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(events(auth_client, f"?date=ge{hour_ago}&date=lt{in_an_hour}&subject=reader-2", **admin)) == 3
    assert events(auth_client, f"?date=gt{in_an_hour}", **admin) == []
    # Reading the trail is itself recorded, with the `audit` action.
    latest = events(auth_client, "?subject=admin-1&_count=1", **admin)[0]
    assert detail(latest, "route") == "/v2/audit"
    # The token is in no stored event.
    token = admin["Authorization"].split()[1]
    assert token not in auth_client.get("/v2/audit?_count=1000", headers=admin).data.decode()


def test_a_path_that_is_no_uid_is_not_kept_and_spoils_no_other_record(client):
    client.get("/v2/studies/1." + "9" * 80)  # 400: not a UID (and longer than any column)
    client.get("/v2/studies/1.2.3/series/x<script>")
    bad_series, bad_path = events(client)[:2]  # newest first
    assert study_of(bad_path) is None and bad_path["outcomeDesc"] == "HTTP 400"
    assert study_of(bad_series) == "1.2.3" and detail(bad_series, "SeriesInstanceUID") is None


def test_a_record_the_database_refuses_does_not_keep_the_others_out(app):
    index = app.extensions["dicomserver"].index
    store = AuditStore(index, retention_days=90)
    # PostgreSQL refuses a request id longer than its column; SQLite keeps it: either way the other stays.
    store.append(record(utcnow(), subject="good"))
    store.append(record(utcnow(), subject="oversized", request_id="x" * 200))
    store.close()
    stored = {r.subject for _, r in index.audit_records(AuditQuery(limit=10))}
    assert "good" in stored
    assert ("oversized" in stored) == index.is_sqlite


def test_pages_follow_the_next_link_without_gaps_or_repeats(client):
    for _ in range(7):
        client.get("/v2/studies")
    seen, url = [], "/v2/audit?_count=3&subject=anonymous"
    while url:
        bundle = client.get(url).json
        assert bundle["entry"], "a next link led to an empty page"
        seen += [entry["resource"]["id"] for entry in bundle["entry"]]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith("http://localhost/v2/audit?")
        url = links.get("next", "").replace("http://localhost", "")
    assert len(seen) == len(set(seen)) >= 7
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)


@pytest.mark.parametrize(
    "query, message",
    [
        ("?patient=x", b"unknown search parameter"),
        ("?date=yesterday", b"date='yesterday' is invalid"),
        ("?date=2026-13", b"date='2026-13' is invalid"),
        ("?date=sa2026", b"is invalid"),
        ("?study=not-a-uid", b"study"),
        ("?_count=0", b"_count must be at least 1"),
        ("?_count=5000", b"_count must be between 1 and 1000"),
        ("?subject=a&subject=b", b"subject may be given once"),
        ("?_cursor=x", b"_cursor='x' is not a whole number"),
        ("?_count=%C2%B2", b"_count='\xc2\xb2' is not a whole number"),
        ("?date=9999-12-31", b"date='9999-12-31' is invalid"),
        ("?date=0001-01-01T00:00%2B01:00", b"is invalid"),
    ],
)
def test_bad_searches_are_400_saying_why(app_factory, query, message):
    response = app_factory().test_client().get(f"/v2/audit{query}")
    assert response.status_code == 400 and message in response.data, response.data


def test_unknown_events_are_404_and_only_fhir_json_is_offered(app_factory):
    client = app_factory().test_client()
    assert client.get("/v2/audit/99999").status_code == 404
    assert client.get("/v2/audit/abc").status_code == 404
    assert client.get("/v2/audit/" + "9" * 40).status_code == 404
    assert client.get("/v2/audit/%C2%B2").status_code == 404
    assert client.get("/v2/audit", headers={"Accept": "application/dicom+json"}).status_code == 406
    assert client.get("/v2/audit", headers={"Accept": "application/json"}).status_code == 200
    assert client.get("/audit").status_code == 404  # versioned like every API route


@pytest.mark.parametrize(
    "value, since, until",
    [
        ("2026", "2026-01-01T00:00:00", "2027-01-01T00:00:00"),
        ("2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("eq2026-02-28", "2026-02-28T00:00:00", "2026-03-01T00:00:00"),
        ("ge2026-12-06", "2026-12-06T00:00:00", None),
        ("gt2026-12-06", "2026-12-07T00:00:00", None),
        ("le2026-12-06", None, "2026-12-07T00:00:00"),
        ("lt2026-12-06", None, "2026-12-06T00:00:00"),
        ("ge2026-12-06T10:00+02:00", "2026-12-06T08:00:00", None),
        ("lt2026-12-06T10:00:30.5Z", None, "2026-12-06T10:00:30.500000"),
    ],
)
def test_date_parameters_bound_the_interval_their_precision_names(value, since, until):
    low, high = _date_bounds(value)
    assert (low.isoformat() if low else None, high.isoformat() if high else None) == (since, until)


def test_records_past_the_retention_are_purged(app_factory):
    app = app_factory(audit_retention_days=30)
    index = app.extensions["dicomserver"].index
    now = utcnow()
    index.record_audit([record(now - dt.timedelta(days=31), subject="old"), record(now - dt.timedelta(days=29), subject="kept")])
    store = app.extensions["dicomserver-audit"].store
    store.append(record(now, subject="new"))  # starts the writer thread, which purges on its first round
    store.close()
    subjects = [r.subject for _, r in index.audit_records(AuditQuery(limit=10))]
    assert subjects == ["new", "kept"]
    assert Settings.from_env({"DICOMWEB_AUDIT_RETENTION_DAYS": "7"}).audit_retention_days == 7


def test_the_index_copy_can_be_turned_off(app_factory):
    app = app_factory(audit_store=False)
    client = app.test_client()
    client.get("/v2/studies")
    assert events(client) == []
    assert Settings.from_env({"DICOMWEB_AUDIT_STORE": "0"}).audit_store is False


def test_records_from_many_threads_all_reach_the_index_in_batches(app_factory):
    app = app_factory(audit_log=None)
    index = app.extensions["dicomserver"].index
    store = AuditStore(index, retention_days=90)
    batches = []
    original = index.record_audit

    def counting(records):
        batches.append(len(records))
        original(records)

    index.record_audit = counting
    now = utcnow()

    def work(n):
        for i in range(200):
            store.append(record(now, subject=f"t{n}", bytes=i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert sum(batches) == 1600 and len(batches) < 20
    assert len(index.audit_records(AuditQuery(limit=1000, subject="t3"))) == 200


def test_records_wait_while_the_index_fails_then_are_stored(app_factory, monkeypatch):
    app = app_factory(audit_log=None)
    index = app.extensions["dicomserver"].index
    store = AuditStore(index, retention_days=90)
    original = index.record_audit
    failures = iter([True, True])

    def flaky(records):
        if next(failures, False):
            raise OSError("database is down")
        original(records)

    monkeypatch.setattr(index, "record_audit", flaky)
    monkeypatch.setattr(AuditStore, "FLUSH_INTERVAL", 600)  # only the flushes below
    store.append(record(utcnow(), subject="patient-safety"))
    store.flush()
    store.flush()
    assert index.audit_records(AuditQuery(subject="patient-safety")) == []
    store.flush()
    assert len(index.audit_records(AuditQuery(subject="patient-safety"))) == 1
    store.close()


def test_records_are_dropped_with_an_error_after_too_many_failures(app_factory, monkeypatch, caplog):
    app = app_factory(audit_log=None)
    index = app.extensions["dicomserver"].index
    store = AuditStore(index, retention_days=90)
    monkeypatch.setattr(AuditStore, "GIVE_UP_AFTER", 3)
    monkeypatch.setattr(AuditStore, "FLUSH_INTERVAL", 600)
    monkeypatch.setattr(index, "record_audit", lambda records: (_ for _ in ()).throw(OSError("down")))
    store.append(record(utcnow()))
    for _ in range(3):
        store.flush()
    assert store._pending == []
    assert "1 records not stored in the index after 3 attempts" in caplog.text
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_worker_starts_with_no_pending_records(app_factory):
    app = app_factory(audit_log=None)
    store = AuditStore(app.extensions["dicomserver"].index, retention_days=90)
    store.append(record(utcnow()))
    pid = os.fork()
    if pid == 0:  # the child: the parent's record is not its to write
        os._exit(0 if store._pending == [] and store._thread is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.close()
    assert len(app.extensions["dicomserver"].index.audit_records(AuditQuery())) == 1
