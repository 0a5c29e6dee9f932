"""A full disk and a failing store or index, answered truthfully; nothing half-stored.

Two kinds of full disk: an injected one (`SmallDisk`: the store's writes see a filesystem
of a few instances' size, on every machine) and, when the tests run as root, a real 8 MiB
tmpfs. Whatever fills, every part's outcome is in the STOW answer, every referenced
instance can be retrieved, no blob lacks its index row, and a retry stores the rest.
"""
from __future__ import annotations

import errno
import io
import os
import subprocess
import tempfile
import time
from pathlib import Path

import peewee
import pytest
from dicom_factory import make_instance, multipart_body, to_bytes
from pydicom.uid import generate_uid

from backends.base import MIN_TEMP_AGE_SECONDS, STALE_TEMP_SECONDS, InvalidKey, StorageUnavailable, StoreFull
from backends.local import LocalBlobStore
from backends.memory import MemoryBlobStore
from dicomserver import Settings, close_app, create_app, stow
from dicomserver.ingest import INSTANCE_ALREADY_EXISTS, PROCESSING_FAILURE

MULTIPART = 'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234'
ANY_SYNTAX = {"Accept": "application/dicom; transfer-syntax=*"}
OUT_OF_SPACE = "the archive is out of storage space; nothing can be stored until space is freed"
NOT_ATTEMPTED = f"not attempted after an earlier instance failed: {OUT_OF_SPACE}"


# -- helpers ---------------------------------------------------------------------------


class SmallDisk:
    """The blob store's writes see a filesystem of `capacity` bytes.

    os.write on a file under `root` writes what still fits and then fails with ENOSPC, as
    a full disk does; deleting blobs frees their space, and `capacity` can be raised.
    Other writes (the index, spool files, logs) are left alone.
    """

    def __init__(self, root: Path, capacity: int, monkeypatch: pytest.MonkeyPatch) -> None:
        if not os.path.isdir("/proc/self/fd"):
            pytest.skip("needs /proc/self/fd to tell the store's files from others")
        self.root = str(root) + os.sep
        self.capacity = capacity
        self.full_writes = 0
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def used(self) -> int:
        return sum(
            os.path.getsize(os.path.join(folder, name))
            for folder, _dirs, names in os.walk(self.root)
            for name in names
        )

    def write(self, fd: int, data: bytes) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
            return self._write(fd, data)
        room = self.capacity - self.used()
        if room <= 0:
            self.full_writes += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._write(fd, bytes(memoryview(data)[:room]))


def instances(count: int, *, size: int = 64) -> list:
    """`count` instances of one study whose files are about size*size*2 bytes."""
    study, series = generate_uid(), generate_uid()
    return [make_instance(study=study, series=series, rows=size, columns=size) for _ in range(count)]


def post(client, datasets: list, *, method: str = "POST"):
    body = multipart_body([to_bytes(ds) for ds in datasets])
    return client.open(
        "/v2/studies", method=method, data=body, headers={"Content-Type": MULTIPART, "Accept": "application/dicom+json"}
    )


def referenced_uids(response) -> list[str]:
    return [item["00081155"]["Value"][0] for item in response.json.get("00081199", {}).get("Value", [])]


def failures(response) -> list[tuple[str | None, int, str]]:
    """(SOP Instance UID or None, failure reason, comment) of each FailedSOPSequence item."""
    return [
        (
            item.get("00081155", {}).get("Value", [None])[0],
            item["00081197"]["Value"][0],
            item["00741048"]["Value"][0]["00000902"]["Value"][0],
        )
        for item in response.json.get("00081198", {}).get("Value", [])
    ]


def temp_files(store) -> list[str]:
    return [t.name for t in store.temp_files()]


