"""The contract every BlobStore backend must pass, as a reusable test mixin.

Usage, in a test module of a backend::

    class TestMyBackend(BlobStoreContract):
        @pytest.fixture
        def store(self):
            ...            # build the backend, yield it, tear it down

The tests only use the public BlobStore interface and make no assumption
about a fresh store: every test works under its own random key prefix, so a
backend may share one bucket between tests (e.g. S3 against moto). Modelled
on docker-registry's testing/driver.py suite.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable

import pytest

from backends.base import (
    MAX_KEY_LENGTH,
    MAX_SEGMENT_LENGTH,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    InvalidKey,
    StorageUnavailable,
)

MiB = 1 << 20

# Keys every method must reject; list() accepts "" as "everything".
INVALID_KEYS = [
    pytest.param("../x", id="dotdot"),
    pytest.param("a/../../x", id="dotdot-inside"),
    pytest.param("/abs", id="absolute"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a/./b", id="dot-segment"),
    pytest.param(".tmp/x", id="tmp-dir"),
    pytest.param("a/.hidden", id="dot-prefixed"),
    pytest.param("", id="empty"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a b", id="space"),
    pytest.param("a\nb", id="newline"),
    pytest.param("é", id="non-ascii"),
    pytest.param("x" * (MAX_SEGMENT_LENGTH + 1), id="segment-too-long"),
    pytest.param("/".join(["x" * 100] * 11), id="key-too-long"),
    pytest.param(b"a", id="bytes"),
    pytest.param(None, id="none"),
]

# list() takes "" (everything) and a trailing '/', but otherwise the same rules.
INVALID_PREFIXES = [p for p in INVALID_KEYS if p.values[0] not in ("", "a/")] + [
    pytest.param("/", id="slash"),
    pytest.param("a//", id="double-trailing-slash"),
    pytest.param(".tmp", id="tmp-dir-name"),
    pytest.param("a/.t", id="dot-prefixed-partial"),
]


def new_key(*parts: str) -> str:
    """A key under a prefix no other test uses."""
    return "/".join(("contract", uuid.uuid4().hex, *parts))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_all(store: BlobStore, key: str) -> bytes:
    return b"".join(store.iter_bytes(key))


class StreamBroke(Exception):
    """Raised by test streams to simulate a client that goes away mid-upload."""


class Interrupted(BaseException):
    """Like KeyboardInterrupt/SystemExit: not an Exception subclass."""


class NonSeekableReader:
    """Has read() and nothing else, like a request body; returns short reads."""

    def __init__(self, data: bytes, max_read: int = 64 * 1024) -> None:
        self._buf = io.BytesIO(data)
        self._max_read = max_read

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._max_read:
            n = self._max_read
        return self._buf.read(n)


class FailingReader(NonSeekableReader):
    """Yields `data` but raises `exc` once `fail_at` bytes have been read."""

    def __init__(self, data: bytes, fail_at: int, exc: BaseException) -> None:
        super().__init__(data)
        self._fail_at = fail_at
        self._exc = exc
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        if self.bytes_read >= self._fail_at:
            raise self._exc
        if n is None or n < 0:
            n = self._fail_at - self.bytes_read
        chunk = super().read(min(n, self._fail_at - self.bytes_read))
        self.bytes_read += len(chunk)
        return chunk


class CallbackReader(NonSeekableReader):
    """Calls `callback` once, after the first chunk, i.e. while a put is in progress."""

    def __init__(self, data: bytes, callback: Callable[[], None]) -> None:
        super().__init__(data)
        self._callback: Callable[[], None] | None = callback

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        if self._callback is not None and self._buf.tell() > 0:
            callback, self._callback = self._callback, None
            callback()
        return chunk


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Run targets in threads released together; re-raise the first failure."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> None:
        try:
            barrier.wait()
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "threads hung"
    if errors:
        raise errors[0]


def call_method(store: BlobStore, method: str, key: object) -> object:
    """Call a BlobStore method with `key`, consuming iterators so lazy errors surface."""
    if method == "put":
        return store.put(key, io.BytesIO(b"data"))  # type: ignore[arg-type]
    if method == "iter_bytes":
        return list(store.iter_bytes(key))  # type: ignore[arg-type]
    if method == "open":
        with store.open(key) as f:  # type: ignore[arg-type]
            return f.read()
    if method == "list":
        return list(store.list(key))  # type: ignore[arg-type]
    return getattr(store, method)(key)


class BlobStoreContract:
    """Behaviour shared by all backends. Subclasses provide a `store` fixture."""

    # -- put and read back -------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 9 * MiB], ids=["empty", "1B", "9MiB"])
    def test_round_trip(self, store: BlobStore, size: int) -> None:
        data = os.urandom(size)
        key = new_key("blob")
        info = store.put(key, io.BytesIO(data))
        assert info == BlobInfo(key=key, size=size, sha256=sha256(data))
        stat = store.stat(key)
        assert (stat.key, stat.size) == (key, size)
        assert stat.sha256 in (None, sha256(data))
        chunks = list(store.iter_bytes(key))
        assert all(0 < len(chunk) <= MiB for chunk in chunks)
        assert sha256(b"".join(chunks)) == sha256(data)
        assert store.exists(key)

    def test_put_from_non_seekable_stream(self, store: BlobStore) -> None:
        data = os.urandom(2 * MiB + 12345)
        key = new_key("blob")
        info = store.put(key, NonSeekableReader(data))  # type: ignore[arg-type]
        assert (info.size, info.sha256) == (len(data), sha256(data))
        assert read_all(store, key) == data

    def test_put_with_matching_size(self, store: BlobStore) -> None:
        data = os.urandom(1000)
        key = new_key("blob")
        assert store.put(key, io.BytesIO(data), size=len(data)).size == len(data)
        assert read_all(store, key) == data

    def test_put_replaces_existing_key(self, store: BlobStore) -> None:
        key = new_key("blob")
        store.put(key, io.BytesIO(os.urandom(3 * MiB)))
        info = store.put(key, io.BytesIO(b"short"))
        assert info.size == 5
        assert store.stat(key).size == 5
        assert read_all(store, key) == b"short"

    @pytest.mark.parametrize("existed", [False, True], ids=["new", "replace"])
    def test_key_not_visible_while_put_in_progress(self, store: BlobStore, existed: bool) -> None:
        key = new_key("blob")
        old, new = b"old content", os.urandom(MiB + 1)
        if existed:
            store.put(key, io.BytesIO(old))
        seen: list[bytes | None] = []

        def look() -> None:
            seen.append(read_all(store, key) if store.exists(key) else None)

        store.put(key, CallbackReader(new, look))  # type: ignore[arg-type]
        assert seen == [old if existed else None]
        assert read_all(store, key) == new

    # -- failed puts leave nothing ----------------------------------------

    @pytest.mark.parametrize("existed", [False, True], ids=["new", "replace"])
    @pytest.mark.parametrize(
        "exc", [StreamBroke("client went away"), Interrupted()], ids=["exception", "base-exception"]
    )
    def test_stream_failure_leaves_nothing(
        self, store: BlobStore, existed: bool, exc: BaseException
    ) -> None:
        key = new_key("blob")
        old = os.urandom(1000)
        if existed:
            store.put(key, io.BytesIO(old))
        before = set(store.list())
        reader = FailingReader(os.urandom(9 * MiB), fail_at=3 * MiB, exc=exc)
        with pytest.raises(type(exc)) as raised:
            store.put(key, reader)  # type: ignore[arg-type]
        assert raised.value is exc, "the stream's own exception must propagate unchanged"
        assert reader.bytes_read == 3 * MiB
        assert set(store.list()) == before
        if existed:
            assert read_all(store, key) == old
        else:
            assert not store.exists(key)

    @pytest.mark.parametrize("existed", [False, True], ids=["new", "replace"])
    @pytest.mark.parametrize("declared", [999, 1001, 0], ids=["longer", "shorter", "zero"])
    def test_size_mismatch_leaves_nothing(
        self, store: BlobStore, existed: bool, declared: int
    ) -> None:
        key = new_key("blob")
        old = b"previous"
        if existed:
            store.put(key, io.BytesIO(old))
        before = set(store.list())
        with pytest.raises(BlobStoreError) as raised:
            store.put(key, io.BytesIO(os.urandom(1000)), size=declared)
        assert not isinstance(raised.value, (StorageUnavailable, BlobNotFound, InvalidKey))
        assert set(store.list()) == before
        if existed:
            assert read_all(store, key) == old
        else:
            assert not store.exists(key)

    # -- ranged reads ------------------------------------------------------

    @pytest.mark.parametrize(
        ("start", "end"),
        [
            (0, 10),
            (0, None),
            (12345, 67890),
            (99_990, None),
            (99_990, 100_000),
            (50_000, 50_000),
            (0, 200_000),
            (100_000, None),
            (150_000, None),
        ],
        ids=[
            "head",
            "all",
            "middle",
            "tail-open",
            "tail-closed",
            "empty",
            "end-clipped",
            "at-end",
            "past-end",
        ],
    )
    def test_iter_bytes_ranges(self, store: BlobStore, start: int, end: int | None) -> None:
        data = os.urandom(100_000)
        key = new_key("blob")
        store.put(key, io.BytesIO(data))
        chunks = list(store.iter_bytes(key, start=start, end=end, chunk_size=4096))
        assert all(0 < len(chunk) <= 4096 for chunk in chunks)
        assert b"".join(chunks) == data[start:end]

    def test_iter_bytes_is_lazy_and_chunked(self, store: BlobStore) -> None:
        data = os.urandom(3 * MiB + 5)
        key = new_key("blob")
        store.put(key, io.BytesIO(data))
        it = iter(store.iter_bytes(key, start=7, chunk_size=MiB))
        first = next(it)
        assert first == data[7 : 7 + MiB]
        assert first + b"".join(it) == data[7:]

    @pytest.mark.parametrize(
        "kwargs",
        [{"start": -1}, {"start": 10, "end": 5}, {"chunk_size": 0}],
        ids=["negative-start", "end-before-start", "zero-chunk"],
    )
    def test_iter_bytes_rejects_bad_arguments(self, store: BlobStore, kwargs: dict) -> None:
        key = new_key("blob")
        store.put(key, io.BytesIO(b"0123456789abcdef"))
        with pytest.raises(ValueError):
            list(store.iter_bytes(key, **kwargs))

    # -- missing keys, exists, delete -------------------------------------

    @pytest.mark.parametrize("method", ["iter_bytes", "open", "stat"])
    def test_missing_key_raises_blob_not_found(self, store: BlobStore, method: str) -> None:
        key = new_key("missing")
        with pytest.raises(BlobNotFound) as raised:
            call_method(store, method, key)
        assert raised.value.key == key
        assert key in str(raised.value)

    def test_blob_not_found_is_a_blob_store_error(self) -> None:
        assert issubclass(BlobNotFound, BlobStoreError)
        assert issubclass(StorageUnavailable, BlobStoreError)
        assert issubclass(InvalidKey, BlobStoreError) and issubclass(InvalidKey, ValueError)

    def test_exists(self, store: BlobStore) -> None:
        key = new_key("blob")
        assert not store.exists(key)
        store.put(key, io.BytesIO(b""))
        assert store.exists(key)
        assert not store.exists(key + "x")
        assert not store.exists(key + "/child")

    def test_delete_is_idempotent(self, store: BlobStore) -> None:
        key = new_key("blob")
        store.put(key, io.BytesIO(b"x"))
        store.delete(key)
        assert not store.exists(key)
        with pytest.raises(BlobNotFound):
            store.stat(key)
        store.delete(key)
        store.delete(new_key("never", "existed"))
        assert key not in set(store.list())

    def test_delete_keeps_siblings(self, store: BlobStore) -> None:
        base = new_key("dir")
        a, b = f"{base}/a", f"{base}/b"
        store.put(a, io.BytesIO(b"a"))
        store.put(b, io.BytesIO(b"b"))
        store.delete(a)
        assert not store.exists(a)
        assert read_all(store, b) == b"b"

    # -- list --------------------------------------------------------------

    def test_list_with_and_without_prefix(self, store: BlobStore) -> None:
        base = new_key()
        keys = {f"{base}/a/1", f"{base}/a/2", f"{base}/ab/1", f"{base}/b/deep/er/1", f"{base}-x"}
        for key in keys:
            store.put(key, io.BytesIO(key.encode()))
        assert keys <= set(store.list())
        assert set(store.list(f"{base}/")) == keys - {f"{base}-x"}
        assert set(store.list(f"{base}/a/")) == {f"{base}/a/1", f"{base}/a/2"}
        # A prefix is a string prefix, not a directory name (like S3).
        assert set(store.list(f"{base}/a")) == {f"{base}/a/1", f"{base}/a/2", f"{base}/ab/1"}
        assert set(store.list(f"{base}/b/deep/er/1")) == {f"{base}/b/deep/er/1"}
        assert set(store.list(base)) == keys
        assert list(store.list(f"{base}/nothing")) == []
        assert all(isinstance(key, str) for key in store.list(base))

    def test_list_excludes_deleted_keys(self, store: BlobStore) -> None:
        base = new_key()
        store.put(f"{base}/keep", io.BytesIO(b"1"))
        store.put(f"{base}/gone", io.BytesIO(b"2"))
        store.delete(f"{base}/gone")
        assert list(store.list(base)) == [f"{base}/keep"]

    # -- keys --------------------------------------------------------------

    @pytest.mark.parametrize(
        "method",
        ["put", "iter_bytes", "open", "stat", "exists", "delete", "local_path"],
    )
    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_rejected(self, store: BlobStore, method: str, key: object) -> None:
        before = set(store.list())
        with pytest.raises(InvalidKey):
            call_method(store, method, key)
        assert set(store.list()) == before

    @pytest.mark.parametrize("prefix", INVALID_PREFIXES)
    def test_list_rejects_invalid_prefixes(self, store: BlobStore, prefix: object) -> None:
        with pytest.raises(InvalidKey):
            call_method(store, "list", prefix)

    @pytest.mark.parametrize(
        "suffix",
        ["a", "A-b_c.d", "x..y", "trailing.", "_", "-", "UPPER/lower/0123456789"],
    )
    def test_unusual_valid_keys_round_trip(self, store: BlobStore, suffix: str) -> None:
        key = new_key(suffix)
        store.put(key, io.BytesIO(suffix.encode()))
        assert read_all(store, key) == suffix.encode()
        assert key in set(store.list(key))

    def test_longest_key_round_trips(self, store: BlobStore) -> None:
        base = new_key()
        segments, remaining = [base], MAX_KEY_LENGTH - len(base)
        while remaining > 1:  # each further segment costs its length plus one '/'
            segment_length = min(MAX_SEGMENT_LENGTH, remaining - 1)
            segments.append("s" * segment_length)
            remaining -= segment_length + 1
        key = "/".join(segments)
        assert MAX_KEY_LENGTH - 1 <= len(key) <= MAX_KEY_LENGTH
        store.put(key, io.BytesIO(b"long"))
        assert read_all(store, key) == b"long"
        assert store.stat(key).size == 4
        assert list(store.list(key)) == [key]

    # -- concurrency -------------------------------------------------------

    def test_concurrent_puts_of_different_keys(self, store: BlobStore) -> None:
        base = new_key()
        blobs = {f"{base}/{i % 3}/k{i}": os.urandom(100_000 + i) for i in range(20)}

        def putter(key: str, data: bytes) -> Callable[[], None]:
            return lambda: store.put(key, NonSeekableReader(data))  # type: ignore[arg-type]

        run_threads([putter(key, data) for key, data in blobs.items()])
        assert set(store.list(base)) == set(blobs)
        for key, data in blobs.items():
            assert read_all(store, key) == data

    def test_concurrent_puts_of_same_key(self, store: BlobStore) -> None:
        key = new_key("contended")
        contents = [os.urandom(2 * MiB) for _ in range(8)]

        def putter(data: bytes) -> Callable[[], None]:
            return lambda: store.put(key, NonSeekableReader(data))  # type: ignore[arg-type]

        run_threads([putter(data) for data in contents])
        final = read_all(store, key)
        assert final in contents, "the final content must be exactly one of the inputs"
        assert store.stat(key).size == len(final)
        assert list(store.list(key)) == [key]

    # -- open, check -------------------------------------------------------

    def test_open_returns_seekable_reader(self, store: BlobStore) -> None:
        data = os.urandom(3 * MiB + 17)
        key = new_key("blob")
        store.put(key, io.BytesIO(data))
        with store.open(key) as f:
            assert f.seekable()
            assert f.read(128) == data[:128]
            f.seek(2 * MiB)
            assert f.read(10) == data[2 * MiB : 2 * MiB + 10]
            assert f.seek(0, io.SEEK_END) == len(data)
            f.seek(-5, io.SEEK_END)
            assert f.read() == data[-5:]
            f.seek(0)
            assert sha256(f.read()) == sha256(data)

    def test_check_passes(self, store: BlobStore) -> None:
        assert store.check() is None

    # -- spools: received first, named (committed) later -------------------

    @pytest.mark.parametrize("size", [0, 1, 3 * MiB + 17], ids=["empty", "1B", "3MiB"])
    def test_spool_round_trip(self, store: BlobStore, size: int) -> None:
        data = os.urandom(size)
        key = new_key("spooled")
        before = set(store.list())
        with store.spool(memory_bytes=MiB) as spool:
            view = memoryview(data)
            for start in range(0, size, 100_000):  # bytes and memoryviews alike
                chunk = view[start : start + 100_000]
                spool.write(chunk if start % 200_000 else bytes(chunk))
            assert (spool.size, spool.sha256) == (size, sha256(data))
            reader = spool.reader()
            assert reader.read() == data
            reader.seek(size // 2)
            assert reader.read() == data[size // 2 :]
            assert set(store.list()) == before and not store.exists(key)  # nothing visible yet
            info = spool.commit(key)
        assert info == BlobInfo(key=key, size=size, sha256=sha256(data))
        assert read_all(store, key) == data
        assert list(store.temp_files()) == []
        with pytest.raises(ValueError):
            spool.write(b"more")  # used up

    def test_spool_commit_replaces_existing_key(self, store: BlobStore) -> None:
        key = new_key("spooled")
        store.put(key, io.BytesIO(b"old content"))
        with store.spool() as spool:
            spool.write(b"new")
            assert read_all(store, key) == b"old content"
            spool.commit(key)
        assert read_all(store, key) == b"new"

    @pytest.mark.parametrize("how", ["discard", "exception", "base-exception", "invalid-key"])
    def test_spool_not_committed_leaves_nothing(self, store: BlobStore, how: str) -> None:
        before = set(store.list())
        data = os.urandom(2 * MiB)
        spool = store.spool(memory_bytes=MiB)
        failure: BaseException = StreamBroke("client went away") if how == "exception" else Interrupted()
        try:
            with spool:
                spool.write(data[:MiB])
                spool.write(data[MiB:])
                if how == "discard":
                    spool.discard()
                    spool.discard()  # idempotent
                elif how == "invalid-key":
                    with pytest.raises(InvalidKey):
                        spool.commit("../outside")
                else:
                    raise failure
        except (StreamBroke, Interrupted) as exc:
            assert exc is failure
        assert set(store.list()) == before
        assert list(store.temp_files()) == []
