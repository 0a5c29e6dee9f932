"""gunicorn's gthread worker with deadlines, so slow or idle clients cannot hold its threads.

gthread gives a connection to a thread as soon as it is accepted (or readable), and the
thread then blocks until the whole request head has arrived: a dozen clients sending a
head a byte at a time, or opening connections and sending nothing, hold every thread
and the archive stops answering. This worker collects each request head in its event
loop with non-blocking reads and gives the connection to a thread only once the blank
line that ends the head is in; a head not complete within DICOMWEB_HEAD_TIMEOUT is
answered 408 and closed. In the thread, every read and write of the socket waits at
most DICOMWEB_BODY_READ_TIMEOUT: a body that stops arriving is answered 408 by the app
(services/web.py `request_body`), a client that stops reading is disconnected.
Uploads that do keep trickling are bounded by DICOMWEB_MAX_UPLOADS per process (by
default all threads but a quarter; the app answers 503 beyond it), so threads stay free for
everyone else.

Connections are spread over the workers: each publishes how many connections it holds
in a small table shared by all of them (`LoadTable`), and one that holds clearly more
than the least loaded steps back from the listening socket after taking a connection,
until the others catch up or STEP_BACK_SECONDS pass. So a burst (a client opening four
keep-alive connections at once) does not all land on whichever worker's event loop is
quickest. The step-back is bounded: if no other worker takes a waiting connection within
that time, the busier one does.

A request body of known length (Content-Length) is read by `LengthBody` straight from the
socket: each read asks the kernel for what is still missing and hands the bytes on as
they came (gunicorn's reader copies every byte through two BytesIO buffers on the way).
A chunked body is left to gunicorn's reader.

A multipart answer of stored files (segments.SegmentedFile: framing bytes and ranges of
local files) goes out as a single file does: the worker's wsgi.file_wrapper claims it, and
the connection writes the bytes with write(2) and each file range with sendfile(2), corked
into full packets. Any other server reads it as chunks.

Long-lived answers (the streaming change feed) find a threading.Event under
settings.SERVER_STOPPING in the environ, set as the worker begins its graceful stop
(SIGTERM): they end on it, so the worker's connections close within gunicorn's graceful
timeout. Each such answer holds a thread while it lasts (the app bounds how many).

TLS terminated by gunicorn itself is left to gthread as it is (put nginx in front:
docs/deployment.md).
"""
from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import select
import selectors
import socket
import threading
import time
import traceback
from collections import deque
from functools import partial
from typing import Any

from gunicorn import glogging
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.http.errors import NoMoreData
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper
from gunicorn.workers.gthread import TConn, ThreadWorker

from .segments import SegmentedFile
from .settings import SERVER_STOPPING, Settings

_HEAD_END = b"\r\n\r\n"
#: A longer head is refused (431), as nginx does past 32 KiB: heads are a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
#: How long and how much a closed connection is read for (gunicorn's own close_graceful values).
LINGER_SECONDS = 2.0
LINGER_BYTES = 65536


#: How long a worker holding more connections than another leaves new ones to the others.
STEP_BACK_SECONDS = 0.05
#: How often a worker stepping back looks whether the others have caught up.
STEP_BACK_POLL_SECONDS = 0.002
#: A worker whose event loop has not turned for this long is left out of the comparison.
STALE_SECONDS = 5.0
#: How often the event loop tells the master it is alive (gunicorn does it every turn, a
#: system call each time, several per request; the master waits `timeout`, 300 s, for it).
NOTIFY_SECONDS = 0.5


