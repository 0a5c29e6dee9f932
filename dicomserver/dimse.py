"""The DIMSE gateway (`dicomserver dimse`): C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE SCP
on the archive the DICOMweb server serves (PS3.4 Annexes A, B, C; PS3.7).

Its own process beside gunicorn, on the same DICOMWEB_* settings, so both see one archive.
Nothing here is DIMSE-only storage or matching: a C-STORE is a STOW of one Part 10 file
(`stow.store`: the same validation, change feed, webhook events, metrics and durability),
and a C-FIND is a QIDO search (`search.search`: the same matching) whose identifier keys
become query parameters. pynetdicom runs each association in a thread; every handler opens
its thread's index connection and ends its use when it returns, as a request does.

Peers: with DICOMWEB_DIMSE_PEERS set, only those AE titles associate (pynetdicom rejects the
others), and each request is refused (0x0124) unless it comes from the listed host; C-MOVE
sends only to listed peers with a port. Limits (associations, PDU size, ACSE/DIMSE/network
timeouts) come from the settings, so a slow or silent peer costs one thread for a bounded time.

No instance is held whole in memory (dimse_transfer.py): a received one is written as it
arrives into a spool of the blob store (the local store renames it into place: one write),
and refused with an A-ABORT as soon as it passes DICOMWEB_MAX_INSTANCE_BYTES; a sent one
(C-GET/C-MOVE) goes out from a file in PDU-sized chunks.

Every request that touches patient data, and every refused one, is a record of the audit
trail the HTTP side writes (audit.py: JSON lines and the index's /audit), with the calling
AE title as the subject and the peer's address as the client; and it is counted in the
metrics (metrics.py), served on the gateway's own listener (DICOMWEB_DIMSE_METRICS_PORT).

Storage commitment (N-ACTION, N-EVENT-REPORT) is `dimse_commitment.CommitmentSCP`'s, on the
same peer checks.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from backends.base import BlobStoreError

from . import metrics
from .archive import Archive
from .audit import AuditLog, AuditRecord, AuditStore, AuditTrail
from .dimse_commitment import CommitmentSCP
from .dimse_status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    COERCED,
    DOES_NOT_MATCH_SOP_CLASS,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PENDING,
    PROCESSING_FAILURE,
    SUB_OPERATIONS_FAILED,
    SUB_OPERATIONS_WARNING,
    SUCCESS,
    UNKNOWN_DESTINATION,
    WARNING_DOES_NOT_MATCH_SOP_CLASS,
    WARNING_ELEMENTS_DISCARDED,
    status_class,
    status_dataset,
)
from .dimse_transfer import (
    ReceivedFile,
    StoredFile,
    drop_partial_instance,
    receive_into_spools,
    send_sub_operations_from_files,
)
from .errors import InvalidQuery, NotFound, PayloadTooLarge, Unauthenticated
from .index import StoredInstance
from .ingest import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ELEMENTS_DISCARDED,
    INSTANCE_ALREADY_EXISTS,
    INVALID_DATASET,
    PartResult,
)
from .matching import INSTANCE, SERIES, STUDY
from .partitions import DEFAULT, DEFAULT_NAME, Partition
from .search import search
from .settings import Settings, parse_peer
from .storage_commitment import STORAGE_COMMITMENT_PUSH_MODEL
from .stow import NotStored, store_received
from .transfer_syntax import NATIVE_LITTLE_ENDIAN
from .uids import is_valid_uid

log = logging.getLogger(__name__)

#: The transfer syntaxes accepted for storage: the uncompressed ones and the common compressed
#: ones, stored as received (no transcoding on the way in, as STOW).
STORAGE_TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]
# SOP classes (PS3.4 Annexes A and C.6); pynetdicom.sop_class makes its names at run time.
Verification = "1.2.840.10008.1.1"
PatientRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.1.1"
PatientRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.1.2"
PatientRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.1.3"
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.2.2"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"
FIND_MODELS = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
GET_MODELS = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
MOVE_MODELS = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)

#: The QIDO level each Query/Retrieve level is searched at (a patient is found by its studies).
LEVELS = {"PATIENT": STUDY, "STUDY": STUDY, "SERIES": SERIES, "IMAGE": INSTANCE}
#: Identifier keys that are no matching keys.
_NOT_MATCHING = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"})
#: The value of RetrieveURL etc. is meaningless here; QIDO needs some base for its URLs.
_BASE_URL = "http://dimse.invalid"
#: PS3.8 §9.3.2.2: an association proposes at most 128 presentation contexts.
MAX_CONTEXTS = 128
#: The data action of each service, as the HTTP routes declare theirs (roles.json); a
#: service with none (C-ECHO) touches no patient data: audited only when refused.
#: (N-ACTION is storage commitment: it tells which of the named instances are stored.)
ACTIONS = {"C-STORE": "write", "C-FIND": "read", "C-GET": "read", "C-MOVE": "read", "N-ACTION": "read"}
#: How long a stopping gateway waits for the associations it aborted to finish the
#: instance they were storing (each is committed whole, or not at all).
STOP_SECONDS = 10.0

#: How long a process of a gateway of several waits per open association before it accepts
#: a new one, so that the idlest process tends to take it (`_server_on`).
ACCEPT_DELAY_SECONDS = 0.002

T = TypeVar("T")


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int | None


def peers(settings: Settings) -> list[Peer]:
    return [Peer(*parse_peer(raw)) for raw in settings.dimse_peers]


class GatewayAE(AE):
    """pynetdicom's AE, knowing its gateway: the receive and send hooks of dimse_transfer.py
    (installed for the whole process, as pynetdicom has no per-AE ones) act only on this AE's
    associations."""

    def __init__(self, gateway: Gateway, ae_title: str):
        super().__init__(ae_title=ae_title)
        self.gateway = gateway


class Gateway:
    """The DIMSE handlers of one archive, and the AE that serves them."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.settings = archive.settings
        self.peers = peers(archive.settings)
        s = self.settings
        store = AuditStore(archive.index, s.audit_retention_days) if s.audit_store else None
        self.audit = AuditTrail(AuditLog(s.audit_log), store)
        #: The data partition it stores into and queries (DICOMWEB_DIMSE_PARTITION), resolved by `start`.
        self.partition = DEFAULT
        self.commitment = CommitmentSCP(archive, self.allowed, self._destination, lambda: self.partition)

    # -- the AE -------------------------------------------------------------------------

    def application_entity(self) -> AE:
        """An AE with every storage SOP class and the Q/R models as SCP, limits from the settings."""
        s = self.settings
        # The received dataset is written as it arrives, not kept in memory: into a spool
        # of the blob store (`ReceivedFile`), where pynetdicom would make a temporary file.
        _config.STORE_RECV_CHUNKED_DATASET = True
        # C-GET/C-MOVE sub-operations are sent from files, in PDU-sized chunks.
        _config.STORE_SEND_CHUNKED_DATASET = True
        send_sub_operations_from_files()
        receive_into_spools()
        ae = GatewayAE(self, s.dimse_ae_title)
        ae.maximum_associations = s.dimse_max_associations
        ae.maximum_pdu_size = s.dimse_max_pdu_bytes
        ae.acse_timeout = s.dimse_acse_timeout
        ae.dimse_timeout = s.dimse_dimse_timeout
        ae.network_timeout = s.dimse_network_timeout
        if self.peers:
            ae.require_calling_aet = sorted({p.ae_title for p in self.peers})
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            # SCP/SCU role selection: a C-GET's C-STOREs go back over the same association.
            ae.add_supported_context(
                context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        for model in FIND_MODELS + GET_MODELS + MOVE_MODELS:
            ae.add_supported_context(model)
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
        return ae

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_N_ACTION, self.on_n_action),
        ]

    def notification_handlers(self) -> list[Any]:
        """Associations and bytes, for the metrics and the audit trail."""
        return [
            (evt.EVT_ACCEPTED, _count_association, ["accepted"]),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ABORTED, _count_association, ["aborted"]),
            (evt.EVT_CONN_CLOSE, drop_partial_instance),
            (evt.EVT_DATA_RECV, _count_bytes, [_RECEIVED]),
            (evt.EVT_DATA_SENT, _count_bytes, [_SENT]),
        ]

    def start(self, *, block: bool = True, listen_fd: int | None = None) -> ThreadedAssociationServer | None:
        """Listen on DICOMWEB_DIMSE_BIND:DICOMWEB_DIMSE_PORT; block until interrupted, or
        return the server (tests). `listen_fd`: accept on that listening socket instead, one
        the supervisor made and shares with the gateway's other processes (dimse_processes.py)."""
        s = self.settings
        if s.dimse_partition != DEFAULT_NAME:  # created if new, as a STOW into it would
            self.partition = self._connected(lambda: self.archive.partition(s.dimse_partition, create=True))
        address = (s.dimse_bind, s.dimse_port)
        ae = self.application_entity()
        handlers = self.handlers() + self.notification_handlers()
        if listen_fd is None:
            return ae.start_server(address, block=block, evt_handlers=handlers)
        server = ae.make_server(address, evt_handlers=handlers, server_class=_server_on(listen_fd))
        ae._servers.append(server)  # as start_server does: AE.shutdown() stops it
        threading.Thread(target=server.serve_forever, name="dimse-acceptor", daemon=True).start()
        if block:
            threading.Event().wait()
        return server

    def serve(self, stopping: threading.Event, *, listen_fd: int | None = None) -> None:
        """Serve (and the metrics listener, if configured) until `stopping` is set (SIGTERM,
        SIGINT), then stop as `stop` does. `listen_fd`: as one process of several
        (dimse_processes.py), on their supervisor's socket; it serves the metrics they write."""
        s = self.settings
        shared = listen_fd is not None
        try:
            server = self.start(block=False, listen_fd=listen_fd)
        except OSError as exc:
            raise OSError(exc.errno, f"{s.dimse_bind}:{s.dimse_port}: {exc.strerror or exc}") from None
        assert server is not None
        try:
            listener = self.serve_metrics(server) if s.dimse_metrics_port and not shared else None
        except OSError as exc:
            self.stop(server)
            raise OSError(exc.errno, f"{s.dimse_metrics_bind}:{s.dimse_metrics_port}: {exc.strerror or exc}") from None
        try:
            while not stopping.wait(0.5):
                if shared:
                    metrics.DIMSE_ACTIVE_ASSOCIATIONS.set(len(server.active_associations))
        finally:
            if listener is not None:
                listener.shutdown()
                listener.server_close()
            self.stop(server)

    def serve_metrics(self, server: ThreadedAssociationServer) -> ThreadingHTTPServer:
        """The metrics listener of a gateway of one process: its metrics and open associations."""
        return serve_metrics(self.settings, lambda: metrics.process_exposition(_Associations(server)))

    def stop(self, server: ThreadedAssociationServer) -> None:
        """Stop listening, abort the associations (an instance being stored is finished:
        committed whole before its thread ends, up to STOP_SECONDS), store the audit records."""
        server.shutdown()
        running = list(server.active_associations)
        for assoc in running:
            assoc.abort()
        deadline = time.monotonic() + STOP_SECONDS
        for assoc in running:
            assoc.join(max(0.0, deadline - time.monotonic()))
        self.audit.close()

    # -- who may ask ----------------------------------------------------------------------

    def allowed(self, event: Event) -> bool:
        """Whether the association's peer is one of DICOMWEB_DIMSE_PEERS (any peer when none)."""
        if not self.peers:
            return True
        requestor = event.assoc.requestor
        title = requestor.ae_title.strip()
        for peer in self.peers:
            if peer.ae_title == title and _same_host(peer.host, requestor.address):
                return True
        log.warning("DIMSE: refused %s from %s: not in DICOMWEB_DIMSE_PEERS", title, requestor.address)
        return False

    def _connected(self, work: Callable[[], T]) -> T:
        index = self.archive.index
        index.connect()
        try:
            return work()
        finally:
            index.close()

    # -- the audit trail and the request metrics --------------------------------------------

    def answered(
        self,
        assoc: Association,
        service: str,
        status: int | Dataset,
        *,
        message_id: int | None = None,
        route: str | None = None,
        studies: Iterable[str | None] = (None,),
        series: str | None = None,
        instance: str | None = None,
        size: int | None = None,
    ) -> None:
        """Count an answered request, and record it in the audit trail when it touched
        patient data or was refused (as the HTTP side records a request)."""
        code = status if isinstance(status, int) else int(status.Status)
        _count_request(service, code)
        action = ACTIONS.get(service)
        if not self.audit.enabled or (action is None and code != NOT_AUTHORIZED):
            return
        requestor = assoc.requestor
        fields: dict[str, Any] = {
            "time": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
            "request_id": _request_id(assoc, message_id),
            "subject": requestor.ae_title.strip() or "-",
            "client": str(requestor.address or "-"),
            "method": service,
            "route": route or service,
            "action": action,
            "series": series if is_valid_uid(series) else None,
            "instance": instance if is_valid_uid(instance) else None,
            "status": code,
            "bytes": size,
            "partition": self.partition.name if self.settings.partitions else None,
        }
        self.audit.write([AuditRecord(study=study if is_valid_uid(study) else None, **fields) for study in studies])

    def on_rejected(self, event: Event) -> None:
        """A refused association: counted, and audited (the calling AE title is no listed peer,
        or the gateway has DICOMWEB_DIMSE_MAX_ASSOCIATIONS already)."""
        metrics.DIMSE_ASSOCIATIONS.labels("rejected").inc()
        title = event.assoc.requestor.ae_title.strip()
        listed = not self.peers or any(peer.ae_title == title for peer in self.peers)
        self.answered(event.assoc, "A-ASSOCIATE", NOT_AUTHORIZED if not listed else OUT_OF_RESOURCES)

    # -- C-ECHO ---------------------------------------------------------------------------

    def on_echo(self, event: Event) -> int:
        status = SUCCESS if self.allowed(event) else NOT_AUTHORIZED
        self.answered(event.assoc, "C-ECHO", status, message_id=event.request.MessageID)
        return status

    # -- C-STORE --------------------------------------------------------------------------

    def on_store(self, event: Event) -> Dataset | int:
        """Store the received Part 10 file through STOW's pipeline; its result as a status."""
        request: Any = event.request
        received = getattr(request, "_dataset_file", None)
        result: PartResult | None = None
        try:
            status, result = self._store(event, received)
        finally:
            if isinstance(received, ReceivedFile):
                received.close()  # a spool not committed is removed now
        self.answered(
            event.assoc, "C-STORE", status, message_id=request.MessageID,
            studies=[result.study_instance_uid if result is not None else None],
            series=result.series_instance_uid if result is not None else None,
            instance=(result.sop_instance_uid if result is not None else None) or str(request.AffectedSOPInstanceUID),
            size=received.size if isinstance(received, ReceivedFile) else None,
        )
        return status

    def _store(self, event: Event, received: Any) -> tuple[Dataset | int, PartResult | None]:
        if not self.allowed(event):
            return NOT_AUTHORIZED, None
        if not isinstance(received, ReceivedFile):  # pynetdicom kept it in memory: not configured so
            log.error("DIMSE C-STORE: the data set was not received into a spool")
            return status_dataset(PROCESSING_FAILURE, "the archive could not store the instance"), None
        if received.over:
            return status_dataset(OUT_OF_RESOURCES, f"larger than this archive's limit of {received.limit} bytes"), None
        if received.error is not None or received.spool is None:
            log.warning("DIMSE C-STORE: storage failed", exc_info=received.error)
            return status_dataset(OUT_OF_RESOURCES, "the archive's storage is unavailable"), None
        spool = received.spool
        request: Any = event.request
        announced = (str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))
        try:
            result = self._connected(lambda: store_received(
                self.archive.ingestor, self.settings, spool, announced=announced, partition=self.partition
            ))
        except PayloadTooLarge as exc:
            return status_dataset(OUT_OF_RESOURCES, str(exc)), None
        except (BlobStoreError, OSError) as exc:
            log.warning("DIMSE C-STORE: storage failed", exc_info=exc)
            return status_dataset(OUT_OF_RESOURCES, "the archive's storage is unavailable"), None
        except Exception:
            log.exception("DIMSE C-STORE failed")
            return status_dataset(PROCESSING_FAILURE, "the archive could not store the instance"), None
        return store_status(result), result

    def received_file(self) -> ReceivedFile:
        """Where pynetdicom writes the data set of a C-STORE request of this gateway's."""
        s = self.settings
        try:
            spool = self.archive.store.spool(memory_bytes=s.spool_memory_bytes, spool_dir=s.spool_dir)
        except Exception as exc:  # in pynetdicom's DUL thread: the handler answers it
            return ReceivedFile(None, s.max_instance_bytes, error=exc)
        return ReceivedFile(spool, s.max_instance_bytes)

    def refused_while_receiving(self, assoc: Association, message: Any) -> None:
        """A C-STORE whose data set passed the size limit as it arrived: aborted (A-ABORT),
        counted and audited; called in pynetdicom's DUL thread."""
        command = message.command_set
        log.warning("DIMSE C-STORE from %s aborted: the instance passed DICOMWEB_MAX_INSTANCE_BYTES (%d)",
                    assoc.requestor.ae_title.strip(), self.settings.max_instance_bytes)
        self.answered(
            assoc, "C-STORE", OUT_OF_RESOURCES, message_id=command.get("MessageID"),
            instance=str(command.get("AffectedSOPInstanceUID", "")),
        )
        assoc._abort_nonblocking()

    # -- N-ACTION (storage commitment) ----------------------------------------------------

    def on_n_action(self, event: Event) -> tuple[int | Dataset, Dataset | None]:
        """Storage commitment's N-ACTION (dimse_commitment.py), counted and audited with the
        request's Transaction UID as its route (the report follows from a thread)."""
        status, reply = self.commitment.on_n_action(event)
        try:
            transaction = str(event.action_information.get("TransactionUID", "") or "")
        except Exception:  # undecodable: the handler has answered 0x0115 already
            transaction = ""
        self.answered(
            event.assoc, "N-ACTION", status, message_id=event.request.MessageID,
            route=f"N-ACTION storage commitment {transaction}" if transaction else "N-ACTION storage commitment",
        )
        return status, reply

    # -- C-FIND ---------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        identifier = event.identifier
        route = "C-FIND " + query_description(identifier)
        # What the record says when the generator is closed before its end: the peer went.
        status: int | Dataset = CANCEL
        try:
            if not self.allowed(event):
                status = NOT_AUTHORIZED
                yield status, None
                return
            self.archive.index.connect()
            try:
                for match in find(self.archive, identifier, self.partition):
                    if event.is_cancelled:
                        status = CANCEL
                        yield CANCEL, None
                        return
                    yield PENDING, match
            except InvalidQuery as exc:
                status = status_dataset(CANNOT_UNDERSTAND, str(exc))
                yield status, None
                return
            finally:
                self.archive.index.close()
            status = SUCCESS
            yield SUCCESS, None
        except Exception:
            status = PROCESSING_FAILURE  # pynetdicom answers the failure
            raise
        finally:
            self.answered(event.assoc, "C-FIND", status, message_id=event.request.MessageID, route=route,
                          studies=[_single_uid(identifier, "StudyInstanceUID")],
                          series=_single_uid(identifier, "SeriesInstanceUID"))

    # -- C-GET and C-MOVE -----------------------------------------------------------------

    def on_get(self, event: Event) -> Iterator[Any]:
        route = "C-GET " + _level(event.identifier)
        if not self.allowed(event):
            self.answered(event.assoc, "C-GET", NOT_AUTHORIZED, message_id=event.request.MessageID, route=route)
            yield from _refused(NOT_AUTHORIZED)
            return
        try:
            by_study = self._connected(lambda: instances_by_study(self.archive, event.identifier, self.partition))
        except InvalidQuery as exc:
            status = status_dataset(CANNOT_UNDERSTAND, str(exc))
            self.answered(event.assoc, "C-GET", status, message_id=event.request.MessageID, route=route)
            yield from _refused(status)
            return
        found = [instance for group in by_study.values() for instance in group]
        started = False
        try:
            yield len(found)
            started = True
            yield from self._send(event, found, list(by_study), "C-GET", route)
        finally:
            if not started:  # nothing to send: pynetdicom answered Success and stopped here
                self.answered(event.assoc, "C-GET", SUCCESS, message_id=event.request.MessageID, route=route)

    def on_move(self, event: Event) -> Iterator[Any]:
        """The destination (only a listed peer with a port), then as C-GET; the association
        to it proposes the SOP classes and transfer syntaxes of what is sent."""
        title = _text(event.move_destination)
        route = f"C-MOVE {_level(event.identifier)} to {title or '(none)'}"
        destination = self._destination(title)
        if not self.allowed(event) or destination is None:
            # pynetdicom answers 0xA801 (move destination unknown); for a refused peer too,
            # as the destination is the first answer a C-MOVE handler gives.
            refusal = UNKNOWN_DESTINATION if self.peers_allow(event) else NOT_AUTHORIZED
            self.answered(event.assoc, "C-MOVE", refusal, message_id=event.request.MessageID, route=route)
            yield None, None
            return
        try:
            by_study = self._connected(lambda: instances_by_study(self.archive, event.identifier, self.partition))
        except InvalidQuery as exc:
            status = status_dataset(CANNOT_UNDERSTAND, str(exc))
            self.answered(event.assoc, "C-MOVE", status, message_id=event.request.MessageID, route=route)
            yield (*destination, {"contexts": [build_context(Verification)]})
            yield from _refused(status)
            return
        found = [instance for group in by_study.values() for instance in group]
        started = False
        try:
            yield (*destination, {"contexts": move_contexts(found) or [build_context(Verification)],
                                  "evt_handlers": _BYTES_COUNTED})
            yield len(found)
            started = True
            yield from self._send(event, found, list(by_study), "C-MOVE", route)
        finally:
            if not started:  # pynetdicom stopped before the first sub-operation: nothing to send
                # (Success), or no association with the destination (0xA801)
                self.answered(event.assoc, "C-MOVE", UNKNOWN_DESTINATION if found else SUCCESS,
                              message_id=event.request.MessageID, route=route, studies=list(by_study) or [None])

    def peers_allow(self, event: Event) -> bool:
        """`allowed`, without its warning (asked again for the audit record)."""
        if not self.peers:
            return True
        requestor = event.assoc.requestor
        title = requestor.ae_title.strip()
        return any(p.ae_title == title and _same_host(p.host, requestor.address) for p in self.peers)

    def _destination(self, title: bytes | str | None) -> tuple[str, int] | None:
        name = _text(title)
        for peer in self.peers:
            if peer.ae_title == name and peer.port is not None:
                return peer.host, peer.port
        return None

    def _send(
        self, event: Event, found: list[StoredInstance], studies: list[str], service: str, route: str
    ) -> Iterator[Any]:
        """One C-STORE sub-operation per instance, each sent from a file in chunks: the blob's
        own file on a local store, else a temporary copy, deleted once it is sent. Ends with
        the audit record of the request: the studies sent, the bytes and the final status."""
        store = self.archive.store
        completed = failed = sent_bytes = 0
        cancelled = False
        try:
            for instance in found:
                if event.is_cancelled:
                    cancelled = True
                    yield CANCEL, None
                    return
                copy: str | None = None
                try:
                    path = store.local_path(instance.blob_key)
                    if path is None:
                        copy = path = self._copy(instance.blob_key)
                except Exception:
                    log.exception("DIMSE: cannot read %s", instance.sop_instance_uid)
                    failed += 1
                    yield PROCESSING_FAILURE, None
                    continue
                sub_operation = StoredFile(path, instance.sop_class_uid, instance.sop_instance_uid)
                try:
                    yield PENDING, sub_operation
                finally:
                    if copy is not None:
                        os.unlink(copy)
                if sub_operation.status is not None and status_class(sub_operation.status) in ("success", "warning"):
                    completed += 1
                    sent_bytes += instance.size
                else:
                    failed += 1
        finally:
            failed += len(found) - completed - failed if not cancelled else 0
            status = (
                CANCEL if cancelled
                else SUCCESS if not failed
                else SUB_OPERATIONS_WARNING if completed
                else SUB_OPERATIONS_FAILED
            )
            self.answered(event.assoc, service, status, message_id=event.request.MessageID, route=route,
                          studies=studies or [None], size=sent_bytes)

    def _copy(self, key: str) -> str:
        """The blob streamed into a temporary file (in the spool directory, if set)."""
        fd, path = tempfile.mkstemp(prefix="dimse-", suffix=".dcm", dir=self.settings.spool_dir or None)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self.archive.store.iter_bytes(key):
                    out.write(chunk)
        except BaseException:
            os.unlink(path)
            raise
        return path


