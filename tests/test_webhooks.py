"""Webhooks (/webhooks, docs/events.md): the subscriptions' API and its 400s, the `admin` action and the
audit trail; the outbox (events written in the transaction of the STOW/DELETE they report, and nothing
written without a subscription); fan-out, signed deliveries (checked against an HMAC computed here),
retries and giving up, leases; the stable scan; the target checks (SSRF). On SQLite + local disk and
on PostgreSQL + S3 (the `settings` fixture)."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import sqlite3
from typing import Any

import pytest
from auth_fixtures import bearer
from dicom_factory import make_instance, to_bytes
from test_openapi import _operation, check_answer

from dicomserver import Settings, close_app, create_app, events, openapi
from dicomserver.delivery import Deliverer, backoff
from dicomserver.index.models import WebhookDelivery, WebhookEvent
from dicomserver.index.schema import SCHEMA_VERSION
from dicomserver.partitions import Partition
from dicomserver.webhooks import target_refusal

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
RECEIVER = "http://127.0.0.1:9/hook"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def app(settings, tmp_path):
    """No delivery thread (tests deliver when they choose), 127.0.0.1 allowed as a target."""
    app = create_app(dataclasses.replace(
        settings, webhooks_delivery=False, operations_runner=False, webhooks_allowed_hosts=("127.0.0.1",),
        audit_log=str(tmp_path / "audit.jsonl"), public_url="https://pacs.example.org",
    ))
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def doc():
    return openapi.document("http://localhost", auth_required=False)


def subscribe(client, **body: Any) -> dict[str, Any]:
    response = client.post("/v2/webhooks", json={"url": RECEIVER, "events": ["instance.stored"], **body})
    assert response.status_code == 201, response.data
    return response.json


def stow(client, **kwargs: Any):
    ds = make_instance(**kwargs)
    response = client.post("/v2/studies", data=to_bytes(ds), headers=DICOM)
    assert response.status_code == 200, response.data
    return ds


def outbox(index) -> list[tuple[str, str, dict[str, Any]]]:
    return [(row.type, row.partition, json.loads(row.data)) for row in WebhookEvent.select().order_by(WebhookEvent.id)]


class Receiver:
    """A stand-in for the HTTP POST: records what was sent and answers the statuses it is given."""

    def __init__(self, *statuses: int | None):
        self.statuses = list(statuses)
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, job, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        self.sent.append((job.url, body, headers))
        status = self.statuses.pop(0) if self.statuses else 200
        return (None, "could not connect: ConnectionError") if status is None else (status, None)


def due_now(index) -> None:
    """Make every pending delivery due (instead of waiting for its back-off)."""
    with index.write_transaction():
        WebhookDelivery.update(next_attempt=dt.datetime(2000, 1, 1)).where(WebhookDelivery.status == "pending").execute()


# -- the API ---------------------------------------------------------------------------
def test_a_subscription_is_created_listed_read_changed_and_deleted(client, app, doc):
    created = client.post("/v2/webhooks", json={"url": RECEIVER, "events": ["instance.stored", "study.stable"],
                                                "description": "AI pipeline"})
    check_answer(doc, _operation(doc, app, "POST", "/v2/webhooks"), created)
    body = created.json
    assert created.status_code == 201
    assert created.headers["Location"].endswith(f"/v2/webhooks/{body['id']}")
    assert body["secret"].startswith("whsec_") and len(base64.b64decode(body["secret"][6:])) == 32
    assert body["events"] == ["instance.stored", "study.stable"] and body["active"] is True
    path = f"/v1/webhooks/{body['id']}"

    listed = client.get("/v1/webhooks")
    check_answer(doc, _operation(doc, app, "GET", "/v1/webhooks"), listed)
    assert [w["id"] for w in listed.json] == [body["id"]]
    assert "secret" not in listed.json[0]  # shown once only

    one = client.get(path)
    check_answer(doc, _operation(doc, app, "GET", path), one)
    assert one.json["lastDelivery"] is None and "secret" not in one.json

    changed = client.patch(path, json={"events": ["instance.deleted"], "active": False})
    check_answer(doc, _operation(doc, app, "PATCH", path), changed)
    assert changed.status_code == 200
    assert changed.json["events"] == ["instance.deleted"] and changed.json["active"] is False

    gone = client.delete(path)
    check_answer(doc, _operation(doc, app, "DELETE", path), gone)
    assert gone.status_code == 204
    assert client.get(path).status_code == 404
    assert client.delete(path).status_code == 404
    assert client.get("/v2/webhooks").json == []


def test_a_secret_brought_by_the_client_is_kept_and_not_echoed(client):
    body = subscribe(client, secret=SECRET)
    assert "secret" not in body


@pytest.mark.parametrize(("body", "message"), [
    ({"events": ["instance.stored"]}, "url and events"),
    ({"url": RECEIVER}, "url and events"),
    ({"url": "ftp://127.0.0.1/x", "events": ["instance.stored"]}, "http:// or https://"),
    ({"url": "http://user:pw@127.0.0.1/x", "events": ["instance.stored"]}, "credentials"),
    ({"url": "http://10.1.2.3/x", "events": ["instance.stored"]}, "not a public address"),
    ({"url": "http://169.254.169.254/latest/meta-data", "events": ["instance.stored"]}, "not a public address"),
    ({"url": "http://[::1]:8080/x", "events": ["instance.stored"]}, "not a public address"),
    ({"url": "http://[::ffff:192.168.0.1]/x", "events": ["instance.stored"]}, "not a public address"),
    ({"url": RECEIVER, "events": []}, "non-empty list"),
    ({"url": RECEIVER, "events": ["instance.exploded"]}, "unknown event type"),
    ({"url": RECEIVER, "events": ["instance.stored", "instance.stored"]}, "distinct"),
    ({"url": RECEIVER, "events": ["instance.stored"], "secret": "hunter2"}, "whsec_"),
    ({"url": RECEIVER, "events": ["instance.stored"], "secret": "whsec_c2hvcnQ="}, "24 to 64 bytes"),
    ({"url": RECEIVER, "events": ["instance.stored"], "partition": "no spaces"}, "PartitionName"),
    ({"url": RECEIVER, "events": ["instance.stored"], "active": "yes"}, "true or false"),
    ({"url": RECEIVER, "events": ["instance.stored"], "colour": "red"}, "unknown member"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_bodies_are_400_saying_what_is_wrong(client, app, doc, body, message):
    response = client.post("/v2/webhooks", json=body)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    check_answer(doc, _operation(doc, app, "POST", "/v2/webhooks"), response)
    assert client.get("/v2/webhooks").json == []


def test_patch_checks_what_it_changes_and_unknown_ids_are_404(client, app, doc):
    path = f"/v2/webhooks/{subscribe(client)['id']}"
    refused = client.patch(path, json={"url": "http://192.168.1.1/"})
    assert refused.status_code == 400 and "not a public address" in refused.get_data(as_text=True)
    check_answer(doc, _operation(doc, app, "PATCH", path), refused)
    for method, missing in (("GET", "/v2/webhooks/" + "a" * 32), ("PATCH", "/v2/webhooks/" + "a" * 32),
                            ("GET", "/v2/webhooks/nope/deliveries"), ("POST", "/v2/webhooks/nope/ping")):
        response = client.open(missing, method=method, json={"active": True})
        assert response.status_code == 404, (method, missing)
        check_answer(doc, _operation(doc, app, method, missing), response)
    bad_limit = client.get(path + "/deliveries?limit=0")
    assert bad_limit.status_code == 400
    check_answer(doc, _operation(doc, app, "GET", path + "/deliveries"), bad_limit)


def test_every_route_needs_the_admin_action(app_factory, auth_settings, identity_provider):
    client = app_factory(**auth_settings, webhooks_delivery=False, webhooks_allowed_hosts=("127.0.0.1",)).test_client()
    body = {"url": RECEIVER, "events": ["instance.stored"]}
    writer = bearer(identity_provider.token(roles=["globalWriter"]))
    assert client.post("/v2/webhooks", json=body, headers=writer).status_code == 403
    assert client.get("/v2/webhooks", headers=writer).status_code == 403
    assert client.post("/v2/webhooks", json=body).status_code == 401
    admin = bearer(identity_provider.token(roles=["globalAdmin"]))
    created = client.post("/v2/webhooks", json=body, headers=admin)
    assert created.status_code == 201
    assert client.get(f"/v2/webhooks/{created.json['id']}", headers=writer).status_code == 403


def test_requests_are_audited_with_the_admin_action(client, tmp_path):
    subscribe(client)
    client.get("/v2/webhooks")
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    webhooks = [r for r in records if "/webhooks" in r["route"]]
    assert [(r["method"], r["status"], r["action"]) for r in webhooks] == [("POST", 201, "admin"), ("GET", 200, "admin")]


# -- the outbox ------------------------------------------------------------------------
def test_nothing_is_written_while_no_subscription_exists(client, index):
    ds = stow(client)
    assert client.delete(f"/v2/studies/{ds.StudyInstanceUID}").status_code == 204
    assert outbox(index) == []
    subscribe(client, events=["instance.deleted"])
    stow(client)  # nobody wants instance.stored
    assert outbox(index) == []


def test_stow_and_delete_write_their_events(client, index):
    subscribe(client, events=["instance.stored", "instance.deleted"])
    first = stow(client)
    second = stow(client, study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
    replaced = client.put(f"/v2/studies/{first.StudyInstanceUID}", data=to_bytes(first), headers=DICOM)
    assert replaced.status_code == 200
    assert client.delete(f"/v2/studies/{first.StudyInstanceUID}").status_code == 204
    uids = {ds.SOPInstanceUID: {"studyInstanceUid": ds.StudyInstanceUID, "seriesInstanceUid": ds.SeriesInstanceUID,
                                "sopInstanceUid": ds.SOPInstanceUID} for ds in (first, second)}
    stored = [{**uids[ds.SOPInstanceUID], "sopClassUid": ds.SOPClassUID, "replaced": replaced}
              for ds, replaced in ((first, False), (second, False), (first, True))]
    written = outbox(index)
    assert written[:3] == [("instance.stored", "Microsoft.Default", data) for data in stored]
    deleted = sorted(written[3:], key=lambda event: event[2]["sopInstanceUid"])
    assert deleted == [("instance.deleted", "Microsoft.Default", uids[sop]) for sop in sorted(uids)]


def test_a_refused_stow_writes_no_event(client, index):
    subscribe(client)
    ds = stow(client)
    again = client.post("/v2/studies", data=to_bytes(ds), headers=DICOM)
    assert again.status_code == 409
    assert len(outbox(index)) == 1


def test_record_is_part_of_the_callers_transaction(client, index):
    """events.record (what UPS-RS calls when a workitem changes state) commits or rolls back with the change."""
    subscribe(client, events=["workitem.state"])
    data = {"workitemInstanceUid": "1.2.3", "procedureStepState": "IN PROGRESS", "previousState": "SCHEDULED"}
    with pytest.raises(RuntimeError), index.write_transaction():
        assert events.record(index, events.WORKITEM_STATE, data) is not None
        raise RuntimeError("the state change fails")
    assert outbox(index) == []
    with index.write_transaction():
        event_id = events.record(index, events.WORKITEM_STATE, data, Partition(1, "Microsoft.Default"))
    assert outbox(index) == [("workitem.state", "Microsoft.Default", data)]
    assert WebhookEvent.get().event_id == event_id
    with pytest.raises(ValueError, match="unknown event type"):
        events.record(index, "workitem.exploded", data)


def test_another_process_sees_a_new_subscription_within_the_cache_time(client, index):
    """A process that did not register the subscription trusts its cached view until it expires."""
    index.outbox.ttl = 3600
    assert not index.outbox.wanted("instance.stored", "Microsoft.Default")  # cached: nobody wants anything
    subscribe(client)  # this process forgets its copy at once
    assert index.outbox.wanted("instance.stored", "Microsoft.Default")
    assert not index.outbox.wanted("instance.deleted", "Microsoft.Default")


# -- deliveries ------------------------------------------------------------------------
def signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """Standard Webhooks' signature, computed here from the spec, not by the server's code."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_events_are_fanned_out_signed_retried_and_delivered(client, app, index, doc):
    subscription = subscribe(client, secret=SECRET)
    ds = stow(client)
    settings = app.extensions["dicomserver"].settings
    receiver = Receiver(500, 200)
    deliverer = Deliverer(index, settings, owner="one", send=receiver)
    assert deliverer.step() == 1
    (url, body, headers), = receiver.sent
    assert url == RECEIVER
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-signature"] == signature(SECRET, headers, body)
    envelope = json.loads(body)
    assert envelope["id"] == headers["webhook-id"] and envelope["type"] == "instance.stored"
    assert envelope["partitionName"] == "Microsoft.Default" and envelope["time"].endswith("Z")
    assert envelope["data"] == {
        "studyInstanceUid": ds.StudyInstanceUID, "seriesInstanceUid": ds.SeriesInstanceUID,
        "sopInstanceUid": ds.SOPInstanceUID, "sopClassUid": ds.SOPClassUID, "replaced": False,
        "retrieveUrl": f"https://pacs.example.org/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                       f"/instances/{ds.SOPInstanceUID}",
    }
    path = f"/v2/webhooks/{subscription['id']}"
    shown = client.get(path)
    check_answer(doc, _operation(doc, app, "GET", path), shown)
    last = shown.json["lastDelivery"]
    assert (last["status"], last["attempts"], last["lastStatus"], last["eventId"]) == (
        "pending", 1, 500, envelope["id"])
    assert last["nextAttempt"] > last["lastAttempt"]
    assert deliverer.step() == 0  # not due yet: back-off
    due_now(index)
    assert deliverer.step() == 1
    (_, body_again, headers_again) = receiver.sent[1]
    assert headers_again["webhook-id"] == envelope["id"] and body_again == body  # the same event, de-duplicable
    assert headers_again["webhook-signature"] == signature(SECRET, headers_again, body_again)
    deliveries = client.get(path + "/deliveries")
    check_answer(doc, _operation(doc, app, "GET", path + "/deliveries"), deliveries)
    (delivery,) = deliveries.json
    assert (delivery["status"], delivery["attempts"], delivery["lastStatus"], delivery["nextAttempt"]) == (
        "delivered", 2, 200, None)
    assert deliverer.step() == 0


