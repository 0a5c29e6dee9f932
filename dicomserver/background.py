"""Background threads of a server process that work on the index: the operations runner and the
webhook delivery thread.

Each is a daemon thread started in the process that serves (again after gunicorn forks a worker:
a thread is not inherited), stopped at exit so that what it holds (an operation's lease) is given
back at once instead of when the lease expires, and it closes its index connection after each poll
(a thread's connection would otherwise stay open between polls).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref

from .index import Index
from .settings import Settings

log = logging.getLogger(__name__)


class IndexThread:
    """A daemon thread polling the index every `poll_seconds()`; subclasses write `_run`."""

    #: The thread's name (in logs and thread dumps).
    name = "background"

    def __init__(self, index: Index, settings: Settings):
        self.index = index
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def start(self) -> None:
        """Start the thread in this process (again after a fork: the parent's thread is not here)."""
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        _THREADS.add(self)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop after what it is doing and wait a little."""
        self._stop.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=timeout)

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Close this thread's index connection (the database may be going away with the process)."""
        try:
            if not self.index.db.is_closed():
                self.index.db.close()
        except Exception:
            log.debug("%s: closing the thread's connection failed", self.name, exc_info=True)


_THREADS: weakref.WeakSet[IndexThread] = weakref.WeakSet()


@atexit.register
def stop_threads() -> None:
    """Stop every background thread of this process (at exit; tests, between apps)."""
    for thread in list(_THREADS):
        thread.stop()
