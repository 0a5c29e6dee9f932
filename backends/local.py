"""Local filesystem blob store: one file per blob under a root directory.

This module owns how blobs live on disk. A key 'a/b/c' is the file
'<root>/a/b/c'. Puts are atomic and durable: data goes to a temporary file in
'<root>/.tmp' (same filesystem, so the final rename is atomic), is fsynced,
renamed over the destination with os.replace, and the directory is fsynced.
A crash can leave stale files in '.tmp' (never visible as blobs, never
listed); opening the store removes those not written to for STALE_TEMP_SECONDS,
a pause no running put makes, and `dicom gc` lists and removes them too
(`temp_files`, `remove_temp_file`). A put that fails, for whatever reason, leaves
nothing behind: no temp file, no blob.

Blob files are created with mode 0600 (owner only), as mkstemp creates them.
Every OSError is translated to a BlobStoreError subclass - StoreFull when the
filesystem is out of space or over quota (ENOSPC, EDQUOT), so the server can say
so - except errors raised by the caller's input stream, which propagate unchanged.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as stat_module
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, BinaryIO
from urllib.parse import unquote, urlsplit

from .base import (
    COPY_CHUNK_SIZE,
    STALE_TEMP_SECONDS,
    BlobInfo,
    BlobNotFound,
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


def _write_all(fd: int, data: bytes) -> None:
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

    def put(self, key: str, stream: IO[bytes], *, size: int | None = None) -> BlobInfo:
        dest = self._path(key)
        with _storage_errors(f"cannot create a temporary file for blob {key!r}"):
            fd, tmp = tempfile.mkstemp(dir=self._tmp_dir, prefix="put-", suffix=".part")
        installed = False
        try:
            try:
                written, sha256 = copy_stream(
                    stream, lambda chunk: self._write(fd, chunk, key), key=key, size=size
                )
                with _storage_errors(f"cannot flush blob {key!r} to disk"):
                    os.fsync(fd)
            except BaseException:
                with suppress(OSError):
                    os.close(fd)
                raise
            with _storage_errors(f"cannot close blob {key!r}"):
                os.close(fd)
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
        return BlobInfo(key=key, size=written, sha256=sha256)

    @staticmethod
    def _write(fd: int, chunk: bytes, key: str) -> None:
        with _storage_errors(f"cannot write blob {key!r}"):
            _write_all(fd, chunk)

    def _install(self, tmp: str, dest: str, key: str) -> None:
        """Create dest's parent directories and atomically rename tmp onto dest."""
        for attempt in range(1, _INSTALL_ATTEMPTS + 1):
            try:
                self._make_parents(key)
                if os.path.isdir(dest):
                    raise self._conflict(key, key)
                os.replace(tmp, dest)
                return
            except FileNotFoundError as exc:
                # A concurrent delete() pruned a parent directory between our
                # mkdir and the rename; recreate it and try again.
                if attempt == _INSTALL_ATTEMPTS or not os.path.exists(tmp):
                    raise StorageUnavailable(
                        f"cannot store blob {key!r}: {exc.strerror or exc}"
                    ) from exc
            except (IsADirectoryError, NotADirectoryError) as exc:
                # Lost a race against a put of a conflicting key like 'a' vs 'a/b'.
                raise self._conflict(key, None) from exc
            except OSError as exc:
                raise _storage_error(f"cannot store blob {key!r}", exc) from exc

    def _make_parents(self, key: str) -> None:
        """mkdir each missing parent of key, fsyncing the directory that gained an entry.

        Raises OSError untranslated (the caller retries FileNotFoundError) and
        BlobStoreError if a parent is a blob file.
        """
        current = self.root
        segments = key.split("/")[:-1]
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
