"""Bulk import in batches (importer.ArchiveImport.each): a batch's files share one index
commit, each with its own outcome; a failed commit leaves neither rows nor blobs; the
header pre-read is skipped into an empty archive."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager

import peewee as pw
import pytest
from cli_fixtures import archive_env, make_tree
from dicom_factory import make_instance, to_bytes

from backends.local import TMP_DIR_NAME
from dicomserver import Settings
from dicomserver import importer as importer_module
from dicomserver.archive import open_archive
from dicomserver.importer import FAILED, NOT_DICOM, PRESENT, STORED, ArchiveImport, find_files, import_into_archive


@pytest.fixture
def archive(tmp_path):
    archive = open_archive(Settings.from_env(archive_env(tmp_path / "archive")))
    yield archive
    archive.close()


def blobs(archive) -> list[str]:
    return sorted(archive.store.list())


def count_transactions(archive, monkeypatch) -> list[int]:
    counted: list[int] = []
    real = archive.index.write_transaction

    @contextmanager
    def counting():
        counted.append(len(counted))
        with real():
            yield

    monkeypatch.setattr(archive.index, "write_transaction", counting)
    return counted


def test_a_batch_is_indexed_in_one_commit_with_an_outcome_per_file(tmp_path, archive, monkeypatch):
    tree = make_tree(tmp_path / "src")
    transactions = count_transactions(archive, monkeypatch)
    results = ArchiveImport(archive).each(find_files([str(tree.root)]))
    assert len(transactions) == 1  # 8 files, 4 of them stored: one commit
    outcomes = {r.path: r.outcome for r in results}
    assert outcomes == {
        **{str(p): STORED for p in tree.instances},
        str(tree.duplicate): PRESENT,  # a copy of an instance earlier in the same batch
        str(tree.truncated): FAILED,
        str(tree.not_dicom): NOT_DICOM,
        str(tree.dicomdir): NOT_DICOM,
    }
    assert len(blobs(archive)) == 4  # the copy's blob went with its refused row
    archive.index.connect()
    assert sorted(i.sop_instance_uid for i in archive.index.stored_blobs()) == sorted(
        ds.SOPInstanceUID for ds in tree.instances.values()
    )
    archive.index.close()


def test_a_failed_commit_stores_nothing_of_its_batch_and_deletes_its_blobs(tmp_path, archive, monkeypatch):
    tree = make_tree(tmp_path / "src")
    real_commit = archive.index.db.commit

    def failing_commit():
        raise pw.OperationalError("disk I/O error")

    monkeypatch.setattr(archive.index.db, "commit", failing_commit)
    results = ArchiveImport(archive).each([s for s in find_files([str(tree.root)]) if s.path != str(tree.duplicate)])
    monkeypatch.setattr(archive.index.db, "commit", real_commit)
    failed = [r for r in results if r.outcome == FAILED and r.outage]
    assert sorted(r.path for r in failed) == sorted(str(p) for p in tree.instances)
    assert all("index database is unavailable" in r.comments[0] for r in failed)
    assert blobs(archive) == []
    archive.index.connect()
    assert archive.index.stored_blobs() == []
    archive.index.close()


def test_into_an_empty_archive_headers_are_read_once(tmp_path, archive, monkeypatch):
    """Nothing to skip in an empty archive: no pre-read of each file's UIDs (into one that holds
    instances, each file's UIDs are read first, to skip those stored)."""
    folder = tmp_path / "src"
    folder.mkdir()
    for number in range(6):
        (folder / f"{number}.dcm").write_bytes(to_bytes(make_instance(rows=8, columns=8)))
    pre_reads: list[str] = []
    real = importer_module.identify

    def counting(fp):
        pre_reads.append(fp.name)
        return real(fp)

    monkeypatch.setattr(importer_module, "identify", counting)
    summary = import_into_archive(find_files([str(folder)]), archive, jobs=2)
    assert (summary.stored, pre_reads) == (6, [])
    (folder / "new.dcm").write_bytes(to_bytes(make_instance(rows=8, columns=8)))
    summary = import_into_archive(find_files([str(folder)]), archive, jobs=2)
    assert (summary.stored, summary.present, len(pre_reads)) == (1, 6, 7)


def test_an_index_error_on_one_file_fails_only_that_file(tmp_path, archive):
    """The database errs inserting one instance (an outage, as STOW answers 503): the rest of
    its batch is stored all the same, and its blob is gone."""
    tree = make_tree(tmp_path / "src")
    refused, ds = next(iter(tree.instances.items()))
    archive.index.connect()
    archive.index.db.execute_sql(
        f"CREATE TRIGGER refuse BEFORE INSERT ON instance WHEN NEW.sop_instance_uid = '{ds.SOPInstanceUID}' "
        "BEGIN SELECT json('{'); END"
    )
    archive.index.close()
    results = {r.path: r for r in ArchiveImport(archive).each(find_files([str(tree.root)]))}
    for path in (refused, tree.duplicate):  # the same instance, refused the same way
        assert (results[str(path)].outcome, results[str(path)].outage) == (FAILED, True)
        assert results[str(path)].comments == ("the index database is unavailable; try again later",)
    assert [p for p in tree.instances if results[str(p)].outcome == STORED] == list(tree.instances)[1:]
    assert len(blobs(archive)) == 3


def test_a_bug_indexing_one_file_fails_it_as_stow_would(tmp_path, archive, monkeypatch):
    tree = make_tree(tmp_path / "src")
    refused, ds = next(iter(tree.instances.items()))
    real = archive.index._insert

    def insert(rec, *, replace):
        if rec.sop_instance_uid == ds.SOPInstanceUID:
            raise ValueError("a bug")
        return real(rec, replace=replace)

    monkeypatch.setattr(archive.index, "_insert", insert)
    results = {r.path: r for r in ArchiveImport(archive).each(find_files([str(tree.root)]))}
    result = results[str(refused)]
    assert (result.outcome, result.outage, result.comments) == (FAILED, False, ("the instance could not be indexed",))
    assert [p for p in tree.instances if results[str(p)].outcome == STORED] == list(tree.instances)[1:]
    assert len(blobs(archive)) == 3


