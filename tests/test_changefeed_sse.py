"""The streaming change feed (GET /changefeed, Accept: text/event-stream): the event format (each
entry's data exactly as the JSON feed of that version gives it), where a stream starts
(Last-Event-ID, v1 offset, v2 startTime, else live), catching up from the index in pages and
joining the live entries without gap or duplicate, keep-alives, the per-process bound (503),
the end of a stream on the server's stop and after its longest duration, HEAD, and the same
auth, audit, CORS and partitions as the JSON feed. On SQLite + local disk and PostgreSQL + S3.

Streams are read through the Flask test client (an unbuffered response, iterated); a reader
waits at most WAIT seconds for what must come (a keep-alive every 0.2 s keeps it turning).
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from auth_fixtures import bearer
from dicom_factory import make_instance, to_bytes
from sse_client import Block, blocks

from dicomserver import changefeed_stream, close_app, create_app
from dicomserver.settings import SERVER_STOPPING

SSE = {"Accept": "text/event-stream"}
DICOM = {"Content-Type": "application/dicom"}
#: The longest a test waits for something that must happen (it never does when all is well).
WAIT = 30.0
ORIGIN = "https://viewer.example.org"


@pytest.fixture
def app(settings, tmp_path):
    app = create_app(dataclasses.replace(
        settings, changefeed_poll_seconds=0.05, changefeed_heartbeat_seconds=0.2, operations_runner=False,
        audit_log=str(tmp_path / "audit.jsonl"),
    ))
    app.config["TESTING"] = True
    yield app
    close_app(app)


def hub_of(app) -> changefeed_stream.ChangeFeedHub:
    return app.extensions["dicomserver-changefeed"]


def store(client, count: int = 1, url: str = "/v2/studies") -> None:
    for _ in range(count):
        assert client.post(url, data=to_bytes(make_instance()), headers=DICOM).status_code == 200


class Reader:
    """The blocks of one open stream."""

    def __init__(self, response) -> None:
        self.response = response
        self.blocks = blocks(response.response)

    def block(self) -> Block:
        return next(self.blocks)

    def events(self, count: int) -> list[Block]:
        """The next `count` events (blocks with data), keep-alives between them skipped."""
        found: list[Block] = []
        deadline = time.monotonic() + WAIT
        while len(found) < count:
            assert time.monotonic() < deadline, f"only {len(found)} of {count} events came"
            block = self.block()
            if block.data is not None:
                found.append(block)
        return found

    def rest(self) -> list[Block]:
        """The blocks until the server ends the stream (fails if it has not within WAIT seconds)."""
        found: list[Block] = []
        deadline = time.monotonic() + WAIT
        for block in self.blocks:
            found.append(block)
            assert time.monotonic() < deadline, "the stream did not end"
        return found


@contextmanager
def stream(client, url: str, **headers: str) -> Iterator[Reader]:
    response = client.get(url, headers={**SSE, **headers}, buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    try:
        yield Reader(response)
    finally:
        response.close()


def sequences(events: list[Block]) -> list[int]:
    return [int(event.id or "") for event in events]


@pytest.mark.parametrize("version, start", [("v1", "offset=0"), ("v2", "startTime=2000-01-01T00:00:00Z")])
@pytest.mark.parametrize("include", ["", "&includeMetadata=false"])
def test_each_entry_is_an_event_whose_data_is_the_json_feed_entry(client, version, start, include):
    store(client, 2)
    feed = client.get(f"/{version}/changefeed?{include}", headers={"Accept": "application/json"}).json
    assert [entry["sequence"] for entry in feed] == [1, 2]
    assert ("metadata" in feed[0]) is (include == "")
    with stream(client, f"/{version}/changefeed?{start}{include}") as reader:
        assert reader.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert reader.response.headers["Cache-Control"] == "no-cache"
        assert reader.response.headers["X-Accel-Buffering"] == "no"
        first = reader.block()
        assert (first.fields, first.retry) == (["retry"], changefeed_stream.RETRY_MS)
        events = reader.events(2)
    for event, entry in zip(events, feed, strict=True):
        assert event.fields == ["id", "data"]  # one event type (message): EventSource's onmessage sees all
        assert event.id == str(entry["sequence"])
        assert event.data == json.dumps(entry)


def test_last_event_id_resumes_after_it_and_wins_over_offset(client):
    store(client, 3)
    with stream(client, "/v1/changefeed?offset=0", **{"Last-Event-ID": "2"}) as reader:
        assert sequences(reader.events(1)) == [3]
    with stream(client, "/v2/changefeed?startTime=2000-01-01T00:00:00Z", **{"Last-Event-ID": "1"}) as reader:
        assert sequences(reader.events(2)) == [2, 3]
    with stream(client, "/v1/changefeed?offset=1") as reader:
        assert sequences(reader.events(2)) == [2, 3]


def test_without_a_position_a_stream_has_only_new_entries(client):
    store(client, 2)
    with stream(client, "/v2/changefeed") as reader:
        reader.block()  # retry: the answer has started, after the newest entry
        store(client)
        assert sequences(reader.events(1)) == [3]
        store(client, 2)
        assert sequences(reader.events(2)) == [4, 5]


def test_start_time_after_every_entry_is_live(client):
    store(client, 2)
    with stream(client, "/v2/changefeed?startTime=2999-01-01T00:00:00Z") as reader:
        reader.block()
        store(client)
        assert sequences(reader.events(1)) == [3]


def test_catching_up_in_pages_then_live_without_gap_or_duplicate(client, app, monkeypatch):
    monkeypatch.setattr(changefeed_stream, "PAGE", 2)
    monkeypatch.setattr(changefeed_stream, "WINDOW_ENTRIES", 3)
    store(client, 5)
    writer = threading.Thread(target=store, args=(app.test_client(), 6))
    with stream(client, "/v1/changefeed?offset=0") as reader:
        caught_up = reader.events(5)
        writer.start()  # while the stream reads
        live = reader.events(6)
        writer.join()
        after = [reader.block() for _ in range(3)]  # nothing more: keep-alives only
    assert sequences(caught_up + live) == list(range(1, 12))
    assert all(block.data is None and block.comments == ["keep-alive"] for block in after)


def test_a_stream_behind_the_window_reads_the_index_by_its_own_cursor(client, app, monkeypatch):
    monkeypatch.setattr(changefeed_stream, "PAGE", 2)
    monkeypatch.setattr(changefeed_stream, "WINDOW_ENTRIES", 3)
    hub = hub_of(app)
    with stream(client, "/v2/changefeed") as reader:
        reader.block()
        store(client, 8)  # the stream is not read meanwhile: the window turns over
        deadline = time.monotonic() + WAIT
        while hub._last < 8:
            assert time.monotonic() < deadline, "the poller did not read the new entries"
            time.sleep(0.02)
        assert hub._floor is not None and hub._floor > 0  # entry 1 has left the window
        assert sequences(reader.events(8)) == list(range(1, 9))


def test_a_keep_alive_comment_when_nothing_happens(client):
    with stream(client, "/v2/changefeed") as reader:
        reader.block()
        block = reader.block()
    assert (block.fields, block.comments) == ([], ["keep-alive"])


def test_one_poller_per_process_whatever_the_streams(client, app):
    store(client)
    with stream(client, "/v1/changefeed?offset=0") as a, stream(client, "/v2/changefeed") as b, \
            stream(client, "/v1/changefeed") as c:
        assert sequences(a.events(1)) == [1]
        store(client)
        for reader in (a, b, c):
            assert sequences(reader.events(1)) == [2]
        assert hub_of(app)._streams == 3
        assert [t.name for t in threading.enumerate()].count("changefeed-poller") == 1


def test_streams_beyond_the_bound_are_503_with_retry_after(client, app, monkeypatch):
    hub = hub_of(app)
    monkeypatch.setattr(hub, "max_streams", 1)
    with stream(client, "/v2/changefeed") as reader:
        reader.block()
        refused = client.get("/v2/changefeed", headers=SSE)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == str(changefeed_stream.BUSY_RETRY_SECONDS)
        assert "1 change-feed streams" in refused.get_data(as_text=True)
        assert client.get("/v2/changefeed").status_code == 200  # the JSON feed is not bounded
    assert hub._streams == 0  # closing the answer gave its slot back
    with stream(client, "/v2/changefeed") as reader:
        reader.block()


@pytest.mark.parametrize("url, headers, words", [
    ("/v2/changefeed", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ("/v2/changefeed?offset=3", {}, "startTime, not at an offset"),
    ("/v1/changefeed?endTime=2030-01-01T00:00:00Z", {}, "endTime"),
    ("/v2/changefeed?includeMetadata=yes", {}, "includeMetadata"),
    ("/v2/changefeed?startTime=yesterday", {}, "startTime"),
])
def test_malformed_positions_are_400_and_take_no_slot(client, app, url, headers, words):
    answer = client.get(url, headers={**SSE, **headers})
    assert answer.status_code == 400
    assert words in answer.get_data(as_text=True)
    assert hub_of(app)._streams == 0


@pytest.mark.parametrize("accept", [
    None, "application/json", "*/*", "application/json, text/event-stream",
    "text/event-stream;q=0.5, application/json;q=0.9", "text/event-stream;q=0",
])
def test_other_accept_values_keep_the_json_feed(client, accept):
    store(client)
    answer = client.get("/v1/changefeed", headers={"Accept": accept} if accept else {})
    assert answer.status_code == 200 and answer.content_type == "application/json"
    assert [entry["sequence"] for entry in answer.json] == [1]


def test_head_answers_the_headers_and_opens_no_stream(client, app):
    answer = client.head("/v2/changefeed", headers=SSE)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/event-stream")
    assert hub_of(app)._streams == 0


def test_streams_end_when_the_server_stops(client, app):
    stopping = threading.Event()  # what gunicorn_worker.Worker offers, set on SIGTERM
    response = client.get("/v2/changefeed", headers=SSE, environ_base={SERVER_STOPPING: stopping}, buffered=False)
    reader = Reader(response)
    reader.block()
    stopping.set()
    rest = reader.rest()  # the poller sees the signal within its interval
    response.close()
    assert all(block.data is None for block in rest)
    assert client.get("/v2/changefeed", headers=SSE).status_code == 503  # none starts while stopping


def test_a_stream_ends_after_its_longest_duration(app_factory):
    app = app_factory(changefeed_max_stream_seconds=0.3, changefeed_heartbeat_seconds=0.1)
    client = app.test_client()
    with stream(client, "/v2/changefeed") as reader:
        rest = reader.rest()
    assert rest[0].retry == changefeed_stream.RETRY_MS and all(block.data is None for block in rest[1:])
    assert hub_of(app)._streams == 0


def test_auth_cors_and_audit_as_the_json_feed(app_factory, auth_settings, identity_provider, tmp_path):
    audit_log = tmp_path / "audit.jsonl"
    app = app_factory(**auth_settings, cors_origins=(ORIGIN,), audit_log=str(audit_log), changefeed_heartbeat_seconds=0.2)
    client = app.test_client()
    reader_token = bearer(identity_provider.token(roles=["globalReader"]))
    assert client.get("/v2/changefeed", headers=SSE).status_code == 401
    auditor = bearer(identity_provider.token(roles=["globalAuditor"]))
    assert client.get("/v2/changefeed", headers={**SSE, **auditor}).status_code == 403
    preflight = client.options("/v2/changefeed", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    })
    allowed = {name.strip().lower() for name in preflight.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "last-event-id"} <= allowed
    with stream(client, "/v2/changefeed", Origin=ORIGIN, **reader_token) as reader:
        assert reader.response.headers["Access-Control-Allow-Origin"] == ORIGIN
        reader.block()
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    assert [(r["route"], r["action"], r["status"]) for r in records if r["status"] == 200] == [
        ("/v2/changefeed", "read", 200)
    ]


def test_entries_name_their_partition_as_the_json_feed(app_factory):
    app = app_factory(partitions=True, changefeed_heartbeat_seconds=0.2)
    client = app.test_client()
    store(client, url="/v2/partitions/site-a/studies")
    store(client, url="/v2/partitions/Microsoft.Default/studies")
    feed = client.get("/v2/changefeed").json
    with stream(client, "/v2/changefeed", **{"Last-Event-ID": "0"}) as reader:
        events = reader.events(2)
    assert [json.loads(event.data or "") for event in events] == feed
    assert [entry["partitionName"] for entry in feed] == ["site-a", "Microsoft.Default"]


def test_the_openapi_document_describes_the_stream_and_its_refusals(client, app, monkeypatch):
    from test_openapi import _operation, check_answer

    doc = client.get("/openapi.json").json
    operation = _operation(doc, app, "GET", "/v2/changefeed")
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert "#/components/parameters/changefeed.Last-Event-ID" in [p["$ref"] for p in operation["parameters"]]
    check_answer(doc, operation, client.get("/v2/changefeed", headers={**SSE, "Last-Event-ID": "x"}))
    monkeypatch.setattr(hub_of(app), "max_streams", 0)
    check_answer(doc, operation, client.get("/v2/changefeed", headers=SSE))
