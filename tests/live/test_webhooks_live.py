"""Webhooks against a real gunicorn (2 workers, each with its delivery thread) and a receiver in this
test (http.server on a loopback port) that checks every signature with its own HMAC: the first
delivery of each event is answered 500 and the retry arrives with the same event id; a study and its
series are reported stable after DICOMWEB_STABLE_SECONDS; then the server is killed (SIGKILL, master
and workers) while the receiver holds a delivery unanswered, restarted on the same data, and the
event is delivered again: de-duplicated by id, every event arrives at least once. On SQLite + local
disk and on PostgreSQL + S3.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import start_server, stop_server
from s3_fixtures import postgres_s3_archive

pytestmark = pytest.mark.live

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
#: Quick polls and retries, a short lease (a killed server's claims expire soon), a small stable time,
#: and no cached view of the subscriptions (every worker sees a new one at once).
ENV = {
    "DICOMWEB_WEBHOOKS_ALLOWED_HOSTS": "127.0.0.1",
    "DICOMWEB_WEBHOOKS_POLL_SECONDS": "0.2",
    "DICOMWEB_WEBHOOKS_RETRY_SECONDS": "0.3",
    "DICOMWEB_WEBHOOKS_TIMEOUT_SECONDS": "20",
    "DICOMWEB_WEBHOOKS_LEASE_SECONDS": "25",
    "DICOMWEB_WEBHOOKS_CACHE_SECONDS": "0",
    "DICOMWEB_STABLE_SECONDS": "1.5",
}


class Receiver:
    """Answers 500 to the first delivery of each event and 200 after; checks every signature. While
    `holding` is set, it takes a delivery in (counts it) and keeps it unanswered until released."""

    def __init__(self) -> None:
        self.deliveries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.bad: list[str] = []
        self.holding = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = receiver.receive(dict(self.headers.items()), body)
                if answer is None:  # held: the server is killed meanwhile
                    receiver.release.wait(60)
                    answer = 200
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def receive(self, headers: dict[str, str], body: bytes) -> int | None:
        headers = {k.lower(): v for k, v in headers.items()}
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        event = json.loads(body)
        with self.lock:
            if not hmac.compare_digest(headers["webhook-signature"], expected) or event["id"] != headers["webhook-id"]:
                self.bad.append(headers["webhook-id"])
                return 400
            seen = self.deliveries[event["id"]]
            seen.append(event)
            if len(seen) == 1:
                return 500
            if self.holding.is_set() and not self.held.is_set():
                self.held.set()
                return None
            return 200

    def events(self, kind: str) -> dict[str, dict[str, Any]]:
        """Events of a type by id (de-duplicated), each received at least twice (500, then 200)."""
        with self.lock:
            return {i: d[0] for i, d in self.deliveries.items() if d[0]["type"] == kind and len(d) >= 2}

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition, what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"waited {seconds} s for {what}")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    if request.param == "sqlite":
        yield {}
        return
    with postgres_s3_archive(request.getfixturevalue("postgres").url(), "webhooks") as (env, _s3, _bucket):
        yield env


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.stop()


def stow(server, **kwargs: Any):
    ds = make_instance(**kwargs)
    response = requests.post(f"{server.url}/v2/studies", data=to_bytes(ds), headers=DICOM, timeout=60)
    assert response.status_code == 200, response.text
    return ds


def test_signed_retried_stable_and_delivered_again_after_a_kill(backend, receiver, tmp_path):
    env = {**ENV, **backend}
    server = start_server(tmp_path / "data", workers=2, threads=4, env=env, new_session=True)
    try:
        created = requests.post(f"{server.url}/v2/webhooks", json={
            "url": receiver.url, "secret": SECRET,
            "events": ["instance.stored", "instance.deleted", "series.stable", "study.stable"],
        }, timeout=30)
        assert created.status_code == 201, created.text
        webhook = created.json()["id"]
        first = stow(server)
        stored = [first] + [stow(server, study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
                            for _ in range(2)]
        sops = {ds.SOPInstanceUID for ds in stored}
        wait_for(lambda: {e["data"]["sopInstanceUid"] for e in receiver.events("instance.stored").values()} == sops,
                 "each instance.stored delivered after a 500")
        (study,) = wait_for(lambda: list(receiver.events("study.stable").values()), "study.stable")
        assert study["data"]["studyInstanceUid"] == first.StudyInstanceUID
        assert study["data"]["numberOfInstances"] == 3
        (series,) = wait_for(lambda: list(receiver.events("series.stable").values()), "series.stable")
        assert series["data"]["seriesInstanceUid"] == first.SeriesInstanceUID
        for event_id, attempts in receiver.deliveries.items():  # a retry is the same event, the same bytes
            assert all(attempt == attempts[0] for attempt in attempts), event_id
        last = requests.get(f"{server.url}/v2/webhooks/{webhook}", timeout=30).json()["lastDelivery"]
        assert last["status"] == "delivered" and last["lastStatus"] == 200

        receiver.holding.set()  # the next event's second delivery is taken in and not answered
        doomed = stow(server)
        wait_for(receiver.held.is_set, "the held delivery")
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    finally:
        stop_server(server)
    receiver.release.set()  # its answer goes nowhere: the server is gone

    restarted = start_server(tmp_path / "data", workers=2, threads=4, env=env)
    try:
        def delivered_again() -> bool:
            events = [e for e in receiver.deliveries.values()
                      if e[0]["type"] == "instance.stored" and e[0]["data"]["sopInstanceUid"] == doomed.SOPInstanceUID]
            return len(events) == 1 and len(events[0]) >= 3  # 500, held (killed), then again after restart
        wait_for(delivered_again, "the delivery the kill interrupted, sent again by the restarted server", 90)
        stored_events = receiver.events("instance.stored")
        assert {e["data"]["sopInstanceUid"] for e in stored_events.values()} == sops | {doomed.SOPInstanceUID}
        assert receiver.bad == []
        deliveries = requests.get(f"{restarted.url}/v2/webhooks/{webhook}/deliveries", timeout=30).json()
        wait_for(lambda: all(d["status"] == "delivered" for d in requests.get(
            f"{restarted.url}/v2/webhooks/{webhook}/deliveries", timeout=30).json()), "every delivery delivered")
        assert len(deliveries) == len(receiver.deliveries)
    finally:
        stop_server(restarted)
