"""The browser tests' servers: one dicomserver (real gunicorn, CORS open to the viewer's
origin) holding the test studies, and OHIF's prebuilt viewer on another loopback port.

Run by `make e2e` (`pytest tests/e2e`); setup.cfg keeps this folder out of `make test`.
"""
from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest
from browser import ARTIFACTS, check_tools
from dicom_factory import to_bytes
from e2e_studies import STUDIES, UPLOAD
from live_servers import LiveServer, free_port, start_server, stop_server
from ohif_viewer import StaticServer, app_config, configured_copy, serve


def stow(server: LiveServer, data: bytes) -> None:
    request = urllib.request.Request(
        server.url + "/v2/studies",
        data=data,
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, response.status


@pytest.fixture(scope="session", autouse=True)
def _tools_and_artifacts():
    check_tools()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    ARTIFACTS.mkdir(parents=True)


@pytest.fixture(scope="session")
def viewer_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def dicomserver(tmp_path_factory, viewer_port):
    """A gunicorn on loopback holding STUDIES, answering CORS for the viewer's origin."""
    server = start_server(
        tmp_path_factory.mktemp("dicomserver"),
        env={"DICOMWEB_CORS_ORIGINS": f"http://127.0.0.1:{viewer_port}"},
    )
    try:
        for study in STUDIES:
            stow(server, to_bytes(study.dataset()))
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def ohif(tmp_path_factory, dicomserver, viewer_port) -> StaticServer:
    """OHIF's dist with one DICOMweb data source, the dicomserver fixture, at its own origin."""
    dist = configured_copy(tmp_path_factory.mktemp("ohif") / "dist", app_config(dicomserver.url + "/v2"))
    viewer = serve(dist, viewer_port)
    yield viewer
    viewer.stop()


@pytest.fixture(scope="session")
def upload_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "upload.dcm"
    path.write_bytes(to_bytes(UPLOAD.dataset()))
    return path
