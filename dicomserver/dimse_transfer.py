"""How instances move through pynetdicom for the DIMSE gateway (dimse.py): out from files,
in into spools of the blob store, never whole in memory.

pynetdicom has no per-AE hooks for this, so these replace a few of its functions for the
whole process (pinned pynetdicom 3.x), acting only on associations of an AE that carries a
`gateway` (dimse.GatewayAE) and leaving any other AE of the process as pynetdicom made it:

- sending (C-GET/C-MOVE sub-operations): `StoredFile`, a Dataset that is a path, sent by
  `Association.send_c_store` from its file in PDU-sized chunks, paced to the socket; at most
  DICOMWEB_DIMSE_MAX_PDU_BYTES a PDU when the peer sets no maximum (0);
- receiving (C-STORE): the data set written as it arrives into a `ReceivedFile` (a spool of
  the blob store, which STOW's pipeline commits without a second copy), the association
  aborted once it passes DICOMWEB_MAX_INSTANCE_BYTES, and what a cut-off peer sent removed.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.events import Event

from backends.base import BlobSpool

log = logging.getLogger(__name__)

#: P-DATA PDUs of a sub-operation queued for the socket at most (each at most the peer's
#: maximum PDU length).
QUEUED_PDUS = 8


class StoredFile(Dataset):
    """A C-STORE sub-operation's instance as its Part 10 file, not read.

    pynetdicom's C-GET/C-MOVE service takes only Datasets from a handler, and its
    `send_c_store` streams only a file path; `send_sub_operations_from_files` makes it send
    this as its path. The two UIDs are there for the Failed SOP Instance UID List.
    """

    def __init__(self, path: str, sop_class_uid: str, sop_instance_uid: str):
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_path = path
        #: The peer's status for it, once sent (None: no answer).
        self.status: int | None = None


_send_c_store = Association.send_c_store


def _send_from_file(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
    """`Association.send_c_store`, sending a `StoredFile` from its file.

    A file is sent as stored (pynetdicom converts no transfer syntax when it streams a file);
    when the peer accepted no context in the stored syntax, the instance is read whole and
    pynetdicom converts it, as before (uncompressed syntaxes only).
    """
    if not isinstance(dataset, StoredFile):
        return _send_c_store(self, dataset, *args, **kwargs)
    dul = self.dul
    dul.send_pdu = _paced(dul)  # type: ignore[method-assign,assignment]
    try:
        try:
            answer = _send_c_store(self, dataset.file_path, *args, **kwargs)
        except ValueError:
            log.info("DIMSE: %s is sent converted, read whole: the peer accepted no context in its "
                     "stored transfer syntax", dataset.SOPInstanceUID)
            answer = _send_c_store(self, dcmread(dataset.file_path), *args, **kwargs)
    finally:
        del dul.send_pdu
    dataset.status = int(answer.Status) if "Status" in answer else None
    return answer


def _paced(dul: Any) -> Callable[[Any], None]:
    """`dul.send_pdu` that waits while more than `QUEUED_PDUS` P-DATA wait to be sent.

    pynetdicom queues every PDU of a message at once in an unbounded queue that its DUL
    thread drains to the socket: a file sent faster than the peer reads would be in memory
    whole. The DUL thread only takes from that queue, so waiting here cannot deadlock it;
    the wait ends when the DUL thread stops (abort, timeout).
    """
    send = dul.send_pdu

    def send_pdu(primitive: Any) -> None:
        send(primitive)
        while dul.to_provider_queue.qsize() > QUEUED_PDUS and dul.is_alive():
            time.sleep(0.001)

    return send_pdu


def send_sub_operations_from_files() -> None:
    Association.send_c_store = _send_from_file  # type: ignore[method-assign]


# -- receiving: a C-STORE's data set written into a spool of the blob store ---------------------


class ReceivedFile:
    """What pynetdicom writes a C-STORE's data set to, in place of its temporary file: a spool
    of the blob store, which STOW's pipeline stores without a second copy (the local store
    renames it into place).

    pynetdicom writes from its DUL thread, where an exception would end the association with
    no answer: a write past the size limit, or one the storage refuses, is remembered and
    what follows dropped (the spool removed at once); `_receive` then aborts the association,
    or the handler answers the failure.
    """

    def __init__(self, spool: BlobSpool | None, limit: int, *, error: Exception | None = None):
        self.spool = spool
        self.limit = limit
        self.size = 0
        self.over = False
        self.error = error
        #: pynetdicom unlinks `name` after the handler, ignoring errors: nothing is there (the
        #: spool removes its own file); `file.flush()` after each write.
        self.name = ""
        self.file = self

    def write(self, data: bytes | memoryview) -> None:
        if self.over or self.error is not None or self.spool is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            self.spool.discard()
            return
        try:
            self.spool.write(data)
        except Exception as exc:  # BlobStoreError (StoreFull), or a spool discarded meanwhile
            self.error = exc
            self.spool.discard()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.spool is not None:
            self.spool.discard()


#: The gateway whose association this (DUL) thread is receiving for, while it decodes a P-DATA.
_receiving = threading.local()
_receive_primitive = DIMSEServiceProvider.receive_primitive
_peer_maximum_pdu_size = DIMSEServiceProvider.maximum_pdu_size


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's NamedTemporaryFile for a C-STORE data set: a `ReceivedFile` of the gateway
    receiving, a real temporary file elsewhere (any other AE of the process)."""
    gateway: Any = getattr(_receiving, "gateway", None)
    if gateway is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    return gateway.received_file()


