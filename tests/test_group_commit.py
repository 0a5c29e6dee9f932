"""Group commit (index/connection.py GroupCommit, IndexDatabase.write_each): instances
stored at the same time by a process's threads share one transaction and one commit,
each with its own outcome; SQLite and PostgreSQL."""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import peewee as pw
import pytest

from dicomserver.index import DuplicateInstance, Index, InstanceRecord, StoreOutcome, open_index
from dicomserver.searchable import index_columns

STUDY = "1.2.826.0.1.3680043.10.1.1"
SERIES = "1.2.826.0.1.3680043.10.1.1.1"
THREADS = 12


def record(number: int, *, sop: str | None = None) -> InstanceRecord:
    sop = sop or f"1.2.826.0.1.3680043.10.1.1.1.{number}"
    metadata = {
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "00080060": {"vr": "CS", "Value": ["OT"]},
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "0020000E": {"vr": "UI", "Value": [SERIES]},
        "00200013": {"vr": "IS", "Value": [number]},
    }
    return InstanceRecord(
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"{STUDY}/{SERIES}/{sop}_0-{number}.dcm",
        size=100 + number,
        sha256=None,
        frames=None,
        metadata=metadata,
        columns=index_columns(metadata),
    )


@pytest.fixture
def index(database_url):
    index = open_index(database_url)
    yield index
    index.shutdown()


class CommitCounter:
    """Counts write transactions; the first waits until `company` more stores have queued
    behind it, so that what the others do while one commit runs is not left to timing."""

    def __init__(self, index: Index, monkeypatch, company: int):
        self.index = index
        self.company = company
        self.transactions = 0
        self.real = index.write_transaction
        monkeypatch.setattr(index, "write_transaction", self)

    @contextmanager
    def __call__(self):
        self.transactions += 1
        if self.transactions == 1:
            deadline = time.monotonic() + 10  # without grouping nobody queues: give up, uncounted
            while self.queued() < self.company and time.monotonic() < deadline:
                time.sleep(0.005)
        with self.real():
            yield

    def queued(self) -> int:
        group_commit = getattr(self.index, "group_commit", None)  # None before group commit
        return len(group_commit._queue) if group_commit is not None else 0


