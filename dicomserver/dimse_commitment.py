"""The DIMSE side of storage commitment (PS3.4 Annex J): the N-ACTION handler of the
gateway and the delivery of its N-EVENT-REPORT.

The result is reported after the N-ACTION response (PS3.4 J.3.3.1.2), and pynetdicom sends
that response only when the handler returns; so the handler checks the request, answers,
and a thread of its own evaluates (storage_commitment.py) and reports:

1. on the same association, if it is still established and the requestor has not asked to
   release it: the thread stops pynetdicom's association loop at the top of a turn, i.e.
   once the N-ACTION response (and any operation served since) is out (`Checkpoint`), sends
   the report and waits for its answer, then lets the loop go on;
2. else (released, aborted, not answered or answered with a failure), on a new association
   to the requestor, proposing the SCP role (J.3.3.1.3 and role selection): only to a
   DICOMWEB_DIMSE_PEERS entry with a port for its AE title, as C-MOVE destinations,
   DICOMWEB_DIMSE_COMMITMENT_ATTEMPTS times, DICOMWEB_DIMSE_COMMITMENT_RETRY_SECONDS apart.

A report that cannot be delivered is logged and kept nowhere: the requestor asks again (a new
N-ACTION is evaluated against the archive as it is then). Reports in flight are bounded by
DICOMWEB_DIMSE_MAX_ASSOCIATIONS; beyond, an N-ACTION is refused (0x0213).

This relies on pynetdicom 3.x's association loop (its `_reactor_checkpoint`, which the
gateway swaps for a `Checkpoint`) and DIMSE message queue; pynetdicom is pinned to 3.x.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.events import Event

from .archive import Archive
from .dimse_status import NOT_AUTHORIZED, SUCCESS, status_dataset
from .partitions import DEFAULT, Partition
from .storage_commitment import (
    RESOURCE_LIMITATION,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
    InvalidRequest,
    Request,
    commit,
    parse_request,
)

log = logging.getLogger(__name__)

#: The Message ID of a report (IDs are the sender's own; one report per association at a time).
_MESSAGE_ID = 1
#: How long a resumed association loop may take to leave its checkpoint (it is woken at once).
_LEAVE_SECONDS = 5.0


class CommitmentSCP:
    """The Storage Commitment Push Model SCP of a gateway: `allowed` and `destination` are
    the gateway's peer checks (who may ask; where an AE title is reached)."""

    def __init__(
        self,
        archive: Archive,
        allowed: Callable[[Event], bool],
        destination: Callable[[str], tuple[str, int] | None],
        partition: Callable[[], Partition] = lambda: DEFAULT,
    ):
        self.archive = archive
        self.settings = archive.settings
        self.allowed = allowed
        self.destination = destination
        #: The gateway's data partition (resolved when it starts).
        self.partition = partition
        self._reports = threading.BoundedSemaphore(self.settings.dimse_max_associations)

    def on_n_action(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        """Check the request and answer it; the report follows from a thread."""
        if not self.allowed(event):
            return NOT_AUTHORIZED, None
        request: Any = event.request  # an N_ACTION primitive
        try:
            parsed = parse_request(
                request.ActionTypeID,
                str(request.RequestedSOPInstanceUID or ""),
                lambda: event.action_information,
                self.settings.dimse_commitment_max_references,
            )
        except InvalidRequest as exc:
            return status_dataset(exc.status, str(exc)), None
        if not self._reports.acquire(blocking=False):
            return status_dataset(RESOURCE_LIMITATION, "too many storage commitment reports in progress"), None
        assoc = event.assoc
        requestor = assoc.requestor.ae_title.strip()
        if not isinstance(assoc._reactor_checkpoint, Checkpoint):
            # The loop is serving this request, not waiting at its checkpoint: safe to swap.
            assoc._reactor_checkpoint = Checkpoint()
        try:
            threading.Thread(
                target=self._report, args=(assoc, requestor, parsed), name="dimse-commitment", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had
            self._reports.release()
            return status_dataset(RESOURCE_LIMITATION, "the report cannot be prepared now"), None
        return SUCCESS, None

    # -- the report ---------------------------------------------------------------------

    def _report(self, assoc: Association, requestor: str, request: Request) -> None:
        try:
            index = self.archive.index
            index.connect()
            try:
                result = commit(self.archive, request, self.partition())
            finally:
                index.db.close()  # this thread's own connection (SQLite too: the thread ends)
            info = result.event_information(self.settings.dimse_ae_title)
            if self._on_same_association(assoc, result.event_type, info):
                return
            self._on_new_association(requestor, request.transaction_uid, result.event_type, info)
        except Exception:
            log.exception("storage commitment %s: the report failed", request.transaction_uid)
        finally:
            self._reports.release()

    def _on_same_association(self, assoc: Association, event_type: int, info: Dataset) -> bool:
        """Whether the report was answered with success on the requestor's association (one
        report at a time per association: each pauses and resumes its loop)."""
        with _lock_of(assoc):
            if not _pause(assoc, self.settings.dimse_dimse_timeout):
                return False
            try:
                # A release or abort the paused loop has not handled yet: the requestor is leaving.
                if not assoc.is_established or assoc.dul.peek_next_pdu() is not None:
                    return False
                return _send_on(assoc, event_type, info, self.settings.dimse_dimse_timeout)
            finally:
                cast(Checkpoint, assoc._reactor_checkpoint).resume()

    def _on_new_association(self, requestor: str, transaction_uid: str, event_type: int, info: Dataset) -> None:
        destination = self.destination(requestor)
        if destination is None:
            log.warning(
                "storage commitment %s: report not delivered: the requestor %s left its association and "
                "is no DICOMWEB_DIMSE_PEERS entry with a port", transaction_uid, requestor,
            )
            return
        s = self.settings
        for attempt in range(1, s.dimse_commitment_attempts + 1):
            if attempt > 1:
                time.sleep(s.dimse_commitment_retry_seconds)
            try:
                if self._send(destination, requestor, event_type, info):
                    return
            except Exception as exc:
                log.warning("storage commitment %s: attempt %d to %s failed: %s", transaction_uid, attempt,
                            requestor, exc)
        log.warning("storage commitment %s: report not delivered to %s after %d attempts", transaction_uid,
                    requestor, s.dimse_commitment_attempts)

    def _send(self, destination: tuple[str, int], requestor: str, event_type: int, info: Dataset) -> bool:
        """One association to the requestor, as the SCP of the SOP class (the association
        requestor proposes the SCP role only), carrying the report."""
        s = self.settings
        ae = AE(ae_title=s.dimse_ae_title)
        ae.acse_timeout = s.dimse_acse_timeout
        ae.dimse_timeout = s.dimse_dimse_timeout
        ae.network_timeout = s.dimse_network_timeout
        ae.maximum_pdu_size = s.dimse_max_pdu_bytes
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        host, port = destination
        assoc = ae.associate(
            host, port, ae_title=requestor,
            ext_neg=[build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)],
        )
        if not assoc.is_established:
            return False
        try:
            status, _ = assoc.send_n_event_report(
                info, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
            )
        finally:
            if assoc.is_established:
                assoc.release()
        return _delivered(status)


_locks: weakref.WeakKeyDictionary[Association, threading.Lock] = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def _lock_of(assoc: Association) -> threading.Lock:
    with _locks_lock:
        lock = _locks.get(assoc)
        if lock is None:
            lock = _locks[assoc] = threading.Lock()
        return lock


class Checkpoint(threading.Event):
    """An association loop's checkpoint that tells when the loop is waiting at it.

    pynetdicom's loop waits at its checkpoint at the top of each turn, i.e. between two
    operations; its send methods clear it and take `_is_paused` for "stopped there", which
    is also true while a request is being served. `parked` is set only while the loop is
    blocked at the cleared checkpoint: then no response of its own can be on its way, and
    the report's messages cannot interleave with one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.set()
        self.parked = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        self.parked.set()
        try:
            return super().wait(timeout)
        finally:
            self.parked.clear()

    def resume(self) -> None:
        """Let the loop go on, and wait until it has left the checkpoint (so that the next
        pause does not take a loop on its way out for a stopped one)."""
        self.set()
        deadline = time.monotonic() + _LEAVE_SECONDS
        while self.parked.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)


def _pause(assoc: Association, timeout: float) -> bool:
    """Stop the association's loop between operations, waiting at most `timeout` for it to
    get there; whether it stopped with the association established."""
    checkpoint = assoc._reactor_checkpoint
    if not isinstance(checkpoint, Checkpoint):
        return False
    checkpoint.clear()
    deadline = time.monotonic() + timeout
    while assoc.is_established and time.monotonic() < deadline:
        if checkpoint.parked.wait(0.05):
            return bool(assoc.is_established)
    checkpoint.set()
    return False


def _send_on(assoc: Association, event_type: int, info: Dataset, timeout: float) -> bool:
    """Send the report on the paused association and wait for its answer, at most `timeout`.

    Not `Association.send_n_event_report`: that waits the whole DIMSE timeout for an answer a
    requestor that released the association meanwhile never sends (pynetdicom ignores
    requests once it asked to release). Here, a release or abort request stops the wait,
    and the resumed loop answers it.
    """
    contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT_PUSH_MODEL]
    if not contexts:
        return False
    context = contexts[0]
    syntax = context.transfer_syntax[0]
    encoded = encode(info, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if encoded is None:
        raise ValueError("the Event Information cannot be encoded")
    request = N_EVENT_REPORT()
    request.MessageID = _MESSAGE_ID
    request.AffectedSOPClassUID = STORAGE_COMMITMENT_PUSH_MODEL
    request.AffectedSOPInstanceUID = STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
    request.EventTypeID = event_type
    request.EventInformation = BytesIO(encoded)
    assoc.dimse.send_msg(request, cast(int, context.context_id))
    messages = assoc.dimse.msg_queue
    others: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and assoc.is_established:
            try:
                item = messages.get(timeout=0.05)
            except queue.Empty:
                if assoc.dul.peek_next_pdu() is not None:
                    return False
                continue
            answer = item[1]
            if isinstance(answer, N_EVENT_REPORT) and answer.MessageIDBeingRespondedTo == _MESSAGE_ID:
                return _delivered(answer.Status)
            others.append(item)  # a request of the peer's: the loop serves it once resumed
        return False
    finally:
        if others:
            with messages.mutex:
                messages.queue.extendleft(reversed(others))
                messages.not_empty.notify()


def _delivered(status: Any) -> bool:
    """An N-EVENT-REPORT answered with success or a warning (an empty status: no answer)."""
    code = status.get("Status") if isinstance(status, Dataset) else status
    return isinstance(code, int) and (code == SUCCESS or 0xB000 <= code <= 0xBFFF or code in (0x0001, 0x0107, 0x0116))