def test_a_delivery_that_keeps_failing_is_given_up(client, app, index):
    subscribe(client)
    stow(client)
    settings = dataclasses.replace(app.extensions["dicomserver"].settings, webhooks_max_attempts=3)
    receiver = Receiver(None, 503, 404)
    deliverer = Deliverer(index, settings, send=receiver)
    for _ in range(3):
        assert deliverer.step() == 1
        due_now(index)
    assert deliverer.step() == 0
    delivery = WebhookDelivery.get()
    assert (delivery.status, delivery.attempts, delivery.last_status, delivery.next_attempt) == ("failed", 3, 404,
                                                                                                 None)
    assert len(receiver.sent) == 3


def test_a_claim_is_one_process_s_until_its_lease_expires(client, app, index):
    subscribe(client)
    stow(client)
    index.fan_out()
    (job,) = index.claim_deliveries("killed", dt.timedelta(seconds=60), 10)
    assert index.claim_deliveries("other", dt.timedelta(seconds=60), 10) == []
    with index.write_transaction():  # the killed process' lease runs out
        WebhookDelivery.update(lease_expires=dt.datetime(2000, 1, 1)).execute()
    (again,) = index.claim_deliveries("other", dt.timedelta(seconds=60), 10)
    assert (again.event_id, again.attempts) == (job.event_id, 2)
    assert not index.finish_delivery(job, "killed", status=200, error=None, retry=lambda _: None)
    assert index.finish_delivery(again, "other", status=204, error=None, retry=lambda _: None)
    assert WebhookDelivery.get().status == "delivered"


