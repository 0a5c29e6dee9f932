"""What every view shares: the archive, the data action a route needs, the versioned base
URL, streamed bodies, and the Flask error handlers that apply the one status table of
`errors.py`.

This module and the blueprints are the only places (with the app factory, the CLI and
the WSGI entry) that import Flask; domain functions get what they need as arguments.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import simple_websocket
from flask import Flask, Request, Response, current_app, g, request
from gunicorn.http.errors import (
    ChunkMissingTerminator,
    InvalidChunkExtension,
    InvalidChunkSize,
    NoMoreData,
    ParseException,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import wrap_file

from ..archive import Archive
from ..audit import AuditRecord, AuditTrail
from ..auth import Authenticator
from ..errors import BadRequest, DicomWebError, NotFound, RequestTimeout, ServiceBusy, http_status
from ..partitions import DEFAULT, Partition
from ..request_log import REASON_LIMIT, RequestLogEntry
from ..retrieve import CHUNK, Body
from ..segments import SegmentedFile
from ..uids import is_valid_uid
from ..ups_events import EventHub, reader_thread
from ..urls import client_address, request_root
from .observe import ENTRY

log = logging.getLogger(__name__)

View = TypeVar("View", bound=Callable[..., object])

#: Every DICOMweb route is mounted under this prefix: /v1/... and /v2/... (services/__init__.py).
API_PREFIX = "/<any(v1, v2):api_version>"
#: The study-data routes are mounted a second time under this one (data partitions).
PARTITION_PREFIX = API_PREFIX + "/partitions/<partition_name>"


def requires(action: str) -> Callable[[View], View]:
    """Declare the data action (read, write, delete, ...) a view needs; checked before it runs.

    Every versioned route must declare one: the app refuses to start otherwise.
    """

    def declare(view: View) -> View:
        view.required_action = action  # type: ignore[attr-defined]
        return view

    return declare


def required_action(view: Callable[..., object] | None) -> str | None:
    return getattr(view, "required_action", None)


def archive() -> Archive:
    archive: Archive = current_app.extensions["dicomserver"]
    return archive


def authenticator() -> Authenticator:
    auth: Authenticator = current_app.extensions["dicomserver-auth"]
    return auth


def audit_trail() -> AuditTrail:
    trail: AuditTrail = current_app.extensions["dicomserver-audit"]
    return trail


def request_id() -> str:
    """This request's id (the client's X-Request-ID or a new one): in the audit record, the
    X-Request-Id header, the request log and any 500's message."""
    entry = log_entry()
    if entry is not None:
        return entry.request_id
    if "request_id" not in g:  # a request context of its own, not from the WSGI app (tests)
        g.request_id = os.urandom(16).hex()
    rid: str = g.request_id
    return rid


def log_entry() -> RequestLogEntry | None:
    """What the request log and /metrics will say of this request (services/observe.py)."""
    entry: RequestLogEntry | None = request.environ.get(ENTRY)
    return entry


