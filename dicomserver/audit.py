"""The audit trail: one record per request that reads or changes patient data, or is refused.

Who (the token's subject or the API key's name), from where, what (method, route,
study/series/instance UIDs), the outcome (status, bytes) and the request id that ties
the record to the server's log. Never an attribute value, never a token. Records are
JSON lines (DICOMWEB_AUDIT_LOG: a file, `-` for stdout, `off` for none), one write per
record so that lines of concurrent requests never interleave.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class AuditRecord:
    time: str
    request_id: str
    subject: str
    client: str
    method: str
    route: str
    action: str | None
    study: str | None
    series: str | None
    instance: str | None
    status: int
    bytes: int | None

    @staticmethod
    def now() -> str:
        """UTC with milliseconds, ISO 8601 ('2026-12-06T03:54:32.609Z')."""
        now = time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class AuditLog:
    """Appends records to a file or stdout; `None` target: the trail is off."""

    def __init__(self, target: str | None):
        self.target = target
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if target not in (None, "-"):
            folder = os.path.dirname(os.path.abspath(target))
            os.makedirs(folder, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.target is not None

    def write(self, record: AuditRecord) -> None:
        if self.target is None:
            return
        line = json.dumps(vars(record), separators=(",", ":")) + "\n"  # flat: no asdict() deep copy
        with self._lock:
            stream = self._stream()
            stream.write(line)
            stream.flush()

    def _stream(self) -> TextIO:
        if self.target == "-":
            return sys.stdout
        if self._file is None:  # opened in the worker that writes (after gunicorn's fork)
            assert self.target is not None
            self._file = open(self.target, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process
        return self._file
