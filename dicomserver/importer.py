"""Bulk import (`dicomserver import`): files and folders into the archive, or into any
DICOMweb server by STOW-RS.

Into the archive, every file goes through STOW's own pipeline (`Ingestor.prepare`:
header, validation, DICOM JSON, frames; then its blob, then its index row), so an import
stores what a STOW of the same file would and refuses what it would refuse, with the
same reasons. Into an archive that held instances when the import began, the file's
identifying UIDs are first read from its first elements (`ingest.identify`): an instance
the index already holds is skipped there, so re-running an interrupted import reads a
few kilobytes of each file it had stored. (Into an empty archive that read is skipped:
a copy of an instance met twice is refused by the index, and is as present.) Files
that are not DICOM Part 10 at all are counted apart: reported, never a failure.

Files are imported in batches (`FILES_PER_COMMIT`): each file of a batch is parsed and
its blob written one after the other (`BlobStore.batch`); then the batch's blobs are made
durable together (on local disk: one wait for their fdatasyncs, a directory fsync per
series), and only then are its index rows written in one transaction and one commit
(`Index.store_many`), each file with its own outcome; a file the index refuses has its
blob deleted. A crash leaves at worst temporary files or orphan blobs of the batch in
flight (`dicomserver gc`), never a row without its blob.

Batches are imported by worker processes, each running a few threads on one archive, as
gunicorn's workers do (forked from the command, which has imported everything already;
no workers for fewer than FILES_PER_PROCESS files each). A file costs some CPU (the header
parse, the DICOM JSON: Python, which the GIL runs one thread at a time) and some time
waiting on the disk (the batch's blobs, the index's commit): processes use the cores,
threads overlap the waits. The index's write lock is host-wide (index/connection.py), so
processes share one SQLite file safely. On 2 cores, 4 processes of 2 threads stored 1.1 to
1.7 times the files per second of 8 threads in one process (and more than 2 processes of 4
or 8 threads; measured before the batch's blobs were flushed together).
To another server (`--url`) the work is waiting on the network: threads do it.

A storage outage (blob store full or down, index unavailable, the server unreachable
or refusing the credentials) would fail every later file the same way: the import
stops trying new files and counts them as not attempted.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

import requests

from backends.base import BlobBatch

from .archive import Archive, open_archive
from .errors import http_status
from .index import DuplicateInstance, InstanceRecord, StoreOutcome
from .ingest import (
    INSTANCE_ALREADY_EXISTS,
    PROCESSING_FAILURE,
    InstanceRejected,
    NotPart10,
    PartResult,
    blob_key,
    discard_blob,
    identify,
)
from .partitions import DEFAULT, Partition, blob_prefix
from .settings import Settings

log = logging.getLogger(__name__)

STORED = "stored"
PRESENT = "already present"
FAILED = "failed"
NOT_DICOM = "not DICOM"

#: PS3.10 §8.2: the media directory file is DICOM, but no instance to store.
DICOMDIR = "DICOMDIR"
#: Files sent to another server are read in pieces of this size.
_SEND_CHUNK = 1024 * 1024
#: A STOW request to another server carries files up to this many bytes (one larger file alone):
#: proxies in front of servers often limit request bodies.
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: Seconds to connect to another server, and to wait for its answer to one file.
_TIMEOUTS = (10, 300)
#: Files whose index rows one transaction writes (one commit, one fsync of the index).
FILES_PER_COMMIT = 32
#: Fewer files than this per worker process are imported by threads of this process: a
#: worker costs its start (opening the archive) and idles when the files run out.
FILES_PER_PROCESS = 64


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int


@dataclass(frozen=True)
class FileResult:
    """What became of one file: STORED, PRESENT, FAILED or NOT_DICOM."""

    path: str
    size: int
    outcome: str
    sop_instance_uid: str | None = None
    #: The STOW failure reason (FAILED) or warning reason (STORED), PS3.4 Annex GG.
    reason: int | None = None
    comments: tuple[str, ...] = ()
    #: The archive's storage or the server failed, not this file: stop trying others.
    outage: bool = False


@dataclass
class Summary:
    files: int = 0
    bytes: int = 0
    stored: int = 0
    #: Stored, with a warning reason (values not indexed, implicit VR...).
    warnings: int = 0
    present: int = 0
    failed: list[FileResult] = field(default_factory=list)
    not_dicom: list[FileResult] = field(default_factory=list)
    #: Files not tried after an outage or an interruption.
    not_attempted: int = 0
    interrupted: bool = False
    #: Why the import stopped trying new files: the first outage's comment.
    outage: str | None = None

    def add(self, result: FileResult) -> None:
        self.files += 1
        self.bytes += result.size
        if result.outcome == STORED:
            self.stored += 1
            self.warnings += result.reason is not None
        elif result.outcome == PRESENT:
            self.present += 1
        elif result.outcome == NOT_DICOM:
            self.not_dicom.append(result)
        else:
            self.failed.append(result)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted and not self.interrupted


def find_files(paths: Iterable[str]) -> list[SourceFile]:
    """The files named and those under the folders named, recursively, in path order.

    Symbolic links to files are followed, to folders not (as `find` does), so a link
    loop cannot make the walk endless.
    """
    found: dict[str, SourceFile] = {}
    for path in paths:
        if not os.path.isdir(path):
            found.setdefault(path, SourceFile(path, os.path.getsize(path)))
            continue
        for folder, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(folder, name)
                try:
                    found.setdefault(full, SourceFile(full, os.path.getsize(full)))
                except OSError:  # a dangling link, or a file gone since the listing
                    found.setdefault(full, SourceFile(full, 0))
    return list(found.values())


# -- into the archive ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Staged:
    """A file parsed and its blob stored, waiting for its batch's index commit."""

    path: str
    size: int
    result: PartResult
    record: InstanceRecord


