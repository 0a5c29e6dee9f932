"""STOW-RS requests (PS3.18 §10.5): a request body in, the response dataset out.

The body is read as a stream: each Part 10 part is written, as it arrives, into a spool
of the blob store (`BlobStore.spool`: on local disk the file that becomes the blob, so
the bytes are written once and hashed on the way) and handed to the ingest pipeline as
soon as its closing delimiter arrives, so memory stays flat for any size and a
truncated part is never stored. DICOM JSON and bulk data parts, which are no blobs,
are spooled to memory, then disk. Every part ends as one `PartResult`;
`response` turns them into the Store Instances Response dataset and its status.
PUT is the reference server's upsert: new instances are stored, existing ones replaced.

When the archive's storage fails mid-request (blob store full or down, index database
down, no space to spool), the parts already stored stay stored and are reported; the
failing part and every later one get FailedSOPSequence items (272, Processing failure)
saying why. Later parts are read to the end of the body but not tried: an outage rarely
heals within a request, trying each would wait on it again, and a full disk is best left
with the room it has. Reading on lets the client, still sending, receive the answer.
"""
from __future__ import annotations

import errno
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import peewee

from backends.base import SPOOL_PREFIX, BlobSpool, BlobStoreError, StoreFull

from .errors import BadRequest, InsufficientStorage, PayloadTooLarge, UnsupportedMediaType, http_status
from .ingest import (
    CANNOT_UNDERSTAND,
    INVALID_DATASET,
    PROCESSING_FAILURE,
    Ingestor,
    InstanceRejected,
    PartResult,
    name_from_head,
)
from .media import DICOM, DICOM_JSON, JSON, MULTIPART_RELATED, parse_media_type
from .metrics import count_stow_instance
from .multipart import End, Event, MultipartError, PartData, PartEnd, PartStart, iter_events
from .partitions import DEFAULT, Partition
from .settings import Settings
from .stow_json import BulkPart, MetadataRejected, build_part10, is_bulk_media_type
from .uids import normalize_uid

#: Request body reads: a part up to this size comes as one piece, searched for its delimiter
#: once and spooled in one write. (A chunked body is gunicorn's to read: it buffers up to
#: 1 MiB of read-ahead and copies what is left of it on every read, so smaller reads would
#: copy the same bytes many times over.)
READ_CHUNK = 1024 * 1024
#: A DICOM JSON metadata part is parsed whole: keep it bounded.
MAX_JSON_PART_BYTES = 64 * 1024 * 1024
#: The start of a part kept (as views of the body, no copy) while it is received, so a
#: part the store has no room for can still be named in the answer.
HEAD_BYTES = 64 * 1024

#: Spooled JSON and bulk data parts that outgrow memory go to an unnamed temp file
#: (O_TMPFILE, or unlinked as soon as it is made), so a killed worker leaves none behind;
#: SPOOL_PREFIX names the file wherever a name is seen (/proc/<pid>/fd).
#: Failures of the archive's storage rather than of the request, when errors.STATUS gives
#: them one of OUTAGE_STATUSES (not so an invalid key or a missing blob: those are bugs).
STORAGE_ERRORS = (BlobStoreError, peewee.OperationalError, InsufficientStorage)
OUTAGE_STATUSES = (503, 507)
#: SQLite's SQLITE_FULL result code, and PostgreSQL's SQLSTATE disk_full.
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"
_OUT_OF_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})

log = logging.getLogger(__name__)

#: Reads up to n bytes of the request body; b"" at its end (a WSGI input stream's read).
Read = Callable[[int], bytes]
DicomJsonDataset = dict[str, Any]


@dataclass
class NotStored(PartResult):
    """A part the archive could not store because its storage failed (reason 272).

    Carries the status errors.STATUS gives that failure, which answers a request that
    stored nothing (507 when out of space), so the client knows to retry later.
    """

    outage_status: int = 503


def store(
    ingestor: Ingestor, settings: Settings, read: Read, content_type: str, *, study_uid: str | None, replace: bool,
    partition: Partition = DEFAULT,
) -> list[PartResult]:
    """Store every instance of a STOW request body; one result per part.

    Raises for what makes the whole request unusable (a media type this service does not
    read, a malformed multipart body, an instance over the size limit); a bad instance
    is a failed result, never an exception.
    """
    request = _StowRequest(ingestor, settings, study_uid=study_uid, replace=replace, partition=partition)
    mimetype, params = parse_media_type(content_type)
    if mimetype == DICOM:
        return _counted([request.single(read)])
    if mimetype == MULTIPART_RELATED:
        part_type = (params.get("type") or DICOM).lower()
        if part_type not in (DICOM, DICOM_JSON):
            raise UnsupportedMediaType(
                f'multipart/related with type="{part_type}" is not supported; use type="application/dicom" '
                'or type="application/dicom+json" (metadata and bulk data)'
            )
        return _counted(request.multipart(read, params.get("boundary"), part_type))
    raise UnsupportedMediaType(
        f"Content-Type {mimetype or '(none)'!r} is not supported; send "
        'multipart/related; type="application/dicom" or application/dicom'
    )