# -- metrics and the audit record's request id ----------------------------------------------

_RECEIVED = "received"
_SENT = "sent"


#: DIMSE_REQUESTS' children by (service, status class), as metrics.py keeps the HTTP ones.
_request_children: dict[tuple[str, str], Any] = {}


def _count_request(service: str, code: int) -> None:
    key = (service, status_class(code))
    child = _request_children.get(key)
    if child is None:
        child = _request_children[key] = metrics.DIMSE_REQUESTS.labels(*key)
    child.inc()


def _count_association(event: Event, outcome: str) -> None:
    metrics.DIMSE_ASSOCIATIONS.labels(outcome).inc()


def _count_bytes(event: Event, direction: str) -> None:
    metrics.DIMSE_BYTES.labels(direction).inc(len(event.data))


#: The handlers of the association a C-MOVE opens to its destination: its bytes count too.
_BYTES_COUNTED = [(evt.EVT_DATA_RECV, _count_bytes, [_RECEIVED]), (evt.EVT_DATA_SENT, _count_bytes, [_SENT])]


def _request_id(assoc: Association, message_id: int | None) -> str:
    """The association's id (random, one per association) and the request's Message ID: the
    records of one association share the first part."""
    ident = getattr(assoc, "_dicomserver_id", None)
    if ident is None:
        ident = os.urandom(8).hex()
        assoc._dicomserver_id = ident  # type: ignore[attr-defined]
    return ident if message_id is None else f"{ident}-{message_id}"