def describe_request() -> str:
    """Name the service and route that served the request, for the request log and /metrics;
    returns the route template (the audit record names it too)."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not six
    route = _route_template(req)
    entry: RequestLogEntry | None = req.environ.get(ENTRY)
    if entry is not None:
        entry.service = req.blueprint or "other"
        entry.route = route if req.url_rule is not None else None
    return route


def note_reason(reason: str) -> None:
    """Why the request was refused, or what of it failed (STOW), for the request log."""
    entry = log_entry()
    if entry is not None and reason:
        entry.reason = reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 3] + "..."


def audit(response: Response, route: str) -> None:
    """Record a request that touched patient data (its route declares an action) or was refused.

    A request with no study in its path that stored instances (STOW to /studies) gives
    one record per study it stored, so that a search by study finds it.
    """
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup per request
    ctx = g._get_current_object()
    action = getattr(ctx, "action", None)  # what the route declared, looked up before the view (services/__init__.py)
    if req.method == "OPTIONS" or (action is None and response.status_code not in (401, 403)):
        return
    principal = getattr(ctx, "principal", None)
    partition = getattr(ctx, "partition", None)  # set only once resolved: never an unchecked name
    args = req.view_args or {}
    study = _uid(args.get("study"))
    studies = (getattr(ctx, "audit_studies", None) if study is None else None) or [study]
    fields = {
        "time": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        "request_id": request_id(),
        "subject": principal.subject if principal is not None else "-",
        "client": client_address(archive().settings, req.environ),
        "method": req.method,
        "route": route,
        "action": action,
        "series": _uid(args.get("series")),
        "instance": _uid(args.get("instance")),
        "status": response.status_code,
        "bytes": response.content_length,
        "partition": partition.name if partition is not None else None,
    }
    # Made for each study, not copied with dataclasses.replace (several times the cost).
    audit_trail().write([AuditRecord(study=uid, **fields) for uid in studies])


def _uid(value: str | None) -> str | None:
    """A path value as the audit keeps it: only a valid UID (a refused request's path is unchecked)."""
    return value if is_valid_uid(value) else None


def note_studies(uids: Iterable[str]) -> None:
    """The studies a request touched that its path does not name (STOW to /studies), for the audit."""
    g.audit_studies = sorted(set(uids))


def _route_template(req: Request) -> str:
    """The route with its parameters as placeholders ('/v2/studies/<study>'): no values."""
    if req.url_rule is None:
        return str(req.path)
    return str(req.url_rule.rule).replace(API_PREFIX, "/" + api_version(), 1)


def api_version() -> str:
    version: str = g.get("api_version", "v2")
    return version


def base_url() -> str:
    """Absolute URL of the versioned API root, for RetrieveURLs (PS3.18 wants them absolute),
    with the request's partition segment when it has one (its study data is there)."""
    root = api_root()
    resolved: Partition | None = g.get("partition")  # a checked name, never the raw path value
    return root if resolved is None else f"{root}/partitions/{resolved.name}"


def api_root() -> str:
    """Absolute URL of the versioned API root, never partitioned (operations, the change feed)."""
    return f"{request_root(archive().settings, request.environ)}/{api_version()}"


def partition() -> Partition:
    """The data partition the request's path names (resolved once, before the view: services/__init__.py);
    the default one when partitions are off."""
    found: Partition = g.get("partition", DEFAULT)
    return found


def warning(text: str) -> str:
    """A Warning header value (RFC 7234 §5.5, code 299) as the reference server sends them;
    the agent is the trusted host the absolute URLs use, never an echo of the Host header."""
    agent = urlsplit(request_root(archive().settings, request.environ)).netloc
    return f'299 {agent} "{text}"'


def take_upload_slot() -> None:
    """Hold one of the process' DICOMWEB_MAX_UPLOADS upload slots for this request, or answer 503.

    An upload holds a thread for as long as its client takes to send it; refusing the ones
    over the limit at once (rather than queueing them on threads) keeps threads free for
    reads and health checks however many slow uploads arrive.
    """
    slots: threading.BoundedSemaphore = current_app.extensions["dicomserver-uploads"]
    if not slots.acquire(blocking=False):
        limit = archive().settings.max_uploads
        raise ServiceBusy(
            f"{limit} uploads are already in progress in this server process; retry shortly",
            headers={"Retry-After": "1"},
        )
    g.upload_slot = slots


def release_upload_slot() -> None:
    slots = g.pop("upload_slot", None)
    if slots is not None:
        slots.release()


def request_body() -> Callable[[int], bytes]:
    """The request body's read(n), with the client's failures as HTTP answers: a body that
    stopped arriving (the worker's read deadline) is 408, malformed chunked framing or a
    body cut short by the client closing the connection is 400."""
    read = request.stream.read
    timeout = archive().settings.body_read_timeout

    def guarded(size: int) -> bytes:
        try:
            return read(size)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body stopped arriving: nothing received for {timeout:g} s"
            ) from None
        except ParseException as exc:
            raise BadRequest(f"the request body is malformed: {_parse_error(exc)}") from None
        except NoMoreData:  # the worker's LengthBody: the connection closed early
            raise BadRequest("the request body ended before the length its Content-Length announced") from None

    return guarded


def _parse_error(exc: ParseException) -> str:
    """gunicorn's chunked-framing errors, said without naming gunicorn."""
    if isinstance(exc, (InvalidChunkSize, InvalidChunkExtension)):
        return "a chunk size line of the chunked transfer coding is invalid"
    if isinstance(exc, ChunkMissingTerminator):
        return "a chunk of the chunked transfer coding does not end with CRLF"
    return "its transfer coding cannot be read"