def gc_output(app) -> str:
    result = app.test_cli_runner().invoke(args=["dicom", "gc", "--grace", "0s", "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.output


NOTHING_TO_COLLECT = "0 blobs without an index row, 0 index rows without a blob, 0 temporary files"


def assert_consistent(app, retrievable: list) -> None:
    """Every blob has its index row and every row its blob; each instance reads back whole."""
    state = app.extensions["dicomserver"]
    assert temp_files(state.store) == []
    assert NOTHING_TO_COLLECT in gc_output(app)
    state.index.connect()
    try:
        indexed = {row.blob_key for row in state.index.stored_blobs()}
    finally:
        state.index.close()
    assert set(state.store.list()) == indexed
    assert len(indexed) == len(retrievable)
    client = app.test_client()
    for ds in retrievable:
        url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        answer = client.get(url, headers=ANY_SYNTAX)
        assert answer.status_code == 200
        assert answer.data == to_bytes(ds)


@pytest.fixture
def local_app(app_factory):
    """An archive on local disk and SQLite (the store whose disk fills)."""
    return app_factory()


def blob_dir(app) -> Path:
    return Path(app.extensions["dicomserver"].settings.blobstore_url)


# -- the local store: out of space is StoreFull, and leaves nothing ---------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("call", ["write", "fsync", "fdatasync", "replace", "mkdir"])
def test_local_store_full_is_store_full_and_leaves_nothing(tmp_path, monkeypatch, call, code):
    store = LocalBlobStore(tmp_path / "blobs")
    real = getattr(os, call)

    def full(*args, **kwargs):
        if call == "mkdir" or str(args[0]).startswith(store.root) or isinstance(args[0], int):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, full)
    with pytest.raises(StoreFull) as raised:
        store.put("a/b/c.dcm", io.BytesIO(b"x" * 5000))
    assert raised.value.__cause__.errno == code
    monkeypatch.setattr(os, call, real)
    assert temp_files(store) == [] and list(store.list()) == []


def test_other_write_errors_stay_storage_unavailable(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path / "blobs")

    def broken(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageUnavailable) as raised:
        store.put("k.dcm", io.BytesIO(b"x"))
    assert not isinstance(raised.value, StoreFull)


def test_a_put_whose_directory_cannot_be_flushed_leaves_no_blob(tmp_path, monkeypatch):
    """The rename happened, the directory fsync failed: the caller is told the put failed
    and will index nothing, so the blob must not stay (it would be an orphan)."""
    import backends.local

    store = LocalBlobStore(tmp_path / "blobs")

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(backends.local, "_fsync_dir", full)
    with pytest.raises(StoreFull):
        store.put("k.dcm", io.BytesIO(b"x"))
    assert list(store.list()) == [] and temp_files(store) == []


def test_free_bytes(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    free = store.free_bytes()
    assert isinstance(free, int) and 0 < free <= os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    assert MemoryBlobStore().free_bytes() is None  # stores without a notion of space say so


def test_temp_files_are_listed_and_removed_by_name_only(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    leftover = tmp_path / "blobs" / ".tmp" / "put-crashed.part"
    leftover.write_bytes(b"12345")
    (listed,) = store.temp_files()
    assert (listed.name, listed.size) == (".tmp/put-crashed.part", 5)
    assert abs(listed.modified - leftover.stat().st_mtime) < 1
    (tmp_path / "blobs" / "keep.dcm").write_bytes(b"blob")
    for bad in ("keep.dcm", ".tmp/../keep.dcm", ".tmp/", ".tmp/a/b", "../x"):
        with pytest.raises(InvalidKey):
            store.remove_temp_file(bad)
    store.remove_temp_file(listed.name)
    store.remove_temp_file(listed.name)  # gone already: not an error
    assert temp_files(store) == [] and (tmp_path / "blobs" / "keep.dcm").exists()


# -- STOW onto a filling disk --------------------------------------------------------------


def test_eight_parts_onto_a_filling_disk(local_app, monkeypatch):
    datasets = instances(8)
    size = len(to_bytes(datasets[0]))
    disk = SmallDisk(blob_dir(local_app), capacity=4 * size + size // 2, monkeypatch=monkeypatch)
    client = local_app.test_client()

    response = post(client, datasets)
    assert response.status_code == 202
    assert response.content_type == "application/dicom+json"
    assert referenced_uids(response) == [ds.SOPInstanceUID for ds in datasets[:4]]
    assert failures(response) == [(datasets[4].SOPInstanceUID, PROCESSING_FAILURE, OUT_OF_SPACE)] + [
        (None, PROCESSING_FAILURE, NOT_ATTEMPTED)
    ] * 3
    assert disk.full_writes == 1  # the parts after the failure were not tried
    assert_consistent(local_app, datasets[:4])

    disk.capacity = 100 * size  # space is freed
    again = post(client, datasets)
    assert again.status_code == 202
    assert referenced_uids(again) == [ds.SOPInstanceUID for ds in datasets[4:]]
    assert [(uid, reason) for uid, reason, _ in failures(again)] == [
        (ds.SOPInstanceUID, INSTANCE_ALREADY_EXISTS) for ds in datasets[:4]
    ]
    assert_consistent(local_app, datasets)
    replaced = post(client, datasets, method="PUT")  # or the upsert: every part stored again
    assert replaced.status_code == 200 and len(referenced_uids(replaced)) == 8
    assert_consistent(local_app, datasets)


def test_nothing_stored_on_a_full_disk_is_507_with_the_failures(local_app, monkeypatch):
    datasets = instances(3)
    SmallDisk(blob_dir(local_app), capacity=0, monkeypatch=monkeypatch)
    client = local_app.test_client()

    response = post(client, datasets)
    assert response.status_code == 507
    assert response.content_type == "application/dicom+json"
    assert "00081199" not in response.json
    assert failures(response) == [(datasets[0].SOPInstanceUID, PROCESSING_FAILURE, OUT_OF_SPACE)] + [
        (None, PROCESSING_FAILURE, NOT_ATTEMPTED)
    ] * 2

    single = client.post(
        "/v1/studies", data=to_bytes(datasets[0]), headers={"Content-Type": "application/dicom"}
    )
    assert single.status_code == 507
    assert failures(single) == [(datasets[0].SOPInstanceUID, PROCESSING_FAILURE, OUT_OF_SPACE)]
    assert_consistent(local_app, [])


def test_a_full_spool_directory_does_not_stop_part10_parts_on_local_disk(app_factory, monkeypatch):
    """DICOMWEB_SPOOL_DIR (or the system temp directory) fills: a local store receives
    Part 10 parts into its own '.tmp', so they are stored all the same. (A store without
    a spool of its own reports a full spool like a full store: tests/test_stow_domain.py.)"""
    datasets = instances(4, size=128)  # 32 KiB files: past 1 KiB they would go to the spool dir
    local_app = app_factory(spool_memory_bytes=1024)

    class FullSpool(tempfile.SpooledTemporaryFile):  # type: ignore[misc,type-arg]
        def rollover(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", FullSpool)
    response = post(local_app.test_client(), datasets)
    assert response.status_code == 200
    assert referenced_uids(response) == [ds.SOPInstanceUID for ds in datasets]
    monkeypatch.undo()
    assert_consistent(local_app, datasets)


def test_spool_files_have_no_name_a_crash_could_leave(tmp_path):
    """A part spooled to disk is an unnamed file: a killed worker leaves nothing to sweep."""
    chunks = [b"x" * 4096] * 4
    fp, size = stow.spool(chunks, max_bytes=1 << 20, memory_bytes=1024, spool_dir=str(tmp_path))
    with fp:
        assert size == 16384 and fp.read() == b"".join(chunks)
        assert fp._rolled  # on disk, not in memory
        assert os.listdir(tmp_path) == []


# -- the index failing after the blob was written ----------------------------------------


def test_index_failure_removes_the_blob_and_reports_each_part(app, monkeypatch):
    """Runs on local disk + SQLite and on S3 + PostgreSQL: the blob is written, the index
    row fails; the blob must go, and the parts before it stay stored and reported."""
    index = app.extensions["dicomserver"].index
    real = index.store_instance
    calls = {"n": 0}

    def failing(record, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise peewee.OperationalError("could not connect to server")
        return real(record, **kwargs)

    monkeypatch.setattr(index, "store_instance", failing)
    datasets = instances(4)
    client = app.test_client()
    response = post(client, datasets)
    assert response.status_code == 202
    assert referenced_uids(response) == [ds.SOPInstanceUID for ds in datasets[:2]]
    unavailable = "the index database is unavailable; try again later"
    assert failures(response) == [
        (datasets[2].SOPInstanceUID, PROCESSING_FAILURE, unavailable),
        (None, PROCESSING_FAILURE, f"not attempted after an earlier instance failed: {unavailable}"),
    ]
    assert calls["n"] == 3

    nothing = post(client, instances(2))
    assert nothing.status_code == 503  # the outage's status, with the DICOM JSON answer
    assert [reason for _, reason, _ in failures(nothing)] == [PROCESSING_FAILURE] * 2
    assert "could not connect" not in nothing.get_data(as_text=True)
    monkeypatch.setattr(index, "store_instance", real)
    assert_consistent(app, datasets[:2])


def test_an_index_out_of_space_is_answered_like_a_full_store(local_app, monkeypatch):
    """SQLite itself finds no room (SQLITE_FULL, here by max_page_count): 507, not 'unavailable'."""
    index = local_app.extensions["dicomserver"].index
    real = index.store_instance

    def full(record, **kwargs):
        pages = index.db.execute_sql("PRAGMA page_count").fetchone()[0]
        index.db.execute_sql(f"PRAGMA max_page_count = {pages}")
        return real(record, **kwargs)

    monkeypatch.setattr(index, "store_instance", full)
    datasets = instances(2)
    for ds in datasets:
        ds.ImageComments = "a comment too long for the pages the index has left " * 200
    response = post(local_app.test_client(), datasets)
    assert response.status_code == 507, response.get_data(as_text=True)
    assert failures(response) == [
        (datasets[0].SOPInstanceUID, PROCESSING_FAILURE, OUT_OF_SPACE),
        (None, PROCESSING_FAILURE, NOT_ATTEMPTED),
    ]
    index.db.execute_sql("PRAGMA max_page_count = 1073741823")
    monkeypatch.setattr(index, "store_instance", real)
    assert_consistent(local_app, [])


# -- readiness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "minimum", "status", "check"),
    [
        (300 * 2**20, None, 200, "ok"),
        (120 * 2**20, None, 503, "failed: 120 MiB free, below DICOMWEB_MIN_FREE_BYTES (256 MiB)"),
        (1000, 4096, 503, "failed: 1,000 bytes free, below DICOMWEB_MIN_FREE_BYTES (4,096 bytes)"),
        (0, 0, 200, "ok"),  # 0 turns the check off
    ],
)
def test_readyz_reports_a_store_below_min_free_bytes(app_factory, monkeypatch, free, minimum, status, check):
    app = app_factory() if minimum is None else app_factory(min_free_bytes=minimum)
    monkeypatch.setattr(app.extensions["dicomserver"].store, "free_bytes", lambda: free)
    answer = app.test_client().get("/readyz")
    assert answer.status_code == status
    assert answer.json["checks"] == {"index": "ok", "blobstore": check}


def test_readyz_on_a_store_that_cannot_tell(app):
    """S3 (the PostgreSQL variant) has no free space to report: ready."""
    assert app.test_client().get("/readyz").json["checks"]["blobstore"] == "ok"


# -- a real small filesystem -------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """An 8 MiB tmpfs, when the tests may mount one (root on Linux)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_eight_parts_onto_a_real_full_filesystem(tmpfs, tmp_path):
    datasets = instances(8, size=1024)  # 2 MiB each: three fit in 8 MiB
    app = create_app(
        Settings(
            blobstore_url=str(tmpfs / "blobs"),
            database_url=f"sqlite:///{tmp_path / 'index.db'}",
            min_free_bytes=3 * 2**20,
        )
    )
    try:
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        response = post(client, datasets)
        assert response.status_code == 202
        stored = referenced_uids(response)
        assert stored == [ds.SOPInstanceUID for ds in datasets[: len(stored)]] and 1 <= len(stored) < 8
        assert failures(response) == [(datasets[len(stored)].SOPInstanceUID, PROCESSING_FAILURE, OUT_OF_SPACE)] + [
            (None, PROCESSING_FAILURE, NOT_ATTEMPTED)
        ] * (7 - len(stored))
        assert_consistent(app, datasets[: len(stored)])

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "below DICOMWEB_MIN_FREE_BYTES (3 MiB)" in ready.json["checks"]["blobstore"]
        assert str(tmpfs) not in ready.get_data(as_text=True)

        subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)  # space is freed
        assert client.get("/readyz").status_code == 200
        again = post(client, datasets)
        assert again.status_code == 202
        assert referenced_uids(again) == [ds.SOPInstanceUID for ds in datasets[len(stored) :]]
        assert_consistent(app, datasets)
    finally:
        close_app(app)


# -- crash leftovers -----------------------------------------------------------------------


def test_crash_leftovers_of_a_full_disk_are_swept(local_app):
    """A worker killed mid-put leaves its temp file; `dicom gc` reports and removes it once
    it is older than the grace period, and the start-up sweep once it is STALE_TEMP_SECONDS old."""
    store = local_app.extensions["dicomserver"].store
    leftover = Path(store.root) / ".tmp" / "put-killed.part"
    leftover.write_bytes(b"x" * 1000)
    old = time.time() - MIN_TEMP_AGE_SECONDS - 60
    os.utime(leftover, (old, old))
    result = local_app.test_cli_runner().invoke(args=["dicom", "gc", "--grace", "0s"])
    assert "temporary file of an interrupted write: .tmp/put-killed.part, 1000 bytes (removing)" in result.output
    assert not leftover.exists()

    leftover.write_bytes(b"x")
    os.utime(leftover, (time.time() - STALE_TEMP_SECONDS - 60,) * 2)
    LocalBlobStore(store.root)  # a worker starting
    assert not leftover.exists()
