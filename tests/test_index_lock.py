"""The SQLite writer queue (index._SqliteWriteLock): bounded waits, and safe across fork()."""
from __future__ import annotations

import fcntl
import os
import time

import pytest
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings, close_app, create_app


def _app(tmp_path, busy_ms: int = 30000):
    return create_app(
        Settings(
            blobstore_url=str(tmp_path / "b"),
            database_url=f"sqlite:///{tmp_path / 'i.db'}",
            sqlite_busy_timeout_ms=busy_ms,
        )
    )


def test_a_writer_held_up_by_another_process_gets_503_after_the_busy_timeout(tmp_path):
    app = _app(tmp_path, busy_ms=300)
    fd = os.open(tmp_path / "i.db-writelock", os.O_RDONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process mid-transaction would
    try:
        started = time.monotonic()
        response = app.test_client().post(
            "/v2/studies", data=to_bytes(make_instance()), headers={"Content-Type": "application/dicom"}
        )
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    assert response.status_code == 503, response.data
    assert b"index database is unavailable" in response.data
    assert 0.3 <= waited < 10
    # and once the other process lets go, the same store works
    response = app.test_client().post(
        "/v2/studies", data=to_bytes(make_instance()), headers={"Content-Type": "application/dicom"}
    )
    assert response.status_code == 200
    close_app(app)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_while_a_thread_waits_its_turn_can_write(tmp_path):
    """A thread of the parent holds the in-process mutex at fork(); the child has no such
    thread, so its copy of the mutex must not stay taken (it would wait out the timeout)."""
    app = _app(tmp_path, busy_ms=2000)
    index = app.extensions["dicomserver"].index
    lock = index._write_lock
    assert lock._mutex.acquire(timeout=5)  # as a parent thread queueing for its turn would
    try:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with lock:
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        lock._mutex.release()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert time.monotonic() - started < 1.5  # no wait for the 2 s timeout
    index.shutdown()