def store_received(
    ingestor: Ingestor,
    settings: Settings,
    received: BlobSpool,
    *,
    announced: tuple[str, str] | None = None,
    partition: Partition = DEFAULT,
) -> PartResult:
    """Store one Part 10 file that arrived otherwise than in a STOW body (a DIMSE C-STORE),
    already written into a spool of the blob store: the single part of a STOW, without a
    second copy of its bytes (the spool is used up). `announced`: the SOP Class and Instance
    UID its sender said it is (a C-STORE's Affected ones), checked on the pipeline's own read
    of the header. Raises PayloadTooLarge over the limit."""
    limit = settings.max_instance_bytes
    if received.size > limit:
        received.discard()
        raise PayloadTooLarge(f"a DICOM instance is larger than this server's limit of {limit} bytes")
    request = _StowRequest(ingestor, settings, study_uid=None, replace=False, partition=partition)
    return _counted([request.ingest(received, announced=announced)])[0]


def _not_announced(result: PartResult, sop_class_uid: str, sop_instance_uid: str) -> bool:
    """Refuse (True) a part that is not the instance its sender announced (PS3.7 9.3.1.1): a
    class mismatch is 0xA900 (PS3.4 B.2.3, Data Set does not match SOP Class); an instance
    mismatch has no status of its own there, so it is 0xC000 (Cannot understand)."""
    if result.sop_class_uid != sop_class_uid:
        reason, comment = INVALID_DATASET, "Affected SOP Class UID is not the data set's SOP Class UID"
    elif result.sop_instance_uid != sop_instance_uid:
        reason, comment = CANNOT_UNDERSTAND, "Affected SOP Instance UID is not the data set's SOP Instance UID"
    else:
        return False
    result.failure_reason, result.warning_reason, result.comments = reason, None, [comment]
    return True


def outcome(result: PartResult) -> tuple[str, int | None]:
    """A part's outcome, as /metrics counts it and the request log sums it up: stored,
    warning (stored, with a WarningReason) or failed (with a FailureReason)."""
    if not result.stored:
        return "failed", result.failure_reason
    return ("stored", None) if result.warning_reason is None else ("warning", result.warning_reason)


def summary(results: Iterable[PartResult]) -> str:
    """The failure and warning reasons of a request's parts, in a few words for the request
    log ('failed: 43264 x2, 45070 x1; warning: 45062 x1'); empty when all were stored as sent."""
    counts: dict[str, dict[int | None, int]] = {"failed": {}, "warning": {}}
    for result in results:
        kind, reason = outcome(result)
        if kind in counts:
            counts[kind][reason] = counts[kind].get(reason, 0) + 1
    return "; ".join(
        f"{kind}: " + ", ".join(f"{reason} x{n}" for reason, n in sorted(found.items(), key=lambda item: item[0] or 0))
        for kind, found in counts.items()
        if found
    )


def _counted(results: list[PartResult]) -> list[PartResult]:
    for result in results:
        count_stow_instance(*outcome(result))
    return results


def spool(
    chunks: Iterable[bytes | memoryview], *, max_bytes: int, memory_bytes: int, spool_dir: str | None
) -> tuple[IO[bytes], int]:
    """Copy a part's chunks into a spooled temp file; 413 past max_bytes, 507 when the
    spool directory is out of space.

    The caller owns (and must close) the returned file.
    """
    target = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - handed to the caller
        max_size=memory_bytes, dir=spool_dir, prefix=SPOOL_PREFIX
    )
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"a DICOM instance is larger than this server's limit of {max_bytes} bytes")
            with _out_of_space():
                target.write(chunk)
    except BaseException:
        target.close()
        raise
    target.seek(0)
    return target, size