class ArchiveImport:
    """Stores files into one archive through STOW's ingest pipeline, a batch per commit.

    `check_present`: read each file's UIDs first and skip the instances the index holds
    (off for an archive that was empty when the import began: nothing there to skip).
    """

    def __init__(self, archive: Archive, *, check_present: bool = True, partition: Partition = DEFAULT):
        self.archive = archive
        self.check_present = check_present
        #: The data partition the files go into (`dicomserver import --partition`).
        self.partition = partition

    def __call__(self, source: SourceFile) -> FileResult:
        return self.each([source])[0]

    def each(self, sources: list[SourceFile]) -> list[FileResult]:
        """Import a batch: every file parsed and its blob written, the blobs made durable
        together, then all their index rows in one commit. After an outage the batch's
        later files are not tried (left out)."""
        index = self.archive.index
        index.connect()
        try:
            with self.archive.store.batch() as blobs:
                results: list[FileResult | _Staged] = []
                for source in sources:
                    results.append(self._stage(source, blobs))
                    if isinstance(results[-1], FileResult) and results[-1].outage:
                        break
                staged = [r for r in results if isinstance(r, _Staged)]
                indexed = dict(zip(map(id, staged), self._commit(staged, blobs), strict=True))
        finally:
            index.close()
        return [indexed[id(r)] if isinstance(r, _Staged) else r for r in results]

    def _commit(self, staged: list[_Staged], blobs: BlobBatch) -> list[FileResult]:
        """The batch's blobs made durable, then (only then) their index rows committed."""
        if not staged:
            return []
        try:
            blobs.commit()
        except Exception as exc:  # no blob of the batch is left, and no row was written
            return [_outage(s.path, s.size, s.record.sop_instance_uid, exc) for s in staged]
        return self._index(staged)

    def _stage(self, source: SourceFile, blobs: BlobBatch) -> FileResult | _Staged:
        try:
            with open(source.path, "rb") as fp:
                size = os.fstat(fp.fileno()).st_size
                return self._prepare_and_put(source.path, fp, size, blobs)
        except OSError as exc:
            return FileResult(
                source.path, source.size, FAILED, reason=PROCESSING_FAILURE,
                comments=(f"the file cannot be read: {exc.strerror or exc}",),
            )

    def _prepare_and_put(self, path: str, fp: IO[bytes], size: int, blobs: BlobBatch) -> FileResult | _Staged:
        uid: str | None = None
        if self.check_present or size == 0 or os.path.basename(path).upper() == DICOMDIR:
            found = _header_uid(path, fp, size)
            if isinstance(found, FileResult):
                return found
            uid = found
        try:
            if uid is not None and self.archive.index.has_instance(uid, partition=self.partition):
                return FileResult(path, size, PRESENT, uid)
            try:
                prepared = self.archive.ingestor.prepare(fp, size, study_uid=None)
            except NotPart10 as rejection:
                return FileResult(path, size, NOT_DICOM, comments=tuple(rejection.comments))
            except InstanceRejected as rejection:
                return _from_part_result(path, size, rejection.result)
            result = prepared.result
            assert result.study_instance_uid and result.series_instance_uid and result.sop_instance_uid
            key = blob_prefix(self.partition.key) + blob_key(
                result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
            )
            fp.seek(0)
            info = blobs.put(key, fp, size=size)  # durable once the batch's blobs are committed
        except Exception as exc:
            return _outage(path, size, uid, exc)
        return _Staged(path, size, result, prepared.record(key, info.size, info.sha256, self.partition))

    def _index(self, staged: list[_Staged]) -> list[FileResult]:
        """The batch's index rows in one commit; a blob whose row was not stored is deleted."""
        if not staged:
            return []
        try:
            outcomes: list[StoreOutcome | Exception] = self.archive.index.store_many([s.record for s in staged])
        except Exception as exc:  # the transaction failed: none of the batch is stored
            outcomes = [exc] * len(staged)
        results = []
        for file, outcome in zip(staged, outcomes, strict=True):
            if isinstance(outcome, StoreOutcome):
                results.append(_from_part_result(file.path, file.size, file.result))
                continue
            discard_blob(self.archive.store, file.record.blob_key)
            uid = file.record.sop_instance_uid
            if isinstance(outcome, DuplicateInstance):  # a copy of it stored meanwhile, or earlier in the batch
                results.append(FileResult(file.path, file.size, PRESENT, uid))
                continue
            result = _outage(file.path, file.size, uid, outcome)
            if not result.outage:  # as STOW says it (ingest.py)
                log.error("indexing instance %s failed: %r", uid, outcome)
                result = FileResult(
                    file.path, file.size, FAILED, uid, PROCESSING_FAILURE, ("the instance could not be indexed",)
                )
            results.append(result)
        return results


