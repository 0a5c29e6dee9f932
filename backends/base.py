"""The blob storage contract shared by every backend.

This module owns the interface the rest of dicomserver codes against: the
`BlobStore` ABC, the `BlobInfo` record, the error hierarchy and the key rules
(`validate_key`). It also holds small helpers backends share (`copy_stream`,
`check_range`) so that hashing, size enforcement and argument checking behave
identically everywhere. It never touches a filesystem or a network.

Errors: callers only ever see `BlobStoreError` subclasses for storage
problems (never OSError or botocore errors), `ValueError` for programming
errors such as a negative range, and - unchanged - whatever the caller's own
input stream raised while a `put` was reading it.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, BinaryIO, ClassVar

__all__ = [
    "COPY_CHUNK_SIZE",
    "MAX_KEY_LENGTH",
    "MAX_SEGMENT_LENGTH",
    "BlobInfo",
    "BlobStoreError",
    "BlobNotFound",
    "StorageUnavailable",
    "StoreFull",
    "InvalidKey",
    "TempFile",
    "STALE_TEMP_SECONDS",
    "MIN_TEMP_AGE_SECONDS",
    "validate_key",
    "validate_prefix",
    "is_valid_key",
    "BlobStore",
    "BlobSpool",
    "BlobBatch",
    "SPOOL_PREFIX",
    "copy_stream",
    "check_range",
]

#: Streams are copied in chunks of this size so a blob is never held whole in memory.
COPY_CHUNK_SIZE = 1 << 20

#: Longest key accepted (S3's limit; keys are ASCII so characters == bytes).
MAX_KEY_LENGTH = 1024

#: Longest segment accepted: most filesystems cap a file name at 255 bytes, and
#: a key every backend can hold is better than one only some backends can.
MAX_SEGMENT_LENGTH = 255

#: A store's temporary file (an unfinished put) not written to for this long belongs to no
#: running put, which writes without pause: a crash left it. The local store's start-up
#: sweep removes such files, and `dicom gc` by default (its --grace) too.
STALE_TEMP_SECONDS = 3600

#: `dicom gc` never removes a temporary file written to more recently than this, whatever
#: --grace it is given: a put running in another worker may own it.
MIN_TEMP_AGE_SECONDS = 300

# A segment is 1+ of [A-Za-z0-9._-] not starting with '.', which also rules out
# '.' and '..' and keeps names like '.tmp' free for the stores' own use.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
# The same rules for a whole key at once: one match on the hot path (every read checks
# its key); validate_key's loop only runs to say what is wrong with a bad key.
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}(?:/[A-Za-z0-9_-][A-Za-z0-9._-]{0,254})*")


@dataclass(frozen=True)
class BlobInfo:
    """What a store knows about one blob."""

    key: str
    size: int
    sha256: str | None = None  # hex digest; put() always sets it, stat() may not know it


@dataclass(frozen=True)
class TempFile:
    """A store's temporary file: a put in progress, or what a crashed one left behind."""

    name: str  # the store's name for it, e.g. '.tmp/put-x1y2.part'
    size: int
    modified: float  # Unix time of its last write


class BlobStoreError(Exception):
    """Base of every error a blob store raises for storage problems."""


class BlobNotFound(BlobStoreError):
    """No blob is stored under `key`."""

    def __init__(self, key: str) -> None:
        super().__init__(key)  # args == (key,) keeps the exception picklable
        self.key = key

    def __str__(self) -> str:
        return f"blob not found: {_shorten(self.key)}"


class StorageUnavailable(BlobStoreError):
    """The storage itself failed (disk full, permission denied, connection lost...).

    The original OSError/client error is chained as ``__cause__``.
    """


class StoreFull(StorageUnavailable):
    """The storage has no space left (ENOSPC, EDQUOT): nothing more can be stored until some is freed."""


class InvalidKey(BlobStoreError, ValueError):
    """The key does not follow the key rules (see `validate_key`)."""


