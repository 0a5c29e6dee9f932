"""Start and stop the servers the benchmark measures, each on a free loopback port.

* `DicomServer`: gunicorn with the repo's `dicomserver/gunicorn_conf.py`, local blobs and
  SQLite in a fresh temporary directory (extra DICOMWEB_* variables can be passed, e.g.
  to try other worker counts or another index database).
* `Orthanc`: Debian's /usr/sbin/Orthanc with the DICOMweb plugin and `bench/orthanc.json`.
* `Nginx`: Debian's nginx serving a directory of files: the ceiling for "send one stored file".
* `NginxProxy`: nginx as reverse proxy in front of a `DicomServer` started with the opt-in
  X-Accel-Redirect mode (DICOMWEB_ACCEL_REDIRECT): dicomserver names the stored file, nginx
  sends it, as docs/deployment.md describes.
* `External`: any DICOMweb base URL started by someone else (no process metrics).
* `DicomServerDimse`: the DIMSE gateway, `python -m dicomserver dimse`, on a fresh store and
  index like `DicomServer`'s; beside it, `Orthanc(dimse=True)` is Orthanc with its own DICOM
  listener checked at start-up. Both take C-STORE with the same largest PDU (`DIMSE_MAX_PDU`).

Every server is a context manager: it is started on entry, and stopped (and its
temporary directory removed) on exit, also when the benchmark fails. Start-up waits
are bounded; a server that does not answer in time is killed and its log shown.
"""
from __future__ import annotations

import getpass
import grp
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