def _header_uid(path: str, fp: IO[bytes], size: int) -> str | FileResult | None:
    """The SOP Instance UID in the file's header (None when it cannot be read there: the
    ingest or the server says why), or the file's result when it is no instance to store."""
    if os.path.basename(path).upper() == DICOMDIR:
        return FileResult(path, size, NOT_DICOM, comments=("a DICOMDIR: the media's directory, not an instance",))
    try:
        known = identify(fp)
    except NotPart10 as rejection:
        return FileResult(path, size, NOT_DICOM, comments=tuple(rejection.comments))
    return known.sop_instance_uid if known is not None else None


def _from_part_result(path: str, size: int, result: PartResult) -> FileResult:
    comments = tuple(result.comments)
    if result.stored:
        return FileResult(path, size, STORED, result.sop_instance_uid, result.warning_reason, comments)
    if result.failure_reason == INSTANCE_ALREADY_EXISTS:  # stored meanwhile (a copy of it elsewhere in the tree)
        return FileResult(path, size, PRESENT, result.sop_instance_uid)
    return FileResult(path, size, FAILED, result.sop_instance_uid, result.failure_reason, comments)


def _outage(path: str, size: int, uid: str | None, exc: Exception) -> FileResult:
    """The archive's storage failed (STOW would answer 503 or 507), or a bug did."""
    answer = http_status(exc)
    outage = answer is not None and answer[0] in (503, 507)
    comment = answer[1] if outage and answer is not None else f"unexpected error: {type(exc).__name__}: {exc}"
    return FileResult(path, size, FAILED, uid, PROCESSING_FAILURE, (comment,), outage=outage)


