"""The installed package serves on its own: `pip install .`, then `gunicorn dicomserver.wsgi:app`
from a folder that is not the checkout."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from live_servers import REPO, start_server, stop_server

pytestmark = pytest.mark.live


def test_installed_package_serves_dicomserver_wsgi_app(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(site), str(REPO)],
        check=True,
    )
    assert (site / "dicomserver" / "wsgi.py").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # PYTHONPATH puts the installed copy ahead of the checkout's editable install.
    server = start_server(
        tmp_path / "data", workers=1, threads=2, app="dicomserver.wsgi:app", cwd=elsewhere,
        env={"PYTHONPATH": str(site)},
    )
    try:
        with urllib.request.urlopen(server.url + "/readyz", timeout=10) as response:
            assert response.status == 200
            assert json.load(response)["status"] == "ok"
        with urllib.request.urlopen(server.url + "/v2/studies", timeout=10) as response:
            assert response.status == 200 and json.load(response) == []
        with urllib.request.urlopen(server.url + "/", timeout=10) as response:  # the study browser's templates
            assert response.status == 200 and b"<h1>Studies</h1>" in response.read()
        code = "import dicomserver, sys; print(dicomserver.__file__)"
        where = subprocess.run(
            [sys.executable, "-c", code], cwd=elsewhere, env={"PYTHONPATH": str(site)},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        assert where.startswith(str(site)), where
    finally:
        stop_server(server)
