"""`dicomserver verify`: do the index and the blob store agree?

Every index row's blob (an instance's current version and, once a bulk update changed it, its
original) must exist with the size STOW recorded; with `hashes`, its bytes
must also have the SHA-256 STOW recorded (rows from before the index kept one are
checked by size alone) and its header the UIDs of its row, which finds a blob swapped
for another instance's. Every blob must have a row: one without is an orphan (a crash
between blob and index write), left to `dicom gc`. Verify only reads.

The scan is not a snapshot: a STOW, PUT or DELETE running meanwhile moves rows and blobs
between the two reads. So each problem with a row is checked once more against the
row as it is then, and blobs younger than the grace period may still be waiting for
their row, as in `dicom gc`.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backends.base import COPY_CHUNK_SIZE, BlobNotFound

from .archive import Archive
from .index import StoredBlob
from .ingest import NotPart10, blob_created, identify

MISSING = "missing blob"
SIZE = "size mismatch"
HASH = "hash mismatch"
UIDS = "UID mismatch"
ORPHAN = "orphan blob"


@dataclass(frozen=True)
class Problem:
    kind: str
    blob_key: str
    detail: str
    #: The row's study/series/instance UIDs (None for an orphan blob).
    row: StoredBlob | None = None


@dataclass
class Report:
    rows: int = 0
    blobs: int = 0
    hashed: int = 0
    #: Rows stored before the index kept hashes: checked by size and UIDs only.
    without_hash: int = 0
    young_blobs: int = 0
    problems: list[Problem] = field(default_factory=list)


def verify(
    archive: Archive,
    *,
    hashes: bool,
    grace_seconds: int,
    on_row: Callable[[], None] = lambda: None,
    now: float | None = None,
) -> Report:
    """Check every row against its blob and every blob against the rows; never changes either."""
    store, index = archive.store, archive.index
    listed = set(store.list())  # before the rows: a blob STOW writes meanwhile is young, not an orphan
    rows = index.stored_blobs()
    report = Report(rows=len(rows), blobs=len(listed))
    for row in rows:
        problem = _check(archive, row, hashes, report)
        if problem is not None and _still(archive, problem):
            report.problems.append(problem)
        on_row()
    indexed = {row.blob_key for row in rows}
    now = time.time() if now is None else now
    for key in sorted(listed - indexed):
        created = blob_created(key)
        if created is not None and now - created < grace_seconds:
            report.young_blobs += 1
        elif store.exists(key):  # not deleted since the listing
            report.problems.append(Problem(ORPHAN, key, "no index row points to it"))
    return report


def _check(archive: Archive, row: StoredBlob, hashes: bool, report: Report) -> Problem | None:
    try:
        size = archive.store.stat(row.blob_key).size
    except BlobNotFound:
        return Problem(MISSING, row.blob_key, "the index row's blob is not in the store", row)
    if size != row.size:
        return Problem(SIZE, row.blob_key, f"the index recorded {row.size} bytes, the blob has {size}", row)
    if not hashes:
        return None
    digest = hashlib.sha256()
    try:
        for chunk in archive.store.iter_bytes(row.blob_key, chunk_size=COPY_CHUNK_SIZE):
            digest.update(chunk)
    except BlobNotFound:
        return Problem(MISSING, row.blob_key, "the index row's blob is not in the store", row)
    if row.sha256 is None:
        report.without_hash += 1
    else:
        report.hashed += 1
        if digest.hexdigest() != row.sha256:
            return Problem(HASH, row.blob_key, f"SHA-256 {digest.hexdigest()}, the index recorded {row.sha256}", row)
    return _check_uids(archive, row)


def _check_uids(archive: Archive, row: StoredBlob) -> Problem | None:
    """The blob's header names the instance of its row (a blob swapped for another's does not)."""
    with archive.store.open(row.blob_key) as fp:
        try:
            found = identify(fp)
        except NotPart10:
            found = None
    expected = (row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid)
    if found is None:
        return Problem(UIDS, row.blob_key, "the blob's header does not parse or lacks its UIDs", row)
    actual = (found.study_instance_uid, found.series_instance_uid, found.sop_instance_uid)
    if actual != expected:
        return Problem(UIDS, row.blob_key, "the blob's header names " + "/".join(str(u) for u in actual), row)
    return None


def _still(archive: Archive, problem: Problem) -> bool:
    """The row is still the one checked: not deleted or replaced since the scan read it."""
    assert problem.row is not None
    now = archive.index.stored_blobs(problem.row.sop_instance_uid, partition_key=problem.row.partition_key)
    return any(row.blob_key == problem.blob_key for row in now)  # current and original versions
