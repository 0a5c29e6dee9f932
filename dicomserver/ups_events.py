"""UPS event channels (PS3.18 §11.13, Open Event Channel): a WebSocket per AE title, fed
from the event reports in the index.

An event is written to the index (`ups_event`, one row per subscribed AE title) in the
transaction of the change it reports (workitems.state_changed), by whichever process,
host or worker served that change. Each process that holds open channels runs ONE poller
thread (`EventHub`) that tails the table by sequence and hands each row to the channels
of its AE title in this process; a process without channels never polls. So an event
reaches a channel whatever worker or host accepted the WebSocket, and the database is
asked once per poll interval per process, not once per connection. Rows older than
EVENT_RETENTION are deleted by the pollers (every open channel read them long before).

A channel holds one server thread for its life (the WebSocket is served where the
upgrade request arrived), so a process serves at most DICOMWEB_MAX_EVENT_CHANNELS of
them (503 beyond): ordinary requests keep the other threads. The socket is taken out of
the worker's read/write deadlines (they are for requests); a dead peer is found by the
WebSocket ping every DICOMWEB_EVENT_PING_SECONDS instead.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
from typing import Any

import peewee as pw

from .errors import ServiceBusy
from .index.connection import utcnow

log = logging.getLogger(__name__)

#: How long event reports stay in the index (a poller reads them within its interval).
EVENT_RETENTION = dt.timedelta(minutes=10)
#: How often a poller deletes expired event reports.
PURGE_SECONDS = 60.0
#: How long a channel waits for an event before it looks whether its client is still there.
IDLE_SECONDS = 1.0
#: The WebSocket close code (RFC 6455 §7.4.1) a channel ends with when its server process stops.
GOING_AWAY = 1001


def reader_thread(target: Any) -> threading.Thread:
    """The WebSocket library's reader thread, as a daemon: a stopping process does not wait on it."""
    return threading.Thread(target=target, daemon=True)


class Channel:
    """One open event channel: the event reports (DICOM JSON text) waiting to be sent to its AE."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self.reports: queue.SimpleQueue[str] = queue.SimpleQueue()

    def next_report(self, timeout: float) -> str | None:
        try:
            return self.reports.get(timeout=timeout)
        except queue.Empty:
            return None


class EventHub:
    """The channels of this process and the one thread that feeds them from the index."""

    def __init__(self, index: Any, *, max_channels: int, poll_seconds: float) -> None:
        self.index = index
        self.max_channels = max_channels
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._channels: dict[str, list[Channel]] = {}
        self._count = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        #: Set when the server process is stopping: every channel ends (its client reconnects elsewhere).
        self.closing = threading.Event()
        #: The last event sequence this process has handed on (None until the poller starts).
        self._cursor: int | None = None

    def open(self, ae_title: str) -> Channel:
        """A channel for the AE; 503 when this process holds its maximum already."""
        with self._lock:
            if self._count >= self.max_channels:
                raise ServiceBusy(
                    f"this server process holds {self.max_channels} event channels already; retry shortly",
                    headers={"Retry-After": "5"},
                )
            self._start()
            if self._cursor is None:  # from the newest event on: what commits after this reaches the channel
                self._cursor = self.index.last_event_sequence()
            channel = Channel(ae_title)
            self._channels.setdefault(ae_title, []).append(channel)
            self._count += 1
            return channel

    def close(self, channel: Channel) -> None:
        with self._lock:
            channels = self._channels.get(channel.ae_title, [])
            if channel in channels:
                channels.remove(channel)
                self._count -= 1
            if not channels:
                self._channels.pop(channel.ae_title, None)

    def open_channels(self) -> int:
        return self._count

    def shut(self) -> None:
        """End every channel of this process soon (safe in a signal handler: it only sets a flag)."""
        self.closing.set()

    def stop(self) -> None:
        self.closing.set()
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _start(self) -> None:
        """Start the poller in this process (again after a fork), reading from the newest event on."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        if self._pid != os.getpid():  # a forked child holds none of its parent's channels (called under the lock)
            self._pid = os.getpid()
            self._channels, self._count, self._cursor = {}, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ups-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_purge = time.monotonic() + PURGE_SECONDS
        while not self._stop.is_set():
            if self._count:
                try:
                    self.index.connect()
                    self.poll()
                    if time.monotonic() >= next_purge:
                        next_purge = time.monotonic() + PURGE_SECONDS
                        self.index.purge_events(utcnow() - EVENT_RETENTION)
                except pw.OperationalError as exc:
                    log.warning("event channels: the index is unavailable (%s); trying again", exc)
                except Exception:
                    log.exception("event channels: reading event reports failed; trying again")
                finally:
                    self.index.close()
            else:
                with self._lock:
                    if not self._count:  # nobody listens: what commits until the next channel opens is not ours
                        self._cursor = None
            self._stop.wait(self.poll_seconds)

    def poll(self) -> int:
        """Hand the event reports committed since the last poll to this process' channels."""
        with self._poll_lock:  # one reader of the cursor at a time (the poller; tests call it too)
            return self._poll()

    def _poll(self) -> int:
        handed = 0
        while self._cursor is not None:
            rows = self.index.events_after(self._cursor)
            if not rows:
                return handed
            with self._lock:
                for row in rows:
                    for channel in self._channels.get(row.ae_title, ()):
                        channel.reports.put(row.payload)
                        handed += 1
                self._cursor = rows[-1].sequence
        return handed


def serve(ws: Any, hub: EventHub, channel: Channel) -> None:
    """Send the channel's event reports over the WebSocket until either side closes it.

    Messages from the client are read and dropped (PS3.18 defines none); the WebSocket
    library answers pings and sends its own.
    """
    try:
        while ws.connected and not hub.closing.is_set():
            report = channel.next_report(IDLE_SECONDS)
            if report is not None:
                ws.send(report)
            while ws.connected and ws.receive(timeout=0) is not None:
                pass
    except Exception as exc:  # the client went away mid-send: the channel just ends
        log.debug("event channel of %s ended: %s", channel.ae_title, exc)
    finally:
        hub.close(channel)
        _end(ws, channel.ae_title, hub.closing.is_set())


def _end(ws: Any, ae_title: str, hub_closing: bool) -> None:
    """Close the WebSocket and wait for its reader thread to let go of the socket, so the
    server finds it closed (the reader is woken by shutting the socket down, not left
    until its next ping)."""
    try:
        if ws.connected:
            ws.close(reason=GOING_AWAY if hub_closing else None)
    except Exception:
        log.debug("closing the event channel of %s failed", ae_title, exc_info=True)
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    ws.thread.join(timeout=5.0)
