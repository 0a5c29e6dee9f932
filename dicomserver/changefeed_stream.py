"""The change feed as Server-Sent Events (WHATWG HTML §9.2): one reader per process, any number of streams.

A stream is `GET /v{n}/changefeed` with `Accept: text/event-stream`. Each entry is one event,
`id: <sequence>` and `data: <the entry's JSON>` exactly as the JSON feed of that version
returns it (`includeMetadata` included), of the default type `message` (EventSource's
`onmessage` sees every entry; the action is in the data). It starts after the sequence the
client names (`Last-Event-ID`, which a reconnecting EventSource sends; else v1's `offset`, the
last sequence seen, or v2's `startTime`; else after the newest entry: live only), and goes on
with entries as they are committed; a `: keep-alive` comment after DICOMWEB_CHANGEFEED_
HEARTBEAT_SECONDS of silence keeps proxies from closing it and shows a dead client to the
server (its write fails, or times out after DICOMWEB_BODY_READ_TIMEOUT).

Why one poller: clients must not each ask the index every second. `ChangeFeedHub` (one per
process) runs a thread while streams are open that reads `sequence > last` every
DICOMWEB_CHANGEFEED_POLL_SECONDS into a bounded window of recent entries and wakes every
stream (a condition variable); it stops when no stream has been open for IDLE_SECONDS.

Why no gap or duplicate: sequences are MAX+1 under the index's single write lock, held until
the commit (index/connection.py), so n+1 never becomes visible before n and the poller's reads
`sequence > last` see every entry once, in order. The window holds every entry after `floor`.
A stream keeps a cursor (the last sequence it sent): at or past `floor` it takes the entries
after its cursor from the window; behind it (a start from an old sequence, or a stream whose
client reads slower than the window turns over) it reads pages from the index after its own
cursor until it has caught up. Either way the next entry is the first one after the cursor,
so even a gap in the sequences would not lose or repeat one. Memory is the window (bounded in
entries and in metadata bytes) plus one page per stream.

Each stream holds a server thread: a process serves at most DICOMWEB_CHANGEFEED_MAX_STREAMS
(503 with Retry-After beyond), ends each after DICOMWEB_CHANGEFEED_MAX_STREAM_SECONDS (the
client reconnects with Last-Event-ID, possibly to a less busy worker), and ends all of them
when the server stops (the event the worker offers under settings.SERVER_STOPPING), so
a worker exits within gunicorn's graceful timeout.
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator

import peewee as pw

from .changes import Arg, entry_json, parse_bool, parse_offset, parse_time
from .errors import BadRequest, ServiceBusy
from .index import FeedEntry, Index
from .matching import parse_count
from .metrics import CHANGEFEED_POLLERS, CHANGEFEED_POLLS, CHANGEFEED_STREAMS
from .settings import Settings

log = logging.getLogger(__name__)

#: The most entries one read takes (the poller's and a stream's catching up); a full read is
#: followed by the next at once.
PAGE = 100
#: The window of recent entries the poller keeps for the streams: at most this many, and this
#: many bytes of their DICOM JSON (a stream behind it reads the index itself).
WINDOW_ENTRIES = 1000
WINDOW_BYTES = 8 * 1024 * 1024
#: How long the poller runs on after the last stream closed (a reconnecting client finds it).
IDLE_SECONDS = 5.0
#: The reconnection delay advised to EventSource clients (the `retry:` field), in milliseconds.
RETRY_MS = 3000
#: Retry-After of the 503 when the process serves DICOMWEB_CHANGEFEED_MAX_STREAMS already.
BUSY_RETRY_SECONDS = 5
#: The answer's headers: no cache may keep it, and nginx must not buffer it.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

KEEP_ALIVE = b": keep-alive\n\n"


class ChangeFeedHub:
    """The process' poller of new change-feed entries and the streams it wakes."""

    def __init__(self, index: Index, settings: Settings) -> None:
        self.index = index
        self.poll_seconds = settings.changefeed_poll_seconds
        self.max_streams = settings.changefeed_max_streams
        self._reset()

    def _reset(self) -> None:
        """The state of a process without streams (at start, and in a forked child)."""
        self._cond = threading.Condition()
        #: Entries read by the poller, sequence ascending: every entry after `_floor`.
        self._window: list[FeedEntry] = []
        self._sequences: list[int] = []
        self._window_bytes = 0
        #: None until the poller's first read (streams wait for it).
        self._floor: int | None = None
        self._last = 0
        self._streams = 0
        self._idle_since = 0.0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._wake = threading.Event()
        #: The server's stop signals (SERVER_STOPPING), looked at by the poller.
        self._stop_signals: list[threading.Event] = []
        #: Set when the process stops: every stream ends, none starts.
        self.closed = False

    # -- streams ---------------------------------------------------------------
    def join(self, stop_signal: threading.Event | None = None) -> None:
        """Take one of the process' stream slots (503 when none is free), start the poller."""
        if self._pid != os.getpid():  # forked from a process with streams: none of its state holds here
            self._reset()
        with self._cond:
            if self.closed or self._streams >= self.max_streams:
                why = "the server is stopping" if self.closed else (
                    f"this server process already serves {self.max_streams} change-feed streams"
                )
                raise ServiceBusy(f"{why}; retry shortly", headers={"Retry-After": str(BUSY_RETRY_SECONDS)})
            self._streams += 1
            if stop_signal is not None and stop_signal not in self._stop_signals:
                self._stop_signals.append(stop_signal)
            if self._thread is None:
                self._floor, self._window, self._sequences, self._window_bytes = None, [], [], 0
                self._wake.clear()
                self._thread = threading.Thread(target=self._poll, name="changefeed-poller", daemon=True)
                self._thread.start()
        CHANGEFEED_STREAMS.inc()

    def leave(self) -> None:
        with self._cond:
            self._streams -= 1
            if not self._streams:
                self._idle_since = time.monotonic()
        CHANGEFEED_STREAMS.dec()

    def after(self, cursor: int) -> list[FeedEntry] | None:
        """Up to PAGE entries after `cursor` from the window ([] when there are none yet), or
        None when the window does not reach back to it (the stream reads the index). The
        caller holds `_cond`."""
        if self._floor is None or cursor >= self._last:
            return []
        if cursor < self._floor:
            return None
        start = bisect.bisect_right(self._sequences, cursor)
        return self._window[start:start + PAGE]

    def close(self) -> None:
        """End every stream and the poller (the process is stopping; close_app)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # -- the poller ------------------------------------------------------------
    def _poll(self) -> None:
        CHANGEFEED_POLLERS.inc()
        try:
            while self._still_needed():
                full = False
                try:
                    full = self._read()
                except pw.DatabaseError as exc:  # the index is down: streams send keep-alives meanwhile
                    log.warning("change feed: reading new entries failed (%s); trying again", exc)
                except Exception:
                    log.exception("change feed: reading new entries failed; trying again")
                if not full:
                    self._wake.wait(self.poll_seconds)
        finally:
            CHANGEFEED_POLLERS.dec()

    def _still_needed(self) -> bool:
        """Whether to poll again; clears `_thread` (under the lock) when not, so the next
        stream starts a new poller."""
        if any(signal.is_set() for signal in self._stop_signals):
            self.close()
        with self._cond:
            idle = not self._streams and time.monotonic() - self._idle_since >= IDLE_SECONDS
            if self.closed or idle:
                self._thread = None
                return False
            return True

    def _read(self) -> bool:
        """One read of the entries after the last one read; True when it was a full page."""
        with connected(self.index):
            if self._floor is None:
                newest = self.index.changes(limit=1, newest_first=True)
                with self._cond:
                    self._floor = self._last = newest[0].sequence if newest else 0
                    self._cond.notify_all()
            entries = self.index.changes(after_sequence=self._last, limit=PAGE)
        CHANGEFEED_POLLS.inc()
        if not entries:
            return False
        with self._cond:
            self._window += entries
            self._sequences += [entry.sequence for entry in entries]
            self._window_bytes += sum(len(entry.current_metadata or "") for entry in entries)
            self._last = entries[-1].sequence
            drop = 0
            while len(self._window) - drop > WINDOW_ENTRIES or (
                self._window_bytes > WINDOW_BYTES and drop < len(self._window) - 1
            ):
                self._window_bytes -= len(self._window[drop].current_metadata or "")
                drop += 1
            if drop:
                self._floor = self._window[drop - 1].sequence
                del self._window[:drop], self._sequences[:drop]
            self._cond.notify_all()
        return len(entries) == PAGE


class connected:
    """A connection for reads outside a request (the poller) or after its teardown (a stream):
    taken for the read and given back, never held while a client is waited for."""

    def __init__(self, index: Index) -> None:
        self.index, self.opened = index, False

    def __enter__(self) -> None:
        if self.index.db.is_closed():
            self.index.connect()
            self.opened = True

    def __exit__(self, *exc: object) -> None:
        if self.opened:
            self.index.close()


class EventStream:
    """One client's stream: an iterable of SSE bytes whose close() (the server calls it when the
    stream ends or the client is gone) gives the stream slot back."""

    def __init__(
        self, hub: ChangeFeedHub, settings: Settings, cursor: int, include_metadata: bool, base_url: str,
        partitioned: bool,
    ) -> None:
        self.hub, self.cursor = hub, cursor
        self.include_metadata, self.base_url, self.partitioned = include_metadata, base_url, partitioned
        self.heartbeat = settings.changefeed_heartbeat_seconds
        limit = settings.changefeed_max_stream_seconds
        self.deadline = time.monotonic() + limit if limit > 0 else float("inf")
        self._events = self._generate()
        self._open = True

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        if self._open:
            self._open = False
            self._events.close()
            self.hub.leave()

    def _generate(self) -> Generator[bytes, None, None]:
        yield f"retry: {RETRY_MS}\n\n".encode()  # sent at once: the client sees the answer start
        hub, cond = self.hub, self.hub._cond
        quiet_until = time.monotonic() + self.heartbeat
        while True:
            with cond:
                while True:
                    now = time.monotonic()
                    if hub.closed or now >= self.deadline:
                        return
                    entries = hub.after(self.cursor)
                    if entries is None or entries or now >= quiet_until:
                        break
                    cond.wait(min(quiet_until, self.deadline) - now)
            if entries is None:  # behind the window: a page from the index, after this stream's cursor
                entries = self._read_page()
                if entries is None:
                    return
                if not entries:  # nothing there after all (never expected): wait for the poller
                    with cond:
                        cond.wait(hub.poll_seconds)
                    continue
            if entries:
                self.cursor = entries[-1].sequence
                yield b"".join(self._event(entry) for entry in entries)
            else:
                yield KEEP_ALIVE
            quiet_until = time.monotonic() + self.heartbeat

    def _read_page(self) -> list[FeedEntry] | None:
        """The next page after the cursor from the index; None when it cannot be read (the stream
        ends and the client reconnects with its Last-Event-ID)."""
        try:
            with connected(self.hub.index):
                return self.hub.index.changes(after_sequence=self.cursor, limit=PAGE)
        except pw.DatabaseError as exc:
            log.warning("change feed: a stream could not read the index (%s); it ends", exc)
            return None

    def _event(self, entry: FeedEntry) -> bytes:
        data = json.dumps(entry_json(entry, self.include_metadata, self.base_url, self.partitioned))
        return f"id: {entry.sequence}\ndata: {data}\n\n".encode()


def open_stream(
    hub: ChangeFeedHub, settings: Settings, api_version: str, arg: Arg, last_event_id: str | None, base_url: str,
    *, partitioned: bool = False, stop_signal: threading.Event | None = None,
) -> EventStream:
    """A stream as the request asks (400 for a malformed parameter, 503 when the process serves
    its most streams); where it starts is decided before the answer starts."""
    include_metadata = parse_bool("includeMetadata", arg("includeMetadata"), True)
    cursor = start_after(hub.index, api_version, arg, last_event_id)
    hub.join(stop_signal)
    return EventStream(hub, settings, cursor, include_metadata, base_url, partitioned)


def start_after(index: Index, api_version: str, arg: Arg, last_event_id: str | None) -> int:
    """The sequence a stream starts after: Last-Event-ID (both versions), v1's `offset`, the
    entry before the first at or after v2's `startTime`, or the newest entry."""
    if arg("endTime") is not None:
        raise BadRequest("endTime cannot end a stream; read a time window from the JSON change feed")
    if api_version != "v1" and arg("offset") is not None:
        raise BadRequest("a v2 stream starts after Last-Event-ID or at startTime, not at an offset")
    start = parse_time("startTime", arg("startTime")) if api_version != "v1" else None
    if last_event_id is not None:
        return parse_count("Last-Event-ID", last_event_id, minimum=0, clamp=True)
    if api_version == "v1" and arg("offset") is not None:
        return parse_offset(arg("offset"))
    with connected(index):
        newest = index.changes(limit=1, newest_first=True)  # first: an entry committed after it is sent
        first = index.changes(start=start, limit=1) if start is not None else []
    if first:
        return first[0].sequence - 1
    return newest[0].sequence if newest else 0