def _shorten(text: object, limit: int = 80) -> str:
    """repr() of a possibly huge key, truncated so error messages stay readable."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "...'"


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid blob key, else raise InvalidKey.

    Keys are server-chosen relative paths: 1..1024 characters made of
    '/'-separated segments of [A-Za-z0-9._-] (at most 255 characters each),
    with no empty segment (so no leading, trailing or double '/') and no
    segment starting with '.' (so no '.', '..', or the stores' own '.tmp').
    Being this strict is what guarantees no request can reach outside a store.
    """
    if isinstance(key, str) and len(key) <= MAX_KEY_LENGTH and _KEY_RE.fullmatch(key):
        return key
    if not isinstance(key, str):
        raise InvalidKey(f"blob key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("blob key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"blob key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"invalid blob key {_shorten(key)}: empty path segment")
        if segment.startswith("."):
            raise InvalidKey(
                f"invalid blob key {_shorten(key)}: segment {_shorten(segment)} starts with '.'"
            )
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidKey(
                f"invalid blob key {_shorten(key)}: a segment is longer than "
                f"{MAX_SEGMENT_LENGTH} characters"
            )
        if not _SEGMENT_RE.fullmatch(segment):
            raise InvalidKey(
                f"invalid blob key {_shorten(key)}: only A-Z a-z 0-9 '.' '_' '-' and '/' "
                f"between segments are allowed"
            )
    return key


def is_valid_key(key: str) -> bool:
    """True if `key` passes validate_key (used when listing to skip stray names)."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """Validate a list() prefix: "" or the start of a valid key (may end with '/')."""
    if prefix == "":
        return prefix
    try:
        validate_key(prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix)
    except InvalidKey as exc:
        raise InvalidKey(f"invalid blob key prefix {_shorten(prefix)}: {exc}") from None
    return prefix


def check_range(start: int, end: int | None, chunk_size: int) -> None:
    """Reject nonsensical iter_bytes() arguments; these are programming errors."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if end is not None and end < start:
        raise ValueError(f"end must be >= start, got start={start} end={end}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")


def copy_stream(
    stream: IO[bytes],
    write: Callable[[bytes], object],
    *,
    key: str,
    size: int | None = None,
    chunk_size: int = COPY_CHUNK_SIZE,
    sha256: str | None = None,
) -> tuple[int, str]:
    """Copy `stream` to `write` chunk by chunk, hashing on the way; return (bytes, sha256 hex).

    With `sha256` (the caller hashed the data already) nothing is hashed and it is returned.

    Only `read(n)` is used, so non-seekable request bodies work and short reads
    are fine. If `size` is given, a stream that turns out longer fails as soon
    as it passes `size` and one that ends early fails at EOF, both with
    BlobStoreError. Exceptions from `stream.read` propagate unchanged (they are
    the caller's, e.g. a client disconnect); exceptions from `write` are the
    backend's to translate.
    """
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    digest = hashlib.sha256() if sha256 is None else None
    total = 0
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        total += len(chunk)
        if size is not None and total > size:
            raise BlobStoreError(
                f"stream for blob {_shorten(key)} is longer than its declared size of {size} bytes"
            )
        if digest is not None:
            digest.update(chunk)
        write(chunk)
    if size is not None and total != size:
        raise BlobStoreError(
            f"stream for blob {_shorten(key)} ended after {total} bytes; "
            f"its declared size is {size} bytes"
        )
    return total, digest.hexdigest() if digest is not None else str(sha256)


#: ENOSPC and EDQUOT: the filesystem has no room (StoreFull).
FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class BlobSpool(abc.ABC):
    """A blob being received: written and hashed in one pass, then stored or dropped.

    Lets a caller read what it received (a STOW parses the header) before it decides to
    keep it, without a second copy of the bytes: the local store spools in its own temp
    directory and `commit` renames the file into place. Use it as a context manager:
    leaving the block uncommitted discards it. Write errors are BlobStoreErrors
    (StoreFull when out of space); after one the spool can only be discarded.
    """

    def __init__(self) -> None:
        self.size = 0
        self._digest = hashlib.sha256()
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        """Append `data` (any bytes-like object; it is not kept)."""
        if self._done:
            raise ValueError("write() to a committed or discarded spool")
        self._write(data)
        self._digest.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of everything written so far."""
        return self._digest.hexdigest()

    @abc.abstractmethod
    def _write(self, data: bytes | memoryview) -> None:
        """Store `data` at the end of the spool; raise BlobStoreError."""

    @abc.abstractmethod
    def reader(self) -> BinaryIO:
        """A seekable reader of what was written; valid until commit() or discard()."""

    def commit(self, key: str) -> BlobInfo:
        """Store the spool as blob `key`, as durably and atomically as `put`; the spool is
        used up, whatever happens (on failure nothing new is visible)."""
        if self._done:
            raise ValueError("commit() of a committed or discarded spool")
        try:
            validate_key(key)
            info = self._commit(key)
        finally:
            self.discard()
        return info

    @abc.abstractmethod
    def _commit(self, key: str) -> BlobInfo:
        """Install the spool under `key` (discard() runs after it, whatever happens)."""

    def discard(self) -> None:
        """Drop the spool and its temporary file; idempotent."""
        if not self._done:
            self._done = True
            self._release()

    @abc.abstractmethod
    def _release(self) -> None:
        """Free the spool's file or memory."""

    def __enter__(self) -> BlobSpool:
        return self

    def __del__(self) -> None:  # a spool dropped unused still frees its file
        with contextlib.suppress(Exception):
            self.discard()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


class _SpooledTemporaryBlob(BlobSpool):
    """BlobStore.spool's default: a SpooledTemporaryFile (memory, then an unnamed file),
    stored by the store's put() on commit. For stores that cannot rename into place."""

    def __init__(self, store: BlobStore, memory_bytes: int, spool_dir: str | None) -> None:
        super().__init__()
        self._store = store
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by discard()
            max_size=memory_bytes, dir=spool_dir, prefix=SPOOL_PREFIX
        )

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            kind = StoreFull if exc.errno in FULL_ERRNOS else StorageUnavailable
            raise kind(f"cannot spool an incoming blob: {exc.strerror or exc}") from exc

    def reader(self) -> BinaryIO:
        self._file.seek(0)
        return self._file  # type: ignore[return-value]

    def _commit(self, key: str) -> BlobInfo:
        self._file.seek(0)
        # The spool hashed every byte as it was written: the store need not again.
        return self._store.put(key, self._file, size=self.size, sha256=self.sha256)

    def _release(self) -> None:
        self._file.close()