def store_in_threads(index: Index, records: list[InstanceRecord]) -> list[StoreOutcome | Exception]:
    results: list[StoreOutcome | Exception | None] = [None] * len(records)

    def store(number: int) -> None:
        index.connect()
        try:
            results[number] = index.store_instance(records[number], replace=False)
        except Exception as exc:
            results[number] = exc
        finally:
            index.close()

    threads = [threading.Thread(target=store, args=(n,)) for n in range(len(records))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def feed(index: Index) -> list[tuple[int, str]]:
    index.connect()
    try:
        return [(e.sequence, e.sop_instance_uid) for e in index.changes(limit=1000)]
    finally:
        index.close()


def sops(index: Index) -> list[str]:
    index.connect()
    try:
        return sorted(b.blob_key.rsplit("/", 1)[1].split("_")[0] for b in index.stored_blobs())
    finally:
        index.close()


def test_concurrent_stores_share_commits_and_each_gets_its_own_outcome(index, monkeypatch):
    counter = CommitCounter(index, monkeypatch, company=THREADS - 1)
    records = [record(n) for n in range(THREADS)]
    outcomes = store_in_threads(index, records)
    assert all(isinstance(o, StoreOutcome) and not o.replaced for o in outcomes), outcomes
    # The first store commits alone; the others queued meanwhile and share the next commit.
    assert counter.transactions == 2
    entries = feed(index)
    assert sorted(seq for seq, _ in entries) == list(range(1, THREADS + 1))
    by_sop = {sop: seq for seq, sop in entries}
    assert len(by_sop) == THREADS  # every instance once
    assert [by_sop[r.sop_instance_uid] for r in records] == [o.sequence for o in outcomes]  # type: ignore[union-attr]
    assert sops(index) == sorted(r.sop_instance_uid for r in records)


def test_a_duplicate_in_a_group_fails_only_itself(index, monkeypatch):
    index.connect()
    index.store_instance(record(99), replace=False)
    index.close()
    counter = CommitCounter(index, monkeypatch, company=THREADS - 1)
    records = [record(n) for n in range(THREADS - 1)] + [record(99)]
    records[5], records[-1] = records[-1], records[5]  # the duplicate among the others
    outcomes = store_in_threads(index, records)
    assert counter.transactions == 2
    assert isinstance(outcomes[5], DuplicateInstance)
    assert all(isinstance(o, StoreOutcome) for n, o in enumerate(outcomes) if n != 5), outcomes
    entries = feed(index)
    assert [seq for seq, _ in entries] == list(range(1, THREADS + 1))  # no gap where the duplicate was refused
    assert sops(index) == sorted(r.sop_instance_uid for r in records)


@contextmanager
def refusing_insert_of(index: Index, sop: str):
    """A trigger that makes the database raise an error inserting this one instance."""
    index.connect()
    if index.is_sqlite:
        index.db.execute_sql(
            f"CREATE TRIGGER refuse BEFORE INSERT ON instance WHEN NEW.sop_instance_uid = '{sop}' "
            "BEGIN SELECT json('{'); END"
        )
    else:
        index.db.execute_sql(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.sop_instance_uid = '{sop}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; "
            "END $$ LANGUAGE plpgsql"
        )
        index.db.execute_sql("CREATE TRIGGER refuse BEFORE INSERT ON instance FOR EACH ROW EXECUTE FUNCTION refuse()")
    index.close()
    try:
        yield
    finally:
        index.connect()
        index.db.execute_sql("DROP TRIGGER refuse" + ("" if index.is_sqlite else " ON instance"))
        if not index.is_sqlite:
            index.db.execute_sql("DROP FUNCTION refuse()")
        index.close()


def test_a_database_error_in_one_insert_fails_only_that_instance(index, monkeypatch):
    records = [record(n) for n in range(THREADS)]
    with refusing_insert_of(index, records[3].sop_instance_uid):
        counter = CommitCounter(index, monkeypatch, company=THREADS - 1)
        outcomes = store_in_threads(index, records)
    assert counter.transactions == 2
    assert isinstance(outcomes[3], pw.DatabaseError) and not isinstance(outcomes[3], DuplicateInstance)
    assert all(isinstance(o, StoreOutcome) for n, o in enumerate(outcomes) if n != 3), outcomes
    assert [seq for seq, _ in feed(index)] == list(range(1, THREADS))
    assert sops(index) == sorted(r.sop_instance_uid for n, r in enumerate(records) if n != 3)


def test_store_many_reports_each_record(index):
    index.connect()
    index.store_instance(record(99), replace=False)
    records = [record(0), record(99), record(1), record(1), record(2)]
    with refusing_insert_of(index, records[4].sop_instance_uid):
        index.connect()
        outcomes = index.store_many(records)
    index.close()
    assert [type(o) for o in outcomes][:4] == [StoreOutcome, DuplicateInstance, StoreOutcome, DuplicateInstance]
    assert isinstance(outcomes[4], pw.DatabaseError)
    assert [seq for seq, _ in feed(index)] == [1, 2, 3]
    assert sops(index) == sorted(r.sop_instance_uid for r in records[:3])


def test_a_failed_commit_fails_every_member_and_stores_none(index, monkeypatch):
    counter = CommitCounter(index, monkeypatch, company=THREADS - 1)
    real_commit = index.db.commit
    commits = []

    def commit():
        commits.append(len(commits))
        if len(commits) == 2:  # the group's commit, after the first store's
            raise pw.OperationalError("disk I/O error")
        return real_commit()

    monkeypatch.setattr(index.db, "commit", commit)
    records = [record(n) for n in range(THREADS)]
    outcomes = store_in_threads(index, records)
    monkeypatch.setattr(index.db, "commit", real_commit)
    assert counter.transactions == 2
    failed = [n for n, o in enumerate(outcomes) if isinstance(o, pw.OperationalError)]
    assert len(failed) == THREADS - 1  # all of the group, none of the first store
    assert all(isinstance(outcomes[n], StoreOutcome) for n in set(range(THREADS)) - set(failed))
    assert len({id(outcomes[n]) for n in failed}) == len(failed)  # each thread raised its own copy
    assert [sop for _, sop in feed(index)] == [r.sop_instance_uid for n, r in enumerate(records) if n not in failed]
    # and the index goes on: the refused instances can be stored again
    assert all(isinstance(o, StoreOutcome) for o in store_in_threads(index, [records[n] for n in failed]))
    assert sops(index) == sorted(r.sop_instance_uid for r in records)


def test_a_lone_store_commits_alone_and_raises_its_own_duplicate(index, monkeypatch):
    counter = CommitCounter(index, monkeypatch, company=0)
    index.connect()
    try:
        assert index.store_instance(record(1), replace=False).sequence == 1
        with pytest.raises(DuplicateInstance):
            index.store_instance(record(1), replace=False)
        replaced = index.store_instance(record(1), replace=True)
    finally:
        index.close()
    assert replaced.replaced and replaced.sequence == 2
    assert counter.transactions == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_a_thread_leads_a_commit_can_store(tmp_path):
    """A parent thread leading a group at fork() does not exist in the child: the child's
    first store must lead its own commit, not queue behind it for ever."""
    index = open_index(f"sqlite:///{tmp_path / 'i.db'}")
    group_commit = index.group_commit
    with group_commit._mutex:
        group_commit._leading = True  # as while a parent thread commits a group
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(10)  # a child stuck in the queue dies, and the test fails
                index.connect()
                index.store_instance(record(1), replace=False)
                code = 0
            finally:
                os._exit(code)
    group_commit._leading = False
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    index.connect()
    assert index.has_instance(record(1).sop_instance_uid)
    index.shutdown()


def test_a_group_without_failures_takes_one_savepoint_not_one_each(index, monkeypatch):
    """A savepoint makes SQLite copy every page its writes touch first: a group that
    stores all its members runs them in one; only a failure has each run in its own."""
    statements: list[str] = []
    real = index.db.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        statements.append(sql.split()[0].upper())
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(index.db, "execute_sql", counting)
    index.connect()
    try:
        outcomes = index.store_many([record(n) for n in range(5)])
        assert all(isinstance(o, StoreOutcome) for o in outcomes)
        assert statements.count("SAVEPOINT") == 1
        statements.clear()
        outcomes = index.store_many([record(5), record(6), record(5), record(7)])
    finally:
        index.close()
    assert [type(o) for o in outcomes] == [StoreOutcome, StoreOutcome, DuplicateInstance, StoreOutcome]
    assert statements.count("SAVEPOINT") == 1 + 4  # the group's, undone; then one each
    assert [seq for seq, _ in feed(index)] == list(range(1, 9))
    assert sops(index) == sorted(record(n).sop_instance_uid for n in range(8))
