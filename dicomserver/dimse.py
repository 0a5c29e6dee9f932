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

No instance is held whole in memory: a received one goes to a temporary file, a sent one
(C-GET/C-MOVE) goes out from a file in PDU-sized chunks (`StoredFile`, `_send_from_file`).

Storage commitment (N-ACTION, N-EVENT-REPORT) is `dimse_commitment.CommitmentSCP`'s, on the
same peer checks.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from backends.base import BlobStoreError

from .archive import Archive
from .dimse_commitment import CommitmentSCP
from .errors import InvalidQuery, NotFound, PayloadTooLarge
from .index import StoredInstance
from .ingest import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ELEMENTS_DISCARDED,
    INSTANCE_ALREADY_EXISTS,
    INVALID_DATASET,
    PartResult,
)
from .matching import INSTANCE, SERIES, STUDY
from .media import DICOM
from .search import search
from .settings import Settings, parse_peer
from .storage_commitment import STORAGE_COMMITMENT_PUSH_MODEL
from .stow import NotStored, store

log = logging.getLogger(__name__)

#: The transfer syntaxes accepted for storage: the uncompressed ones and the common compressed
#: ones, stored as received (no transcoding on the way in, as STOW).
STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
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

# DIMSE statuses (PS3.4 Annexes B.2.3 and C.4; PS3.7 Annex C).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
UNKNOWN_DESTINATION = 0xA801
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
COERCED = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DOES_NOT_MATCH_SOP_CLASS = 0xB007

#: The QIDO level each Query/Retrieve level is searched at (a patient is found by its studies).
LEVELS = {"PATIENT": STUDY, "STUDY": STUDY, "SERIES": SERIES, "IMAGE": INSTANCE}
#: Identifier keys that are no matching keys.
_NOT_MATCHING = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"})
#: The value of RetrieveURL etc. is meaningless here; QIDO needs some base for its URLs.
_BASE_URL = "http://dimse.invalid"
#: PS3.8 §9.3.2.2: an association proposes at most 128 presentation contexts.
MAX_CONTEXTS = 128
#: P-DATA PDUs of a sub-operation queued for the socket at most (each at most the peer's
#: maximum PDU length).
QUEUED_PDUS = 8
#: PS3.5: Error Comment is LO, 64 characters at most.
_COMMENT_CHARS = 64

T = TypeVar("T")


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int | None


def peers(settings: Settings) -> list[Peer]:
    return [Peer(*parse_peer(raw)) for raw in settings.dimse_peers]


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:_COMMENT_CHARS]
    return ds