class _StowRequest:
    """One request's parts on their way through spooling into the ingest pipeline."""

    def __init__(
        self, ingestor: Ingestor, settings: Settings, *, study_uid: str | None, replace: bool, partition: Partition
    ):
        self.ingestor = ingestor
        self.settings = settings
        self.study_uid = study_uid
        self.replace = replace
        self.partition = partition
        self.results: list[PartResult] = []
        #: The media type of parts that name none (the `type` parameter of multipart/related).
        self.root_type = DICOM
        #: (status, message) of the first storage failure: no part is tried after it.
        self.outage: tuple[int, str] | None = None
        #: The first bytes of the part that `receive` last failed to receive.
        self.unreceived_head = b""

    def spool(self, chunks: Iterable[bytes | memoryview], max_bytes: int | None = None) -> tuple[IO[bytes], int]:
        return spool(
            chunks,
            max_bytes=self.settings.max_instance_bytes if max_bytes is None else max_bytes,
            memory_bytes=self.settings.spool_memory_bytes,
            spool_dir=self.settings.spool_dir,
        )

    def receive(self, chunks: Iterable[bytes | memoryview]) -> BlobSpool:
        """A Part 10 part's bytes, written into a spool of the blob store as they arrive
        (hashed on the way); 413 past the instance size limit. The caller owns the spool."""
        settings = self.settings
        limit = settings.max_instance_bytes
        head: list[bytes | memoryview] = []
        try:
            target = self.ingestor.store.spool(
                memory_bytes=settings.spool_memory_bytes, spool_dir=settings.spool_dir
            )
        except Exception:
            self.unreceived_head = b""
            raise
        try:
            for chunk in chunks:
                if target.size < HEAD_BYTES:
                    head.append(chunk)
                if target.size + len(chunk) > limit:
                    raise PayloadTooLarge(f"a DICOM instance is larger than this server's limit of {limit} bytes")
                target.write(chunk)
        except BaseException:
            target.discard()
            self.unreceived_head = b"".join(head)
            raise
        return target

    def not_received(self) -> NotStored:
        """The result of the part whose receiving met the storage failure."""
        return self.not_stored(*name_from_head(self.unreceived_head))

    # -- storage failures ----------------------------------------------------

    def storage_failed(self, exc: Exception) -> bool:
        """True, remembering it, when `exc` is the archive's storage failing (the caller
        re-raises anything else): the blob store, the index or the spool space."""
        # An index out of space gets the answer of a full blob store.
        kind = StoreFull("the index is out of space") if _index_out_of_space(exc) else exc
        answer = http_status(kind)
        if not isinstance(kind, STORAGE_ERRORS) or answer is None or answer[0] not in OUTAGE_STATUSES:
            return False
        log.warning("STOW: storage failed (%s); later parts of the request are not tried", answer[1], exc_info=exc)
        self.outage = answer
        return True

    def not_stored(self, sop_class_uid: str | None = None, sop_instance_uid: str | None = None) -> NotStored:
        """The result of the part that met the storage failure."""
        assert self.outage is not None
        status, message = self.outage
        return NotStored(
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            failure_reason=PROCESSING_FAILURE,
            comments=[message],
            outage_status=status,
        )

    def not_attempted(self, sop_class_uid: str | None = None, sop_instance_uid: str | None = None) -> NotStored:
        """The result of a part after the storage failure: read, not tried."""
        result = self.not_stored(sop_class_uid, sop_instance_uid)
        result.comments = [f"not attempted after an earlier instance failed: {result.comments[0]}"]
        return result

    def ingest(self, spool: BlobSpool, *, announced: tuple[str, str] | None = None) -> PartResult:
        """Parse, validate, store and index a received part (the spool is used up); refuse it
        when it is not the `announced` SOP Class/Instance UID."""
        with spool:
            if self.outage is not None:
                return self.not_attempted()
            try:
                prepared = self.ingestor.prepare(spool.reader(), spool.size, study_uid=self.study_uid)
            except InstanceRejected as rejection:
                return rejection.result
            if announced is not None and _not_announced(prepared.result, *announced):
                return prepared.result
            try:
                return self.ingestor.store_prepared(
                    prepared, spool.commit, replace=self.replace, partition=self.partition
                )
            except Exception as exc:
                if not self.storage_failed(exc):
                    raise
            return self.not_stored(prepared.result.sop_class_uid, prepared.result.sop_instance_uid)

    # -- bodies and parts ----------------------------------------------------

    def single(self, read: Read) -> PartResult:
        chunks = iter(lambda: read(READ_CHUNK), b"")
        try:
            received = self.receive(chunks)
        except Exception as exc:
            if not self.storage_failed(exc):
                raise
            _drain(chunks)
            return self.not_received()
        if received.size == 0:
            received.discard()
            raise BadRequest("the request body is empty; send a DICOM Part 10 file")
        return self.ingest(received)

    def multipart(self, read: Read, boundary: str | None, root_type: str) -> list[PartResult]:
        """Store each Part 10 part as soon as it is complete.

        DICOM JSON parts (PS3.18 §10.5: metadata and bulk data) are assembled into Part 10
        files once the whole body has arrived, since their bulk data parts may follow them.
        """
        self.root_type = root_type
        datasets: list[DicomJsonDataset] = []
        bulk: dict[str, BulkPart] = {}
        events = iter_events(read, boundary, chunk_size=READ_CHUNK)
        try:
            try:
                for event in events:
                    if isinstance(event, End):
                        break
                    if isinstance(event, PartStart):
                        self.part(event, _part_data(events), datasets, bulk)
            except MultipartError as exc:
                if not any(r.stored for r in self.results):
                    raise BadRequest(f"malformed multipart/related body: {exc}; nothing was stored") from None
                # Parts that arrived complete are stored: the answer must say so (a 400 would
                # tell the client nothing was), with the rest of the body as one failure.
                self.results.append(
                    PartResult(
                        failure_reason=INVALID_DATASET,
                        comments=[f"the multipart/related body is malformed after the parts before this one "
                                  f"({exc}); what followed was not stored"],
                    )
                )
                return self.results
            for metadata in datasets:
                self.results.append(self.json_dataset(metadata, bulk))
        finally:
            for part in bulk.values():
                part.fp.close()
        if not self.results:
            raise BadRequest("the multipart/related body contains no DICOM instances")
        return self.results

    def part(
        self,
        start: PartStart,
        data: Iterator[bytes | memoryview],
        datasets: list[DicomJsonDataset],
        bulk: dict[str, BulkPart],
    ) -> None:
        """One part: a Part 10 file is stored now; JSON and bulk data parts are kept for later.

        After a storage failure a part is read to its end and reported as not attempted
        (bulk data parts, which are not instances, are not reported).
        """
        content_type = start.content_type or self.root_type
        media = parse_media_type(content_type)[0]
        location = start.headers.get("content-location")
        is_bulk = media not in (DICOM, DICOM_JSON, JSON) and bool(location) and is_bulk_media_type(media)
        if self.outage is None:
            try:
                self.keep_or_store(media, content_type, location if is_bulk else None, data, datasets, bulk)
                return
            except Exception as exc:
                if not self.storage_failed(exc):
                    raise
            result = self.not_received() if media == DICOM and not is_bulk else self.not_stored()
        else:
            result = self.not_attempted()
        _drain(data)
        if not is_bulk:
            self.results.append(result)

    def keep_or_store(
        self,
        media: str,
        content_type: str,
        bulk_location: str | None,
        data: Iterator[bytes | memoryview],
        datasets: list[DicomJsonDataset],
        bulk: dict[str, BulkPart],
    ) -> None:
        """Keep a JSON or bulk data part for the end of the body; store a Part 10 part now."""
        if media in (DICOM_JSON, JSON):
            datasets.extend(self.json_part(data))
            return
        if bulk_location:
            fp, size = self.spool(data)
            bulk[bulk_location.strip()] = BulkPart(content_type, fp, size)
            return
        if media == DICOM:
            self.results.append(self.ingest(self.receive(data)))
            return
        self.spool(data)[0].close()  # read (and held to the size limit) like any part
        self.results.append(
            PartResult(
                failure_reason=INVALID_DATASET,
                comments=[
                    f"part media type {media!r} is not supported here; use application/dicom, "
                    "or application/dicom+json with bulk data parts that have a Content-Location"
                ],
            )
        )

    def json_part(self, chunks: Iterable[bytes | memoryview]) -> list[DicomJsonDataset]:
        """The datasets of one application/dicom+json part (a JSON array, or one object)."""
        fp, _size = self.spool(chunks, MAX_JSON_PART_BYTES)
        with fp:
            try:
                document = json.load(fp)
            except ValueError as exc:
                problem = f"the DICOM JSON part is not valid JSON: {exc}"
                self.results.append(PartResult(failure_reason=INVALID_DATASET, comments=[problem]))
                return []
        items = document if isinstance(document, list) else [document]
        good = [item for item in items if isinstance(item, dict)]
        if len(good) != len(items):
            problem = "the DICOM JSON part must be an array of DICOM JSON objects"
            self.results.append(PartResult(failure_reason=INVALID_DATASET, comments=[problem]))
        return good

    def json_dataset(self, metadata: DicomJsonDataset, bulk: dict[str, BulkPart]) -> PartResult:
        settings = self.settings
        uids = _json_uid(metadata, "00080016"), _json_uid(metadata, "00080018")
        if self.outage is not None:
            return self.not_attempted(*uids)
        try:
            with _out_of_space():
                fp, size = build_part10(
                    metadata, bulk, spool_dir=settings.spool_dir, memory_bytes=settings.spool_memory_bytes
                )
        except MetadataRejected as exc:
            return PartResult(
                sop_class_uid=uids[0], sop_instance_uid=uids[1], failure_reason=INVALID_DATASET, comments=[str(exc)]
            )
        except InsufficientStorage as exc:
            self.storage_failed(exc)
            return self.not_stored(*uids)
        with fp:
            if size > settings.max_instance_bytes:
                raise PayloadTooLarge(
                    f"a DICOM instance is larger than this server's limit of {settings.max_instance_bytes} bytes"
                )
            try:  # into the store's spool: the same path as a Part 10 part (a copy, for this rare form)
                received = self.receive(iter(lambda: fp.read(READ_CHUNK), b""))
            except Exception as exc:
                if not self.storage_failed(exc):
                    raise
                return self.not_stored(*uids)
        return self.ingest(received)


