"""MemoryBlobStore: the shared contract plus its failure-injection hook."""

from __future__ import annotations

import io
import os
import pickle

import pytest
from blobstore_contract import BlobStoreContract, MiB, NonSeekableReader, read_all, sha256

from backends import open_blobstore
from backends.base import BlobNotFound, InvalidKey, StorageUnavailable
from backends.memory import MemoryBlobStore


class TestMemoryBlobStoreContract(BlobStoreContract):
    @pytest.fixture
    def store(self) -> MemoryBlobStore:
        return MemoryBlobStore()


class CountingReader(NonSeekableReader):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        return chunk


def test_fail_after_bytes_fails_the_next_put_only() -> None:
    store = MemoryBlobStore()
    store.put("k", io.BytesIO(b"old"))
    store.fail_after_bytes = MiB
    reader = CountingReader(os.urandom(3 * MiB))
    with pytest.raises(StorageUnavailable, match="injected failure"):
        store.put("k", reader)  # type: ignore[arg-type]
    assert reader.bytes_read == MiB
    assert read_all(store, "k") == b"old"
    assert store.fail_after_bytes is None
    store.put("k", io.BytesIO(b"new"))
    assert read_all(store, "k") == b"new"


@pytest.mark.parametrize(("limit", "size"), [(0, 0), (0, 10), (100, 10)])
def test_fail_after_bytes_fails_even_if_stream_is_short(limit: int, size: int) -> None:
    store = MemoryBlobStore()
    store.fail_after_bytes = limit
    with pytest.raises(StorageUnavailable):
        store.put("k", io.BytesIO(os.urandom(size)))
    assert not store.exists("k")
    assert list(store.list()) == []


def test_stat_knows_sha256() -> None:
    store = MemoryBlobStore()
    store.put("k", io.BytesIO(b"abc"))
    assert store.stat("k").sha256 == sha256(b"abc")


def test_open_returns_an_independent_copy() -> None:
    store = MemoryBlobStore()
    store.put("k", io.BytesIO(b"original"))
    with store.open("k") as f:
        f.write(b"CHANGED!")
    assert read_all(store, "k") == b"original"


def test_local_path_is_none_but_validates() -> None:
    store = MemoryBlobStore()
    store.put("k", io.BytesIO(b"x"))
    assert store.local_path("k") is None
    with pytest.raises(InvalidKey):
        store.local_path("../k")


def test_open_blobstore_memory_url() -> None:
    first, second = open_blobstore("memory://"), open_blobstore("MEMORY://")
    assert isinstance(first, MemoryBlobStore) and isinstance(second, MemoryBlobStore)
    first.put("k", io.BytesIO(b"x"))
    assert not second.exists("k"), "every memory:// URL opens a new, empty store"


@pytest.mark.parametrize("url", ["memory://name", "memory:", "memory:///x"])
def test_open_blobstore_rejects_other_memory_urls(url: str) -> None:
    with pytest.raises(ValueError, match="expected exactly memory://"):
        open_blobstore(url)


def test_blob_not_found_pickles_with_its_key() -> None:
    error = pickle.loads(pickle.dumps(BlobNotFound("a/b")))
    assert error.key == "a/b"
    assert str(error) == "blob not found: 'a/b'"
