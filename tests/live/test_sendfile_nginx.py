"""How stored bytes reach the socket, on real servers: multipart answers of stored files by
gunicorn's sendfile path (gunicorn_worker.py), and the nginx X-Accel-Redirect mode
(DICOMWEB_ACCEL_REDIRECT) with nginx in front of gunicorn, configured as docs/deployment.md says.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import LiveServer, blob_files, free_port, start_server, stop_server

pytestmark = pytest.mark.live

PREFIX = "/_dicomserver_blobs/"
VIEWER = "https://viewer.example.org"
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}
MULTIPART = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def nginx_config(root: Path, port: int, upstream: str, blobs: Path) -> str:
    """The server block of docs/deployment.md, on loopback, with its files under `root`."""
    user = "user root;" if os.geteuid() == 0 else ""  # the workers read the store's 0600 files
    return f"""
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    sendfile on;
    tcp_nopush on;
    upstream dicomserver {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://dicomserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
        location {PREFIX} {{
            internal;
            alias {blobs}/;
            # nginx keeps only Content-Type (and a few others) of the upstream's headers:
            add_header X-Request-Id $upstream_http_x_request_id always;
            add_header Access-Control-Allow-Origin $upstream_http_access_control_allow_origin always;
            add_header Access-Control-Expose-Headers $upstream_http_access_control_expose_headers always;
            add_header Vary $upstream_http_vary always;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, root: Path, upstream: str, blobs: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = root
        config = root / "nginx.conf"
        config.write_text(nginx_config(root, self.port, upstream, blobs))
        assert NGINX is not None
        self.process = subprocess.Popen(
            [NGINX, "-c", str(config), "-p", str(root), "-e", str(root / "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(root / 'error.log').read_text(errors='replace')}")
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def accel(tmp_path_factory):
    """gunicorn with DICOMWEB_ACCEL_REDIRECT and nginx in front of it."""
    if NGINX is None:
        reason = "nginx is not installed (make install-test installs it as root: apt-get install nginx)"
        pytest.skip(reason)
    data = tmp_path_factory.mktemp("accel")
    env = {"DICOMWEB_ACCEL_REDIRECT": PREFIX, "DICOMWEB_CORS_ORIGINS": VIEWER}
    server = start_server(data / "server", workers=1, threads=8, env=env)
    try:
        proxy = Nginx(data / "nginx", server.url.removeprefix("http://"), data / "server" / "blobs")
        try:
            yield server, proxy
        finally:
            proxy.stop()
    finally:
        stop_server(server)


@pytest.fixture(scope="module", params=["sendfile", "no-sendfile"])
def plain(request, tmp_path_factory):
    """gunicorn as deployed, and with sendfile off (`--no-sendfile`): the same bytes read as chunks."""
    env = {"GUNICORN_CMD_ARGS": "--no-sendfile"} if request.param == "no-sendfile" else {}
    server = start_server(tmp_path_factory.mktemp(request.param), workers=1, threads=8, env=env)
    yield server
    stop_server(server)


def stow(url: str, body: bytes) -> None:
    response = requests.post(
        url + "/v2/studies", data=body, headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
    )
    assert response.status_code == 200, response.text


def parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part, the framing checked byte for byte on the way."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    body = response.content
    assert body.startswith(b"--" + boundary + b"\r\n") and body.endswith(b"\r\n--" + boundary + b"--\r\n")
    found = []
    for raw in body[len(boundary) + 4: -(len(boundary) + 8)].split(b"\r\n--" + boundary + b"\r\n"):
        head, _, content = raw.partition(b"\r\n\r\n")
        name, _, value = head.partition(b": ")
        assert name == b"Content-Type"
        found.append((value.decode(), content))
    return found


def instance_url(ds) -> str:
    return f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def test_multipart_answers_of_stored_files(plain: LiveServer) -> None:
    """Instances, a study and frames framed around the stored files: the bytes, the length."""
    study = make_instance().StudyInstanceUID
    first = make_instance(study=study, rows=256, columns=256)
    second = make_instance(study=study, rows=64, columns=64, frames=3)
    for ds in (first, second):
        stow(plain.url, to_bytes(ds))
    stored = {ds.SOPInstanceUID: blob_files(plain, sop=ds.SOPInstanceUID)[0].read_bytes() for ds in (first, second)}

    one = requests.get(plain.url + instance_url(first), headers=MULTIPART)
    assert one.status_code == 200
    assert int(one.headers["Content-Length"]) == len(one.content)
    assert parts(one) == [("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", stored[first.SOPInstanceUID])]

    whole = requests.get(plain.url + f"/v2/studies/{study}", headers=MULTIPART)
    assert whole.status_code == 200 and int(whole.headers["Content-Length"]) == len(whole.content)
    assert sorted(content for _, content in parts(whole)) == sorted(stored.values())

    frames = requests.get(plain.url + instance_url(second) + "/frames/3,1", headers=FRAMES)
    assert frames.status_code == 200 and int(frames.headers["Content-Length"]) == len(frames.content)
    frame = 64 * 64 * 2
    assert [content for _, content in parts(frames)] == [(3).to_bytes(2, "little") * (frame // 2),
                                                         (1).to_bytes(2, "little") * (frame // 2)]
    # HEAD: the same head, no body.
    head = requests.head(plain.url + instance_url(first), headers=MULTIPART)
    assert head.status_code == 200 and head.headers["Content-Length"] == one.headers["Content-Length"]


def test_nginx_sends_the_stored_file(accel) -> None:
    server, proxy = accel
    ds = make_instance(rows=128, columns=128)
    stow(proxy.url, to_bytes(ds))
    (blob,) = blob_files(server, sop=ds.SOPInstanceUID)

    response = requests.get(proxy.url + instance_url(ds), headers={**AS_STORED, "Origin": VIEWER})
    assert response.status_code == 200
    assert response.content == blob.read_bytes()
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "X-Request-Id" in response.headers["Access-Control-Expose-Headers"]
    assert response.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert response.headers["Content-Length"] == str(blob.stat().st_size)
    assert len(response.headers["X-Request-Id"]) == 32
    assert "X-Accel-Redirect" not in response.headers

    # What gunicorn answers nginx: no body, the file's place under the internal location.
    direct = requests.get(server.url + instance_url(ds), headers=AS_STORED)
    key = blob.relative_to(server.data_dir / "blobs").as_posix()
    assert direct.status_code == 200 and direct.content == b""
    assert direct.headers["X-Accel-Redirect"] == PREFIX + key

    # The internal location is not reachable by a client, by any spelling.
    for path in (PREFIX + key, PREFIX.rstrip("/") + "/./" + key, "/%5Fdicomserver%5Fblobs/" + key):
        assert requests.get(proxy.url + path).status_code == 404, path


def test_what_nginx_does_not_send_stays_with_dicomserver(accel) -> None:
    server, proxy = accel
    ds = make_instance(rows=32, columns=32, frames=2)
    stow(proxy.url, to_bytes(ds))
    (blob,) = blob_files(server, sop=ds.SOPInstanceUID)

    missing = requests.get(proxy.url + f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                           "/instances/1.2.3", headers=AS_STORED)
    assert missing.status_code == 404 and "1.2.3" in missing.text and missing.headers["X-Request-Id"]
    refused = requests.get(proxy.url + instance_url(ds), headers={"Accept": "image/gif"})
    assert refused.status_code == 406 and refused.headers["X-Request-Id"]
    # Multipart and frames are framed by dicomserver (through nginx).
    whole = requests.get(proxy.url + instance_url(ds), headers=MULTIPART)
    assert [content for _, content in parts(whole)] == [blob.read_bytes()]
    frame = requests.get(proxy.url + instance_url(ds) + "/frames/2", headers=FRAMES)
    assert [content for _, content in parts(frame)] == [(2).to_bytes(2, "little") * 32 * 32]