def serve_metrics(settings: Settings, exposition: Callable[[], bytes]) -> ThreadingHTTPServer:
    """`GET /metrics` on DICOMWEB_DIMSE_METRICS_BIND:DICOMWEB_DIMSE_METRICS_PORT, in a thread:
    what `exposition` gives (DICOMWEB_METRICS_TOKEN applies)."""
    listener = ThreadingHTTPServer((settings.dimse_metrics_bind, settings.dimse_metrics_port or 0), _MetricsHandler)
    listener.daemon_threads = True
    listener.token = settings.metrics_token  # type: ignore[attr-defined]
    listener.exposition = exposition  # type: ignore[attr-defined]
    threading.Thread(target=listener.serve_forever, name="dimse-metrics", daemon=True).start()
    return listener


def _server_on(listen_fd: int) -> type[ThreadedAssociationServer]:
    """pynetdicom's server class, accepting on an inherited listening socket.

    The socket is the supervisor's, shared by the gateway's processes: each waits for it to be
    readable and one accepts, so an idle process tends to take the next association (where
    SO_REUSEPORT would hash a few connections unevenly). Non-blocking: a process that loses
    the race gets EAGAIN (socketserver ignores it), instead of blocking in accept().
    """

    class OnInheritedSocket(ThreadedAssociationServer):
        def server_bind(self) -> None:
            assert self.socket is not None
            self.socket.close()
            self.socket = socket.socket(fileno=listen_fd)
            self.socket.setblocking(False)
            self.server_address = self.socket.getsockname()
            self.accepted: list[float] = []  # when this process accepted its latest connections

        def server_activate(self) -> None:
            pass  # listening already

        def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
            # Every process wakes for a new connection: one with associations lets an idle
            # one take it first (the kernel would hand it to whichever accepts first). An
            # association appears some time after its accept: recent accepts count too.
            now = time.monotonic()
            self.accepted = [t for t in self.accepted if now - t < 1.0]
            busy = max(len(self.active_associations), len(self.accepted))
            if busy:
                time.sleep(ACCEPT_DELAY_SECONDS * min(busy, 10))
            request = super().get_request()
            self.accepted.append(time.monotonic())
            return request

    return OnInheritedSocket