class LoadTable:
    """Per worker: (pid, open connections, last event-loop turn), in memory shared by the
    workers of one gunicorn master.

    Created in the master (worker objects are built there, one at a time, before the
    fork), so claiming a slot needs no lock. Readers tolerate torn or stale values: the
    worst a wrong reading does is one step-back too many or too few.
    """

    _FIELDS = 3

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.values = multiprocessing.RawArray(ctypes.c_double, slots * self._FIELDS)

    def claim(self) -> int | None:
        """A free slot for the worker about to be forked (master side), reserved until it reports."""
        now = time.monotonic()
        for slot in range(self.slots):
            if now - self.values[slot * self._FIELDS + 2] > STALE_SECONDS:
                self.values[slot * self._FIELDS: slot * self._FIELDS + 3] = [0.0, 0.0, now]
                return slot
        return None

    def publish(self, slot: int, connections: int) -> None:
        self.values[slot * self._FIELDS + 1] = connections
        self.values[slot * self._FIELDS + 2] = time.monotonic()

    def register(self, slot: int, pid: int) -> None:
        self.values[slot * self._FIELDS] = pid
        self.publish(slot, 0)

    def least_elsewhere(self, slot: int) -> float | None:
        """The fewest connections any other live worker holds (None: no other worker)."""
        now = time.monotonic()
        values, least = self.values, None
        for other in range(self.slots):
            base = other * self._FIELDS
            if other != slot and values[base] and now - values[base + 2] <= STALE_SECONDS:
                count = values[base + 1]
                least = count if least is None or count < least else least
        return least


_load_table: LoadTable | None = None


def _shared_load_table(workers: int) -> LoadTable:
    global _load_table
    if _load_table is None:
        _load_table = LoadTable(2 * workers + 4)  # room for replacements while old workers stop
    return _load_table


