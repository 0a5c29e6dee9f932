"""The server's own log: its lines on stderr, and with DICOMWEB_LOG_FORMAT=json one line per request.

For operators, beside the audit trail (audit.py, for patient data): JSON lines a log
store can search by request id, service, route or status. Routes are templates
('/v2/studies/<study>'), never paths, query strings or headers; a refusal's reason is the
message its client read (which may name the UIDs or quote the value it sent), cut at
REASON_LIMIT characters. The request id comes from the client's X-Request-ID when it is a sane one
(so a proxy's or a viewer's id follows the request into this log and the audit trail), or
is minted; lines the app logs while it serves a request carry it too.

gunicorn configures only its own loggers, so without a handler of ours the app's lines
reach nobody (Python's last resort prints bare warnings, and drops the rest). `configure`
gives the "dicomserver" logger one, unless the process has configured logging itself
(a root handler: gunicorn's --log-config, pytest): then its lines go there, once.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["RequestLogEntry", "JsonFormatter", "configure", "current_request_id", "log_request", "request_id_from"]

#: The logger of request lines (JSON format only).
log = logging.getLogger("dicomserver.requests")

#: A client's X-Request-ID is kept if it is this (anything else could forge or break log lines).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: The request the current thread is serving, for the lines logged meanwhile.
current_request_id: ContextVar[str | None] = ContextVar("dicomweb_request_id", default=None)

#: A reason longer than this is cut (a message quoting a long value the client sent).
REASON_LIMIT = 300
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"  # gunicorn's, so the two sets of lines read alike


def request_id_from(header: str | None) -> str:
    """The client's request id if it is 1-128 characters of [A-Za-z0-9._-], else a new one."""
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return os.urandom(16).hex()


@dataclass
class RequestLogEntry:
    """What one request was and how it ended: filled in while it is served."""

    request_id: str
    method: str
    #: The blueprint that served it ("stow", "wado", ...), "other" when no route matched.
    service: str = "other"
    #: The route template with its version ('/v2/studies/<study>'); None when no route matched.
    route: str | None = None
    status: int = 0
    duration_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Why it was refused (a 4xx's message), or what STOW could not store as sent (409, 202).
    reason: str | None = None


def log_request(entry: RequestLogEntry) -> None:
    log.info(
        "%s %s %s", entry.method, entry.route or "-", entry.status, extra={"request": entry}
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry = getattr(record, "request", None)
        if isinstance(entry, RequestLogEntry):
            line.update(vars(entry))
            line["duration_ms"] = round(entry.duration_ms, 3)
        else:
            request_id = current_request_id.get()
            if request_id is not None:
                line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):
    """sys.stderr as it is when a line is written (tests and servers may replace it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(log_format: str) -> None:
    """Give the "dicomserver" logger a stderr handler in `log_format` ("text" or "json").

    Again for each app built in one process, replacing the handler rather than adding one;
    not at all when the process has configured logging (a root handler) itself.
    """
    logger = logging.getLogger("dicomserver")
    for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(handler)
    if logging.getLogger().handlers:
        return
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT, TEXT_DATE_FORMAT))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _iso_time(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