class _Associations(Collector):
    """The server's open associations, read at scrape time."""

    def __init__(self, server: ThreadedAssociationServer):
        self.server = server

    def collect(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("dicomweb_dimse_active_associations", "Associations the DIMSE gateway has open",
                                  value=len(self.server.active_associations))]


class _MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics of the gateway's listener; anything else is 404."""

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self._answer(404, b"not found\n", "text/plain")
            return
        try:
            metrics.check_scrape_token(self.server.token, self.headers.get("Authorization"))  # type: ignore[attr-defined]
        except Unauthenticated:
            self._answer(401, b"", "text/plain", {"WWW-Authenticate": 'Bearer realm="metrics"'})
            return
        self._answer(200, self.server.exposition(), metrics.CONTENT_TYPE)  # type: ignore[attr-defined]

    def _answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not logged


# -- identifiers as the audit record names them ------------------------------------------------


def _text(value: bytes | str | None) -> str:
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else value or "").strip()


def _level(identifier: Dataset | None) -> str:
    level = str(getattr(identifier, "QueryRetrieveLevel", "") or "").upper()
    return level if level in LEVELS else "(invalid level)"


def query_description(identifier: Dataset | None) -> str:
    """A C-FIND's level and the keywords of its matching keys, never their values (the audit
    record keeps no attribute value): 'STUDY PatientID,StudyDate'."""
    keys = [e.keyword for e in identifier or [] if e.keyword and e.keyword not in _NOT_MATCHING
            and e.VR != "SQ" and e.value not in (None, "", [])]
    return f"{_level(identifier)} {','.join(keys)}".rstrip()