def test_subscriptions_get_the_events_they_asked_for(client, app, index):
    everything = subscribe(client, events=["instance.stored", "instance.deleted"])
    other_partition = subscribe(client, partition="elsewhere")
    paused = subscribe(client, active=False)
    ds = stow(client)
    assert client.delete(f"/v2/studies/{ds.StudyInstanceUID}").status_code == 204
    index.fan_out()
    counts = {w["id"]: WebhookDelivery.select().where(WebhookDelivery.webhook == w["id"]).count()
              for w in (everything, other_partition, paused)}
    assert counts == {everything["id"]: 2, other_partition["id"]: 0, paused["id"]: 0}


def test_ping_goes_to_one_subscription(client, app, index, doc):
    one, other = subscribe(client), subscribe(client)
    path = f"/v2/webhooks/{one['id']}/ping"
    response = client.post(path)
    check_answer(doc, _operation(doc, app, "POST", path), response)
    assert response.status_code == 202
    receiver = Receiver()
    Deliverer(index, app.extensions["dicomserver"].settings, send=receiver).step()
    (_, body, headers), = receiver.sent
    assert json.loads(body)["type"] == "webhook.ping" and headers["webhook-id"] == response.json["eventId"]
    assert WebhookDelivery.select().where(WebhookDelivery.webhook == other["id"]).count() == 0