def _receive(self: DIMSEServiceProvider, primitive: Any) -> None:
    """`DIMSEServiceProvider.receive_primitive` for a gateway's association: the data set of a
    C-STORE goes into a `ReceivedFile`, and one that passes DICOMWEB_MAX_INSTANCE_BYTES while
    it arrives is dropped and the association aborted (A-ABORT); what the peer still sends
    after that is ignored."""
    gateway = getattr(self.assoc.ae, "gateway", None)
    if gateway is None:
        _receive_primitive(self, primitive)
        return
    if getattr(self, "_dicomserver_refused", False):
        return
    _receiving.gateway = gateway
    try:
        _receive_primitive(self, primitive)
    finally:
        _receiving.gateway = None
    message = self.message  # None once a message is complete (it went to the handler)
    received = getattr(message, "_data_set_file", None)
    if isinstance(received, ReceivedFile) and received.over:
        self._dicomserver_refused = True  # type: ignore[attr-defined]
        self.message = None
        gateway.refused_while_receiving(self.assoc, message)


def _bounded_pdu_size(self: DIMSEServiceProvider) -> int:
    """The peer's maximum PDU length, or DICOMWEB_DIMSE_MAX_PDU_BYTES on a gateway's association
    when the peer sets none (0): pynetdicom would put a whole sub-operation in one PDU, read
    into memory."""
    size: int = _peer_maximum_pdu_size.fget(self)  # type: ignore[attr-defined]
    gateway = getattr(self.assoc.ae, "gateway", None)
    if size or gateway is None:
        return size
    return int(gateway.settings.dimse_max_pdu_bytes)


def receive_into_spools() -> None:
    dimse_messages.NamedTemporaryFile = _named_temporary_file
    DIMSEServiceProvider.receive_primitive = _receive  # type: ignore[method-assign]
    DIMSEServiceProvider.maximum_pdu_size = property(_bounded_pdu_size)  # type: ignore[method-assign,assignment]


def drop_partial_instance(event: Event) -> None:
    """A connection that ends in the middle of a C-STORE leaves no spool file behind."""
    message = getattr(event.assoc.dimse, "message", None)
    received = getattr(message, "_data_set_file", None)
    if isinstance(received, ReceivedFile):
        received.close()
