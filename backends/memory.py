"""In-memory blob store for tests and throwaway development servers.

This module owns a dict-backed BlobStore with the same semantics as the
persistent backends (atomic puts, validated keys, the same errors), plus a
failure-injection hook (`fail_after_bytes`) for tests of the layers above.
Contents are lost when the process exits.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import IO, BinaryIO, cast

from .base import (
    COPY_CHUNK_SIZE,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    StorageUnavailable,
    check_range,
    copy_stream,
    validate_key,
    validate_prefix,
)

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore(BlobStore):
    """Blobs in a dict guarded by a lock; safe to share between threads.

    Set `fail_after_bytes` to make the next put() raise StorageUnavailable once
    it has read that many bytes from its stream (or when the stream ends before
    that). The hook is one-shot: it resets to None when that put starts.
    """

    scheme = "memory"

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, str]] = {}  # key -> (content, sha256 hex)
        self._lock = threading.Lock()
        self.fail_after_bytes: int | None = None

    @classmethod
    def from_url(cls, url: str) -> MemoryBlobStore:
        """Open 'memory://' (nothing may follow it); every call is a new, empty store."""
        if url.lower() != "memory://":
            raise ValueError(f"invalid memory URL {url!r}: expected exactly memory://")
        return cls()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self._blobs)} blobs>)"

    def _get(self, key: str) -> bytes:
        validate_key(key)
        with self._lock:
            try:
                return self._blobs[key][0]
            except KeyError:
                raise BlobNotFound(key) from None

    def put(
        self, key: str, stream: IO[bytes], *, size: int | None = None, sha256: str | None = None
    ) -> BlobInfo:
        validate_key(key)
        with self._lock:
            fail_after, self.fail_after_bytes = self.fail_after_bytes, None
        if fail_after is not None:
            stream = cast(IO[bytes], _FailAfter(stream, fail_after))  # copy_stream only calls read()
        # The stream is read without holding the lock, into a private buffer
        # that is published only once the whole stream was read successfully.
        buffer = io.BytesIO()
        size_read, sha256 = copy_stream(stream, buffer.write, key=key, size=size, sha256=sha256)
        with self._lock:
            self._blobs[key] = (buffer.getvalue(), sha256)
        return BlobInfo(key=key, size=size_read, sha256=sha256)

    def iter_bytes(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = COPY_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(start, end, chunk_size)
        data = self._get(key)  # eager, so BlobNotFound is raised by the call itself
        stop = len(data) if end is None else min(end, len(data))
        return _chunks(data, start, stop, chunk_size)

    def open(self, key: str) -> BinaryIO:
        # Writes to the returned BytesIO never reach the store.
        return io.BytesIO(self._get(key))

    def stat(self, key: str) -> BlobInfo:
        validate_key(key)
        with self._lock:
            try:
                data, sha256 = self._blobs[key]
            except KeyError:
                raise BlobNotFound(key) from None
        return BlobInfo(key=key, size=len(data), sha256=sha256)

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._blobs.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        with self._lock:
            keys = sorted(key for key in self._blobs if key.startswith(prefix))
        return iter(keys)


def _chunks(data: bytes, start: int, stop: int, chunk_size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for pos in range(start, stop, chunk_size):
        yield bytes(view[pos : min(pos + chunk_size, stop)])


class _FailAfter:
    """Stream wrapper that raises StorageUnavailable after `limit` bytes were read."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._remaining = limit
        self._limit = limit

    def read(self, n: int = -1) -> bytes:
        if self._remaining > 0:
            want = self._remaining if n is None or n < 0 else min(n, self._remaining)
            data = self._stream.read(want)
            if data:
                self._remaining -= len(data)
                return data
        raise StorageUnavailable(f"injected failure after {self._limit} bytes (fail_after_bytes)")