class Gateway:
    """The DIMSE handlers of one archive, and the AE that serves them."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.settings = archive.settings
        self.peers = peers(archive.settings)
        self.commitment = CommitmentSCP(archive, self.allowed, self._destination)

    # -- the AE -------------------------------------------------------------------------

    def application_entity(self) -> AE:
        """An AE with every storage SOP class and the Q/R models as SCP, limits from the settings."""
        s = self.settings
        # The received dataset goes to a temporary Part 10 file, not into memory: in the
        # spool directory if one is set (this process is the gateway's alone).
        _config.STORE_RECV_CHUNKED_DATASET = True
        # C-GET/C-MOVE sub-operations are sent from files, in PDU-sized chunks.
        _config.STORE_SEND_CHUNKED_DATASET = True
        _send_sub_operations_from_files()
        if s.spool_dir:
            tempfile.tempdir = s.spool_dir
        ae = AE(ae_title=s.dimse_ae_title)
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
            (evt.EVT_N_ACTION, self.commitment.on_n_action),
        ]

    def start(self, *, block: bool = True) -> ThreadedAssociationServer | None:
        """Listen on DICOMWEB_DIMSE_BIND:DICOMWEB_DIMSE_PORT; block until interrupted, or
        return the server (tests)."""
        s = self.settings
        address = (s.dimse_bind, s.dimse_port)
        return self.application_entity().start_server(address, block=block, evt_handlers=self.handlers())

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

    # -- C-ECHO ---------------------------------------------------------------------------

    def on_echo(self, event: Event) -> int:
        return SUCCESS if self.allowed(event) else NOT_AUTHORIZED

    # -- C-STORE --------------------------------------------------------------------------

    def on_store(self, event: Event) -> Dataset | int:
        """Store the received Part 10 file through STOW's pipeline; its result as a status."""
        if not self.allowed(event):
            return NOT_AUTHORIZED
        path = event.dataset_path
        mismatch = affected_mismatch(event.request, path)
        if mismatch is not None:
            return mismatch
        try:
            with open(path, "rb") as fp:
                results = self._connected(
                    lambda: store(
                        self.archive.ingestor, self.settings, fp.read, DICOM, study_uid=None, replace=False
                    )
                )
        except PayloadTooLarge as exc:
            return _status(OUT_OF_RESOURCES, str(exc))
        except (BlobStoreError, OSError) as exc:
            log.warning("DIMSE C-STORE: storage failed", exc_info=exc)
            return _status(OUT_OF_RESOURCES, "the archive's storage is unavailable")
        except Exception:
            log.exception("DIMSE C-STORE failed")
            return _status(PROCESSING_FAILURE, "the archive could not store the instance")
        return store_status(results[0])

    # -- C-FIND ---------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        if not self.allowed(event):
            yield NOT_AUTHORIZED, None
            return
        identifier = event.identifier
        self.archive.index.connect()
        try:
            for match in find(self.archive, identifier):
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, match
        except InvalidQuery as exc:
            yield _status(CANNOT_UNDERSTAND, str(exc)), None
            return
        finally:
            self.archive.index.close()
        yield SUCCESS, None

    # -- C-GET and C-MOVE -----------------------------------------------------------------

    def on_get(self, event: Event) -> Iterator[Any]:
        if not self.allowed(event):
            yield from _refused(NOT_AUTHORIZED)
            return
        try:
            found = self._connected(lambda: instances(self.archive, event.identifier))
        except InvalidQuery as exc:
            yield from _refused(_status(CANNOT_UNDERSTAND, str(exc)))
            return
        yield len(found)
        yield from self._send(event, found)

    def on_move(self, event: Event) -> Iterator[Any]:
        """The destination (only a listed peer with a port), then as C-GET; the association
        to it proposes the SOP classes and transfer syntaxes of what is sent."""
        destination = self._destination(event.move_destination)
        if not self.allowed(event) or destination is None:
            # pynetdicom answers 0xA801 (move destination unknown); for a refused peer too,
            # as the destination is the first answer a C-MOVE handler gives.
            yield None, None
            return
        try:
            found = self._connected(lambda: instances(self.archive, event.identifier))
        except InvalidQuery as exc:
            yield (*destination, {"contexts": [build_context(Verification)]})
            yield from _refused(_status(CANNOT_UNDERSTAND, str(exc)))
            return
        yield (*destination, {"contexts": move_contexts(found) or [build_context(Verification)]})
        yield len(found)
        yield from self._send(event, found)

    def _destination(self, title: bytes | str | None) -> tuple[str, int] | None:
        name = (title.decode("ascii", "replace") if isinstance(title, bytes) else title or "").strip()
        for peer in self.peers:
            if peer.ae_title == name and peer.port is not None:
                return peer.host, peer.port
        return None

    def _send(self, event: Event, found: list[StoredInstance]) -> Iterator[Any]:
        """One C-STORE sub-operation per instance, each sent from a file in chunks: the blob's
        own file on a local store, else a temporary copy, deleted once it is sent."""
        store = self.archive.store
        for instance in found:
            if event.is_cancelled:
                yield CANCEL, None
                return
            copy: str | None = None
            try:
                path = store.local_path(instance.blob_key)
                if path is None:
                    copy = path = self._copy(instance.blob_key)
            except Exception:
                log.exception("DIMSE: cannot read %s", instance.sop_instance_uid)
                yield PROCESSING_FAILURE, None
                continue
            try:
                yield PENDING, StoredFile(path, instance.sop_class_uid, instance.sop_instance_uid)
            finally:
                if copy is not None:
                    os.unlink(copy)

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