def test_a_batchs_blobs_are_flushed_together_before_its_rows(tmp_path, archive, monkeypatch):
    """Every blob of the batch is written before the first waits for the disk; then each
    directory that gained blobs is flushed once (not once per blob), and only then is the
    index written."""
    tree = make_tree(tmp_path / "src")
    events: list[str] = []

    def spying(real, name):
        def spy(fd):
            mode = os.fstat(fd).st_mode
            events.append(f"{name} {'dir' if stat.S_ISDIR(mode) else 'file'}")
            return real(fd)

        return spy

    monkeypatch.setattr(os, "fsync", spying(os.fsync, "fsync"))
    monkeypatch.setattr(os, "fdatasync", spying(os.fdatasync, "fdatasync"))
    real_write = os.write

    def writing(fd, data):
        if stat.S_ISREG(os.fstat(fd).st_mode) and TMP_DIR_NAME in os.readlink(f"/proc/self/fd/{fd}"):
            events.append("write blob")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", writing)
    real_store_many = archive.index.store_many
    monkeypatch.setattr(
        archive.index, "store_many", lambda records: (events.append("index"), real_store_many(records))[1]
    )
    results = ArchiveImport(archive).each([s for s in find_files([str(tree.root)]) if s.path != str(tree.duplicate)])
    assert sum(r.outcome == STORED for r in results) == 4
    first_flush = events.index("fdatasync file")
    assert events[:first_flush] == ["write blob"] * 4  # 4 blobs written, none flushed yet
    assert events[first_flush : first_flush + 4] == ["fdatasync file"] * 4
    # Directories: the blobs' 3 series folders once each (plus the parents of new folders).
    between = events[first_flush + 4 : events.index("index")]
    assert set(between) == {"fsync dir"}
    series_folders = {os.path.dirname(k) for k in blobs(archive)}
    assert len(series_folders) == 3
    assert len(between) == 3 + 2 + 3  # each series folder, and the parent of each new folder (2 studies, 3 series)


CRASH_AFTER_BLOBS = """
import os, signal, sys
from backends.local import TMP_DIR_NAME
from dicomserver import Settings
from dicomserver.archive import open_archive
from dicomserver.importer import ArchiveImport, find_files

archive = open_archive(Settings.from_env())
real_commit = type(archive.store.batch()).commit

def commit_then_crash(self):
    real_commit(self)
    os.kill(os.getpid(), signal.SIGKILL)  # power lost between the blobs' flush and the index commit

type(archive.store.batch()).commit = commit_then_crash
ArchiveImport(archive, check_present=False).each(find_files([sys.argv[1]]))
"""


def test_a_crash_between_the_blobs_flush_and_the_index_commit_leaves_only_orphans(tmp_path):
    """Killed once the batch's blobs are durable and before its rows are: the index holds
    nothing, every blob is complete, and `dicom gc` finds them as orphans."""
    tree = make_tree(tmp_path / "src")
    env = {**os.environ, **archive_env(tmp_path / "archive"), "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", CRASH_AFTER_BLOBS, str(tree.root / "a")], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    archive = open_archive(Settings.from_env(archive_env(tmp_path / "archive")))
    try:
        stored = blobs(archive)
        assert len(stored) == 3
        for key in stored:
            data = b"".join(archive.store.iter_bytes(key))
            sop = key.rsplit("/", 1)[-1].split("_")[0]
            assert any(ds.SOPInstanceUID == sop and to_bytes(ds) == data for ds in tree.instances.values())
        archive.index.connect()
        assert archive.index.stored_blobs() == []
        orphans = archive.find_orphans(0)
        archive.index.close()
        assert (sorted(orphans.blobs), orphans.rows, orphans.temp_files) == (stored, [], [])
    finally:
        archive.close()


def test_few_files_are_imported_without_worker_processes(tmp_path, archive, monkeypatch):
    """A worker process costs its start; fewer than FILES_PER_PROCESS files per worker are
    imported by threads of this process."""
    folder = tmp_path / "src"
    folder.mkdir()
    for number in range(10):
        (folder / f"{number}.dcm").write_bytes(to_bytes(make_instance(rows=8, columns=8)))

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker process was started for 10 files")

    monkeypatch.setattr(importer_module, "ProcessPoolExecutor", no_pool)
    summary = import_into_archive(find_files([str(folder)]), archive, jobs=4, processes=4)
    assert summary.stored == 10 and summary.ok


def test_worker_processes_forked_from_the_command_store_every_file_once(tmp_path, archive):
    """Enough files for 2 workers: forked from this process (its index closed first, each
    worker opens its own), they store every file, each once, and this process can use
    its archive afterwards."""
    folder = tmp_path / "src"
    folder.mkdir()
    count = 2 * importer_module.FILES_PER_PROCESS + 3
    sops = set()
    for number in range(count):
        ds = make_instance(rows=8, columns=8)
        sops.add(ds.SOPInstanceUID)
        (folder / f"{number:03}.dcm").write_bytes(to_bytes(ds))
    summary = import_into_archive(find_files([str(folder)]), archive, jobs=4, processes=2)
    assert (summary.stored, summary.ok) == (count, True)
    archive.index.connect()
    assert {b.sop_instance_uid for b in archive.index.stored_blobs()} == sops
    archive.index.close()
    assert len(blobs(archive)) == count