class ClientSocket(socket.socket):
    """A client connection whose first bytes (the head the event loop collected) are
    read again by gunicorn's parser, and whose blocking mode has a timeout."""

    prefix: bytearray
    io_timeout: float
    #: True while the app runs: a read that times out raises (the app answers 408);
    #: outside it (gunicorn draining an unread body) it reads as the end of the stream.
    in_app: bool
    timed_out: bool

    @classmethod
    def adopt(cls, sock: socket.socket, io_timeout: float) -> ClientSocket:
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.prefix = bytearray()
        adopted.io_timeout = io_timeout
        adopted.in_app = False
        adopted.timed_out = False
        return adopted

    def setblocking(self, flag: bool) -> None:
        """gunicorn's threads switch a connection to blocking mode: make that mode bounded."""
        if flag:
            self.settimeout(self.io_timeout)
        else:
            super().setblocking(False)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.prefix:
            data = bytes(self.prefix[:bufsize])
            del self.prefix[:bufsize]
            return data
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            self.timed_out = True
            if self.in_app:
                raise
            return b""

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """gunicorn sends a file wrapper's file here; a SegmentedFile is sent segment by segment.

        write(2) and sendfile(2) are called straight away, waiting for the client only when
        the socket's buffer is full. The socket's own sendall() and sendfile() first wait
        until a third of the buffer is free: after a file, the closing boundary would wait
        for the client to read most of it, and the thread to be woken for it.
        """
        if not isinstance(file, SegmentedFile):
            return super().sendfile(file, offset, count)
        if count != file.length:  # gunicorn sends what the Content-Length says: it must be the body's
            raise ConnectionAbortedError(f"a segmented body of {file.length} bytes was to be sent as {count}")
        corked = self.family in (socket.AF_INET, socket.AF_INET6)
        if corked:  # the framing and the files share packets; uncorking sends the last one at once
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            for segment in file.segments:
                if isinstance(segment, bytes):
                    self._write_all(segment)
                else:
                    self._sendfile_all(file.open(segment.path).fileno(), segment.offset, segment.length)
        finally:
            if corked:
                self.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        return count

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fileno(), view):]
            except BlockingIOError:
                self._wait_writable()

    def _sendfile_all(self, fd: int, offset: int, length: int) -> None:
        while length > 0:
            try:
                sent = os.sendfile(self.fileno(), fd, offset, min(length, 1 << 30))
            except BlockingIOError:
                self._wait_writable()
                continue
            if sent == 0:  # the file is shorter than the index says: the answer cannot be completed
                raise ConnectionAbortedError("a stored file ended before the range served from it")
            offset += sent
            length -= sent

    def _wait_writable(self) -> None:
        """Wait until the client has read enough to write more (the blocking mode's deadline)."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLOUT)
        if not poller.poll(self.io_timeout * 1000):
            raise TimeoutError("timed out")

    def recv_more(self) -> bytes | None:
        """Non-blocking read for the head (event loop): new bytes, b"" at EOF or when the
        client reset the connection, None if none yet. Never raises: an exception here
        would end the worker and every request it serves."""
        try:
            return super().recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # ECONNRESET, ETIMEDOUT, ...: the connection is gone
            return b""


class LengthBody:
    """wsgi.input for a body of known length (Content-Length), read from the socket as it comes.

    gunicorn's Body copies each byte through its own and its reader's BytesIO, twice or
    more per read. Here read(n) asks the socket for what is missing and returns what it
    received as is (joined once when it took several receives), and read1(n) returns
    what one receive gave, never copied. Reads stop at the body's end: a byte of the next
    request (pipelined) is never taken. A client that closes the connection before the end
    raises NoMoreData (gunicorn's Body would return a short body, which a single-part STOW
    would take for the whole instance; the app answers 400), and a receive that times out
    raises TimeoutError (the app answers 408).
    """

    def __init__(self, sock: ClientSocket, unreader: Any, length: int) -> None:
        self.sock = sock
        #: Bytes of the body not yet handed out: in `pending`, then on the socket.
        self.left = length
        ahead = unreader.take_buffered()  # gunicorn's parser read past the head: the body's start
        if len(ahead) > length:  # a pipelined request follows the body: it stays gunicorn's
            unreader.unread(ahead[length:])
            ahead = ahead[:length]
        #: The start of `left` that gunicorn's parser had read already.
        self.pending = ahead
        #: Set when a read raised: where the next request starts is then unknown (gunicorn's
        #: parser checks it before reusing the connection).
        self.failed = False

    def _take(self, size: int) -> bytes:
        """At most `size` (> 0) bytes of what is buffered or one receive brings; b"" only at
        the end of the body."""
        pending = self.pending
        if pending:
            if len(pending) <= size:
                self.pending = b""
                data = pending
            else:
                data, self.pending = pending[:size], pending[size:]
        else:
            want = min(size, self.left)
            if want <= 0:
                return b""
            try:
                data = self.sock.recv(want)
            except BaseException:
                self.failed = True
                raise
            if not data:  # the client is gone before sending all it announced
                self.failed = True
                raise NoMoreData(b"")
        self.left -= len(data)
        return data

    def read1(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes, as one receive brought them (no copy); b"" at the end."""
        size = self.left if size is None or size < 0 else min(size, self.left)
        return self._take(size) if size > 0 else b""

    def read(self, size: int | None = -1) -> bytes:
        """`size` bytes (all that is left if fewer, or if None or negative); b"" at the end."""
        size = self.left if size is None or size < 0 else min(size, self.left)
        if size <= 0:
            return b""
        data = self._take(size)
        if len(data) == size:  # one receive: the bytes as they came
            return data
        pieces = [data]
        missing = size - len(data)
        while missing > 0:
            more = self._take(missing)
            pieces.append(more)
            missing -= len(more)
        return b"".join(pieces)

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.left
        line = b""
        while len(line) < size:
            chunk = self._take(min(size - len(line), 8192))
            if not chunk:
                break
            end = chunk.find(b"\n")
            if end >= 0:
                self.pending = chunk[end + 1:] + self.pending
                self.left += len(chunk) - end - 1
                chunk = chunk[: end + 1]
            line += chunk
            if end >= 0:
                break
        return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> LengthBody:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class AccessLogger(glogging.Logger):
    """gunicorn's logger, whose access log makes only the atoms its format names.

    gunicorn's builds every atom, one per request header, response header and environ
    variable (some eighty), and copies them all to escape quotes, for the ten or so the
    line shows. The line is the same (`_Atoms`). gunicorn_conf.py makes it the logger class.
    """

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:
            self.access_log.info(self.cfg.access_log_format, _Atoms(self, resp, req, environ, request_time))
        except Exception:
            self.error(traceback.format_exc())


class _Atoms(dict[str, Any]):
    """gunicorn's SafeAtoms(Logger.atoms(...)) for a log line, each atom made when the format asks."""

    def __init__(self, logger: glogging.Logger, resp: Any, req: Any, environ: dict[str, Any], request_time: Any):
        super().__init__()
        self.logger, self.resp, self.req, self.environ, self.request_time = logger, resp, req, environ, request_time

    def __bool__(self) -> bool:  # logging formats with a mapping only when it is truthy
        return True

    def __getitem__(self, key: str) -> Any:
        if key.startswith("{"):
            value = self._header_or_variable(key.lower())
        else:
            make = _ATOMS.get(key)
            value = "-" if make is None else make(self)
        return value.replace('"', '\\"') if isinstance(value, str) else value

    def _header_or_variable(self, key: str) -> Any:
        name, kind = key[1:-2], key[-2:]
        if kind == "}i":
            pairs = self.req.headers.items() if hasattr(self.req.headers, "items") else self.req.headers
        elif kind == "}o":
            pairs = self.resp.headers.items() if hasattr(self.resp.headers, "items") else self.resp.headers
        elif kind == "}e":
            pairs = self.environ.items()
        else:
            return "-"
        value: Any = "-"
        for found, found_value in pairs:  # the last one, as gunicorn's dict of them keeps
            if found.lower() == name:
                value = found_value
        return value