def _single_uid(identifier: Dataset | None, keyword: str) -> str | None:
    value = getattr(identifier, keyword, None) if identifier is not None else None
    return str(value) if isinstance(value, str) and is_valid_uid(str(value)) else None


def _refused(status: int | Dataset) -> Iterator[Any]:
    """A C-GET/C-MOVE handler's answers for a request refused before any sub-operation:
    pynetdicom answers Success at once to a count of 0, so one is announced, then the status."""
    yield 1
    yield status, None


def move_contexts(found: list[StoredInstance]) -> list[PresentationContext]:
    """One presentation context per SOP class sent, with the transfer syntaxes stored
    (PS3.8 allows 128 contexts: beyond, the sub-operations of the rest fail)."""
    syntaxes: dict[str, set[str]] = {}
    for instance in found:
        syntaxes.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax_uid)
    return [
        build_context(sop_class, sorted(ts | NATIVE_LITTLE_ENDIAN))
        for sop_class, ts in list(syntaxes.items())[:MAX_CONTEXTS]
    ]


def store_status(result: PartResult) -> Dataset | int:
    """A STOW part result as a C-STORE status (PS3.4 B.2.3).

    A duplicate SOP Instance UID is success: the archive keeps the first copy, as
    `dicomserver import` counts it ("already present"), so a modality resending an
    association after a timeout does not see failures for what is stored.
    """
    if result.stored:
        if result.warning_reason == ELEMENTS_DISCARDED:
            return status_dataset(WARNING_ELEMENTS_DISCARDED, _comment(result))
        if result.warning_reason == DATASET_DOES_NOT_MATCH_SOP_CLASS:
            return status_dataset(WARNING_DOES_NOT_MATCH_SOP_CLASS, _comment(result))
        if result.warning_reason is not None:
            return status_dataset(COERCED, _comment(result))
        return SUCCESS
    if result.failure_reason == INSTANCE_ALREADY_EXISTS:
        return SUCCESS
    if isinstance(result, NotStored):
        return status_dataset(OUT_OF_RESOURCES, _comment(result))
    if result.failure_reason == INVALID_DATASET:
        return status_dataset(DOES_NOT_MATCH_SOP_CLASS, _comment(result))
    return status_dataset(CANNOT_UNDERSTAND, _comment(result))


