"""UPS event channels against real gunicorns: a WebSocket client opens /subscribers/{AETitle} on
one host while workitems are created, claimed and completed over HTTP on another (two hosts
of two workers each on one index), and receives the UPS State Reports in order; a filtered
global subscription receives only what matches; unsubscribing stops them. A channel outlives
the worker's read deadline, a process holds at most DICOMWEB_MAX_EVENT_CHANNELS while
ordinary requests are still served, and the upgrade needs a bearer token with `read`.
"""
from __future__ import annotations

import json
import signal
import socket
import time
from typing import Any

import pytest
import requests
import simple_websocket
from live_servers import start_server, stop_server

pytestmark = pytest.mark.live

DICOM_JSON = "application/dicom+json"
HEADERS = {"Content-Type": DICOM_JSON, "Accept": DICOM_JSON}
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
TXN = "1.2.826.0.1.3680043.10.1011.88.7"
#: How long a test waits for an event report it expects (never a timing assertion: the upper bound of a wait).
WAIT = 20.0


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def workitem(uid: str, station: str) -> dict[str, Any]:
    from test_workitems import workitem as dataset  # the unit tests' complete creation dataset

    return dataset(uid, station=station)


PERFORMED = {"00741216": element("SQ", {
    "00404028": element("SQ"), "00404050": element("DT", "20260105093100"), "00404019": element("SQ"),
    "00404051": element("DT", "20260105100000"), "00404033": element("SQ"),
})}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two gunicorns of two workers each on one SQLite index and blob folder (as hosts behind a
    balancer), with a read deadline shorter than the channels stay idle."""
    shared = tmp_path_factory.mktemp("shared")
    env = {
        "DICOMWEB_BLOBSTORE_URL": str(shared / "blobs"),
        "DICOMWEB_DATABASE_URL": f"sqlite:///{shared / 'index.db'}",
        "DICOMWEB_EVENT_POLL_SECONDS": "0.1",
        "DICOMWEB_BODY_READ_TIMEOUT": "1",
    }
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(tmp_path_factory.mktemp(f"host-{name}"), workers=2, threads=4, env=env))
        yield servers
    finally:
        for server in servers:
            stop_server(server)


def channel(server, ae_title: str, headers: dict[str, str] | None = None) -> simple_websocket.Client:
    url = server.url.replace("http://", "ws://") + f"/v2/subscribers/{ae_title}"
    return simple_websocket.Client.connect(url, headers=headers)


def next_report(ws: simple_websocket.Client) -> tuple[str, int, str | None]:
    """(workitem UID, event type, state) of the next report; fails after WAIT seconds."""
    message = ws.receive(timeout=WAIT)
    assert message is not None, "no event report arrived"
    report = json.loads(message)
    state = report.get("00741000", {}).get("Value", [None])[0]
    return report["00001000"]["Value"][0], report["00001002"]["Value"][0], state


def create(url: str, uid: str, station: str = "CT1") -> None:
    response = requests.post(f"{url}/v2/workitems", data=json.dumps([workitem(uid, station)]), headers=HEADERS)
    assert response.status_code == 201, response.text


def change_state(url: str, uid: str, state: str) -> None:
    body = [{"00741000": element("CS", state), "00081195": element("UI", TXN)}]
    response = requests.put(f"{url}/v2/workitems/{uid}/state", data=json.dumps(body), headers=HEADERS)
    assert response.status_code == 200, response.text


def test_state_reports_reach_a_channel_on_another_host_in_order(hosts):
    a, b = hosts
    uid = "1.2.826.0.1.3680043.10.1011.99.1"
    ws = channel(a, "WATCHER")
    try:
        assert requests.post(f"{b.url}/v2/workitems/{GLOBAL}/subscribers/WATCHER").status_code == 201
        time.sleep(2.5)  # idle past the worker's 1 s read deadline: the channel must survive it
        create(b.url, uid)
        assert next_report(ws) == (uid, 1, "SCHEDULED")
        change_state(b.url, uid, "IN PROGRESS")
        assert next_report(ws) == (uid, 1, "IN PROGRESS")
        assert requests.post(f"{b.url}/v2/workitems/{uid}?{TXN}", data=json.dumps([PERFORMED]),
                             headers=HEADERS).status_code == 200
        change_state(b.url, uid, "COMPLETED")
        assert next_report(ws) == (uid, 1, "COMPLETED")  # the update in between was no state change
        assert requests.delete(f"{b.url}/v2/workitems/{GLOBAL}/subscribers/WATCHER").status_code == 200
        create(b.url, "1.2.826.0.1.3680043.10.1011.99.2")  # unsubscribed: no report of it
        marker = "1.2.826.0.1.3680043.10.1011.99.5"
        create(b.url, marker)
        assert requests.post(f"{b.url}/v2/workitems/{marker}/subscribers/WATCHER").status_code == 201
        # Reports arrive in commit order: the marker's initial report coming first proves none was
        # sent for the workitem created in between.
        assert next_report(ws) == (marker, 1, "SCHEDULED")
    finally:
        ws.close()


def test_a_filtered_global_subscription_receives_only_matches(hosts):
    a, b = hosts
    ws = channel(b, "CTONLY")
    try:
        url = f"{a.url}/v2/workitems/{FILTERED}/subscribers/CTONLY"
        subscribed = requests.post(url, params={"filter": "ScheduledStationNameCodeSequence.CodeValue=CT9"})
        assert subscribed.status_code == 201, subscribed.text
        create(a.url, "1.2.826.0.1.3680043.10.1011.99.3", station="MR9")
        create(a.url, "1.2.826.0.1.3680043.10.1011.99.4", station="CT9")
        # In commit order: the first report being the CT workitem's proves the MR one was not sent.
        assert next_report(ws) == ("1.2.826.0.1.3680043.10.1011.99.4", 1, "SCHEDULED")
    finally:
        ws.close()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One worker of four threads holding at most two channels."""
    server = start_server(tmp_path_factory.mktemp("small"), workers=1, threads=4,
                          env={"DICOMWEB_MAX_EVENT_CHANNELS": "2"})
    yield server
    stop_server(server)