class StoredFile(Dataset):
    """A C-STORE sub-operation's instance as its Part 10 file, not read.

    pynetdicom's C-GET/C-MOVE service takes only Datasets from a handler, and its
    `send_c_store` streams only a file path; `_send_sub_operations_from_files` makes it send
    this as its path. The two UIDs are there for the Failed SOP Instance UID List.
    """

    def __init__(self, path: str, sop_class_uid: str, sop_instance_uid: str):
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_path = path


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
        return _send_c_store(self, dataset.file_path, *args, **kwargs)
    except ValueError:
        log.info("DIMSE: %s is sent converted, read whole: the peer accepted no context in its "
                 "stored transfer syntax", dataset.SOPInstanceUID)
        return _send_c_store(self, dcmread(dataset.file_path), *args, **kwargs)
    finally:
        del dul.send_pdu


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


def _send_sub_operations_from_files() -> None:
    Association.send_c_store = _send_from_file  # type: ignore[method-assign]


def affected_mismatch(request: Any, path: str | os.PathLike[str]) -> Dataset | None:
    """A failure status when the C-STORE request's Affected SOP Class/Instance UID is not the
    data set's SOP Class/Instance UID (PS3.7 9.3.1.1; PS3.4 B.2.3), else None.

    A class mismatch is 0xA900 (Data Set does not match SOP Class); an instance mismatch has no
    status of its own in PS3.4 B.2.3, so it is 0xC000 (Cannot understand) with an Error Comment.
    Only the header is read, up to the two UIDs.
    """
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    except Exception:
        return None  # the pipeline refuses what it cannot parse, with its own comment
    sop_class = str(header.get("SOPClassUID", ""))
    sop_instance = str(header.get("SOPInstanceUID", ""))
    if sop_class and str(request.AffectedSOPClassUID) != sop_class:
        return _status(DOES_NOT_MATCH_SOP_CLASS, "Affected SOP Class UID is not the data set's SOP Class UID")
    if sop_instance and str(request.AffectedSOPInstanceUID) != sop_instance:
        return _status(CANNOT_UNDERSTAND, "Affected SOP Instance UID is not the data set's SOP Instance UID")
    return None


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
        build_context(sop_class, sorted(ts | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
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
            return _status(WARNING_ELEMENTS_DISCARDED, _comment(result))
        if result.warning_reason == DATASET_DOES_NOT_MATCH_SOP_CLASS:
            return _status(WARNING_DOES_NOT_MATCH_SOP_CLASS, _comment(result))
        if result.warning_reason is not None:
            return _status(COERCED, _comment(result))
        return SUCCESS
    if result.failure_reason == INSTANCE_ALREADY_EXISTS:
        return SUCCESS
    if isinstance(result, NotStored):
        return _status(OUT_OF_RESOURCES, _comment(result))
    if result.failure_reason == INVALID_DATASET:
        return _status(DOES_NOT_MATCH_SOP_CLASS, _comment(result))
    return _status(CANNOT_UNDERSTAND, _comment(result))


def _comment(result: PartResult) -> str | None:
    return result.comments[0] if result.comments else None


# -- C-FIND: an identifier as a QIDO search ---------------------------------------------------


def find(archive: Archive, identifier: Dataset) -> Iterator[Dataset]:
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
                      base_url=_BASE_URL)
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


def instances(archive: Archive, identifier: Dataset) -> list[StoredInstance]:
    """The stored instances a C-GET/C-MOVE identifier names (PS3.4 C.4.2.2.1: unique keys).

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
            QueryRetrieveLevel="STUDY", PatientID=identifier.PatientID, StudyInstanceUID=""))]
    else:
        studies = _uids(identifier, "StudyInstanceUID")
    series = _uids(identifier, "SeriesInstanceUID") if level in ("SERIES", "IMAGE") else [None]
    sops = _uids(identifier, "SOPInstanceUID") if level == "IMAGE" else [None]
    found: list[StoredInstance] = []
    for study in studies:
        for one_series in series:
            for sop in sops:
                try:
                    found.extend(archive.index.instances(study, one_series, sop))
                except NotFound:
                    continue
    return found


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
