"""Start and stop real gunicorn processes serving dicomserver on free loopback ports.

Shared by the end-to-end tests in tests/live (and the benchmark's smoke test); a plain
module rather than a conftest so tests can import it whatever pytest's import mode.
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

REPO = Path(__file__).resolve().parents[1]


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


def start_server(
    data_dir: Path,
    *,
    workers: int = 2,
    threads: int = 32,  # as dicomserver/gunicorn_conf.py
    env: dict | None = None,
    app: str = "wsgi:app",
    cwd: Path = REPO,
    new_session: bool = False,
) -> LiveServer:
    """A gunicorn on a free loopback port, ready to serve. `new_session=True` starts it in
    a session (and process group) of its own, whose id is the master's pid, so a test can
    kill master and workers at once with os.killpg (tests/live/test_crash.py)."""
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
    log_file = open(log_path, "wb")  # noqa: SIM115 - the server writes to it after this returns
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "-c", "python:dicomserver.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}",
            app,
        ],
        cwd=cwd,
        env=environment,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
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


def blob_files(server: LiveServer, *, study: str | None = None, sop: str | None = None) -> list[Path]:
    """A local-disk server's blob files ('.tmp', puts in progress, left out), optionally of one
    study and/or one instance (keys '<study>/<series>/<sop>_<time>-<random>.dcm')."""
    root = Path(server.data_dir) / "blobs"
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != ".tmp"]
        for name in filenames:
            path = Path(dirpath) / name
            parts = path.relative_to(root).parts
            if study is not None and parts[0] != study:
                continue
            if sop is not None and not (name.startswith(f"{sop}_") or sop in parts[:-1]):
                continue
            found.append(path)
    return found