def stream(body: Body) -> Response:
    """A streamed response for a retrieve body: a local file, or framing bytes around local
    files, goes out through wsgi.file_wrapper (sendfile under gunicorn); with
    DICOMWEB_ACCEL_REDIRECT a single stored file is left to nginx."""
    prefix = archive().settings.accel_redirect
    if prefix is not None and body.local_path is not None and body.blob_key is not None:
        return accel_redirect(body, prefix + body.blob_key)
    chunks: Iterable[bytes]
    try:
        if body.local_path is not None:
            file = open(body.local_path, "rb")  # noqa: SIM115 - closed by the WSGI server
            chunks = wrap_file(request.environ, file, buffer_size=CHUNK)  # read in chunks without sendfile
        elif body.segments is not None:
            segmented = SegmentedFile(body.segments)
            segmented.open_first()
            chunks = wrap_file(request.environ, segmented)  # type: ignore[arg-type]
        else:
            chunks = body.chunks
    except FileNotFoundError:
        raise NotFound("the instance was deleted while it was being retrieved") from None
    response = Response(chunks, status=body.status, content_type=body.content_type, direct_passthrough=True)
    if body.length is not None:  # else unknown (transcoded parts): sent chunked
        response.content_length = body.length
    response.headers.extend(body.headers)
    return response


def accel_redirect(body: Body, location: str) -> Response:
    """An empty answer that tells nginx which stored file to send (X-Accel-Redirect to its
    internal location for the blob store: docs/deployment.md), with the headers of `body`.

    nginx keeps Content-Type from this answer and sets Content-Length from the file.
    """
    response = Response(b"", status=body.status, content_type=body.content_type)
    response.headers["X-Accel-Redirect"] = location
    response.headers.extend(body.headers)
    return response


def event_hub() -> EventHub:
    """This process' UPS event channels (ups_events.py)."""
    hub: EventHub = current_app.extensions["dicomserver-ups-events"]
    return hub


def take_over_socket() -> simple_websocket.Server:
    """Answer the request's WebSocket upgrade (101) and keep its connection as a WebSocket.

    A channel idles for hours: its socket leaves the worker's timeout mode (whose sends may
    send part of a frame, which the WebSocket library would not finish) for blocking mode with
    only a send deadline (SO_SNDTIMEO, DICOMWEB_BODY_READ_TIMEOUT: a client that stops reading is
    dropped, as for any answer). Reads need none: the library reads only once the socket is
    readable, and its pings find a peer that is gone.
    """
    environ = request.environ
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        raise BadRequest("this server cannot take over the connection for a WebSocket")
    sock.settimeout(None)
    deadline = archive().settings.body_read_timeout
    seconds = int(deadline)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, int((deadline - seconds) * 1_000_000))
    )
    try:
        return simple_websocket.Server(
            environ, ping_interval=archive().settings.event_ping_seconds, thread_class=reader_thread
        )
    except simple_websocket.ConnectionError:
        raise BadRequest("the WebSocket handshake failed (Sec-WebSocket-Key and Sec-WebSocket-Version: 13?)") from None


class _Hijacked(Response):
    """What a view returns once it has served the connection as a WebSocket: nothing more may
    be written to it, so the server is told to drop it (gunicorn: StopIteration, which it
    takes as "close the connection"; werkzeug: ConnectionError), as flask-sock does."""

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        entry = environ.get(ENTRY)
        if entry is not None:
            entry.status = 101
        if "gunicorn.socket" in environ:
            raise StopIteration()
        raise ConnectionError("the WebSocket has ended")


def hijacked() -> Response:
    return _Hijacked(status=101)


def text_response(status: int, message: str) -> Response:
    """A plain-text error answer; an empty message is an empty body (401, as the reference)."""
    return Response(message + "\n" if message else "", status=status, mimetype="text/plain")


#: The request log's reason for answers whose body says nothing (401, as the reference server).
_UNSAID = {401: "no valid bearer token"}


def register_error_handlers(app: Flask) -> None:
    """Every exception becomes a plain-text answer with the status errors.STATUS gives it."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        note_reason(exc.description or exc.name)
        response = text_response(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _error(exc: Exception) -> Response:
        status, message = error_status(exc)
        response = text_response(status, message)
        if isinstance(exc, DicomWebError):
            response.headers.update(exc.headers)
        return response


def error_status(exc: Exception) -> tuple[int, str]:
    """The status and client message errors.STATUS gives `exc` (an unexpected one is a 500
    that names only the request id); server-side failures are logged."""
    known = http_status(exc)
    if known is None:
        log.error("unhandled error (request id %s)", request_id(), exc_info=exc)
        note_reason("internal server error")
        return 500, f"internal server error (request id {request_id()})"
    status, message = known
    note_reason(message or _UNSAID.get(status, ""))
    if status >= 500:  # a limit doing its job is not a fault of the server's
        (log.warning if isinstance(exc, ServiceBusy) else log.error)("%s (request id %s)", message, request_id())
    return status, message