def _comment(result: PartResult) -> str | None:
    return result.comments[0] if result.comments else None


# -- C-FIND: an identifier as a QIDO search ---------------------------------------------------


def find(archive: Archive, identifier: Dataset, partition: Partition = DEFAULT) -> Iterator[Dataset]:
    """The matches of a C-FIND identifier, each with the identifier's keys (PS3.4 C.4.1.1.3).

    The identifier's keys with a value become QIDO matching parameters, every key an
    includefield; a PATIENT query is a study search, one answer per patient. Keys QIDO
    cannot match are not matched (returned empty), as QIDO ignores them.
    """
    level = str(identifier.get("QueryRetrieveLevel", "")).upper()
    if level not in LEVELS:
        raise InvalidQuery(f"QueryRetrieveLevel {level or '(none)'} is not PATIENT, STUDY, SERIES or IMAGE")
    args = query_args(identifier)
    patients: set[tuple[str, str]] = set()
    limit = archive.settings.qido_max_limit
    offset = 0
    while True:
        page = search(archive, LEVELS[level], [*args, ("limit", str(limit)), ("offset", str(offset))],
                      base_url=_BASE_URL, partition=partition)
        for item in json.loads(page.body):
            found = Dataset.from_json(item)
            if level == "PATIENT":
                patient = (str(found.get("PatientID", "")), str(found.get("PatientName", "")))
                if patient in patients:
                    continue
                patients.add(patient)
            yield _answer(identifier, found, level, archive.settings.dimse_ae_title)
        if not page.more:
            return
        offset += limit


