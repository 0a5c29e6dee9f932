"""LocalBlobStore: the shared contract plus filesystem specifics, and open_blobstore."""

from __future__ import annotations

import errno
import importlib
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from blobstore_contract import (
    BlobStoreContract,
    CallbackReader,
    FailingReader,
    Interrupted,
    MiB,
    StreamBroke,
    read_all,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backends
from backends import BLOBSTORES, blobstore_class, open_blobstore
from backends.base import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    InvalidKey,
    StorageUnavailable,
    StoreFull,
)
from backends.local import TMP_DIR_NAME, LocalBlobStore
from backends.memory import MemoryBlobStore

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def local(root: Path) -> Iterator[LocalBlobStore]:
    with LocalBlobStore(root) as store:
        yield store


def tmp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / TMP_DIR_NAME))


class TestLocalBlobStoreContract(BlobStoreContract):
    @pytest.fixture
    def store(self, local: LocalBlobStore) -> LocalBlobStore:
        return local


# -- construction and health -------------------------------------------------


def test_creates_root_and_tmp_dir(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "blobs"
    store = LocalBlobStore(root)
    assert store.root == str(root)
    assert (root / TMP_DIR_NAME).is_dir()
    LocalBlobStore(root)  # reopening an existing store is fine


def test_root_that_cannot_be_created_is_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageUnavailable, match="cannot create blob store directory") as raised:
        LocalBlobStore(tmp_path / "file" / "blobs")
    assert str(tmp_path / "file" / "blobs") in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


def test_removed_root_makes_check_and_put_fail_cleanly(local: LocalBlobStore, root: Path) -> None:
    local.put("a/b", io.BytesIO(b"x"))
    shutil.rmtree(root)
    with pytest.raises(StorageUnavailable):
        local.check()
    with pytest.raises(StorageUnavailable):
        local.put("a/c", io.BytesIO(b"x"))
    with pytest.raises(StorageUnavailable):
        list(local.list())
    with pytest.raises(BlobNotFound):
        local.stat("a/b")


