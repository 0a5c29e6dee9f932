"""Long-running operations: their status as `/operations/{id}` shows it, and the runner that does them.

An operation (a re-index of extended query tags, an export, a bulk update) is a row of the index
(index/operations.py), so every host sees it. Each server process runs a thread,
`OperationRunner`, that claims the oldest operation nobody holds, runs its handler (one per
type, `HANDLERS`) and goes back to waiting. A handler works in batches and commits each with
a checkpoint (`Run.checkpoint`), which renews the lease: killed between two, the next runner
(another process, or this one restarted) resumes from the last checkpoint once the lease
has expired. A handler that raises gives the operation back to be retried (at most
index.operations.MAX_ATTEMPTS claims); one that loses its lease stops without a word.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import peewee as pw

from .background import IndexThread
from .errors import BadRequest, NotFound
from .index import Index
from .index.operations import ACTIVE, FAILED, MAX_ATTEMPTS, SUCCEEDED, LeaseLost, OperationRecord
from .settings import Settings

log = logging.getLogger(__name__)

_OPERATION_ID = re.compile(r"[0-9a-fA-F]{32}")


def new_operation_id() -> str:
    return uuid.uuid4().hex


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.replace(tzinfo=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def status(index: Index, operation_id: str, base_url: str, api_version: str = "v2") -> tuple[dict[str, Any], bool]:
    """An operation as the reference server shows it (JSON object), and whether it is still running.
    /v1 calls success `completed`, as the reference's v1 does; /v2 `succeeded`."""
    if not _OPERATION_ID.fullmatch(operation_id):
        raise BadRequest(f"{operation_id[:40]!r} is not an operation id (32 hex digits)")
    record = index.operation(operation_id.lower())
    if record is None:
        raise NotFound(f"there is no operation {operation_id}")
    document: dict[str, Any] = {
        "operationId": record.id,
        "type": record.type,
        "createdTime": _iso(record.created),
        "lastUpdatedTime": _iso(record.last_updated),
        "status": "completed" if api_version == "v1" and record.status == SUCCEEDED else record.status,
        "percentComplete": record.percent_complete,
        "resources": [f"{base_url}/{path}" for path in record.payload.get("resources", [])],
        # What the operation did so far, when its handler keeps a count (export: exported, skipped...).
        "results": record.checkpoint.get("results") if isinstance(record.checkpoint, dict) else None,
        # Beyond the reference: when it ran, and why it failed.
        "startedTime": _iso(record.started),
        "endedTime": _iso(record.ended),
        "errors": record.errors,
    }
    return {k: v for k, v in document.items() if v is not None}, record.status in ACTIVE


def reference(operation_id: str, base_url: str) -> dict[str, str]:
    """What a request that started an operation answers: its id and where to follow it."""
    return {"id": operation_id, "href": f"{base_url}/operations/{operation_id}"}


class Run:
    """A handler's hold on its operation: checkpoints renew the lease; `stopping` asks it to pause."""

    def __init__(self, index: Index, record: OperationRecord, owner: str, settings: Settings,
                 stop: threading.Event):
        self.index = index
        self.record = record
        self.owner = owner
        self.settings = settings
        self.lease = dt.timedelta(seconds=settings.operations_lease_seconds)
        self._stop = stop

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    def checkpoint(self, state: Any, percent: int) -> None:
        """Record progress (in the caller's write transaction); LeaseLost if the operation is no longer ours."""
        self.index.renew_lease(self.record.id, self.owner, self.lease, checkpoint=state, percent=percent)

    def finish(self, errors: list[str] | None = None) -> None:
        """Succeeded (in the caller's write transaction, with its last work)."""
        self.index.finish_operation(self.record.id, self.owner, SUCCEEDED, errors)

    def fail(self, errors: list[str]) -> None:
        """Ended with errors (in the caller's write transaction): not retried, its results kept
        (a bulk update with failed studies ends so, as the reference's does)."""
        self.index.finish_operation(self.record.id, self.owner, FAILED, errors)


Handler = Callable[[Run], None]


def default_handlers() -> dict[str, Handler]:
    from .bulk_update import update
    from .export import export
    from .extended_query_tags import reindex

    return {"reindex": reindex, "export": export, "update": update}


def run_pending(
    index: Index, settings: Settings, handlers: Mapping[str, Handler], *, owner: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Claim and run operations until none is left (or `stop` is set); how many were run."""
    owner = owner or runner_name()
    stop = stop or threading.Event()
    lease = dt.timedelta(seconds=settings.operations_lease_seconds)
    done = 0
    while not stop.is_set():
        record = index.claim_operation(owner, lease, list(handlers))
        if record is None:
            break
        run = Run(index, record, owner, settings, stop)
        try:
            handlers[record.type](run)
        except LeaseLost:
            log.warning("operation %s: another runner took it over (this one was stalled past its lease)", record.id)
            continue
        except Exception as exc:
            log.exception("operation %s (%s) failed; it will be retried", record.id, record.type)
            _give_back(index, record, owner, exc)
            break
        if stop.is_set():
            index.release_operation(record.id, owner)  # another runner resumes it at once
            break
        done += 1
    return done


def _give_back(index: Index, record: OperationRecord, owner: str, exc: Exception) -> None:
    try:
        if record.attempts >= MAX_ATTEMPTS:
            with index.write_transaction():
                index.finish_operation(
                    record.id, owner, FAILED, ["the operation failed repeatedly; see the server log"]
                )
        else:
            index.release_operation(record.id, owner)
    except Exception:
        log.exception("operation %s: could not give it back; its lease will expire", record.id)


def runner_name() -> str:
    """Who holds a lease: host, process and a random part (a restarted process with the same pid differs)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OperationRunner(IndexThread):
    """The thread of a server process that runs operations (started with each gunicorn worker)."""

    name = "operations"

    def __init__(self, index: Index, settings: Settings, handlers: Mapping[str, Handler] | None = None):
        super().__init__(index, settings)
        self.handlers = dict(handlers) if handlers is not None else default_handlers()

    def _run(self) -> None:
        owner = runner_name()
        while not self._stop.is_set():
            try:
                self.index.connect()
                run_pending(self.index, self.settings, self.handlers, owner=owner, stop=self._stop)
            except pw.OperationalError as exc:  # the database is down: say so once a poll, no traceback
                log.warning("operations: the index is unavailable (%s); trying again", exc)
            except Exception:
                log.exception("operations: looking for work failed; trying again")
            finally:
                self._close()
            self._stop.wait(self.settings.operations_poll_seconds)