def _status(atoms: _Atoms) -> Any:
    status = atoms.resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


def _sent(atoms: _Atoms) -> Any:
    return getattr(atoms.resp, "sent", None)


#: gunicorn's atoms (glogging.Logger.atoms) other than headers and environ variables.
_ATOMS: dict[str, Any] = {
    "h": lambda a: a.environ.get("REMOTE_ADDR", "-"),
    "l": lambda a: "-",
    "u": lambda a: a.logger._get_user(a.environ) or "-",
    "t": lambda a: a.logger.now(),
    "r": lambda a: f"{a.environ['REQUEST_METHOD']} {a.environ['RAW_URI']} {a.environ['SERVER_PROTOCOL']}",
    "s": _status,
    "m": lambda a: a.environ.get("REQUEST_METHOD"),
    "U": lambda a: a.environ.get("PATH_INFO"),
    "q": lambda a: a.environ.get("QUERY_STRING"),
    "H": lambda a: a.environ.get("SERVER_PROTOCOL"),
    "b": lambda a: "-" if _sent(a) is None else str(_sent(a)),
    "B": _sent,
    "f": lambda a: a.environ.get("HTTP_REFERER", "-"),
    "a": lambda a: a.environ.get("HTTP_USER_AGENT", "-"),
    "T": lambda a: a.request_time.seconds,
    "D": lambda a: a.request_time.seconds * 1000000 + a.request_time.microseconds,
    "M": lambda a: a.request_time.seconds * 1000 + int(a.request_time.microseconds / 1000),
    "L": lambda a: f"{a.request_time.seconds:d}.{a.request_time.microseconds:06d}",
    "p": lambda a: f"<{os.getpid()}>",
}