# -- atomic, durable puts ----------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    ["stream-exception", "stream-base-exception", "size-mismatch", "fsync", "enospc"],
)
def test_failed_put_leaves_no_temp_file(
    local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    data = os.urandom(3 * MiB)
    stream: object = io.BytesIO(data)
    size = None
    expected: type[BaseException]
    if failure == "stream-exception":
        stream, expected = FailingReader(data, MiB, StreamBroke()), StreamBroke
    elif failure == "stream-base-exception":
        stream, expected = FailingReader(data, MiB, Interrupted()), Interrupted
    elif failure == "size-mismatch":
        size, expected = len(data) + 1, BlobStoreError
    elif failure == "fsync":
        monkeypatch.setattr(os, "fsync", _raise_oserror(errno.EIO))
        expected = StorageUnavailable
    else:
        monkeypatch.setattr(os, "write", _raise_oserror(errno.ENOSPC))
        expected = StorageUnavailable
    with pytest.raises(expected):
        local.put("study/series/instance", stream, size=size)  # type: ignore[arg-type]
    assert tmp_files(root) == []
    assert not local.exists("study/series/instance")
    assert list(local.list()) == []


def _raise_oserror(code: int):
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


def test_disk_full_is_storage_unavailable_with_cause(
    local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "write", _raise_oserror(errno.ENOSPC))
    with pytest.raises(StorageUnavailable, match="No space left") as raised:
        local.put("k", io.BytesIO(b"data"))
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOSPC


def test_oserror_from_the_input_stream_is_not_translated(local: LocalBlobStore, root: Path) -> None:
    """A client disconnect is the caller's problem, not a storage failure."""
    error = ConnectionResetError(errno.ECONNRESET, "reset by peer")
    with pytest.raises(ConnectionResetError) as raised:
        local.put("k", FailingReader(os.urandom(10), 5, error))  # type: ignore[arg-type]
    assert raised.value is error
    assert tmp_files(root) == []


def test_put_writes_into_store_tmp_dir_then_renames(local: LocalBlobStore, root: Path) -> None:
    during: list[tuple[list[str], bool]] = []

    def look() -> None:
        during.append((tmp_files(root), (root / "a" / "b").exists()))

    local.put("a/b", CallbackReader(os.urandom(2 * MiB), look))  # type: ignore[arg-type]
    [(temp_names, visible)] = during
    assert len(temp_names) == 1 and not visible
    assert tmp_files(root) == []
    assert (root / "a" / "b").stat().st_size == 2 * MiB
    # The temp file lives on the same filesystem as the blobs, so rename is atomic.
    assert os.stat(root / TMP_DIR_NAME).st_dev == os.stat(root / "a").st_dev


@pytest.mark.parametrize("write", ["put", "spool"])
def test_put_fsyncs_file_and_directories(
    local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """Spy on (not replace) os.fsync and os.fdatasync: the file's data and every changed
    directory get synced, the file first (a put and a committed spool alike)."""
    synced: list[str] = []

    def spying(real):
        def spy(fd: int) -> None:
            mode = os.fstat(fd).st_mode
            kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
            synced.append(f"{kind} {real.__name__}")
            real(fd)

        return spy

    monkeypatch.setattr(os, "fsync", spying(os.fsync))
    if hasattr(os, "fdatasync"):
        monkeypatch.setattr(os, "fdatasync", spying(os.fdatasync))
    file_sync = "file fdatasync" if hasattr(os, "fdatasync") else "file fsync"

    def store(key: str) -> None:
        if write == "put":
            local.put(key, io.BytesIO(b"payload"))
            return
        with local.spool() as spool:
            spool.write(b"payload")
            spool.commit(key)

    store("new/nested/dirs/blob")
    # The file, the parent of each of the 3 new directories, and the blob's directory.
    assert synced.count(file_sync) == 1
    assert synced.count("dir fsync") == 4
    assert synced[0] == file_sync

    synced.clear()
    store("new/nested/dirs/blob2")
    assert synced == [file_sync, "dir fsync"]


def test_blob_files_are_owner_only(local: LocalBlobStore, root: Path) -> None:
    local.put("k", io.BytesIO(b"x"))
    assert stat.S_IMODE((root / "k").stat().st_mode) == 0o600


# -- key to path mapping -----------------------------------------------------


def test_key_maps_to_path_inside_root(local: LocalBlobStore, root: Path) -> None:
    local.put("studies/1.2.3/series/4.5/instances/6.7", io.BytesIO(b"dicom"))
    path = local.local_path("studies/1.2.3/series/4.5/instances/6.7")
    assert path == str(root / "studies" / "1.2.3" / "series" / "4.5" / "instances" / "6.7")
    assert os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", ".tmp/x", "a/../.tmp/x", "."])
def test_path_check_is_defence_in_depth(
    local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Even if validate_key let a bad key through, no path outside the store is used."""
    monkeypatch.setattr("backends.local.validate_key", lambda k: k)
    with pytest.raises(InvalidKey, match="outside the store"):
        local._path(key)
    # A leading '/' cannot escape either: it maps below the root.
    assert local._path("/etc/passwd") == os.path.join(local.root, "etc", "passwd")


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(alphabet="ab./\\-_\x00 ", max_size=12) | st.text(max_size=12))
def test_every_key_is_rejected_or_maps_inside_root(local: LocalBlobStore, key: str) -> None:
    try:
        path = local._path(key)
    except InvalidKey:
        return
    tmp_dir = os.path.join(local.root, TMP_DIR_NAME)
    assert os.path.commonpath([local.root, path]) == local.root != path
    assert os.path.commonpath([tmp_dir, path]) != tmp_dir
    assert os.path.relpath(path, local.root).replace(os.sep, "/") == key


def test_local_path(local: LocalBlobStore) -> None:
    local.put("a/b", io.BytesIO(b"content"))
    path = local.local_path("a/b")
    assert os.path.isabs(path)
    assert Path(path).read_bytes() == b"content"
    with pytest.raises(BlobNotFound):
        local.local_path("a/missing")
    with pytest.raises(BlobNotFound):
        local.local_path("a")  # a directory, not a blob
    with pytest.raises(InvalidKey):
        local.local_path("../a")


# -- delete, list, conflicts -------------------------------------------------


def test_delete_prunes_empty_directories(local: LocalBlobStore, root: Path) -> None:
    local.put("a/b/c/blob", io.BytesIO(b"1"))
    local.put("a/other", io.BytesIO(b"2"))
    local.delete("a/b/c/blob")
    assert not (root / "a" / "b").exists()
    assert (root / "a" / "other").exists()
    local.delete("a/other")
    assert sorted(os.listdir(root)) == [TMP_DIR_NAME]
    local.check()  # root and .tmp survive


def test_delete_of_a_directory_key_is_a_no_op(local: LocalBlobStore) -> None:
    local.put("d/x", io.BytesIO(b"x"))
    local.delete("d")
    assert read_all(local, "d/x") == b"x"


def test_concurrent_put_and_delete_in_one_directory(local: LocalBlobStore) -> None:
    """delete() pruning a directory must not make a concurrent put() into it fail."""
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            for _ in range(150):
                local.put(f"shared/dir/{name}", io.BytesIO(b"x"))
                local.delete(f"shared/dir/{name}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(f"k{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list(local.list()) == []


def test_list_ignores_temp_and_stray_files(local: LocalBlobStore, root: Path) -> None:
    local.put("a/real", io.BytesIO(b"x"))
    (root / TMP_DIR_NAME / "put-leftover.part").write_bytes(b"junk")
    (root / ".hidden").write_bytes(b"junk")
    (root / "a" / ".editor.swp").write_bytes(b"junk")
    (root / "a" / "bad name").write_bytes(b"junk")
    assert list(local.list()) == ["a/real"]
    assert list(local.list("a/")) == ["a/real"]


def test_key_that_is_also_a_directory_conflicts(local: LocalBlobStore) -> None:
    local.put("a", io.BytesIO(b"file"))
    with pytest.raises(BlobStoreError, match="directory") as raised:
        local.put("a/b", io.BytesIO(b"x"))
    assert not isinstance(raised.value, StorageUnavailable)
    local.put("c/d", io.BytesIO(b"x"))
    with pytest.raises(BlobStoreError, match="directory") as raised:
        local.put("c", io.BytesIO(b"x"))
    assert not isinstance(raised.value, StorageUnavailable)
    for method in (local.stat, local.open, lambda k: list(local.iter_bytes(k))):
        with pytest.raises(BlobNotFound):
            method("c")
        with pytest.raises(BlobNotFound):
            method("a/b")
    assert not local.exists("c")
    assert sorted(local.list()) == ["a", "c/d"]
    assert os.listdir(Path(local.root) / TMP_DIR_NAME) == []


def test_iter_bytes_close_releases_file_before_iteration(local: LocalBlobStore) -> None:
    local.put("k", io.BytesIO(b"abc"))
    it = local.iter_bytes("k")
    it.close()  # type: ignore[attr-defined]  # WSGI servers call close()
    assert list(it) == []


# -- open_blobstore ----------------------------------------------------------


def test_open_blobstore_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_blobstore("data/blobs")
    assert isinstance(store, LocalBlobStore)
    assert store.root == str(tmp_path / "data" / "blobs")
    assert (tmp_path / "data" / "blobs").is_dir()
    assert open_blobstore("./x").root == str(tmp_path / "x")


def test_open_blobstore_absolute_path_and_pathlike(tmp_path: Path) -> None:
    assert open_blobstore(str(tmp_path / "a")).root == str(tmp_path / "a")
    assert open_blobstore(tmp_path / "b").root == str(tmp_path / "b")


def test_open_blobstore_file_url(tmp_path: Path) -> None:
    store = open_blobstore(f"file://{tmp_path}/blobs")
    assert isinstance(store, LocalBlobStore)
    assert store.root == str(tmp_path / "blobs")
    assert open_blobstore(f"FILE://{tmp_path}/upper").root == str(tmp_path / "upper")
    assert open_blobstore(f"file://{tmp_path}/with%20space").root == str(tmp_path / "with space")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file://relative/path", "'relative' is read as a host name"),
        ("file://host/abs/path", "'host' is read as a host name"),
        ("file:relative", "the path is not absolute"),
        ("file://", "the path is not absolute"),
        ("file:///abs?x=1", "no query or fragment"),
    ],
)
def test_open_blobstore_rejects_bad_file_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="expected file:///absolute/path") as raised:
        open_blobstore(url)
    assert message in str(raised.value)
    assert repr(url) in str(raised.value)


@pytest.mark.parametrize("url", ["gs://bucket/prefix", "http://example.org/x", "ftp:x", "gs://b"])
def test_open_blobstore_rejects_unsupported_schemes(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        open_blobstore(url)
    assert str(raised.value) == (
        f"unsupported blob store URL {url!r}: "
        f"expected a path, file:///abs/path, s3://bucket[/prefix] or memory://"
    )


def test_open_blobstore_does_not_echo_credentials() -> None:
    with pytest.raises(ValueError) as raised:
        open_blobstore("gs://AKIAEXAMPLE:s3cr3t@bucket/prefix")
    assert "s3cr3t" not in str(raised.value)
    assert "AKIAEXAMPLE" not in str(raised.value)
    assert "gs://***@bucket/prefix" in str(raised.value)


@pytest.mark.parametrize("url", ["", "   "])
def test_open_blobstore_rejects_empty(url: str) -> None:
    with pytest.raises(ValueError, match="empty blob store URL: expected a path"):
        open_blobstore(url)


def test_backend_registry() -> None:
    assert BLOBSTORES == {
        "file": ("backends.local", "LocalBlobStore"),
        "memory": ("backends.memory", "MemoryBlobStore"),
        "s3": ("backends.s3", "S3BlobStore"),
    }
    for scheme, (module_name, class_name) in BLOBSTORES.items():
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, BlobStore) and cls.scheme == scheme
        assert blobstore_class(scheme) is cls
    assert blobstore_class("memory") is MemoryBlobStore


def test_package_reexports_base_names() -> None:
    for name in ["BlobInfo", "BlobStore", "BlobStoreError", "BlobNotFound", "StorageUnavailable",
                 "InvalidKey", "validate_key", "open_blobstore", "BLOBSTORES"]:
        assert hasattr(backends, name)


def test_backends_are_imported_lazily() -> None:
    code = (
        "import sys, backends\n"
        "assert 'backends.local' not in sys.modules\n"
        "assert 'backends.memory' not in sys.modules\n"
        "backends.open_blobstore('memory://')\n"
        "assert 'backends.memory' in sys.modules and 'backends.local' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)


def test_stale_temp_files_are_removed_on_open(tmp_path):
    import os
    import time

    from backends.local import STALE_TEMP_SECONDS, LocalBlobStore

    LocalBlobStore(tmp_path)
    stale = tmp_path / ".tmp" / "put-crashed.part"
    fresh = tmp_path / ".tmp" / "put-running.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    LocalBlobStore(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


# -- spools: received into '.tmp', renamed into place ------------------------


def test_a_committed_spool_is_renamed_into_place_not_copied(local: LocalBlobStore, root: Path) -> None:
    with local.spool() as spool:
        spool.write(b"x" * 100_000)
        spooled = os.fstat(spool._fd).st_ino  # type: ignore[attr-defined]
        spool.commit("a/b/blob")
    assert (root / "a" / "b" / "blob").stat().st_ino == spooled
    assert tmp_files(root) == []


def test_a_spool_file_is_a_temp_file_gc_knows(local: LocalBlobStore, root: Path) -> None:
    """A killed worker's spool files are swept like a put's: `dicom gc` lists them."""
    with local.spool() as spool:
        spool.write(b"partial")
        (listed,) = local.temp_files()
        assert listed.name.startswith(f"{TMP_DIR_NAME}/put-") and listed.size == 7
    assert tmp_files(root) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("call", ["write", "fdatasync", "replace", "fsync"])
def test_a_spool_that_fails_leaves_nothing(
    local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch, call: str, code: int
) -> None:
    """Every step of receiving and committing can fail (a full disk, an I/O error): the
    error is StoreFull or StorageUnavailable, and no temp file and no blob stay."""
    real = getattr(os, call)

    def failing(*args: object, **kwargs: object) -> object:
        raise OSError(code, os.strerror(code))

    with local.spool() as spool:
        if call == "write":
            monkeypatch.setattr(os, call, failing)
            with pytest.raises(StorageUnavailable) as raised:
                spool.write(b"x" * 1000)
        else:
            spool.write(b"x" * 1000)
            monkeypatch.setattr(os, call, failing)
            with pytest.raises(StorageUnavailable) as raised:
                spool.commit("a/blob")
    monkeypatch.setattr(os, call, real)
    assert isinstance(raised.value, StoreFull) == (code == errno.ENOSPC)
    assert list(local.list()) == [] and tmp_files(root) == []


# -- directories a store remembers ---------------------------------------------


@pytest.mark.parametrize("write", ["put", "spool"])
def test_a_blob_into_a_known_directory_makes_no_directory(
    local: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """The second blob of a directory is one rename: no mkdir, no stat of its parents."""
    local.put("study/series/first", io.BytesIO(b"1"))
    calls: list[str] = []
    for name in ("mkdir", "stat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *args, _real=real, _name=name, **kw: (calls.append(_name), _real(*args, **kw))[1])
    if write == "put":
        local.put("study/series/second", io.BytesIO(b"2"))
    else:
        with local.spool() as spool:
            spool.write(b"2")
            spool.commit("study/series/second")
    assert calls == []
    assert read_all(local, "study/series/second") == b"2"


def test_a_remembered_directory_removed_behind_the_store_is_recreated(local: LocalBlobStore, root: Path) -> None:
    """Another process (or an operator) removed a directory this store had met: the rename
    fails, the store forgets what it knew and creates it again."""
    local.put("study/series/first", io.BytesIO(b"1"))
    shutil.rmtree(root / "study")
    local.put("study/series/second", io.BytesIO(b"2"))
    assert read_all(local, "study/series/second") == b"2"
    with local.spool() as spool:
        spool.write(b"3")
        shutil.rmtree(root / "study")
        spool.commit("study/series/third")
    assert list(local.list()) == ["study/series/third"]
    assert tmp_files(root) == []


def test_a_directory_pruned_by_this_store_is_made_again(local: LocalBlobStore, root: Path) -> None:
    local.put("study/series/first", io.BytesIO(b"1"))
    local.delete("study/series/first")
    assert not (root / "study").exists()
    local.put("study/series/second", io.BytesIO(b"2"))
    assert read_all(local, "study/series/second") == b"2"


def test_a_key_onto_a_directory_still_conflicts_without_a_stat(local: LocalBlobStore) -> None:
    local.put("c/d", io.BytesIO(b"x"))
    local.put("c/e", io.BytesIO(b"x"))
    with pytest.raises(BlobStoreError, match="directory"):
        local.put("c", io.BytesIO(b"x"))
    assert sorted(local.list()) == ["c/d", "c/e"]


# -- batches ---------------------------------------------------------------------


def test_a_batch_is_visible_only_once_committed(local: LocalBlobStore, root: Path) -> None:
    with local.batch() as batch:
        info = batch.put("s/x/1", io.BytesIO(b"one"), size=3)
        batch.put("s/y/2", io.BytesIO(b"two"))
        assert info.sha256 is not None and info.size == 3
        assert list(local.list()) == [] and len(tmp_files(root)) == 2
        batch.commit()
    assert sorted(local.list()) == ["s/x/1", "s/y/2"]
    assert read_all(local, "s/y/2") == b"two"
    assert tmp_files(root) == []


def test_a_batch_left_uncommitted_leaves_nothing(local: LocalBlobStore, root: Path) -> None:
    with pytest.raises(RuntimeError), local.batch() as batch:
        batch.put("s/x/1", io.BytesIO(b"one"))
        raise RuntimeError("the caller gave up")
    assert list(local.list()) == [] and tmp_files(root) == []


@pytest.mark.parametrize("fails", ["fdatasync", "rename"])
def test_a_batch_whose_commit_fails_leaves_nothing(
    local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """Flushing the second blob fails (or renaming it): the first, flushed and maybe
    installed, goes too, since the caller indexes none of the batch."""
    with local.batch() as batch:
        batch.put("s/x/1", io.BytesIO(b"one"))
        batch.put("s/x/2", io.BytesIO(b"two"))
        calls = []
        name = "fdatasync" if fails == "fdatasync" else "replace"
        real = getattr(os, name)

        def second_fails(*args):
            calls.append(args)
            if len(calls) == 2:
                raise OSError(errno.EIO, "Input/output error")
            return real(*args)

        monkeypatch.setattr(os, name, second_fails)
        with pytest.raises(StorageUnavailable):
            batch.commit()
        monkeypatch.undo()
    assert list(local.list()) == [] and tmp_files(root) == []


def test_a_failed_put_into_a_batch_leaves_its_other_blobs(local: LocalBlobStore, root: Path) -> None:
    with local.batch() as batch:
        batch.put("s/x/1", io.BytesIO(b"one"))
        with pytest.raises(BlobStoreError):
            batch.put("s/x/2", io.BytesIO(b"two"), size=5)
        assert len(tmp_files(root)) == 1
        batch.commit()
    assert list(local.list()) == ["s/x/1"] and tmp_files(root) == []


def test_the_default_batch_puts_at_once() -> None:
    store = MemoryBlobStore()
    with store.batch() as batch:
        batch.put("a/b", io.BytesIO(b"x"))
        assert list(store.list()) == ["a/b"]
        batch.commit()
    assert read_all(store, "a/b") == b"x"


def test_a_large_batch_keeps_few_files_open(local: LocalBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backends.local

    monkeypatch.setattr(backends.local, "_BATCH_OPEN_FILES", 4)
    with local.batch() as batch:
        for number in range(10):
            batch.put(f"s/x/{number}", io.BytesIO(b"%d" % number))
            open_files = [n for n in os.listdir("/proc/self/fd") if TMP_DIR_NAME in os.path.realpath(f"/proc/self/fd/{n}")]
            assert len(open_files) <= 5
        assert list(local.list()) == []
        batch.commit()
    assert sorted(local.list()) == [f"s/x/{n}" for n in range(10)]
    assert tmp_files(root) == []