class BlobBatch:
    """Blobs stored together and made durable together (a bulk import's batch).

    `put` stores a blob, `commit` returns once every blob put is durable and visible;
    only then may the caller index them. This default puts each blob durably at once
    (commit has nothing left to do); the local store overrides it to write the batch's
    files first and flush them together (one wait for the disk, not one per blob).
    Leaving the block uncommitted drops what a put left unfinished; blobs already
    visible stay, as orphans the caller deletes or `dicom gc` finds.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    def put(self, key: str, stream: IO[bytes], *, size: int | None = None) -> BlobInfo:
        """Store `stream` under `key` (as BlobStore.put), durable by the time commit() returns."""
        return self._store.put(key, stream, size=size)

    def commit(self) -> None:
        """Make every blob put so far durable and visible; BlobStoreError if that fails
        (then none of them may be indexed)."""

    def discard(self) -> None:
        """Drop what was put and not committed (idempotent)."""

    def __enter__(self) -> BlobBatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


#: Names a spool's temporary file wherever a name is seen (/proc/<pid>/fd, a platform
#: without unnamed temporary files).
SPOOL_PREFIX = "dicomweb-stow-"


class BlobStore(abc.ABC):
    """A flat namespace of immutable-once-written blobs addressed by validated keys.

    Guarantees every backend gives (checked by tests/blobstore_contract.py):
    puts are streamed and atomic (a failed or interrupted put leaves nothing
    new visible, and a replaced key shows either the old or the new content,
    never a mix); reads are streamed; keys are validated on every method.
    Portable key sets never use a key as a "directory" of another key ('a' and
    'a/b'): the local backend cannot hold both and raises BlobStoreError.
    """

    #: URL scheme that selects this backend in backends.BLOBSTORES.
    scheme: ClassVar[str]

    @classmethod
    def from_url(cls, url: str) -> BlobStore:
        """Build a store from its URL form; used by backends.open_blobstore."""
        raise ValueError(f"{cls.__name__} cannot be opened from a URL")

    @abc.abstractmethod
    def put(
        self, key: str, stream: IO[bytes], *, size: int | None = None, sha256: str | None = None
    ) -> BlobInfo:
        """Store everything `stream` yields under `key`, atomically.

        Replaces an existing blob atomically. If `size` is given and the stream
        yields a different number of bytes, raises BlobStoreError and nothing
        becomes visible. Errors raised by the stream itself propagate unchanged.
        `sha256` is the data's hex SHA-256 when the caller knows it already (a spool
        hashed it as it arrived): trusted, so a store need not hash the bytes again.
        """

    @abc.abstractmethod
    def iter_bytes(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = COPY_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """Lazily yield bytes [start, end) of the blob in non-empty chunks of <= chunk_size.

        `end` is exclusive and clipped to the blob size, like slicing: a range
        past the end yields nothing. Raises BlobNotFound at the latest on the
        first next().
        """

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Return a seekable binary reader; for pydicom when a full parse is unavoidable."""

    @abc.abstractmethod
    def stat(self, key: str) -> BlobInfo:
        """Return the blob's size (and sha256 where the backend knows it)."""

    def exists(self, key: str) -> bool:
        """True if a blob is stored under `key`."""
        try:
            self.stat(key)
        except BlobNotFound:
            return False
        return True

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is not an error (idempotent)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield stored keys starting with `prefix` (a plain string prefix, not a directory).

        Order is unspecified and in-progress puts are never listed. Meant for
        garbage collection and verification, not for request handling.
        """

    def spool(self, *, memory_bytes: int = COPY_CHUNK_SIZE, spool_dir: str | None = None) -> BlobSpool:
        """A BlobSpool to write a blob into before its key is known (STOW reads a part's
        header before it names the blob). This default keeps up to `memory_bytes` in
        memory, the rest in an unnamed file in `spool_dir`, and puts it on commit; a store
        that can turn its temporary file into the blob overrides it (one copy less)."""
        return _SpooledTemporaryBlob(self, memory_bytes, spool_dir)

    def batch(self) -> BlobBatch:
        """A BlobBatch: blobs put one after the other and made durable together by its
        commit() (bulk import). The default puts each durably at once."""
        return BlobBatch(self)

    def local_path(self, key: str) -> str | None:
        """Filesystem path of the blob so the server can use sendfile; None if not local."""
        validate_key(key)
        return None

    def free_bytes(self) -> int | None:
        """Bytes that can still be stored, for readiness; None when the store cannot tell (S3)."""
        return None

    def temp_files(self) -> Iterator[TempFile]:
        """The store's temporary files, for `dicom gc`; none for stores that keep none."""
        return iter(())

    def remove_temp_file(self, name: str) -> None:
        """Remove one of `temp_files()` (a missing one is not an error)."""
        raise BlobStoreError(f"{type(self).__name__} keeps no temporary files")

    def check(self) -> None:  # noqa: B027 - an optional hook: stores that can tell override it
        """Readiness probe: raise StorageUnavailable if the store cannot be used."""

    def close(self) -> None:  # noqa: B027 - an optional hook: stores that hold resources override it
        """Release connections or handles; the store must not be used afterwards."""

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