REPO = Path(__file__).resolve().parents[1]
ORTHANC_TEMPLATE = Path(__file__).resolve().with_name("orthanc.json")
ORTHANC_BINARY = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: The largest PDU both DIMSE listeners accept (dicomserver's DICOMWEB_DIMSE_MAX_PDU_BYTES
#: default; Orthanc's own default is 16 KB): storescu sends P-DATA of this size to either.
DIMSE_MAX_PDU = 65536
ORTHANC_AE_TITLE = "ORTHANC"
DICOMSERVER_AE_TITLE = "DICOMSERVER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class Server:
    """A process tree answering HTTP on loopback. Subclasses fill in how to start it."""

    #: Short name used on the command line and in result files.
    name = "server"
    #: Name shown in tables.
    label = "server"

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None

    # -- what the benchmark needs to know -------------------------------------------------
    @property
    def origin(self) -> str:
        """scheme://host:port, what wrk is pointed at."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_path(self) -> str:
        """The DICOMweb root path (no trailing slash), e.g. /v2 or /dicom-web."""
        return ""

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    def pids(self) -> list[int]:
        """The server's processes (master and workers), for RSS and CPU accounting."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def version(self) -> str:
        return "?"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    # -- lifecycle ------------------------------------------------------------------------
    def command(self) -> tuple[list[str], dict[str, str] | None, Path | None]:
        """(argv, environment or None, working directory or None)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files into self.workdir before the process starts."""

    def ready_url(self) -> str:
        return self.origin + "/"

    def check_ready(self) -> None:
        """Return when the server answers; raise OSError while it does not (yet)."""
        _get(self.ready_url(), timeout=1.0)

    def start(self) -> Server:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self.log_path = self.workdir / "server.log"
        self.prepare()
        argv, env, cwd = self.command()
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C in the terminal reaches the harness only, which then
            # stops the servers in order instead of leaving half-dead ones behind.
            self.process = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        why: OSError | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_text = self.log()
                self.stop()
                raise RuntimeError(f"{self.label} exited with {self.process.returncode} at start-up:\n{log_text}")
            try:
                self.check_ready()
                return self
            except OSError as error:
                why = error
                time.sleep(0.1)
        log_text = self.log()
        self.stop()
        raise RuntimeError(f"{self.label} did not answer within {START_TIMEOUT:.0f} s ({why}):\n{log_text}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # The whole session: gunicorn workers and nginx workers too.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DicomServer(Server):
    """dicomserver under gunicorn with the repo's gunicorn_conf.py (workers/threads as it decides)."""

    name = "dicomserver"
    label = "dicomserver"

    def __init__(self, env: dict[str, str] | None = None, api_version: str = "v2", source: Path | None = None,
                 commit: str | None = None, store: Path | None = None) -> None:
        """source: a directory holding another copy of the code (e.g. `git archive` of a commit)
        to serve instead of this working tree; commit names it in the report. store: the
        directory of another DicomServer's blobs and index, to serve its data (it is not
        removed here); by default a fresh one in this server's temporary directory."""
        super().__init__()
        self.extra_env = dict(env or {})
        self.api_version = api_version
        self.source = Path(source) if source else REPO
        self.commit = commit
        self.store = Path(store) if store else None

    @property
    def store_dir(self) -> Path:
        """The directory holding blobs/ (the blob store's root) and index.db."""
        if self.store is not None:
            return self.store
        assert self.workdir is not None, "not started"
        return self.workdir

    @property
    def blob_root(self) -> Path:
        return self.store_dir / "blobs"

    @property
    def base_path(self) -> str:
        return "/" + self.api_version

    def ready_url(self) -> str:
        return self.origin + "/healthz"

    def command(self):
        env = dict(os.environ)
        env.update(
            {
                "DICOMWEB_BLOBSTORE_URL": str(self.blob_root),
                "DICOMWEB_DATABASE_URL": f"sqlite:///{self.store_dir / 'index.db'}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        # `python -m` puts the working directory first on sys.path: the code served is source's.
        env["PYTHONPATH"] = os.pathsep.join([str(self.source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        argv = [
            sys.executable, "-m", "gunicorn",
            "-c", "python:dicomserver.gunicorn_conf",
            "--bind", f"127.0.0.1:{self.port}",
            "wsgi:app",
        ]
        return argv, env, self.source

    def version(self) -> str:
        try:
            version = importlib.metadata.version("dicomserver")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        if self.commit:
            return f"{version} (commit {self.commit}, exported with git archive)"
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "dicomserver", "backends", "wsgi.py")
        if commit:
            version += f" (working tree at commit {commit}{', with uncommitted changes' if dirty else ''})"
        return version

    def settings(self) -> str:
        """Workers and threads as gunicorn_conf.py resolves them in this environment."""
        code = "import dicomserver.gunicorn_conf as c; print(c.workers, c.threads)"
        env = dict(os.environ, **self.extra_env)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=self.source, capture_output=True,
                             text=True, timeout=60)
        workers, threads = out.stdout.split() if out.returncode == 0 else ("?", "?")
        return f"gunicorn gthread, {workers} workers x {threads} threads"


class DicomServerDimse(DicomServer):
    """The DIMSE gateway as shipped: `python -m dicomserver dimse` (the code of `source`, as
    DicomServer's) on a fresh store and SQLite index, listening on a free loopback port."""

    name = "dicomserver-dimse"
    label = "dicomserver dimse"
    ae_title = DICOMSERVER_AE_TITLE

    @property
    def dicom_port(self) -> int | None:
        return self.port

    def command(self):
        _, env, cwd = super().command()
        env.update({"DICOMWEB_DIMSE_AE_TITLE": self.ae_title, "DICOMWEB_DIMSE_BIND": "127.0.0.1",
                    "DICOMWEB_DIMSE_PORT": str(self.port), "DICOMWEB_DIMSE_MAX_PDU_BYTES": str(DIMSE_MAX_PDU)})
        env.update(self.extra_env)
        return [sys.executable, "-m", "dicomserver", "dimse"], env, cwd

    def check_ready(self) -> None:
        _echo_or_raise(self.port, self.ae_title)

    def instances_stored(self) -> int:
        """The instances in the index, and as many blob files at least (as `dicomserver import`'s check)."""
        with sqlite3.connect(self.store_dir / "index.db") as db:
            rows = db.execute("SELECT count(*) FROM instance").fetchone()[0]
        blobs = sum(len(names) for _, _, names in os.walk(self.blob_root))
        return min(rows, blobs)

    def settings(self) -> str:
        pdu = int(self.extra_env.get("DICOMWEB_DIMSE_MAX_PDU_BYTES", DIMSE_MAX_PDU))
        others = ", ".join(f"{k}={v}" for k, v in sorted(self.extra_env.items()) if k.startswith("DICOMWEB_DIMSE_"))
        processes = self.extra_env.get("DICOMWEB_DIMSE_PROCESSES") or f"{min(4, os.cpu_count() or 1)} (the default)"
        return (f"`python -m dicomserver dimse` as {self.ae_title}, {processes} processes, largest PDU {pdu // 1024} KB"
                + (f" ({others})" if others else ", its other DICOMWEB_DIMSE_* defaults")
                + "; local-disk blobs and SQLite as dicomserver's")


def _echo_or_raise(port: int | None, ae_title: str) -> None:
    """C-ECHO (DCMTK's echoscu); OSError while the listener does not answer."""
    from .load import echo

    if port is None:
        raise OSError("no DICOM port")
    problem = echo(port, ae_title, timeout=2.0)
    if problem:
        raise OSError(problem)


class Orthanc(Server):
    """Orthanc + DICOMweb plugin from Debian, configured by bench/orthanc.json.

    dimse: also wait for its DICOM listener (a C-ECHO) at start-up, for the C-STORE test.
    """

    name = "orthanc"
    label = "Orthanc"
    ae_title = ORTHANC_AE_TITLE

    def __init__(self, dimse: bool = False) -> None:
        super().__init__()
        self.dimse = dimse
        self.dicom_port: int | None = None

    @staticmethod
    def available() -> bool:
        return os.path.exists(ORTHANC_BINARY) and os.path.exists(ORTHANC_DICOMWEB_PLUGIN)

    @property
    def base_path(self) -> str:
        return "/dicom-web"

    def ready_url(self) -> str:
        return self.origin + "/system"

    def check_ready(self) -> None:
        _get(self.ready_url(), timeout=1.0)
        if self.dimse:
            _echo_or_raise(self.dicom_port, self.ae_title)

    def instances_stored(self) -> int:
        """The instances in Orthanc's index (its /statistics)."""
        return int(json.loads(_get(self.origin + "/statistics", timeout=30))["CountInstances"])

    def prepare(self) -> None:
        self.dicom_port = free_port()
        config = render_orthanc_config(
            storage=self.workdir / "storage",
            index=self.workdir / "index",
            http_port=self.port,
            dicom_port=self.dicom_port,
        )
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))

    def command(self):
        # MALLOC_ARENA_MAX is set by Orthanc itself ("MallocArenaMax", default 5). Debian's Orthanc
        # uses Debian's DCMTK, which leaves Nagle's algorithm on in the DICOM listener unless
        # TCP_NODELAY=1 (Orthanc's own builds compile DCMTK with DISABLE_NAGLE_ALGORITHM instead):
        # without it every C-STORE response waits ~40 ms for a delayed ACK. The HTTP side has
        # "TcpNoDelay": true in bench/orthanc.json for the same reason.
        from .load import DCMTK_ENV

        return [ORTHANC_BINARY, str(self.workdir / "orthanc.json")], dict(os.environ, **DCMTK_ENV), self.workdir

    def version(self) -> str:
        try:
            core = json.loads(_get(self.origin + "/system"))["Version"]
            plugin = json.loads(_get(self.origin + "/plugins/dicom-web"))["Version"]
            return f"Orthanc {core}, DICOMweb plugin {plugin}"
        except (OSError, ValueError, KeyError):
            return "Orthanc ?"

    def settings(self) -> str:
        if self.dimse:
            return (f"bench/orthanc.json: DICOM listener as {self.ae_title}, 4 DICOM threads (its default "
                    f"DicomThreadsCount), largest PDU {DIMSE_MAX_PDU // 1024} KB, fsync on, any calling AE may "
                    "store; TCP_NODELAY=1 in its environment (DCMTK without Nagle's algorithm)")
        return "bench/orthanc.json (50 HTTP threads, StorageCompression off, fsync on, metadata Full)"


def render_orthanc_config(*, storage: Path, index: Path, http_port: int, dicom_port: int) -> dict:
    """bench/orthanc.json with its placeholders filled and its // comments removed."""
    text = ORTHANC_TEMPLATE.read_text()
    values = {
        "@STORAGE@": json.dumps(str(storage))[1:-1],
        "@INDEX@": json.dumps(str(index))[1:-1],
        "@DICOMWEB_PLUGIN@": ORTHANC_DICOMWEB_PLUGIN,
        "@HTTP_PORT@": str(http_port),
        "@DICOM_PORT@": str(dicom_port),
        "@DICOM_AET@": ORTHANC_AE_TITLE,
        "@MAX_PDU@": str(DIMSE_MAX_PDU),
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    text = re.sub(r"(?m)^\s*//.*$", "", text)
    return json.loads(text)


class Nginx(Server):
    """nginx serving `root` as static files: how fast this machine can send a stored file over HTTP."""

    name = "nginx"
    label = "nginx"

    def __init__(self, root: Path, workers: int | None = None) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.workers = workers or os.cpu_count() or 1

    @staticmethod
    def available() -> bool:
        return shutil.which("nginx") is not None or os.path.exists("/usr/sbin/nginx")

    def prepare(self) -> None:
        tmp = self.workdir
        # When started as root, nginx workers would switch to "nobody"; keep the
        # current user so the data directory's permissions do not matter.
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name};" if os.geteuid() == 0 else ""
        (tmp / "nginx.conf").write_text(
            f"""# generated by bench/servers.py
{user}
daemon off;
master_process on;
worker_processes {self.workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    # A ceiling: no access log, sendfile, and connections kept alive as long as wrk likes.
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    types {{ }}
    default_type application/dicom;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ }}
    }}
}}
"""
        )

    def command(self):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        return [binary, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"),
                "-c", str(self.workdir / "nginx.conf")], None, self.workdir

    def ready_url(self) -> str:
        return self.origin + "/manifest.json"

    def version(self) -> str:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
        return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


class NginxProxy(Nginx):
    """nginx in front of dicomserver's gunicorn (upstream keep-alive), with the internal location
    DICOMWEB_ACCEL_REDIRECT names aliased to the blob store's root: X-Accel-Redirect mode.

    A response nginx sent from the blob store carries `X-Bench-Accel: 1`, so the benchmark can
    tell X-Accel answers from bytes dicomserver sent itself through the proxy (a build without
    the mode ignores the variable)."""

    name = "dicomserver-nginx"
    label = "dicomserver behind nginx (X-Accel)"
    PREFIX = "/_dicomserver_blobs/"

    def __init__(self, upstream: DicomServer, workers: int | None = None) -> None:
        super().__init__(upstream.blob_root, workers)
        self.upstream = upstream

    @property
    def base_path(self) -> str:
        return self.upstream.base_path

    def pids(self) -> list[int]:
        """nginx's processes and dicomserver's: the cost of one answer is both."""
        return super().pids() + self.upstream.pids()

    def ready_url(self) -> str:
        return self.origin + "/healthz"

    def prepare(self) -> None:
        tmp = self.workdir
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name};" if os.geteuid() == 0 else ""
        (tmp / "nginx.conf").write_text(
            f"""# generated by bench/servers.py: docs/deployment.md's X-Accel-Redirect setup
{user}
daemon off;
master_process on;
worker_processes {self.workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream dicomserver {{
        server 127.0.0.1:{self.upstream.port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location {self.PREFIX} {{
            internal;
            alias {self.root}/;
            add_header X-Bench-Accel 1 always;
        }}
        location / {{
            proxy_pass http://dicomserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""
        )

    def version(self) -> str:
        return super().version() + " as reverse proxy"


class GunicornFloor(Server):
    """The stored files through gunicorn (repo gunicorn_conf.py) and a bare WSGI app or one
    Flask route (bench/floor_app.py): the framework's share of a WADO instance request."""

    APPS: ClassVar[dict[str, str]] = {"wsgi": "bench.floor_app:wsgi", "flask": "bench.floor_app:flask_app"}

    def __init__(self, root: Path, app: str, env: dict[str, str] | None = None, source: Path | None = None) -> None:
        """env and source as dicomserver's (DicomServer): the same gunicorn settings file
        and DICOMWEB_WORKERS/THREADS/ACCESS_LOG, so the floor differs only in the app."""
        super().__init__()
        self.root = Path(root).resolve()
        self.app = app
        self.extra_env = dict(env or {})
        self.source = Path(source) if source else REPO
        self.name = f"gunicorn-{app}"
        self.label = {"wsgi": "gunicorn + bare WSGI app", "flask": "gunicorn + one Flask route"}[app]

    def command(self):
        env = dict(os.environ, BENCH_FLOOR_ROOT=str(self.root), PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        argv = [
            sys.executable, "-m", "gunicorn",
            "-c", str(self.source / "dicomserver" / "gunicorn_conf.py"),
            "--bind", f"127.0.0.1:{self.port}",
            self.APPS[self.app],
        ]
        return argv, env, REPO

    def ready_url(self) -> str:
        return self.origin + "/manifest.json"

    def version(self) -> str:
        return f"gunicorn {importlib.metadata.version('gunicorn')}, Flask {importlib.metadata.version('flask')}"


class External(Server):
    """A DICOMweb server started elsewhere: only HTTP figures (no RSS/CPU of its processes)."""

    name = "external"
    label = "external"

    def __init__(self, base_url: str) -> None:
        super().__init__()
        match = re.fullmatch(r"(https?://[^/]+)(/.*)?", base_url.rstrip("/"))
        if not match:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self._origin, self._path = match.group(1), match.group(2) or ""

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def base_path(self) -> str:
        return self._path

    def start(self) -> Server:
        return self

    def stop(self) -> None:
        pass

    def pids(self) -> list[int]:
        return []

    def version(self) -> str:
        return self.base_url

    def settings(self) -> str:
        return "started elsewhere"


def export_commit(rev: str, into: Path) -> str:
    """`git archive` rev of this repository into `into`; returns the short commit hash."""
    commit = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    if not commit:
        raise ValueError(f"not a commit of {REPO}: {rev}")
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True,
                             check=True, timeout=120)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=120)
    return commit


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