class FileWrapper(GunicornFileWrapper):
    """The worker's wsgi.file_wrapper: gunicorn's, which also claims a SegmentedFile for
    ClientSocket.sendfile (gunicorn's sendfile path needs its fileno)."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        super().__init__(filelike, blksize)
        if isinstance(filelike, SegmentedFile):
            filelike.sent_by_server = True


class Worker(ThreadWorker):
    """gthread, with request heads read in the event loop and deadlines on every read."""

    wsgi: Any  # the app, set by gunicorn's load_wsgi

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Runs in the master, before the fork: take a slot of the shared load table.
        self._slot: int | None = None
        self._connections = 0
        self._step_back_until = 0.0
        self._next_notify = 0.0
        super().__init__(*args, **kwargs)
        self._is_ssl = bool(self.cfg.is_ssl)  # looked up per connection: gunicorn's Config is slow to ask
        self._loads = _shared_load_table(self.cfg.workers)
        self._slot = self._loads.claim()

    @property
    def nr_conns(self) -> int:
        return self._connections

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self._connections = value
        if self._slot is not None and self.pid == os.getpid():
            self._loads.publish(self._slot, value)

    def notify(self) -> None:
        """The heartbeat, at most every NOTIFY_SECONDS (gthread calls it on every turn of its loop)."""
        now = time.monotonic()
        if now < self._next_notify:
            return
        self._next_notify = now + NOTIFY_SECONDS
        super().notify()
        if self._slot is not None:
            self._loads.publish(self._slot, self._connections)

    def init_process(self) -> None:
        if self._slot is not None:
            self._loads.register(self._slot, os.getpid())
        # Uploads may hold all threads but a quarter (at least 2) unless configured otherwise;
        # the app reads the variable when this worker loads it.
        reserved = max(2, self.cfg.threads // 4)
        os.environ.setdefault("DICOMWEB_MAX_UPLOADS", str(max(1, self.cfg.threads - reserved)))
        settings = Settings.from_env()
        if settings.max_uploads >= self.cfg.threads:
            self.log.warning(
                "DICOMWEB_MAX_UPLOADS=%d leaves none of the %d threads for reads while uploads are slow",
                settings.max_uploads, self.cfg.threads,
            )
        if settings.max_uploads + settings.changefeed_max_streams >= self.cfg.threads:
            self.log.warning(
                "DICOMWEB_MAX_UPLOADS=%d and DICOMWEB_CHANGEFEED_MAX_STREAMS=%d together may hold all %d threads",
                settings.max_uploads, settings.changefeed_max_streams, self.cfg.threads,
            )
        self.head_timeout = settings.head_timeout
        self.io_timeout = settings.body_read_timeout
        #: Set when the worker begins its graceful stop (offered to the app: SERVER_STOPPING).
        self.stopping = threading.Event()
        #: Connections whose head is being collected, oldest deadline first.
        self.heads: deque[TConn] = deque()
        #: Closed connections draining what the client still sends: (deadline, socket, bytes left).
        self.lingering: deque[list[Any]] = deque()
        super().init_process()

    def load_wsgi(self) -> None:
        """Offer the app this worker's stop signal, and its file wrapper on the connections whose
        sendfile it owns."""
        super().load_wsgi()
        app = self.wsgi
        stopping = self.stopping
        file_wrapper = not (self._is_ssl or self.cfg.sendfile is False)

        def with_worker_services(environ: dict[str, Any], start_response: Any) -> Any:
            environ[SERVER_STOPPING] = stopping
            if file_wrapper and isinstance(environ.get("gunicorn.socket"), ClientSocket):
                environ["wsgi.file_wrapper"] = FileWrapper
            return app(environ, start_response)

        self.wsgi = with_worker_services

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: the graceful stop begins; long-lived answers are told to end."""
        self.stopping.set()
        super().handle_exit(sig, frame)

    # -- the event loop: heads -------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        if self._is_ssl:
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, ClientSocket.adopt(client, self.io_timeout), address, listener.getsockname())
        self._await_head(conn)
        if self._busier_than_others():
            self._step_back_until = time.monotonic() + STEP_BACK_SECONDS

    def _busier_than_others(self) -> bool:
        """Whether this worker holds clearly more connections than the least loaded other one
        (by two, or a quarter of that one's, so that even loads are not throttled)."""
        if self._slot is None:
            return False
        least = self._loads.least_elsewhere(self._slot)
        return least is not None and self.nr_conns > least + max(1, least // 4)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Leave the listener to the other workers while stepping back (see the module
        docstring), looking every STEP_BACK_POLL_SECONDS whether they have caught up."""
        wait = self._step_back_until - time.monotonic()
        if wait > 0 and self._busier_than_others():
            if self._accepting:
                self.set_accept_enabled(False)
            timeout = min(timeout, wait, STEP_BACK_POLL_SECONDS)
        else:
            self._step_back_until = 0.0
            if not self._accepting and self.nr_conns < self.worker_connections:
                self.set_accept_enabled(True)
        super().wait_for_and_dispatch_events(timeout)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection has data: its next request's head, read at once (it is
        usually all there), the connection staying registered for the rest of it."""
        if self._is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.keepalived_conns.remove(conn)
        conn.head_deadline = time.monotonic() + self.head_timeout
        self.heads.append(conn)
        self.poller.modify(client, selectors.EVENT_READ, partial(self._on_head_data, conn))
        self._on_head_data(conn, client)

    def _await_head(self, conn: TConn) -> None:
        conn.head_deadline = time.monotonic() + self.head_timeout
        self.heads.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_data, conn))

    def _on_head_data(self, conn: TConn, _sock: Any) -> None:
        data = conn.sock.recv_more()
        if data is None:
            return
        if not data:  # the client left (or sent nothing before closing)
            self._forget_head(conn)
            self._close(conn)
            return
        head: bytearray = conn.sock.prefix
        start = max(0, len(head) - len(_HEAD_END) + 1)
        head += data
        self._check_head(conn, start)

    def _check_head(self, conn: TConn, start: int = 0) -> None:
        """Hand the connection to a thread once its head is complete (searched from `start`)."""
        head: bytearray = conn.sock.prefix
        if head.find(_HEAD_END, start) >= 0:
            self._forget_head(conn)
            conn.data_ready = True
            self.enqueue_req(conn)
        elif len(head) > MAX_HEAD_BYTES:
            self._forget_head(conn)
            too_long = f"the request head is over {MAX_HEAD_BYTES} bytes"
            self._refuse(conn, 431, "Request Header Fields Too Large", too_long)

    def _forget_head(self, conn: TConn) -> None:
        self.poller.unregister(conn.sock)
        self.heads.remove(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """A connection to close lingers in the event loop, not on it.

        gunicorn closes as RFC 9112 §9.6 asks (send FIN, read what the client still sends
        so the kernel does not answer it with a reset that could swallow the response), but
        it does so on the event loop with blocking reads of up to 2 s: a few clients that
        keep sending after a 4xx stall every other connection of the worker. Here the
        reading is done by the event loop as data comes.
        """
        if isinstance(conn.sock, ClientSocket):
            try:
                keep = fs.result() if not fs.cancelled() else False
            except Exception:
                keep = False
            if not keep:
                self.nr_conns -= 1
                self._linger(conn.sock)
                return
            if conn.sock.prefix and not conn.parser.unreader.buf.getbuffer().nbytes:
                # A pipelined request: the event loop read its bytes with the previous body's
                # (they are in the prefix, not on the socket, which would not turn readable).
                conn.sock.setblocking(False)
                self._await_head(conn)
                self._check_head(conn)
                return
        super().finish_request(conn, fs)

    def _linger(self, sock: ClientSocket) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        entry = [time.monotonic() + LINGER_SECONDS, sock, LINGER_BYTES]
        self.lingering.append(entry)
        self.poller.register(sock, selectors.EVENT_READ, partial(self._on_linger_data, entry))

    def _on_linger_data(self, entry: list[Any], _sock: Any) -> None:
        sock: ClientSocket = entry[1]
        data = sock.recv_more()
        if data is None:
            return
        entry[2] -= len(data)
        if not data or entry[2] <= 0:
            self.lingering.remove(entry)
            self.poller.unregister(sock)
            sock.close()

    def murder_pending(self) -> None:
        """Also close the connections whose head or linger is late (each turn of the event loop)."""
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and self.lingering[0][0] <= now:
            _, sock, _ = self.lingering.popleft()
            self.poller.unregister(sock)
            sock.close()
        while self.heads and self.heads[0].head_deadline <= now:
            conn = self.heads.popleft()
            self.poller.unregister(conn.sock)
            if conn.sock.prefix:
                late = f"the request head was not received within {self.head_timeout:g} s"
                self._refuse(conn, 408, "Request Timeout", late)
            else:  # nothing sent at all (a browser's preconnect, a port scan): closed quietly, as nginx does
                self._close(conn)

    def _refuse(self, conn: TConn, status: int, reason: str, message: str) -> None:
        """Answer from the event loop (one small non-blocking write) and close."""
        body = (message + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            conn.sock.send(head.encode() + body)
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: TConn) -> None:
        self.nr_conns -= 1
        self._linger(conn.sock)

    # -- a thread: one request -------------------------------------------------
    def handle_request(self, req: Any, conn: TConn) -> bool:
        sock = conn.sock
        if not isinstance(sock, ClientSocket):
            keep: bool = super().handle_request(req, conn)
            return keep
        if isinstance(getattr(req.body, "reader", None), LengthReader):
            req.body = LengthBody(sock, conn.parser.unreader, req.body.reader.length)
        sock.in_app = True
        try:
            keep = super().handle_request(req, conn)
        except TimeoutError:
            self.log.info("closed a connection from %s: nothing sent or read for %g s", conn.client, self.io_timeout)
            return False
        finally:
            sock.in_app = False
        # After a timeout the rest of the body is not worth waiting for; a body the app did not
        # read would have to be drained by a thread before the next head: close instead.
        return keep and not sock.timed_out and not _unread_body(req)


def _unread_body(req: Any) -> bool:
    if isinstance(req.body, LengthBody):
        return req.body.left > 0
    reader = getattr(req.body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length > 0
    return isinstance(reader, ChunkedReader)  # whether it was read to its end is not known cheaply
