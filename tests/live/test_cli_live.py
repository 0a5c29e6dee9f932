"""The `dicomserver` command against real servers: `import --url` by STOW-RS to a gunicorn,
with and without a bearer token, and `dicomserver serve` from an installed package."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import requests
from cli_fixtures import make_tree
from click.testing import CliRunner
from dicom_factory import make_instance, to_bytes
from live_servers import REPO, free_port, start_server, stop_server

from dicomserver.auth import create_api_key
from dicomserver.cli import main

pytestmark = pytest.mark.live


def counts(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(stored|already present|failed|not DICOM): (\d+)", output, re.M)}


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_import_to_another_server_by_stow(tmp_path):
    tree = make_tree(tmp_path / "src")
    server = start_server(tmp_path / "server", workers=1, threads=8)
    try:
        result = run("import", str(tree.root), "--url", server.url + "/v2", "--jobs", "2")
        assert result.exit_code == 1, result.output  # the cut-short instance
        assert counts(result.output) == {"stored": 4, "already present": 1, "failed": 1, "not DICOM": 2}
        assert f"  {tree.truncated}: 43264 (0xA900): Pixel Data (7FE0,0010) has a value length" in result.output
        assert f"  {tree.not_dicom}: not a DICOM Part 10 file" in result.output
        for path, ds in tree.instances.items():
            url = (f"{server.url}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                   f"/instances/{ds.SOPInstanceUID}")
            response = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=10)
            assert response.status_code == 200 and response.content == path.read_bytes()

        again = run("import", str(tree.root), "--url", server.url + "/v2/studies")  # a STOW URL works too
        assert counts(again.output) == {"stored": 0, "already present": 5, "failed": 1, "not DICOM": 2}
        feed = requests.get(server.url + "/v2/changefeed?limit=100", timeout=10).json()
        assert len(feed) == 4
    finally:
        stop_server(server)


def test_import_with_a_bearer_token(tmp_path):
    keys = tmp_path / "keys.json"
    writer = create_api_key(str(keys), "importer", ["globalWriter"])
    folder = tmp_path / "src"
    folder.mkdir()
    for number in range(20):
        (folder / f"{number}.dcm").write_bytes(to_bytes(make_instance()))
    server = start_server(tmp_path / "server", workers=1, threads=8, env={"DICOMWEB_AUTH_TOKENS_FILE": str(keys)})
    try:
        refused = run("import", str(folder), "--url", server.url + "/v2", "--token", "dcm_wrong", "-j", "1", "--batch", "1")
        assert refused.exit_code == 1
        failed = counts(refused.output)["failed"]
        assert ": 272 (0x0110): the server answered 401 UNAUTHORIZED" in refused.output
        # No use trying the others: the files already under way finish, no more are sent.
        assert f"not attempted: {20 - failed} (stopped after: the server answered 401 UNAUTHORIZED)" in refused.output
        assert 1 <= failed < 10

        accepted = run("import", str(folder), "--url", server.url + "/v2", env={"DICOMWEB_TOKEN": writer})
        assert accepted.exit_code == 0, accepted.output
        assert counts(accepted.output)["stored"] == 20
    finally:
        stop_server(server)


def test_installed_dicomserver_serve_answers_healthz(tmp_path):
    """`pip install .` gives the `dicomserver` script; `serve` runs gunicorn with the
    package's settings, on the environment's archive."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(REPO)],
        check=True,
    )
    script = site / "bin" / "dicomserver"
    assert script.is_file()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "DICOMWEB_BLOBSTORE_URL": str(tmp_path / "data" / "blobs"),
        "DICOMWEB_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'index.db'}",
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(script), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        answer = None
        deadline = time.monotonic() + 30
        while answer is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    answer = (response.status, response.read())
            except OSError:
                time.sleep(0.2)
        assert answer == (200, b'{"status":"ok"}\n'), (tmp_path / "serve.log").read_text()
        assert (tmp_path / "data" / "index.db").exists()  # the environment's archive
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # exec'd: the pid is gunicorn's master
            process.wait(timeout=30)
        log.close()
    assert process.returncode == 0


def test_serve_names_a_bad_variable_before_starting(tmp_path):
    result = CliRunner().invoke(main, ["serve"], env={"DICOMWEB_QIDO_MAX_LIMIT": "many"})
    assert result.exit_code == 1 and "DICOMWEB_QIDO_MAX_LIMIT='many' is invalid" in result.output
