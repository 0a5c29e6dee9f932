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

TLS terminated by gunicorn itself is left to gthread as it is (put nginx in front:
docs/deployment.md).
"""
from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.gthread import TConn, ThreadWorker

from .settings import Settings

_HEAD_END = b"\r\n\r\n"
#: A longer head is refused (431), as nginx does past 32 KiB: heads are a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
#: How long and how much a closed connection is read for (gunicorn's own close_graceful values).
LINGER_SECONDS = 2.0
LINGER_BYTES = 65536


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

    def recv_more(self) -> bytes | None:
        """Non-blocking read for the head (event loop): new bytes, b"" at EOF, None if none yet."""
        try:
            return super().recv(65536)
        except (BlockingIOError, InterruptedError):
            return None


class Worker(ThreadWorker):
    """gthread, with request heads read in the event loop and deadlines on every read."""

    def init_process(self) -> None:
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
        self.head_timeout = settings.head_timeout
        self.io_timeout = settings.body_read_timeout
        #: Connections whose head is being collected, oldest deadline first.
        self.heads: deque[TConn] = deque()
        #: Closed connections draining what the client still sends: (deadline, socket, bytes left).
        self.lingering: deque[list[Any]] = deque()
        super().init_process()

    # -- the event loop: heads -------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        if self.cfg.is_ssl:
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

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection has data: its next request's head."""
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

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
        try:
            data = sock.recv_more()
        except OSError:
            data = b""
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
    reader = getattr(req.body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length > 0
    return isinstance(reader, ChunkedReader)  # whether it was read to its end is not known cheaply