def import_into_archive(
    files: list[SourceFile],
    archive: Archive,
    *,
    jobs: int,
    processes: int = 1,
    batch: int = FILES_PER_COMMIT,
    on_result: Callable[[FileResult], None] = lambda result: None,
    partition: Partition = DEFAULT,
) -> Summary:
    """Store files into the archive's `partition`, `jobs` at once: threads of `processes`
    worker processes (of this one when 1, or when the archive lives in this process's
    memory), up to `batch` files per index commit."""
    check_present = _holds_instances(archive)
    processes = min(processes, max(1, len(files) // FILES_PER_PROCESS))
    if processes <= 1 or not _shareable(archive):
        importer = ArchiveImport(archive, check_present=check_present, partition=partition)
        with ThreadPoolExecutor(jobs, thread_name_prefix="import") as pool:
            tasks = batches(files, _per_commit(len(files), jobs, batch), most_bytes=sys.maxsize)
            return run(pool, importer.each, tasks, jobs=jobs, on_result=on_result)
    threads = -(-jobs // processes)
    # Each worker takes a batch per thread per task, so that its threads rarely wait for the next one.
    with ProcessPoolExecutor(
        processes, mp_context=_worker_context(archive), initializer=_start_worker,
        initargs=(archive.settings, threads, check_present, partition),
    ) as pool:
        tasks = batches(files, threads * _per_commit(len(files), jobs, batch), most_bytes=sys.maxsize)
        return run(pool, _import_in_worker, tasks, jobs=processes, on_result=on_result)


def _worker_context(archive: Archive) -> multiprocessing.context.BaseContext:
    """Workers forked from this process, which has imported pydicom and the rest already
    (a fresh interpreter per worker, or a forkserver, imports them again: about 0.7 s of
    CPU each). The index's connection is closed first, so no worker inherits it (each
    opens its own); the pool forks every worker before it starts a thread of its own.
    Elsewhere (macOS, where fork is unsafe, has no default fork) a forkserver that
    imports this module once."""
    if sys.platform.startswith("linux"):
        archive.index.shutdown()
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _per_commit(files: int, jobs: int, batch: int) -> int:
    """`batch`, or fewer so that a small import still keeps every job busy."""
    return max(1, min(batch, files // jobs))


def _holds_instances(archive: Archive) -> bool:
    index = archive.index
    index.connect()
    try:
        return index.stored_counts()[1] > 0
    finally:
        index.close()


def _shareable(archive: Archive) -> bool:
    """Other processes can open the same archive (not so a memory:// store or database)."""
    return archive.store.scheme != "memory" and ":memory:" not in archive.settings.database_url


#: This worker process's archive and threads (set up by `_start_worker`).
_WORKER: tuple[ArchiveImport, ThreadPoolExecutor, int] | None = None


def _start_worker(settings: Settings, threads: int, check_present: bool, partition: Partition) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it lets started files finish
    importer = ArchiveImport(open_archive(settings), check_present=check_present, partition=partition)
    _WORKER = importer, ThreadPoolExecutor(threads, thread_name_prefix="import"), threads


def _import_in_worker(sources: list[SourceFile]) -> list[FileResult]:
    """A task: a batch per thread, each with its own commit."""
    assert _WORKER is not None, "the worker was not started"
    importer, pool, threads = _WORKER
    per_thread = -(-len(sources) // threads)
    parts = [sources[i : i + per_thread] for i in range(0, len(sources), per_thread)]
    return [result for results in pool.map(importer.each, parts) for result in results]


# -- to another server ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """A file on its way to the server, with the SOP Instance UID its answer will name."""

    path: str
    size: int
    uid: str | None
    fp: IO[bytes]


class StowClient:
    """Sends files to a DICOMweb server by STOW-RS, a batch of files per multipart/related request.

    An answer names each instance by its SOP Instance UID, read here from each file's
    header; a file whose UIDs cannot be read is sent in a request of its own, so that
    whatever the answer says is about that file.
    """

    def __init__(self, base_url: str, *, token: str | None = None):
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/studies") else f"{base}/studies"
        self.token = token
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def __call__(self, sources: list[SourceFile]) -> list[FileResult]:
        results: list[FileResult] = []
        with ExitStack() as files:
            parts = []
            for source in sources:
                opened = _open(source, files)
                if isinstance(opened, FileResult):
                    results.append(opened)
                else:
                    parts.append(opened)
            named = [p for p in parts if p.uid is not None]
            for group in ([named] if named else []) + [[p] for p in parts if p.uid is None]:
                results += self._send(group)
        return results

    def _send(self, parts: list[_Part]) -> list[FileResult]:
        boundary = uuid.uuid4().hex
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        try:
            response = self._session().post(
                self.url, data=_MultipartBody(boundary, parts), headers=headers, timeout=_TIMEOUTS
            )
        except requests.RequestException as exc:
            comment = (f"{self.url}: {exc}",)
            return [FileResult(p.path, p.size, FAILED, p.uid, PROCESSING_FAILURE, comment, outage=True) for p in parts]
        return store_response(parts, response.status_code, response.reason, response.content)


def _open(source: SourceFile, files: ExitStack) -> _Part | FileResult:
    """The file opened and identified, or its result when there is nothing to send."""
    try:
        fp = files.enter_context(open(source.path, "rb"))  # noqa: SIM115 - closed by the ExitStack
        size = os.fstat(fp.fileno()).st_size
        uid = _header_uid(source.path, fp, size)
        fp.seek(0)
    except OSError as exc:
        return FileResult(
            source.path, source.size, FAILED, reason=PROCESSING_FAILURE,
            comments=(f"the file cannot be read: {exc.strerror or exc}",),
        )
    return uid if isinstance(uid, FileResult) else _Part(source.path, size, uid, fp)


class _MultipartBody:
    """Files as a multipart/related body, read as it is sent; its length is known, so the
    request has a Content-Length (not every server reads a chunked body)."""

    def __init__(self, boundary: str, parts: list[_Part]):
        self.head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self.tail = f"--{boundary}--\r\n".encode()
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(self.head) + p.size + 2 for p in self.parts) + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self.head
            left = part.size  # as announced, should the file have grown since
            while left and (chunk := part.fp.read(min(_SEND_CHUNK, left))):
                left -= len(chunk)
                yield chunk
            yield b"\r\n"
        yield self.tail


def store_response(parts: list[_Part], status: int, reason: str, content: bytes) -> list[FileResult]:
    """Each file's outcome from a STOW-RS answer (PS3.18 §10.5.3): the item of the Referenced or
    Failed SOP Sequence that names its instance when the answer has one, else the status
    (409: already stored)."""
    body = _json(content)
    items = [(True, i) for i in _items(body, "00081199")] + [(False, i) for i in _items(body, "00081198")]
    results = []
    for part in parts:
        taken = _take(items, part.uid, alone=len(parts) == 1)
        if taken is not None:
            results.append(_from_item(part, *taken, status, reason))
        elif status in (200, 202):
            results.append(FileResult(part.path, part.size, STORED, part.uid))
        elif status == 409:
            results.append(FileResult(part.path, part.size, PRESENT, part.uid))
        else:
            text = content[:300].decode("utf-8", "replace").strip()
            comment = f"the server answered {status} {reason}" + (f": {text}" if text else "")
            # Refused credentials, an overloaded or full server: every later file would get the same.
            outage = status in (401, 403) or status >= 502
            results.append(
                FileResult(part.path, part.size, FAILED, part.uid, PROCESSING_FAILURE, (comment,), outage=outage)
            )
    return results


Item = tuple[bool, dict[str, Any]]  # (stored, its item of the Referenced or Failed SOP Sequence)


def _take(items: list[Item], uid: str | None, *, alone: bool) -> Item | None:
    """Remove and return the answer's item about this instance: the first that names its UID,
    else one that names none (or, for the only file of a request, any)."""
    for number, (_stored, item) in enumerate(items):
        if uid is not None and _value(item, "00081155") == uid:
            return items.pop(number)
    for number, (_stored, item) in enumerate(items):
        if alone or _value(item, "00081155") is None:
            return items.pop(number)
    return None


def _from_item(part: _Part, stored: bool, item: dict[str, Any], status: int, reason: str) -> FileResult:
    if stored:
        warning = _value(item, "00081196")
        return FileResult(part.path, part.size, STORED, part.uid, warning if isinstance(warning, int) else None,
                          _comments(item))
    code = _value(item, "00081197")
    if code == INSTANCE_ALREADY_EXISTS:
        return FileResult(part.path, part.size, PRESENT, part.uid)
    comments = _comments(item) or (f"the server answered {status} {reason}",)
    return FileResult(part.path, part.size, FAILED, part.uid, code if isinstance(code, int) else None, comments)


def _json(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _items(dataset: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    values = (dataset.get(tag) or {}).get("Value") if isinstance(dataset.get(tag), dict) else None
    return [v for v in values or [] if isinstance(v, dict)]


def _value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _comments(item: dict[str, Any]) -> tuple[str, ...]:
    """The Failure Reason Comments / Warning Reason comments, (0074,1048) items' (0000,0902)."""
    return tuple(str(_value(c, "00000902")) for c in _items(item, "00741048") if _value(c, "00000902") is not None)


def import_to_server(
    files: list[SourceFile],
    base_url: str,
    *,
    token: str | None,
    jobs: int,
    batch: int = 10,
    on_result: Callable[[FileResult], None] = lambda result: None,
) -> Summary:
    """Send files to the DICOMweb server at `base_url` by STOW-RS, up to `batch` files per
    request (and MAX_BATCH_BYTES, unless one file is larger), `jobs` requests at once."""
    with ThreadPoolExecutor(jobs, thread_name_prefix="stow") as pool:
        return run(pool, StowClient(base_url, token=token), batches(files, batch), jobs=jobs, on_result=on_result)


def batches(files: list[SourceFile], most: int, most_bytes: int = MAX_BATCH_BYTES) -> list[list[SourceFile]]:
    """Consecutive files in groups of at most `most` files and `most_bytes` (a larger file alone)."""
    groups: list[list[SourceFile]] = []
    size = 0
    for source in files:
        if not groups or len(groups[-1]) >= most or size + source.size > most_bytes:
            groups.append([])
            size = 0
        groups[-1].append(source)
        size += source.size
    return groups


# -- the driver ----------------------------------------------------------------------------


def run(
    pool: Executor,
    work: Callable[[list[SourceFile]], list[FileResult]],
    tasks: list[list[SourceFile]],
    *,
    jobs: int,
    on_result: Callable[[FileResult], None],
) -> Summary:
    """Run `work` on every batch of files in `pool`, a few batches ahead of the workers; stop
    trying new ones after an outage or Ctrl-C (the batches already started finish)."""
    summary = Summary()
    pending: set[Future[list[FileResult]]] = set()
    queue = iter(tasks)

    def collect(future: Future[list[FileResult]]) -> None:
        for result in future.result():
            summary.add(result)
            on_result(result)
            if result.outage and summary.outage is None:
                summary.outage = "; ".join(result.comments)

    try:
        while True:
            while summary.outage is None and len(pending) < jobs * 4 and (task := next(queue, None)) is not None:
                pending.add(pool.submit(work, task))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                collect(future)
    except KeyboardInterrupt:
        summary.interrupted = True
        for future in pending:
            if not future.cancel():
                collect(future)
    summary.not_attempted = sum(len(task) for task in tasks) - summary.files
    return summary