@contextmanager
def _out_of_space() -> Iterator[None]:
    """A spool file's ENOSPC/EDQUOT as InsufficientStorage (507); other OSErrors unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _OUT_OF_SPACE:
            raise InsufficientStorage(
                "the archive is out of space to receive instances; nothing can be stored until space is freed"
            ) from exc
        raise


def _index_out_of_space(exc: BaseException) -> bool:
    """The index database failed for want of disk space (SQLite SQLITE_FULL, PostgreSQL
    disk_full), which peewee raises as a plain OperationalError wrapping the driver's."""
    if not isinstance(exc, peewee.OperationalError):
        return False
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # a failed rollback chains onto the cause
        seen.add(id(cause))
        if getattr(cause, "sqlite_errorcode", None) == _SQLITE_FULL or getattr(cause, "pgcode", None) == _PG_DISK_FULL:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _drain(chunks: Iterable[bytes | memoryview]) -> None:
    """Read the rest of a part (or body) that will not be stored."""
    for _chunk in chunks:
        pass


def _json_uid(metadata: DicomJsonDataset, key: str) -> str | None:
    values = (metadata.get(key) or {}).get("Value") or []
    return normalize_uid(str(values[0])) if values else None


def _part_data(events: Iterator[Event]) -> Iterator[bytes | memoryview]:
    """The data chunks of the current part, up to its PartEnd."""
    for event in events:
        if isinstance(event, PartData):
            yield event.data
        elif isinstance(event, PartEnd):
            return
        else:  # the reader never yields another event inside a part
            raise MultipartError(f"unexpected {type(event).__name__} inside a part")
    raise MultipartError("multipart body ended before the closing boundary")


