"""`dicomserver dimse` as its own process beside a real gunicorn, on one SQLite index and one
local-disk blob store, as an operator runs them: DCMTK's storescu into the gateway is seen
over QIDO/WADO, a STOW over gunicorn is found and retrieved by findscu/getscu, the gateway's
metrics listener counts it all, and SIGTERM stops the gateway at once with exit status 0,
its audit records readable over gunicorn's /audit. Skipped where DCMTK is not installed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dcmtk
import pytest
from live_servers import REPO, free_port, start_server, stop_server
from pydicom import dcmread
from pydicom.data import get_testdata_file

pytestmark = pytest.mark.skipif(not dcmtk.AVAILABLE, reason="DCMTK (Debian package dcmtk) is not installed")
AE_TITLE = "LIVEARCHIVE"


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}:\n{log.read_text()}")



def get(url: str, accept: str = "application/dicom+json") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as response:
        return response.read()


def test_the_gateway_beside_gunicorn(tmp_path):
    data = tmp_path / "archive"
    server = start_server(data, workers=1, threads=4)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "dimse.log"
    environment = dict(os.environ)
    environment.update({
        "DICOMWEB_BLOBSTORE_URL": str(data / "blobs"),
        "DICOMWEB_DATABASE_URL": f"sqlite:///{data / 'index.db'}",
        "DICOMWEB_DIMSE_AE_TITLE": AE_TITLE,
        "DICOMWEB_DIMSE_PORT": str(port),
        "DICOMWEB_DIMSE_PEERS": "STORESCU@127.0.0.1,FINDSCU@127.0.0.1,GETSCU@127.0.0.1",
        "DICOMWEB_DIMSE_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    })
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "dicomserver", "dimse"], cwd=REPO, env=environment,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, gateway, log)
        # DIMSE in, DICOMweb out.
        ct = dcmread(get_testdata_file("CT_small.dcm"))
        store = dcmtk.run("storescu", "-aec", AE_TITLE, "127.0.0.1", str(port), str(get_testdata_file("CT_small.dcm")))
        assert store.returncode == 0, store.stderr
        found = json.loads(get(f"{server.url}/v2/studies?StudyInstanceUID={ct.StudyInstanceUID}"))
        assert [s["0020000D"]["Value"][0] for s in found] == [ct.StudyInstanceUID]
        part10 = get(f"{server.url}/v2/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/"
                     f"{ct.SOPInstanceUID}", accept='multipart/related; type="application/dicom"')
        assert ct.SOPInstanceUID.encode() in part10

        # DICOMweb in, DIMSE out.
        mr_path = get_testdata_file("MR_small.dcm")
        mr = dcmread(mr_path)
        stow = urllib.request.Request(f"{server.url}/v2/studies", data=Path(mr_path).read_bytes(), method="POST",
                                      headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"})
        with urllib.request.urlopen(stow, timeout=30) as response:
            assert response.status == 200
        find = dcmtk.run("findscu", "-v", "-S", "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={mr.StudyInstanceUID}", "-k", "PatientName", "127.0.0.1", str(port))
        assert find.returncode == 0, find.stderr
        assert find.stderr.count("(Pending)") == 1, find.stderr
        got = tmp_path / "got"
        got.mkdir()
        fetched = dcmtk.run("getscu", "-aec", AE_TITLE, "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                      "-k", f"StudyInstanceUID={mr.StudyInstanceUID}", "127.0.0.1", str(port))
        assert fetched.returncode == 0, fetched.stderr
        assert [dcmread(p).SOPInstanceUID for p in got.iterdir()] == [mr.SOPInstanceUID]

        # The gateway's metrics, on its own listener.
        scrape = get(f"http://127.0.0.1:{metrics_port}/metrics", accept="text/plain").decode()
        for series in ('dicomweb_dimse_requests_total{command="C-STORE",status="success"} 1.0',
                       'dicomweb_dimse_requests_total{command="C-FIND",status="success"} 1.0',
                       'dicomweb_dimse_requests_total{command="C-GET",status="success"} 1.0',
                       'dicomweb_stow_instances_total{outcome="stored",reason=""} 1.0'):
            assert series in scrape.splitlines(), scrape

        # SIGTERM: a clean, prompt stop.
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    try:
        # Its audit records went into the index: gunicorn's /audit serves them.
        subjects = {}
        for title in ("STORESCU", "FINDSCU", "GETSCU"):
            bundle = json.loads(get(f"{server.url}/v2/audit?subject={title}", accept="application/fhir+json"))
            subjects[title] = [{d["type"]: d["valueString"] for d in e["resource"]["entity"][0]["detail"]}["method"]
                               for e in bundle["entry"]]
        assert subjects == {"STORESCU": ["C-STORE"], "FINDSCU": ["C-FIND"], "GETSCU": ["C-GET"]}
    finally:
        stop_server(server)