def query_args(identifier: Dataset) -> list[tuple[str, str]]:
    """QIDO parameters for an identifier: its keys with values, and every key as includefield."""
    args: list[tuple[str, str]] = []
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in _NOT_MATCHING:
            continue
        args.append(("includefield", keyword))
        if element.VR == "SQ" or element.value in (None, "", []):
            continue
        values = element.value if element.VM > 1 else [element.value]
        # A UID list is backslash-separated in DIMSE, comma-separated in QIDO.
        args.append((keyword, ",".join(str(v) for v in values)))
    return args


def _answer(identifier: Dataset, found: Dataset, level: str, ae_title: str) -> Dataset:
    answer = Dataset()
    for element in identifier:
        if element.tag in found:
            answer[element.tag] = found[element.tag]
        else:
            answer.add_new(element.tag, element.VR, None)
    answer.QueryRetrieveLevel = level
    answer.RetrieveAETitle = ae_title
    # The index's values are Unicode (DICOM JSON): sent as UTF-8 when any is not ASCII.
    if not all(str(element.value).isascii() for element in answer if element.VR != "SQ"):
        answer.SpecificCharacterSet = "ISO_IR 192"
    return answer


# -- C-GET and C-MOVE: an identifier as instances ----------------------------------------------


def instances(archive: Archive, identifier: Dataset, partition: Partition = DEFAULT) -> list[StoredInstance]:
    """The stored instances a C-GET/C-MOVE identifier names (PS3.4 C.4.2.2.1: unique keys)."""
    return [instance for group in instances_by_study(archive, identifier, partition).values() for instance in group]