def response(
    results: list[PartResult], *, base_url: str, study_uid: str | None, api_version: str
) -> tuple[int, dict[str, Any]]:
    """The Store Instances Response dataset (PS3.18 §10.5.3) and its status: 200, 202 or 409;
    or, when the archive's storage failed before anything was stored, that failure's status
    (507 out of space, 503 unavailable) with the same dataset."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for r in results:
        item: dict[str, Any] = {}
        if r.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [r.sop_class_uid]}
        if r.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [r.sop_instance_uid]}
        comments = [{"00000902": {"vr": "LO", "Value": [c]}} for c in r.comments]
        if r.stored:
            item["00081190"] = {
                "vr": "UR",
                "Value": [
                    f"{base_url}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
                    f"/instances/{r.sop_instance_uid}"
                ],
            }
            if r.warning_reason is not None:
                item["00081196"] = {"vr": "US", "Value": [r.warning_reason]}
        else:
            item["00081197"] = {"vr": "US", "Value": [r.failure_reason]}
        if comments:
            item["00741048"] = {"vr": "SQ", "Value": comments}
        (referenced if r.stored else failed).append(dict(sorted(item.items())))
    body: dict[str, Any] = {}
    if study_uid is not None and referenced:
        body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study_uid}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    # As the reference server: warnings make a v2 answer 202; v1 keeps 200.
    warned = api_version != "v1" and any(r.warning_reason is not None for r in results if r.stored)
    status = 409 if not referenced else (202 if failed or warned else 200)
    outages = [r.outage_status for r in results if isinstance(r, NotStored)]
    if outages and not referenced:
        status = outages[0]
    return status, body