def test_a_refused_target_is_not_contacted(client, app, index):
    subscribe(client, url="http://127.0.0.1:9/hook")
    stow(client)
    settings = dataclasses.replace(app.extensions["dicomserver"].settings, webhooks_allowed_hosts=())
    deliverer = Deliverer(index, settings)  # its own HTTP sender
    assert deliverer.step() == 1
    delivery = WebhookDelivery.get()
    assert delivery.status == "pending" and delivery.last_error.startswith("refused: 127.0.0.1 is")


def test_backoff_grows_with_jitter_and_is_capped():
    settings = Settings(webhooks_retry_seconds=10)

    class Fixed:
        def __init__(self, value: float):
            self.value = value

        def random(self) -> float:
            return self.value

    assert [round(backoff(settings, n, Fixed(0.5))) for n in (1, 2, 3, 4, 5, 9)] == [10, 50, 250, 1250, 3600, 3600]
    assert round(backoff(settings, 1, Fixed(0.0))) == 8 and round(backoff(settings, 1, Fixed(1.0))) == 12


# -- stable studies and series -----------------------------------------------------------
def test_a_quiet_series_and_study_are_reported_once(client, app, index):
    subscribe(client, events=["series.stable", "study.stable"])
    first = stow(client)
    stow(client, study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
    assert index.scan_stable(dt.timedelta(hours=1)) == 0  # not quiet long enough
    assert index.scan_stable(dt.timedelta(0)) == 2
    assert outbox(index) == [
        ("series.stable", "Microsoft.Default", {"studyInstanceUid": first.StudyInstanceUID,
                                                "seriesInstanceUid": first.SeriesInstanceUID,
                                                "modality": first.Modality, "numberOfInstances": 2}),
        ("study.stable", "Microsoft.Default", {"studyInstanceUid": first.StudyInstanceUID, "numberOfSeries": 1,
                                               "numberOfInstances": 2}),
    ]
    assert index.scan_stable(dt.timedelta(0)) == 0  # reported: not again
    stow(client, study=first.StudyInstanceUID)  # a new series: both the series and the study change
    assert index.scan_stable(dt.timedelta(0)) == 2
    receiver = Receiver()
    Deliverer(index, app.extensions["dicomserver"].settings, send=receiver).step()
    study_url = f"https://pacs.example.org/v2/studies/{first.StudyInstanceUID}"
    urls = sorted(json.loads(body)["data"]["retrieveUrl"] for _, body, _ in receiver.sent)
    assert len(urls) == 4 and urls.count(study_url) == 2


def test_what_was_stored_before_the_first_stable_subscription_is_not_reported(client, index):
    stow(client)
    subscribe(client, events=["study.stable"])
    assert index.scan_stable(dt.timedelta(0)) == 0
    ds = stow(client)
    assert client.delete(f"/v2/studies/{stow(client).StudyInstanceUID}").status_code == 204  # gone: not reported
    assert index.scan_stable(dt.timedelta(0)) == 1
    assert [data["studyInstanceUid"] for _, _, data in outbox(index)] == [ds.StudyInstanceUID]


# -- targets ---------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "allowed", "refused"), [
    ("93.184.215.14", (), False),
    ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", (), False),
    ("127.0.0.1", (), True),
    ("127.0.0.1", ("127.0.0.1",), False),
    ("10.20.30.40", ("10.0.0.0/8",), False),
    ("10.20.30.40", ("192.168.0.0/16",), True),
    ("100.64.0.1", (), True),  # shared address space (carrier-grade NAT)
    ("0.0.0.0", (), True),
    ("224.0.0.1", (), True),
    ("fe80::1", (), True),
    ("fd00::1", (), True),
    ("localhost", (), True),  # resolves to loopback
    ("LocalHost", ("localhost",), False),
])
def test_targets_must_be_public_unless_allowed(host, allowed, refused):
    refusal = target_refusal(host, 80, Settings(webhooks_allowed_hosts=allowed))
    assert (refusal is not None) == refused, refusal