def instances_by_study(
    archive: Archive, identifier: Dataset, partition: Partition = DEFAULT
) -> dict[str, list[StoredInstance]]:
    """`instances` by Study Instance UID (studies with none found left out), for the audit.

    STUDY/SERIES/IMAGE levels name their UIDs (lists allowed); PATIENT names a PatientID,
    whose studies a QIDO search finds.
    """
    level = str(identifier.get("QueryRetrieveLevel", "")).upper()
    if level not in LEVELS:
        raise InvalidQuery(f"QueryRetrieveLevel {level or '(none)'} is not PATIENT, STUDY, SERIES or IMAGE")
    if level == "PATIENT":
        if not identifier.get("PatientID"):
            raise InvalidQuery("a PATIENT level retrieve needs a PatientID")
        studies = [str(d.StudyInstanceUID) for d in find(archive, _keys(
            QueryRetrieveLevel="STUDY", PatientID=identifier.PatientID, StudyInstanceUID=""), partition)]
    else:
        studies = _uids(identifier, "StudyInstanceUID")
    series = _uids(identifier, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else [None]
    sops = _uids(identifier, "SOPInstanceUID") if level == "IMAGE" else [None]
    found: dict[str, list[StoredInstance]] = {}
    for study in studies:
        for one_series in series:
            for sop in sops:
                try:
                    found.setdefault(study, []).extend(
                        archive.index.instances(study, one_series, sop, partition=partition)
                    )
                except NotFound:
                    continue
    return {study: group for study, group in found.items() if group}


def _uids(identifier: Dataset, keyword: str) -> list[str]:
    value = identifier.get(keyword)
    if value is None or value == "":
        raise InvalidQuery(f"a retrieve at this level needs {keyword}")
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def _keys(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _same_host(host: str, address: str) -> bool:
    """Whether a peer's configured host (a name or an address) is the connection's address."""
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address)
    except ValueError:
        pass
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return address in resolved
