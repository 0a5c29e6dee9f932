"""A real gunicorn process serving dicomserver on a free loopback port, per test module.

End-to-end tests use it as clients would: over HTTP, with their own libraries and
tools (requests, curl, dicomweb-client). The server is started and stopped here;
nothing depends on a service started by hand.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    data_dir: Path
    log_path: Path

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        import psutil

        master = psutil.Process(self.process.pid)
        return [master.pid] + [c.pid for c in master.children(recursive=True)]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, *, workers: int = 2, threads: int = 4, env: dict | None = None) -> LiveServer:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "gunicorn.log"
    environment = dict(os.environ)
    environment.update(
        {
            "DICOMWEB_BLOBSTORE_URL": str(data_dir / "blobs"),
            "DICOMWEB_DATABASE_URL": f"sqlite:///{data_dir / 'index.db'}",
            "DICOMWEB_WORKERS": str(workers),
            "DICOMWEB_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }
    )
    environment.update(env or {})
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "-c", "python:dicomserver.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}",
            "wsgi:app",
        ],
        cwd=REPO,
        env=environment,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(f"http://127.0.0.1:{port}", process, data_dir, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"gunicorn did not become ready:\n{server.log()}")


def stop_server(server: LiveServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A fresh gunicorn per module, or the server at DICOMSERVER_LIVE_URL (e.g. `make run`'s).

    The external form lets the tutorial replays check a running deployment:
    `DICOMSERVER_LIVE_URL=http://127.0.0.1:8080 make test-live PYTEST_ARGS=-k tutorial`.
    """
    external = os.environ.get("DICOMSERVER_LIVE_URL")
    if external:
        yield LiveServer(external.rstrip("/"), None, None, None)  # type: ignore[arg-type]
        return
    server = start_server(tmp_path_factory.mktemp("live"))
    yield server
    stop_server(server)
