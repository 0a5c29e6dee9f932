"""UPS-RS (PS3.18 §11): create, retrieve, update, change state, request cancellation, search,
subscriptions and the event reports they queue, through the Flask test client on SQLite +
local disk and PostgreSQL + S3. The WebSocket channel itself is tested against gunicorn
(tests/live/test_workitem_events.py)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from dicomserver import close_app, create_app
from dicomserver import workitems as ups
from dicomserver.errors import Conflict, ServiceBusy
from dicomserver.partitions import DEFAULT
from dicomserver.ups_events import EventHub

UID = "1.2.826.0.1.3680043.10.1011.77.1"
OTHER = "1.2.826.0.1.3680043.10.1011.77.2"
MISSING = "1.2.826.0.1.3680043.10.1011.77.99"
TXN = "1.2.826.0.1.3680043.10.1011.88.1"
WRONG_TXN = "1.2.826.0.1.3680043.10.1011.88.2"
DICOM_JSON = "application/dicom+json"
HEADERS = {"Content-Type": DICOM_JSON, "Accept": DICOM_JSON}


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def code(value: str) -> dict[str, Any]:
    return {"00080100": element("SH", value), "00080102": element("SH", "DCM"), "00080104": element("LO", value)}


def workitem(uid: str | None = UID, *, name: str = "Doe^Jane", patient_id: str = "P1", accession: str = "A1",
             start: str = "20260105093000", station: str = "CT1") -> dict[str, Any]:
    """A dataset with every attribute PS3.4 Table CC.2.5-3 asks of a creation (as the reference checks)."""
    dataset = {
        "00081195": element("UI"),  # TransactionUID: present and empty
        "00741200": element("CS", "MEDIUM"),
        "00741204": element("LO", "CT head"),
        "00741202": element("LO"),
        "00741210": element("SQ"),
        "00404025": element("SQ", code(station)),
        "00404026": element("SQ", code("CT")),
        "00404027": element("SQ", code("ROOM1")),
        "00404005": element("DT", start),
        "00404018": element("SQ", code("110001")),
        "00400400": element("LT"),
        "00404041": element("CS", "READY"),
        "00404021": element("SQ"),
        "00100010": element("PN", {"Alphabetic": name}),
        "00100020": element("LO", patient_id),
        "00100021": element("LO"),
        "00100024": element("SQ"),
        "00101002": element("SQ"),
        "00100030": element("DA"),
        "00100040": element("CS", "F"),
        "00380010": element("LO"),
        "00380014": element("SQ"),
        "00081080": element("LO"),
        "00081084": element("SQ"),
        "0040A370": element("SQ", {
            "0020000D": element("UI", "1.2.826.0.1.3680043.10.1011.66.1"),
            "00080050": element("SH", accession),
            "00080051": element("SQ"),
            "00401001": element("SH", "RP1"),
            "00321060": element("LO"),
            "00321064": element("SQ"),
        }),
        "00741002": element("SQ"),
        "00741216": element("SQ"),
    }
    if uid is not None:
        dataset["00080018"] = element("UI", uid)
    return dataset


def create(client, dataset: dict[str, Any], query: str = "", prefix: str = "/v2"):
    return client.post(f"{prefix}/workitems{query}", data=json.dumps([dataset]), headers=HEADERS)


def state(client, uid: str, target: str, txn: str | None = TXN):
    body: dict[str, Any] = {"00741000": element("CS", target)}
    if txn is not None:
        body["00081195"] = element("UI", txn)
    return client.put(f"/v2/workitems/{uid}/state", data=json.dumps([body]), headers=HEADERS)


def update(client, uid: str, changes: dict[str, Any], txn: str | None = None):
    query = f"?{txn}" if txn else ""
    return client.post(f"/v2/workitems/{uid}{query}", data=json.dumps([changes]), headers=HEADERS)


def retrieve(client, uid: str) -> dict[str, Any]:
    response = client.get(f"/v2/workitems/{uid}", headers={"Accept": DICOM_JSON})
    assert response.status_code == 200, response.text
    dataset: dict[str, Any] = response.get_json()  # one object, as the reference answers
    return dataset


def warning_text(response) -> str:
    return response.headers.get("Warning", "")


PERFORMED = element("SQ", {
    "00404028": element("SQ", code("CT1")), "00404050": element("DT", "20260105093100"),
    "00404019": element("SQ", code("110001")), "00404051": element("DT", "20260105100000"),
    "00404033": element("SQ"),
})
CANCELED_PROGRESS = element("SQ", {
    "00404052": element("DT", "20260105093500"),
    "0074100E": element("SQ", {"00741238": element("LT", "patient left")}),
})


# -- create ----------------------------------------------------------------------------------------
def test_create_answers_201_with_location_and_the_workitem_is_scheduled(client):
    response = create(client, workitem())
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"http://localhost/v2/workitems/{UID}"
    assert response.headers["Content-Location"] == response.headers["Location"]
    stored = retrieve(client, UID)
    assert stored["00741000"]["Value"] == ["SCHEDULED"]
    assert stored["00080016"]["Value"] == [ups.UPS_PUSH_SOP_CLASS]
    assert stored["00741202"]["Value"] == ["worklist"]
    assert "00081195" not in stored


def test_create_takes_the_uid_from_the_first_query_parameters_name(client):
    assert create(client, workitem(None), f"?{OTHER}").status_code == 201
    assert retrieve(client, OTHER)["00080018"]["Value"] == [OTHER]
    mismatch = create(client, workitem(UID), f"?{MISSING}")
    assert mismatch.status_code == 400
    assert mismatch.text.strip() == ups.MISMATCHED_UID


def test_create_refusals(client):
    assert create(client, workitem()).status_code == 201
    duplicate = create(client, workitem())
    assert duplicate.status_code == 409 and duplicate.text.strip() == ups.ALREADY_EXISTS
    missing = workitem(OTHER)
    del missing["00741204"]
    answer = create(client, missing)
    assert answer.status_code == 400 and answer.text.strip() == "The required tag '(0074,1204)' is missing."
    empty = workitem(OTHER)
    empty["00741204"] = element("LO")
    assert create(client, empty).text.strip() == "The value for tag '(0074,1204)' is missing."
    claimed = workitem(OTHER)
    claimed["00081195"] = element("UI", TXN)
    assert create(client, claimed).text.strip() == "The attribute with tag '(0008,1195)' must be empty."
    no_uid = create(client, workitem(None))
    assert no_uid.status_code == 400 and "(0008,0018)" in no_uid.text
    request_item = workitem(OTHER)
    del request_item["0040A370"]["Value"][0]["0020000D"]
    assert create(client, request_item).text.strip() == "The required tag '(0020,000D)' is missing."
    wrong_type = client.post("/v2/workitems", data=json.dumps([workitem(OTHER)]), headers={"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    not_array = client.post("/v2/workitems", data=json.dumps(workitem(OTHER)), headers=HEADERS)
    assert not_array.status_code == 400 and "JSON array" in not_array.text
    not_json = client.post("/v2/workitems", data=b"{", headers=HEADERS)
    assert not_json.status_code == 400


def test_retrieve_404_and_406(client):
    missing = client.get(f"/v2/workitems/{MISSING}")
    assert missing.status_code == 404 and missing.text.strip() == ups.NOT_FOUND
    assert client.get("/v2/workitems/not-a-uid").status_code == 400
    create(client, workitem())
    assert client.get(f"/v2/workitems/{UID}", headers={"Accept": "image/png"}).status_code == 406


# -- the state machine --------------------------------------------------------------------------------
def test_claim_complete_and_the_transaction_uid_is_never_shown(client):
    create(client, workitem())
    claimed = state(client, UID, "IN PROGRESS")
    assert claimed.status_code == 200, claimed.text
    assert "Warning" not in claimed.headers
    shown = retrieve(client, UID)
    assert shown["00741000"]["Value"] == ["IN PROGRESS"] and "00081195" not in shown
    again = state(client, UID, "IN PROGRESS")
    assert again.status_code == 400
    assert again.text.strip() == "The workitem instance can not transition to 'IN PROGRESS' state: C302."
    assert ups.TRANSITION.format("IN PROGRESS", "C302") in warning_text(again)
    thief = state(client, UID, "COMPLETED", WRONG_TXN)
    assert thief.status_code == 400 and thief.text.strip().endswith("C301.")
    unperformed = state(client, UID, "COMPLETED")
    assert unperformed.status_code == 400
    assert unperformed.text.strip() == "The required tag '(0074,1216)' is missing."
    assert update(client, UID, {"00741216": PERFORMED}, TXN).status_code == 200
    done = state(client, UID, "COMPLETED")
    assert done.status_code == 200, done.text
    assert retrieve(client, UID)["00741000"]["Value"] == ["COMPLETED"]
    twice = state(client, UID, "COMPLETED")
    assert twice.status_code == 200
    assert ups.FINAL_STATE.format("COMPLETED", "B306") in warning_text(twice)
    after = state(client, UID, "CANCELED")
    assert after.status_code == 400 and after.text.strip().endswith("C300.")


def test_change_state_refusals(client):
    create(client, workitem())
    assert state(client, MISSING, "IN PROGRESS").status_code == 404
    scheduled_complete = state(client, UID, "COMPLETED")
    # SCHEDULED has no TransactionUID yet, so none matches (the reference: C301, not C310)
    assert scheduled_complete.status_code == 400 and scheduled_complete.text.strip().endswith("C301.")
    bad_value = state(client, UID, "SCHEDULED")
    assert bad_value.status_code == 400
    assert bad_value.text.strip() == "Expected value '(0074,1000)' to be one of the following values: " \
                                     "[IN PROGRESS,CANCELED,COMPLETED]"
    no_txn = state(client, UID, "IN PROGRESS", txn=None)
    assert no_txn.status_code == 400 and no_txn.text.strip() == "The required tag '(0008,1195)' is missing."
    assert state(client, UID, "IN PROGRESS", txn="not.a.uid.").status_code == 400


def test_the_owner_cancels_an_in_progress_workitem_with_its_reasons(client):
    create(client, workitem())
    state(client, UID, "IN PROGRESS")
    unexplained = state(client, UID, "CANCELED")
    assert unexplained.status_code == 400 and "(0074,1002)" in unexplained.text
    assert update(client, UID, {"00741002": CANCELED_PROGRESS}, TXN).status_code == 200
    canceled = state(client, UID, "CANCELED")
    assert canceled.status_code == 200, canceled.text
    twice = state(client, UID, "CANCELED")
    assert twice.status_code == 200 and "B304" in warning_text(twice)


# -- update -----------------------------------------------------------------------------------------------
def test_update_rules(client):
    create(client, workitem())
    changed = update(client, UID, {"00741204": element("LO", "CT head and neck")})
    assert changed.status_code == 200, changed.text
    assert changed.headers["Content-Location"] == f"http://localhost/v2/workitems/{UID}"
    assert retrieve(client, UID)["00741204"]["Value"] == ["CT head and neck"]
    with_txn = update(client, UID, {"00741204": element("LO", "x")}, TXN)
    assert with_txn.status_code == 400 and with_txn.text.strip() == ups.INVALID_TRANSACTION_UID
    assert ups.INVALID_TRANSACTION_UID in warning_text(with_txn)
    identity = update(client, UID, {"00100010": element("PN", {"Alphabetic": "Roe^Richard"})})
    assert identity.status_code == 400
    assert identity.text.strip() == "The attribute with tag '(0010,0010)' cannot be present."
    own_state = update(client, UID, {"00741000": element("CS", "COMPLETED")})
    assert own_state.status_code == 400
    state(client, UID, "IN PROGRESS")
    unclaimed = update(client, UID, {"00741204": element("LO", "y")})
    assert unclaimed.status_code == 400 and unclaimed.text.strip() == ups.NOT_CLAIMED
    assert update(client, UID, {"00741204": element("LO", "y")}, WRONG_TXN).text.strip() == ups.NOT_CLAIMED
    assert update(client, UID, {"00741204": element("LO", "y")}, TXN).status_code == 200
    update(client, UID, {"00741216": PERFORMED}, TXN)
    state(client, UID, "COMPLETED")
    final = update(client, UID, {"00741204": element("LO", "z")}, TXN)
    assert final.status_code == 400
    assert final.text.strip() == f"{ups.UPDATE_CONFLICT} {ups.ALREADY_COMPLETED}"
    assert update(client, MISSING, {"00741204": element("LO", "z")}).status_code == 404


def test_a_write_from_a_stale_read_is_a_409(app, client, index):
    """Optimistic concurrency: a write names the version it read; another write in between wins."""
    create(client, workitem())
    stale = index.workitem(DEFAULT.key, UID)
    assert update(client, UID, {"00741204": element("LO", "first")}).status_code == 200
    with pytest.raises(Conflict, match="currently being updated"):
        ups._write(index, DEFAULT, stale, {**stale.dataset}, None, [])
    fresh = index.workitem(DEFAULT.key, UID)
    assert fresh.version == stale.version + 1
    assert fresh.dataset["00741204"]["Value"] == ["first"]


# -- request cancellation ------------------------------------------------------------------------------------
def test_cancel_request(client, index):
    create(client, workitem())
    body = json.dumps([{"00741238": element("LT", "wrong patient")}])
    accepted = client.post(f"/v2/workitems/{UID}/cancelrequest", data=body, headers=HEADERS)
    assert accepted.status_code == 202, accepted.text
    canceled = retrieve(client, UID)
    assert canceled["00741000"]["Value"] == ["CANCELED"]
    reason = canceled["00741002"]["Value"][0]["0074100E"]["Value"][0]["00741238"]["Value"]
    assert reason == ["wrong patient"]
    again = client.post(f"/v2/workitems/{UID}/cancelrequest", data=body, headers=HEADERS)
    assert again.status_code == 409
    assert again.text.strip() == ups.ALREADY_CANCELED and ups.ALREADY_CANCELED in warning_text(again)
    assert client.post(f"/v2/workitems/{MISSING}/cancelrequest", data=body, headers=HEADERS).status_code == 404
    create(client, workitem(OTHER))
    state(client, OTHER, "IN PROGRESS")
    client.post(f"/v2/workitems/{OTHER}/subscribers/PERFORMER", headers=HEADERS)
    asked = client.post(f"/v2/workitems/{OTHER}/cancelrequest", data=body,
                        headers={**HEADERS, "X-Requesting-AE": "SCHEDULER"})
    assert asked.status_code == 202
    assert retrieve(client, OTHER)["00741000"]["Value"] == ["IN PROGRESS"]  # the performer decides
    reports = [json.loads(e.payload) for e in index.events_after(0) if e.ae_title == "PERFORMER"]
    assert [r["00001002"]["Value"] for r in reports] == [[ups.STATE_REPORT], [ups.CANCEL_REQUESTED]]
    assert reports[1]["00741236"]["Value"] == ["SCHEDULER"]
    assert reports[1]["00741238"]["Value"] == ["wrong patient"]
    update(client, OTHER, {"00741216": PERFORMED}, TXN)
    state(client, OTHER, "COMPLETED")
    completed = client.post(f"/v2/workitems/{OTHER}/cancelrequest", data=body, headers=HEADERS)
    assert completed.status_code == 409 and completed.text.strip().endswith("C311.")


# -- search -----------------------------------------------------------------------------------------------------
@pytest.fixture
def three(client):
    for uid, name, pid, acc, start, station in (
        (UID, "Doe^Jane", "P1", "A1", "20260105093000", "CT1"),
        (OTHER, "Doe^John", "P2", "A2", "20260106120000", "MR1"),
        ("1.2.826.0.1.3680043.10.1011.77.3", "Roe^Richard", "P3", "A3", "20260201080000", "CT2"),
    ):
        assert create(client, workitem(uid, name=name, patient_id=pid, accession=acc, start=start,
                                       station=station)).status_code == 201


def found(client, query: str) -> list[str]:
    response = client.get(f"/v2/workitems?{query}", headers={"Accept": DICOM_JSON})
    if response.status_code == 204:
        return []
    assert response.status_code == 200, response.text
    return [d["00080018"]["Value"][0] for d in response.get_json()]


def test_search_matching(client, three):
    assert found(client, "PatientID=P2") == [OTHER]
    assert found(client, "PatientName=Doe^Jane") == [UID]
    assert found(client, "PatientName=doe*") == [UID, OTHER]
    assert found(client, "PatientName=jo&fuzzymatching=true") == [OTHER]
    assert found(client, "ReferencedRequestSequence.AccessionNumber=A2") == [OTHER]
    assert found(client, "0040A370.00080050=A1") == [UID]
    assert found(client, "ReferencedRequestSequence.RequestedProcedureID=RP1") == [UID, OTHER,
                                                                                    "1.2.826.0.1.3680043.10.1011.77.3"]
    assert found(client, "ScheduledStationNameCodeSequence.CodeValue=CT*") == [UID, "1.2.826.0.1.3680043.10.1011.77.3"]
    assert found(client, "ScheduledProcedureStepStartDateTime=20260105-20260106") == [UID, OTHER]
    assert found(client, "ScheduledProcedureStepStartDateTime=202602") == ["1.2.826.0.1.3680043.10.1011.77.3"]
    assert found(client, "ScheduledProcedureStepStartDateTime=-20260105235959") == [UID]
    state(client, OTHER, "IN PROGRESS")
    assert found(client, "ProcedureStepState=IN%20PROGRESS") == [OTHER]
    assert found(client, "StudyInstanceUID=1.2.3") == []
    assert found(client, "limit=1&offset=1") == [OTHER]
    assert found(client, "PatientID=nobody") == []
    assert client.get("/v2/workitems?PatientID=nobody").status_code == 204


def test_search_answers(client, three):
    claimed = state(client, UID, "IN PROGRESS")
    assert claimed.status_code == 200
    results = client.get("/v2/workitems?PatientID=P1").get_json()
    assert "00081195" not in results[0]
    assert "00741204" in results[0] and "00404010" not in results[0]  # required return keys only
    narrowed = client.get("/v2/workitems?PatientID=P1&includefield=00404010").get_json()[0]
    assert "00404010" in narrowed and "00741210" in narrowed
    everything = client.get("/v2/workitems?PatientID=P1&includefield=all").get_json()[0]
    assert "00404010" in everything


def test_search_refusals(client, three):
    unknown = client.get("/v2/workitems?Modality=CT")
    assert unknown.status_code == 400 and "Modality" in unknown.text
    assert client.get("/v2/workitems?00100020=P1&PatientID=P1").status_code == 400
    assert client.get("/v2/workitems?PatientID=").status_code == 400
    assert client.get("/v2/workitems?limit=0").status_code == 400
    assert client.get("/v2/workitems?ScheduledProcedureStepStartDateTime=20260106-20260105").status_code == 400
    assert client.get("/v2/workitems?ScheduledProcedureStepStartDateTime=abc").status_code == 400
    assert client.get("/v2/workitems", headers={"Accept": "image/png"}).status_code == 406


# -- subscriptions and the event reports they queue -----------------------------------------------------------------
def reports(index, ae_title: str) -> list[tuple[str, int, str | None]]:
    """(workitem UID, event type, state) of the reports queued for an AE, in order."""
    out = []
    for event in index.events_after(0):
        if event.ae_title == ae_title:
            payload = json.loads(event.payload)
            state_value = payload.get("00741000", {}).get("Value", [None])[0]
            out.append((payload["00001000"]["Value"][0], payload["00001002"]["Value"][0], state_value))
    return out


def test_subscribe_to_one_workitem(client, index):
    create(client, workitem())
    subscribed = client.post(f"/v2/workitems/{UID}/subscribers/WATCHER")
    assert subscribed.status_code == 201, subscribed.text
    assert subscribed.headers["Content-Location"] == "ws://localhost/v2/subscribers/WATCHER"  # the event channel
    assert client.post(f"/v2/workitems/{MISSING}/subscribers/WATCHER").status_code == 404
    assert client.post(f"/v2/workitems/{UID}/subscribers/{'X' * 17}").status_code == 400
    assert client.post(f"/v2/workitems/{UID}/subscribers/A%5CB").status_code == 400
    assert client.post(f"/v2/workitems/{UID}/subscribers/WATCHER?filter=PatientID=1").status_code == 400
    state(client, UID, "IN PROGRESS")
    update(client, UID, {"00741216": PERFORMED}, TXN)
    state(client, UID, "COMPLETED")
    assert reports(index, "WATCHER") == [(UID, 1, "SCHEDULED"), (UID, 1, "IN PROGRESS"), (UID, 1, "COMPLETED")]
    assert client.delete(f"/v2/workitems/{UID}/subscribers/WATCHER").status_code == 200
    assert client.delete(f"/v2/workitems/{MISSING}/subscribers/WATCHER").status_code == 404
    assert index.subscribers(DEFAULT.key, UID) == []


def test_global_and_filtered_subscriptions(client, index):
    create(client, workitem())  # SCHEDULED: the global subscriber hears of it when subscribing
    assert client.post(f"/v2/workitems/{ups.GLOBAL_SUBSCRIPTION}/subscribers/ALL").status_code == 201
    filtered = f"/v2/workitems/{ups.FILTERED_GLOBAL_SUBSCRIPTION}/subscribers/CTONLY"
    assert client.post(f"{filtered}?filter=ScheduledStationNameCodeSequence.CodeValue=CT1").status_code == 201
    assert client.post(filtered).status_code == 400  # a filtered subscription needs a filter
    assert client.post(f"{filtered}?filter=Modality=CT").status_code == 400
    assert client.post(f"{filtered}?filter=PatientID").status_code == 400
    create(client, workitem(OTHER, station="MR1"))
    assert reports(index, "ALL") == [(UID, 1, "SCHEDULED"), (OTHER, 1, "SCHEDULED")]
    assert reports(index, "CTONLY") == [(UID, 1, "SCHEDULED")]
    suspended = client.post(f"/v2/workitems/{ups.GLOBAL_SUBSCRIPTION}/subscribers/ALL/suspend")
    assert suspended.status_code == 200
    assert client.post(f"/v2/workitems/{UID}/subscribers/ALL/suspend").status_code == 400
    third = "1.2.826.0.1.3680043.10.1011.77.3"
    create(client, workitem(third))
    state(client, UID, "IN PROGRESS")  # still subscribed to UID: suspending keeps what it subscribed
    assert [r[0] for r in reports(index, "ALL")] == [UID, OTHER, UID]
    assert client.delete(f"/v2/workitems/{ups.GLOBAL_SUBSCRIPTION}/subscribers/ALL").status_code == 200
    state(client, OTHER, "IN PROGRESS")
    assert len(reports(index, "ALL")) == 3  # unsubscribing globally ends every subscription
    assert index.subscribers(DEFAULT.key, OTHER) == []


def test_the_event_channel_needs_a_websocket_upgrade(client):
    refused = client.get("/v2/subscribers/WATCHER")
    assert refused.status_code == 400 and "WebSocket" in refused.text
    assert client.get(f"/v2/subscribers/{'X' * 17}", headers={"Upgrade": "websocket"}).status_code == 400


def test_state_changed_is_the_one_place_a_change_is_reported(client, monkeypatch):
    """Every state change (and creation) goes through workitems.state_changed inside its transaction."""
    seen: list[tuple[str, str | None, str | None]] = []
    original = ups.state_changed

    def spy(index, partition, uid, previous, dataset, events):
        seen.append((uid, previous, dataset["00741000"]["Value"][0]))
        original(index, partition, uid, previous, dataset, events)

    monkeypatch.setattr(ups, "state_changed", spy)
    create(client, workitem())
    state(client, UID, "IN PROGRESS")
    update(client, UID, {"00741216": PERFORMED}, TXN)  # not a state change: not reported
    state(client, UID, "COMPLETED")
    assert seen == [(UID, None, "SCHEDULED"), (UID, "SCHEDULED", "IN PROGRESS"), (UID, "IN PROGRESS", "COMPLETED")]


# -- partitions and versions ------------------------------------------------------------------------------------------
def test_workitems_are_partitioned_and_creating_one_creates_its_partition(settings):
    app = create_app(dataclasses.replace(settings, partitions=True))
    try:
        client = app.test_client()
        assert create(client, workitem(), prefix="/v1").status_code == 400  # no partition segment
        made = create(client, workitem(), prefix="/v1/partitions/ward7")
        assert made.status_code == 201, made.text
        assert made.headers["Location"] == f"http://localhost/v1/partitions/ward7/workitems/{UID}"
        assert client.get(f"/v1/partitions/ward7/workitems/{UID}").status_code == 200
        assert client.get(f"/v1/partitions/Microsoft.Default/workitems/{UID}").status_code == 404
        assert create(client, workitem(), prefix="/v1/partitions/Microsoft.Default").status_code == 201
        names = [p["partitionName"] for p in client.get("/v1/partitions").get_json()]
        assert "ward7" in names
    finally:
        close_app(app)


def test_the_event_hub_hands_each_report_to_its_ae_and_bounds_its_channels(client, index):
    """One hub per process tails the index: a report written by any process (here: a request)
    reaches the channels of its AE title in this one, once; a full hub answers 503."""
    hub = EventHub(index, max_channels=2, poll_seconds=3600)  # the test drives the polls
    try:
        watcher, other = hub.open("WATCHER"), hub.open("OTHER")
        with pytest.raises(ServiceBusy):
            hub.open("THIRD")
        create(client, workitem())
        client.post(f"/v2/workitems/{UID}/subscribers/WATCHER")
        state(client, UID, "IN PROGRESS")
        hub.poll()
        hub.poll()
        got = [json.loads(watcher.next_report(0.5) or "null") for _ in range(3)]
        assert [g["00741000"]["Value"][0] if g else None for g in got] == ["SCHEDULED", "IN PROGRESS", None]
        assert other.next_report(0) is None
        hub.close(watcher)
        hub.open("THIRD")
    finally:
        hub.stop()


def test_the_answers_are_documented(app, client):
    """Each kind of answer of the worklist matches /openapi.json (status, media type, schema, headers)."""
    from test_openapi import _operation, check_answer

    doc = client.get("/openapi.json").get_json()
    made = create(client, workitem())
    answers = [
        ("POST", "/v2/workitems", made),
        ("POST", "/v2/workitems", create(client, workitem())),
        ("GET", f"/v2/workitems/{UID}", client.get(f"/v2/workitems/{UID}")),
        ("GET", f"/v2/workitems/{MISSING}", client.get(f"/v2/workitems/{MISSING}")),
        ("GET", "/v2/workitems", client.get("/v2/workitems?PatientID=P1")),
        ("GET", "/v2/workitems", client.get("/v2/workitems?PatientID=nobody")),
        ("POST", f"/v2/workitems/{UID}", update(client, UID, {"00741204": element("LO", "x")})),
        ("PUT", f"/v2/workitems/{UID}/state", state(client, UID, "COMPLETED")),
        ("POST", f"/v2/workitems/{UID}/subscribers/W", client.post(f"/v2/workitems/{UID}/subscribers/W")),
        ("DELETE", f"/v2/workitems/{UID}/subscribers/W", client.delete(f"/v2/workitems/{UID}/subscribers/W")),
        ("POST", f"/v2/workitems/{UID}/cancelrequest",
         client.post(f"/v2/workitems/{UID}/cancelrequest", data="[{}]", headers=HEADERS)),
        ("GET", "/v2/subscribers/W", client.get("/v2/subscribers/W")),
    ]
    for method, path, response in answers:
        check_answer(doc, _operation(doc, app, method, path), response)


def test_a_warning_that_quotes_the_request_is_a_valid_header(client):
    """The message names the bad UID; its Warning header escapes what a header cannot carry."""
    response = client.post("/v2/workitems/1.2.\u1e70\"x\n", data="[{}]", headers=HEADERS)
    assert response.status_code == 400
    value = response.headers["Warning"]
    assert value.isascii() and value.isprintable() and value.count('"') == 2
    assert "\\u1e70" in value