# -- schema ----------------------------------------------------------------------------
def test_a_version_12_database_gets_the_webhook_tables(tmp_path):
    settings = Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}",
                        operations_runner=False, webhooks_delivery=False)
    close_app(create_app(settings))
    with sqlite3.connect(tmp_path / "i.db") as db:
        for table in ("webhook_delivery", "webhook_event", "webhook_cursor", "webhook_stable", "webhook"):
            db.execute(f'DROP TABLE "{table}"')
        db.execute("UPDATE schema_info SET version = 12")
    app = create_app(settings)
    try:
        client = app.test_client()
        assert client.post("/v2/webhooks", json={"url": "https://93.184.215.14/x",
                                                 "events": ["instance.stored"]}).status_code == 201
    finally:
        close_app(app)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]


def test_changing_a_stable_subscription_keeps_what_waits_to_be_reported(client, index):
    subscription = subscribe(client, events=["study.stable"])
    ds = stow(client)
    assert index.scan_stable(dt.timedelta(hours=1)) == 0  # noted, not quiet yet
    changed = client.patch(f"/v2/webhooks/{subscription['id']}", json={"description": "renamed"})
    assert changed.status_code == 200
    assert index.scan_stable(dt.timedelta(0)) == 1
    assert [data["studyInstanceUid"] for _, _, data in outbox(index)] == [ds.StudyInstanceUID]


def test_workitem_state_changes_are_events(client, index):
    """Every state a UPS-RS workitem takes (creation included) is a `workitem.state` event, written
    in the worklist's transaction; a cancel request that changes no state is not."""
    from test_workitems import HEADERS, TXN, UID, state, workitem

    subscribe(client, events=["workitem.state"])
    assert client.post("/v2/workitems", data=json.dumps([workitem()]), headers=HEADERS).status_code == 201
    assert state(client, UID, "IN PROGRESS", TXN).status_code == 200
    cancel = client.post(f"/v2/workitems/{UID}/cancelrequest", data=json.dumps([{}]), headers=HEADERS)
    assert cancel.status_code == 202  # to the performer as a UPS event; its state stays IN PROGRESS
    assert [(kind, partition, data) for kind, partition, data in outbox(index)] == [
        ("workitem.state", "Microsoft.Default",
         {"workitemInstanceUid": UID, "procedureStepState": "SCHEDULED", "previousState": None}),
        ("workitem.state", "Microsoft.Default",
         {"workitemInstanceUid": UID, "procedureStepState": "IN PROGRESS", "previousState": "SCHEDULED"}),
    ]
