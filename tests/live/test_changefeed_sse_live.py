"""The streaming change feed on a real gunicorn with two workers.

Several SSE clients, on both workers, receive every entry of STOWs and a DELETE made over
HTTP once and in order; a client that disconnects and reconnects with Last-Event-ID gets
what it missed, then live entries, without gap or duplicate; the server notices a client that
left (its slot comes back); each process reads the index once per interval whatever its
number of streams (one poller per process, counted in /metrics); ordinary requests answer
while streams are open; and SIGTERM ends the streams so the workers exit at once, well within
gunicorn's graceful timeout.
"""
from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import psutil
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import LiveServer, start_server, stop_server
from prometheus_client.parser import text_string_to_metric_families
from sse_client import Block, blocks

pytestmark = pytest.mark.live

POLL_SECONDS = 0.2
ENV = {
    "DICOMWEB_CHANGEFEED_POLL_SECONDS": str(POLL_SECONDS),
    "DICOMWEB_CHANGEFEED_HEARTBEAT_SECONDS": "0.5",
    "DICOMWEB_CHANGEFEED_MAX_STREAMS": "4",
    "DICOMWEB_MAX_UPLOADS": "2",  # with 8 threads: 2 uploads + 4 streams leave 2 for everything else
}
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
#: The longest a test waits for what must happen (never reached when all is well).
WAIT = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("changefeed-sse"), workers=2, threads=8, env=ENV)
    yield server
    stop_server(server)


class Busy(Exception):
    """The worker that took the connection serves DICOMWEB_CHANGEFEED_MAX_STREAMS streams already."""


class SseClient:
    """An EventSource-like reader in a thread: the events it received, and when its stream ended."""

    def __init__(self, server: LiveServer, path: str = "/v2/changefeed", last_event_id: str | None = None) -> None:
        parts = urlsplit(server.url)
        self.server_port = parts.port
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", path, headers=headers)
        self.sock = self.connection.sock
        self.local_port = self.sock.getsockname()[1]
        self.response = self.connection.getresponse()
        if self.response.status == 503:  # that worker serves its most streams (some may be closing)
            self.connection.close()
            raise Busy(self.response.getheader("Retry-After"))
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        self.events: list[Block] = []
        self.ended = False
        #: Whether the server ended the answer (the last chunk came), rather than the connection breaking.
        self.ended_by_server = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for block in blocks(iter(lambda: self.response.read1(65536), b"")):
                if block.data is not None:
                    with self._changed:
                        self.events.append(block)
                        self._changed.notify_all()
            self.ended_by_server = True
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by the test
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def wait_for(self, count: int) -> list[int]:
        """The sequences received, once there are at least `count` (fails after WAIT seconds)."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.events) >= count or self.ended, WAIT), (
                f"{len(self.events)} of {count} events came"
            )
        return self.sequences()

    def wait_for_end(self) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.ended, WAIT), "the stream did not end"

    def sequences(self) -> list[int]:
        return [int(event.id or "") for event in self.events]

    def worker(self, server: LiveServer) -> int:
        """The pid of the worker holding this stream's connection."""
        for pid in server.pids()[1:]:
            for conn in psutil.Process(pid).net_connections("tcp"):
                if conn.laddr and conn.laddr.port == self.server_port and conn.raddr and conn.raddr.port == self.local_port:
                    return pid
        raise AssertionError("no worker holds the stream's connection")

    def close(self) -> None:
        """Leave as a browser tab does: the connection just goes."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the reader thread sees the end, then the socket closes
        except OSError:
            pass
        self._thread.join(timeout=WAIT)
        self.connection.close()


def metric(server: LiveServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=WAIT).text
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == name
    )


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stow(server: LiveServer, count: int) -> list:
    instances = [make_instance() for _ in range(count)]
    for ds in instances:
        assert requests.post(server.url + "/v2/studies", data=to_bytes(ds), headers=DICOM, timeout=WAIT).status_code == 200
    return instances


def feed(server: LiveServer) -> list[dict]:
    entries = requests.get(server.url + "/v1/changefeed?offset=0&limit=100&includeMetadata=false", timeout=WAIT).json()
    return entries


def open_client(server: LiveServer) -> SseClient:
    """A stream, retried while the worker that takes it is full (streams closed by a test end on the
    server at its next keep-alive)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return SseClient(server)
        except Busy:
            assert time.monotonic() < deadline, "no worker had room for a stream"
            time.sleep(0.2)


