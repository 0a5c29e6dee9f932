"""Local filesystem blob store: one file per blob under a root directory.

This module owns how blobs live on disk. A key 'a/b/c' is the file
'<root>/a/b/c'. Puts are atomic and durable: data goes to a temporary file in
'<root>/.tmp' (same filesystem, so the final rename is atomic), is flushed,
renamed over the destination with os.replace, and the directory is fsynced.
A crash can leave stale files in '.tmp' (never visible as blobs, never
listed); opening the store removes those not written to for STALE_TEMP_SECONDS,
a pause no running put makes, and `dicom gc` lists and removes them too
(`temp_files`, `remove_temp_file`). A put that fails, for whatever reason, leaves
nothing behind: no temp file, no blob.

Incoming blobs whose key is not known yet (a STOW part, read before it is named) are
spooled by `spool()` straight into a temp file in '.tmp', hashed on the way, and
`commit` renames that file into place: the bytes are written once. A killed worker
can leave its spool files, which are swept like those of a put.

Durability: a blob file's data is flushed with fdatasync (its data and size, all a
later read needs; not its timestamps) before the rename, the directory with fsync after.

Blob files are created with mode 0600 (owner only), as mkstemp creates them.
Every OSError is translated to a BlobStoreError subclass - StoreFull when the
filesystem is out of space or over quota (ENOSPC, EDQUOT), so the server can say
so - except errors raised by the caller's input stream, which propagate unchanged.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat as stat_module
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, BinaryIO, cast
from urllib.parse import unquote, urlsplit

from .base import (
    COPY_CHUNK_SIZE,
    STALE_TEMP_SECONDS,
    BlobBatch,
    BlobInfo,
    BlobNotFound,
    BlobSpool,
    BlobStore,
    BlobStoreError,
    InvalidKey,
    StorageUnavailable,
    StoreFull,
    TempFile,
    check_range,
    copy_stream,
    is_valid_key,
    validate_key,
    validate_prefix,
)

__all__ = ["LocalBlobStore", "TMP_DIR_NAME", "STALE_TEMP_SECONDS"]

#: Directory under the root that holds in-progress puts. Keys cannot name it
#: because validate_key rejects segments starting with '.'.
TMP_DIR_NAME = ".tmp"

# How often put() retries installing a blob whose fresh parent directory was
# pruned by a concurrent delete() of the directory's last blob.
_INSTALL_ATTEMPTS = 20

# Most directories a store remembers as existing (a series' and its study's per series:
# a few MB of strings); past it the memory starts again empty.
_KNOWN_DIRS_LIMIT = 100_000

# Errors that mean "there is no blob at this path" when reading.
_NOT_FOUND_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


# Errors that mean "the filesystem has no room for this": the store is full.
_FULL_ERRORS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _storage_error(what: str, exc: OSError) -> StorageUnavailable:
    """The BlobStoreError for an OSError: StoreFull when out of space or quota."""
    kind = StoreFull if exc.errno in _FULL_ERRORS else StorageUnavailable
    return kind(f"{what}: {exc.strerror or exc}")


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """Translate OSError raised inside the block into StorageUnavailable (or StoreFull)."""
    try:
        yield
    except OSError as exc:
        raise _storage_error(what, exc) from exc


def _fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename, a new subdirectory) durable."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fdatasync(fd: int) -> None:
    """Flush a file's data and the metadata a read needs (its size), not its timestamps:
    all a blob needs to survive power loss (fsync where there is no fdatasync)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write may write less than asked; loop until everything is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LocalBlobStore(BlobStore):
    """Blobs as files under `root`, which is created (with '.tmp') if missing."""

    scheme = "file"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self._root_prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        self._tmp_dir = os.path.join(self.root, TMP_DIR_NAME)
        #: Directories (as key prefixes, 'study/series') known to exist: see _make_parents.
        self._known_dirs: set[str] = set()
        try:
            os.makedirs(self._tmp_dir, exist_ok=True)
        except OSError as exc:
            raise _storage_error(f"cannot create blob store directory {self._tmp_dir!r}", exc) from exc
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Drop temp files that a crashed put left behind (best effort), so a restarted
        worker frees their space without waiting for `dicom gc`."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        try:
            entries = list(os.scandir(self._tmp_dir))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass

    @classmethod
    def from_url(cls, url: str) -> LocalBlobStore:
        """Open 'file:///absolute/path' (percent-escapes are decoded)."""
        parts = urlsplit(url)
        expected = (
            "expected file:///absolute/path (three slashes); "
            "for a relative path give the plain path without 'file://'"
        )
        if parts.scheme.lower() != "file":
            raise ValueError(f"not a file URL {url!r}: {expected}")
        if parts.netloc:
            raise ValueError(
                f"invalid file URL {url!r}: {parts.netloc!r} is read as a host name, "
                f"which is not supported; {expected}"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"invalid file URL {url!r}: no query or fragment allowed; {expected}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"invalid file URL {url!r}: the path is not absolute; {expected}")
        return cls(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    # -- key -> path -------------------------------------------------------

    def _path(self, key: str) -> str:
        """Validate `key` and map it to a path that is guaranteed to be inside root."""
        validate_key(key)
        path = os.path.normpath(os.path.join(self.root, *key.split("/")))
        # Defence in depth: validate_key already makes escaping impossible.
        inside_root = path.startswith(self._root_prefix) and len(path) > len(self._root_prefix)
        inside_tmp = path == self._tmp_dir or path.startswith(self._tmp_dir + os.sep)
        if not inside_root or inside_tmp:
            raise InvalidKey(f"blob key {key!r} resolves outside the store")
        return path

    # -- writing -----------------------------------------------------------

    def put(
        self, key: str, stream: IO[bytes], *, size: int | None = None, sha256: str | None = None
    ) -> BlobInfo:
        # `sha256` is not needed: copy_stream hashes as it copies (its own spool never puts).
        dest = self._path(key)
        with _storage_errors(f"cannot create a temporary file for blob {key!r}"):
            fd, tmp = tempfile.mkstemp(dir=self._tmp_dir, prefix="put-", suffix=".part")
        try:
            try:
                written, sha256 = copy_stream(
                    stream, lambda chunk: self._write(fd, chunk, key), key=key, size=size
                )
                with _storage_errors(f"cannot flush blob {key!r} to disk"):
                    _fdatasync(fd)
            except BaseException:
                with suppress(OSError):
                    os.close(fd)
                raise
            with _storage_errors(f"cannot close blob {key!r}"):
                os.close(fd)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        self._install_durably(tmp, dest, key)
        return BlobInfo(key=key, size=written, sha256=sha256)

    def _install_durably(self, tmp: str, dest: str, key: str) -> None:
        """Rename the flushed temp file `tmp` onto `dest` and flush the directory; on any
        failure neither the temp file nor the blob is left."""
        installed = False
        try:
            self._install(tmp, dest, key)
            installed = True
            with _storage_errors(f"cannot flush the directory of blob {key!r} to disk"):
                try:
                    _fsync_dir(os.path.dirname(dest))
                except FileNotFoundError:
                    pass  # a concurrent delete() of this very key already pruned it
        except BaseException:
            # Never leave a temp file behind, whatever happened (KeyboardInterrupt
            # included). Once installed, the temp name is gone and may even have
            # been reused by another put, so it must not be touched; the blob itself
            # goes instead, since the caller is told the put failed and will not
            # index it (the archive's keys are fresh per put, so it is this put's).
            if installed:
                with suppress(BlobStoreError):
                    self.delete(key)
            else:
                with suppress(OSError):
                    os.unlink(tmp)
            raise

    def spool(self, *, memory_bytes: int = COPY_CHUNK_SIZE, spool_dir: str | None = None) -> BlobSpool:
        """A spool file in '.tmp' that commit() renames into place (memory_bytes and
        spool_dir do not apply: the bytes go where the blob will be, once)."""
        return _LocalSpool(self)

    def batch(self) -> BlobBatch:
        """Files written into '.tmp' as they come, flushed together and renamed into place
        by commit() (see _LocalBatch)."""
        return _LocalBatch(self)

    def _open_spool_file(self) -> tuple[int, str]:
        """(fd, path) of a new spool file in '.tmp', named as a put's temp file is."""
        with _storage_errors("cannot create a temporary file for an incoming blob"):
            return tempfile.mkstemp(dir=self._tmp_dir, prefix="put-", suffix=".part")

    @staticmethod
    def _write(fd: int, chunk: bytes, key: str) -> None:
        with _storage_errors(f"cannot write blob {key!r}"):
            _write_all(fd, chunk)

    def _install(self, tmp: str, dest: str, key: str) -> None:
        """Create dest's parent directories and atomically rename tmp onto dest."""
        for attempt in range(1, _INSTALL_ATTEMPTS + 1):
            try:
                self._make_parents(key)
                # No check that dest is not a directory first: rename(2) of a file onto
                # a directory fails with EISDIR, which says so (below) at no extra cost.
                os.replace(tmp, dest)
                return
            except FileNotFoundError as exc:
                # A parent directory is gone: a concurrent delete() pruned it after our
                # mkdir, or it was removed since this process created or met it (the
                # cache of known directories is then stale). Recreate it and try again.
                self._forget_parents(key)
                if attempt == _INSTALL_ATTEMPTS or not os.path.exists(tmp):
                    raise StorageUnavailable(
                        f"cannot store blob {key!r}: {exc.strerror or exc}"
                    ) from exc
            except (IsADirectoryError, NotADirectoryError) as exc:
                # Lost a race against a put of a conflicting key like 'a' vs 'a/b'.
                raise self._conflict(key, None) from exc
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # dest is a directory of blobs
                    raise self._conflict(key, key) from exc
                raise _storage_error(f"cannot store blob {key!r}", exc) from exc

    def _make_parents(self, key: str) -> None:
        """mkdir each missing parent of key, fsyncing the directory that gained an entry.

        Directories this process created or met are remembered (`_known_dirs`): a blob
        into a known directory costs no mkdir or stat. A stale entry (the directory was
        removed since) makes the rename fail with ENOENT; `_install` forgets it and
        comes back here. Raises OSError untranslated (the caller retries
        FileNotFoundError) and BlobStoreError if a parent is a blob file.
        """
        folder = key.rpartition("/")[0]
        if not folder or folder in self._known_dirs:
            return
        current = self.root
        segments = folder.split("/")
        for depth, segment in enumerate(segments, start=1):
            parent, current = current, os.path.join(current, segment)
            try:
                os.mkdir(current)
            except FileExistsError:
                # One stat answers atomically; FileNotFoundError here means a
                # concurrent delete() pruned it since mkdir, and _install retries.
                if not stat_module.S_ISDIR(os.stat(current).st_mode):
                    raise self._conflict(key, "/".join(segments[:depth])) from None
                continue
            _fsync_dir(parent)
        if len(self._known_dirs) >= _KNOWN_DIRS_LIMIT:
            self._known_dirs.clear()  # bounded memory; the next blob of each directory re-learns it
        self._known_dirs.update("/".join(segments[:depth]) for depth in range(1, len(segments) + 1))

    def _forget_parents(self, key: str) -> None:
        """Drop the cached parents of key (one of them was found missing)."""
        folder = key.rpartition("/")[0]
        while folder:
            self._known_dirs.discard(folder)
            folder = folder.rpartition("/")[0]

    @staticmethod
    def _conflict(key: str, other: str | None) -> BlobStoreError:
        detail = f"{other!r} is already a blob or a directory of blobs" if other else (
            "another key is a path prefix of it, or it is one of another key"
        )
        return BlobStoreError(
            f"cannot store blob {key!r} on a filesystem: {detail} "
            f"(a key cannot also be a directory of other keys)"
        )

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            if os.path.isdir(path):  # a directory of other blobs, not a blob
                return
            raise StorageUnavailable(f"cannot delete blob {key!r}: {exc.strerror or exc}") from exc
        self._prune(os.path.dirname(path))

    def _prune(self, directory: str) -> None:
        """Remove now-empty parent directories up to (not including) root.

        Races are harmless: rmdir only removes empty directories, and a put
        whose fresh directory disappears retries (see _install).
        """
        while directory != self.root and directory.startswith(self._root_prefix):
            # Forgotten before it goes: a put that reads the cache after the rmdir must
            # not take it for existing (and one in between recreates it, harmlessly).
            self._known_dirs.discard(os.path.relpath(directory, self.root).replace(os.sep, "/"))
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    # -- reading -----------------------------------------------------------

    def _open_existing(self, key: str, buffering: int = -1) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb", buffering=buffering)  # the caller closes it
        except _NOT_FOUND_ERRORS:
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot open blob {key!r}: {exc.strerror or exc}") from exc

    def iter_bytes(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = COPY_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(start, end, chunk_size)
        # Opening eagerly lets the server answer 404 before starting a response.
        return _FileChunks(self._open_existing(key, buffering=0), key, start, end, chunk_size)

    def open(self, key: str) -> BinaryIO:
        return self._open_existing(key)

    def stat(self, key: str) -> BlobInfo:
        path = self._path(key)
        try:
            st = os.stat(path)
        except _NOT_FOUND_ERRORS:
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat blob {key!r}: {exc.strerror or exc}") from exc
        if not stat_module.S_ISREG(st.st_mode):
            raise BlobNotFound(key)
        return BlobInfo(key=key, size=st.st_size)

    def local_path(self, key: str) -> str:
        path = self._path(key)
        self.stat(key)
        return path

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        if not os.path.isdir(self.root):
            raise StorageUnavailable(f"blob store root {self.root!r} is missing")
        return self._walk(self.root, "", prefix)

    def _walk(self, directory: str, rel: str, prefix: str) -> Iterator[str]:
        """Yield keys under `directory`, descending only where `prefix` can match."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda entry: entry.name)
        except _NOT_FOUND_ERRORS:
            return  # pruned by a concurrent delete
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot list blob store directory {directory!r}: {exc.strerror or exc}"
            ) from exc
        for entry in entries:
            key = f"{rel}/{entry.name}" if rel else entry.name
            # Skips '.tmp', dotfiles and anything else that is not a valid key.
            if not is_valid_key(key):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        yield from self._walk(entry.path, key, prefix)
                elif entry.is_file() and key.startswith(prefix):
                    yield key
            except OSError:
                continue  # vanished while listing

    # -- temporary files ---------------------------------------------------

    def temp_files(self) -> Iterator[TempFile]:
        try:
            with os.scandir(self._tmp_dir) as it:
                entries = list(it)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _storage_error(f"cannot list {self._tmp_dir!r}", exc) from exc
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield TempFile(f"{TMP_DIR_NAME}/{entry.name}", st.st_size, st.st_mtime)
            except OSError:
                continue  # removed while listing: its put finished

    def remove_temp_file(self, name: str) -> None:
        folder, _, base = name.partition("/")
        if folder != TMP_DIR_NAME or not base or "/" in base or os.sep in base or base in (".", ".."):
            raise InvalidKey(f"{name!r} is not a temporary file of this store")
        try:
            os.unlink(os.path.join(self._tmp_dir, base))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _storage_error(f"cannot remove temporary file {name!r}", exc) from exc

    # -- health ------------------------------------------------------------

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still put on the store's filesystem."""
        with _storage_errors(f"cannot read the free space of blob store {self.root!r}"):
            return shutil.disk_usage(self.root).free

    def check(self) -> None:
        if not os.path.isdir(self.root):
            raise StorageUnavailable(f"blob store root {self.root!r} is missing or not a directory")
        with _storage_errors(f"blob store {self.root!r} is not writable"):
            fd, probe = tempfile.mkstemp(dir=self._tmp_dir, prefix="check-")
            os.close(fd)
            os.unlink(probe)


class _LocalSpool(BlobSpool):
    """A spool file in the store's '.tmp': written with os.write, flushed with fdatasync
    and renamed into place on commit; unlinked otherwise."""

    def __init__(self, store: LocalBlobStore) -> None:
        super().__init__()
        self._store = store
        fd, name = store._open_spool_file()
        self._fd: int | None = fd
        self._name: str | None = name
        self._reader: _SpoolReader | None = None

    def _write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        with _storage_errors("cannot write an incoming blob"):
            _write_all(self._fd, data)

    def reader(self) -> BinaryIO:
        """What was written, read by position (pread): a header parse seeks and tells
        many times, which on the descriptor would each be a system call."""
        assert self._fd is not None
        if self._reader is None:
            self._reader = _SpoolReader(io.BufferedReader(_PositionalReader(self._fd), buffer_size=_READER_BUFFER))
        self._reader.seek(0)
        return cast(BinaryIO, self._reader)

    def _commit(self, key: str) -> BlobInfo:
        assert self._fd is not None
        store = self._store
        dest = store._path(key)
        with _storage_errors(f"cannot flush blob {key!r} to disk"):
            _fdatasync(self._fd)
        name, self._name = self._name, None  # _install_durably removes it, or makes it the blob
        assert name is not None
        store._install_durably(name, dest, key)
        return BlobInfo(key=key, size=self.size, sha256=self.sha256)

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.close()  # leaves the descriptor open
            self._reader = None
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
        name, self._name = self._name, None
        if name is not None:
            with suppress(OSError):
                os.unlink(name)


class _PendingBlob:
    """A blob of a batch: its temp file (open until flushed), where it goes."""

    __slots__ = ("dest", "fd", "key", "tmp")

    def __init__(self, fd: int, tmp: str, dest: str, key: str) -> None:
        self.fd: int | None = fd
        self.tmp: str | None = tmp
        self.dest = dest
        self.key = key

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)


class _LocalBatch(BlobBatch):
    """A batch on local disk: each put writes a temp file in '.tmp' and starts its
    writeback (sync_file_range, where there is one) without waiting; commit() then
    waits for them all (fdatasync each: by then mostly written, and one journal commit
    of the filesystem covers the batch's allocations), renames them into place and
    fsyncs each directory that gained one, once. The order a single put keeps (file
    data flushed before the rename, the directory after it) holds for every blob, so
    a crash leaves temp files (swept) or complete orphan blobs, never a torn blob, and
    the caller indexes nothing before commit() returned."""

    def __init__(self, store: LocalBlobStore) -> None:
        super().__init__(store)
        self._local = store
        self._pending: list[_PendingBlob] = []

    def put(self, key: str, stream: IO[bytes], *, size: int | None = None) -> BlobInfo:
        store = self._local
        dest = store._path(key)
        fd, tmp = store._open_spool_file()
        blob = _PendingBlob(fd, tmp, dest, key)
        try:
            written, sha256 = copy_stream(stream, lambda chunk: store._write(fd, chunk, key), key=key, size=size)
            _start_writeback(fd)
            if self._pending and len(self._pending) % _BATCH_OPEN_FILES == 0:
                # A large batch keeps no more files open than this: those written since
                # the last such flush are flushed now and closed.
                self._flush(self._pending[-_BATCH_OPEN_FILES:])
        except BaseException:
            self._drop([blob])
            raise
        self._pending.append(blob)
        return BlobInfo(key=key, size=written, sha256=sha256)

    @staticmethod
    def _flush(blobs: list[_PendingBlob]) -> None:
        """fdatasync and close the blobs' temp files that are still open."""
        for blob in blobs:
            if blob.fd is not None:
                with _storage_errors(f"cannot flush blob {blob.key!r} to disk"):
                    _fdatasync(blob.fd)
                blob.close()

    def commit(self) -> None:
        pending, self._pending = self._pending, []
        installed: list[_PendingBlob] = []
        try:
            self._flush(pending)
            for blob in pending:
                assert blob.tmp is not None
                self._local._install(blob.tmp, blob.dest, blob.key)
                blob.tmp = None  # it is the blob now
                installed.append(blob)
            for folder in sorted({os.path.dirname(blob.dest) for blob in pending}):
                with _storage_errors(f"cannot flush the directory {folder!r} to disk"):
                    try:
                        _fsync_dir(folder)
                    except FileNotFoundError:
                        pass  # a concurrent delete() of its blobs already pruned it
        except BaseException:
            for blob in installed:  # the caller is told the batch failed and indexes none of it
                with suppress(BlobStoreError):
                    self._local.delete(blob.key)
            self._drop(pending)
            raise

    def discard(self) -> None:
        pending, self._pending = self._pending, []
        self._drop(pending)

    @staticmethod
    def _drop(blobs: list[_PendingBlob]) -> None:
        for blob in blobs:
            blob.close()
            tmp, blob.tmp = blob.tmp, None
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)


#: Temp files a batch keeps open at most before it flushes and closes the older ones.
_BATCH_OPEN_FILES = 64

_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def _start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (Linux sync_file_range
    SYNC_FILE_RANGE_WRITE): the fdatasync that follows then mostly finds them written.
    Not a durability step (fdatasync is), so a platform without it skips it."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                function = libc.sync_file_range
                function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
                function.restype = ctypes.c_int
                _sync_file_range = function
            except (OSError, AttributeError):
                pass
    if _sync_file_range:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # an error here is the fdatasync's to report


#: Reads of a spool file: a DICOM header (a few KiB) in one or two calls, without copying
#: much of the Pixel Data that follows it out of the page cache.
_READER_BUFFER = 16 * 1024


class _PositionalReader(io.RawIOBase):
    """A raw reader of a descriptor that keeps its own position and reads with pread:
    seek and tell cost no system call, and the descriptor's offset is never moved."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self._fd, len(buffer), self._pos)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            offset += os.fstat(self._fd).st_size
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:  # the descriptor belongs to the spool
        super().close()


class _SpoolReader:
    """read/seek/tell of a BufferedReader, as a plain object: pydicom reopens a
    BufferedReader by its name to load a deferred value, and reads any other object
    itself (the methods are the buffered reader's own, so a call costs nothing more)."""

    def __init__(self, buffered: io.BufferedReader) -> None:
        self._buffered = buffered
        self.read = buffered.read
        self.seek = buffered.seek
        self.tell = buffered.tell
        self.close = buffered.close

    @property
    def closed(self) -> bool:
        return self._buffered.closed


class _FileChunks(Iterator[bytes]):
    """Iterator over a byte range of an open file; closes it when done or on close().

    A class rather than a generator so close() releases the file even if
    iteration never started (WSGI servers call close() on response bodies).
    """

    def __init__(self, f: BinaryIO, key: str, start: int, end: int | None, chunk_size: int) -> None:
        self._file: BinaryIO | None = f
        self._key = key
        self._remaining = None if end is None else end - start
        self._chunk_size = chunk_size
        try:
            f.seek(start)
        except OSError as exc:
            self.close()
            raise StorageUnavailable(f"cannot read blob {key!r}: {exc.strerror or exc}") from exc

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._file is None:
            raise StopIteration
        want = self._chunk_size if self._remaining is None else min(self._chunk_size, self._remaining)
        data = b""
        if want > 0:
            try:
                data = self._file.read(want)
            except OSError as exc:
                self.close()
                raise StorageUnavailable(
                    f"cannot read blob {self._key!r}: {exc.strerror or exc}"
                ) from exc
        if not data:
            self.close()
            raise StopIteration
        if self._remaining is not None:
            self._remaining -= len(data)
        return data

    def close(self) -> None:
        f, self._file = getattr(self, "_file", None), None
        if f is not None:
            f.close()

    def __del__(self) -> None:
        self.close()
