"""The DIMSE gateway as several processes on one port (DICOMWEB_DIMSE_PROCESSES).

pynetdicom serves each association in threads of one Python process, and its threads poll:
measured, one process takes C-STOREs from four associations hardly faster than from one, while
two processes on two cores take them about 1.4 to 1.7 times as fast. So, as gunicorn runs
workers, the gateway runs as N processes, each the whole gateway (`dicomserver dimse
--listen-fd`) accepting on one listening socket that the supervisor made: whichever is waiting
takes the next association, which then lives in that process from start to end.

The supervisor is the process the user started. It opens the archive first (the index's
migrations and the gateway's partition happen once, not in N processes at once), listens,
starts the processes, starts again one that dies, passes SIGTERM/SIGINT on and waits for them (each stops
as one gateway does: open associations aborted once the instance they store is committed,
audit records written), and serves their metrics: each process writes its values into a
multiprocess directory of the supervisor's own (never gunicorn's, which gunicorn empties when
it starts), added up on each scrape. A process that exits with an error status within
STARTUP_SECONDS of its start did not start (a setting is refused, the index is unreachable):
the gateway then stops with that error instead of starting it again and again; one killed
(by a signal, e.g. the OOM killer) is started again.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import metrics
from .settings import Settings

log = logging.getLogger(__name__)

#: Connections waiting to be accepted (socketserver's default is 5, too few for a burst of
#: modalities at once).
LISTEN_BACKLOG = 128
#: A process that exits this soon after it was started is taken to have failed to start.
STARTUP_SECONDS = 5.0
#: How long a process that died is waited for before it is started again.
RESTART_SECONDS = 1.0
#: How long the processes are given to stop on SIGTERM (each waits up to dimse.STOP_SECONDS
#: for the instances being stored) before they are killed.
STOP_SECONDS = 30.0


def default_processes() -> int:
    """As gunicorn's workers (gunicorn_conf.py): one per CPU, at most 4."""
    return min(4, os.cpu_count() or 1)


def process_count(settings: Settings) -> int:
    return settings.dimse_processes or default_processes()


class StartFailed(Exception):
    """A process of the gateway exited as it started; its own message is on stderr."""


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    started: float


class Supervisor:
    """Starts `count` processes of the gateway and keeps them running until told to stop."""

    def __init__(self, settings: Settings, count: int, command: list[str] | None = None):
        self.settings = settings
        self.count = count
        #: How a process of the gateway is started (tests give their own interpreter's).
        self.command = command or [sys.executable, "-m", "dicomserver", "dimse"]
        self.metrics_dir: str | None = None
        self.socket: socket.socket | None = None
        self.processes: list[_Process] = []

    def run(self, stopping: threading.Event, on_listening: Callable[[], None] = lambda: None) -> None:
        """Until `stopping` is set; raises StartFailed when a process could not start."""
        from .dimse import serve_metrics  # pynetdicom: loaded only by the gateway

        s = self.settings
        family = socket.AF_INET6 if ":" in s.dimse_bind else socket.AF_INET
        self.socket = socket.create_server((s.dimse_bind, s.dimse_port), family=family, backlog=LISTEN_BACKLOG)
        listener = None
        try:
            if s.dimse_metrics_port:
                self.metrics_dir = tempfile.mkdtemp(prefix="dicomweb-dimse-metrics-")
                path = self.metrics_dir
                listener = serve_metrics(s, lambda: metrics.directory_exposition(path))
            self.processes = [self._start() for _ in range(self.count)]
            on_listening()
            while not stopping.wait(0.2):
                for number, process in enumerate(self.processes):
                    if process.popen.poll() is None:
                        continue
                    self._forget(process)
                    code = process.popen.returncode
                    if code > 0 and time.monotonic() - process.started < STARTUP_SECONDS:
                        raise StartFailed(f"a process of the gateway exited as it started (status {code})")
                    log.warning("DIMSE: process %s exited with status %s; starting another",
                                process.popen.pid, code)
                    if stopping.wait(RESTART_SECONDS):
                        break
                    self.processes[number] = self._start()
        finally:
            self._stop_all()
            if listener is not None:
                listener.shutdown()
                listener.server_close()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.socket.close()

    def _start(self) -> _Process:
        env = dict(os.environ)
        env["DICOMWEB_DIMSE_PROCESSES"] = "1"
        env.pop("DICOMWEB_DIMSE_METRICS_PORT", None)  # the supervisor serves them
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        assert self.socket is not None
        fd = self.socket.fileno()
        command = [*self.command, "--listen-fd", str(fd)]
        return _Process(subprocess.Popen(command, env=env, pass_fds=(fd,)), time.monotonic())

    def _forget(self, process: _Process) -> None:
        """A dead process' live gauges leave the sums (its counters stay: they are totals)."""
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.popen.pid, self.metrics_dir)

    def _stop_all(self) -> None:
        running = [p for p in self.processes if p.popen.poll() is None]
        for process in running:
            process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in running:
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("DIMSE: process %s did not stop in %.0f s; killed", process.popen.pid, STOP_SECONDS)
                process.popen.kill()
                process.popen.wait()
        for process in self.processes:
            self._forget(process)