def open_on_both_workers(server: LiveServer, extra: int = 0) -> list[SseClient]:
    """One stream on each worker (a worker takes whichever connection its event loop wins, so a
    stream that lands where one is already open is closed and another opened), then `extra` more
    anywhere."""
    kept: dict[int, SseClient] = {}
    for _ in range(40):
        client = open_client(server)
        worker = client.worker(server)
        if worker in kept:
            client.close()
        else:
            kept[worker] = client
        if len(kept) == 2:
            return list(kept.values()) + [open_client(server) for _ in range(extra)]
    for client in kept.values():
        client.close()
    raise AssertionError("40 streams in a row went to the same worker")


def test_every_client_gets_every_entry_once_in_order_and_one_poller_per_process(server):
    start = len(feed(server))
    clients = open_on_both_workers(server, extra=2)
    try:
        wait_until(lambda: metric(server, "dicomweb_changefeed_streams") == len(clients), "the streams are not counted")
        assert len({client.worker(server) for client in clients}) == 2
        assert metric(server, "dicomweb_changefeed_pollers") == 2  # one per process, whatever the streams

        instances = stow(server, 3)
        gone = instances[1]
        url = f"{server.url}/v2/studies/{gone.StudyInstanceUID}/series/{gone.SeriesInstanceUID}/instances/{gone.SOPInstanceUID}"
        assert requests.delete(url, timeout=WAIT).status_code == 204
        assert requests.get(server.url + "/healthz", timeout=WAIT).status_code == 200  # ordinary requests answer
        assert requests.get(server.url + "/v2/studies", timeout=WAIT).status_code == 200
        entries = feed(server)[start:]
        assert [entry["action"] for entry in entries] == ["create", "create", "create", "delete"]
        expected = [entry["sequence"] for entry in entries]
        for client in clients:
            assert client.wait_for(len(expected)) == expected

        # Idle streams: each process reads the index once per interval, not once per stream.
        polls, began = metric(server, "dicomweb_changefeed_polls_total"), time.monotonic()
        time.sleep(10 * POLL_SECONDS)
        read = metric(server, "dicomweb_changefeed_polls_total") - polls
        most = 2 * ((time.monotonic() - began) / POLL_SECONDS + 2)  # two processes; at most one read an interval
        assert 0 < read <= most, (read, most, len(clients))
        for client in clients:
            assert client.sequences() == expected  # nothing twice
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: metric(server, "dicomweb_changefeed_streams") == 0, "the server did not notice the clients left")


def test_reconnecting_with_last_event_id_has_no_gap_and_no_duplicate(server):
    first = open_client(server)
    other = open_client(server)
    try:
        stow(server, 2)
        seen = first.wait_for(2)
        first.close()
        stow(server, 3)  # while it is away
        again = SseClient(server, "/v1/changefeed", last_event_id=str(seen[-1]))
        try:
            missed = again.wait_for(3)
            stow(server, 1)
            both = again.wait_for(4)
            assert seen + both == other.wait_for(6)
            assert both[:3] == missed and both == list(range(seen[-1] + 1, seen[-1] + 5))
        finally:
            again.close()
    finally:
        other.close()


def test_sigterm_ends_the_streams_and_the_workers_exit_at_once(tmp_path):
    server = start_server(tmp_path / "stopping", workers=2, threads=8, env=ENV)
    clients: list[SseClient] = []
    try:
        clients += open_on_both_workers(server)
        stow(server, 1)
        for client in clients:
            assert len(client.wait_for(1)) == 1
        server.process.send_signal(signal.SIGTERM)
        for client in clients:
            client.wait_for_end()
        # Each answer was ended by its worker (the last chunk sent), not cut when gunicorn killed a
        # worker still holding its streams at the end of the graceful timeout.
        assert all(client.ended_by_server for client in clients)
        server.process.wait(timeout=WAIT)
        assert server.process.returncode == 0
    finally:
        for client in clients:
            client.close()
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-3000:]