def test_a_process_holds_a_bounded_number_of_channels_and_still_answers(small):
    first, second = channel(small, "ONE"), channel(small, "TWO")
    try:
        with pytest.raises(simple_websocket.ConnectionError) as refused:
            channel(small, "THREE")
        assert refused.value.status_code == 503
        assert requests.get(f"{small.url}/v2/workitems", timeout=10).status_code == 204  # threads left for requests
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + WAIT
    while True:  # the closed channels are given back
        try:
            channel(small, "THREE").close()
            break
        except simple_websocket.ConnectionError:
            assert time.monotonic() < deadline, "closed channels were not given back"
            time.sleep(0.2)


def test_the_upgrade_needs_a_token_with_read(tmp_path_factory):
    from auth_fixtures import AUDIENCE, IdentityProvider

    provider = IdentityProvider()
    env = {"DICOMWEB_AUTH_AUTHORITY": provider.issuer, "DICOMWEB_AUTH_AUDIENCE": AUDIENCE,
           "DICOMWEB_AUTH_ALLOW_HTTP": "1"}
    server = start_server(tmp_path_factory.mktemp("auth"), workers=1, threads=4, env=env)
    try:
        with pytest.raises(simple_websocket.ConnectionError) as anonymous:
            channel(server, "WATCHER")
        assert anonymous.value.status_code == 401
        token = provider.token(roles=["globalAdmin"], sub="watcher", exp=int(time.time()) + 600)
        ws = channel(server, "WATCHER", headers={"Authorization": f"Bearer {token}"})
        ws.close()
    finally:
        stop_server(server)
        provider.stop()


def test_a_stopping_server_ends_its_channels_and_a_vanished_client_frees_its_channel(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("stopping"), workers=1, threads=4,
                          env={"DICOMWEB_MAX_EVENT_CHANNELS": "1"})
    try:
        vanished = channel(server, "GONE")
        vanished.sock.shutdown(socket.SHUT_RDWR)  # no close frame: the server finds the connection gone
        deadline = time.monotonic() + WAIT
        while True:  # its one channel slot comes back
            try:
                ws = channel(server, "STAYS")
                break
            except simple_websocket.ConnectionError:
                assert time.monotonic() < deadline, "a vanished client's channel was never freed"
                time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(simple_websocket.ConnectionClosed) as closed:  # by the server, not left open
            ws.receive(timeout=WAIT)
        assert closed.value.reason == 1001  # going away
        assert server.process.wait(timeout=WAIT) == 0  # not held until graceful_timeout, not killed
    finally:
        stop_server(server)
