"""Every request observed at the WSGI boundary: counted and timed for /metrics and, with
DICOMWEB_LOG_FORMAT=json, logged as one line.

At this boundary the clock runs from the request's arrival until the server has sent the
last byte of the answer (a streamed retrieve included; Flask's own hooks end before the
body is sent), and the bytes are the ones that crossed it. The views' side (which service
and route, why a request was refused) is written into the request's `RequestLogEntry`,
kept in the WSGI environ under ENTRY, by the hooks in services/__init__.py and web.py.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from .. import metrics
from ..request_log import RequestLogEntry, current_request_id, log_request, request_id_from

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: The environ key of the request's RequestLogEntry.
ENTRY = "dicomweb.request"


class RequestObserver:
    """WSGI middleware around the Flask app (installed by create_app)."""

    def __init__(self, app: WSGIApplication, *, log_requests: bool) -> None:
        self.app = app
        self.log_requests = log_requests

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        entry = RequestLogEntry(
            request_id_from(environ.get("HTTP_X_REQUEST_ID")), metrics.method_label(environ.get("REQUEST_METHOD", ""))
        )
        environ[ENTRY] = entry
        body = _CountingInput(environ["wsgi.input"]) if "wsgi.input" in environ else None
        if body is not None:
            environ["wsgi.input"] = body
        current_request_id.set(entry.request_id)
        length: list[int] = []  # the answer's Content-Length, when it has one

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
            entry.status = int(status.split(" ", 1)[0])
            length[:] = [int(v) for k, v in headers if k.lower() == "content-length" and v.isdigit()][:1]
            return start_response(status, headers, exc_info)

        def finish(sent: int | None) -> None:
            entry.duration_ms = (time.perf_counter() - started) * 1000
            entry.bytes_in = body.count if body is not None else 0
            entry.bytes_out = sent if sent is not None else (length[0] if length else 0)
            current_request_id.set(None)
            metrics.observe_request(
                entry.service, entry.method, entry.status, entry.duration_ms / 1000, entry.bytes_in, entry.bytes_out
            )
            if self.log_requests:
                log_request(entry)

        try:
            answer = self.app(environ, start)
        except BaseException:
            entry.status = entry.status or 500
            finish(0)
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(answer, file_wrapper):
            return _sent_by_file(answer, finish)
        return _Counted(answer, finish)


class _CountingInput:
    """The request body stream, counting what the app reads (a chunked body has no length).

    Offers the calls WSGI promises, and no readinto: werkzeug would call the stream's own.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        data = self.stream.read(size) if size is not None else self.stream.read()
        self.count += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self.stream.readline(size) if size is not None else self.stream.readline()
        self.count += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = self.stream.readlines(hint)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self.count += len(line)
            yield line


class _Counted:
    """An answer's chunks, counted on their way to the server; `done` runs when it closes it."""

    def __init__(self, chunks: Iterable[bytes], done: Callable[[int | None], None]) -> None:
        self.chunks = chunks
        self.done: Callable[[int | None], None] | None = done
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()
        finally:
            done, self.done = self.done, None
            if done is not None:
                done(self.sent)


def _sent_by_file(answer: Any, done: Callable[[int | None], None]) -> Any:
    """A file the server sends itself (sendfile) must stay its own wrapper, or it would be
    copied through Python: its close, which the server calls once it is sent, is extended
    instead (the bytes are its Content-Length)."""
    close = getattr(answer, "close", None)
    pending = [done]

    def closed() -> None:
        try:
            if close is not None:
                close()
        finally:
            while pending:
                pending.pop()(None)

    answer.close = closed
    return answer
