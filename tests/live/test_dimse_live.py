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



def gateway_environment(data: Path, port: int, metrics_port: int, **settings: str) -> dict[str, str]:
    """`dicomserver dimse`'s environment: the archive under `data` (gunicorn's), its ports, `settings`."""
    environment = dict(os.environ)
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update({
        "DICOMWEB_BLOBSTORE_URL": str(data / "blobs"),
        "DICOMWEB_DATABASE_URL": f"sqlite:///{data / 'index.db'}",
        "DICOMWEB_DIMSE_AE_TITLE": AE_TITLE,
        "DICOMWEB_DIMSE_PORT": str(port),
        "DICOMWEB_DIMSE_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
        **settings,
    })
    return environment


def start_gateway(environment: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "dicomserver", "dimse"], cwd=REPO, env=environment,
                                stdout=out, stderr=subprocess.STDOUT)


def get(url: str, accept: str = "application/dicom+json") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as response:
        return response.read()


@pytest.mark.parametrize("processes", [1, 2])
def test_the_gateway_beside_gunicorn(tmp_path, processes):
    """As one process, and as a supervisor of two on one port (whose metrics listener adds
    up what its processes wrote)."""
    data = tmp_path / "archive"
    server = start_server(data, workers=1, threads=4)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "dimse.log"
    gateway = start_gateway(gateway_environment(
        data, port, metrics_port, DICOMWEB_DIMSE_PROCESSES=str(processes),
        DICOMWEB_DIMSE_PEERS="STORESCU@127.0.0.1,FINDSCU@127.0.0.1,GETSCU@127.0.0.1"), log)
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


# -- several processes (DICOMWEB_DIMSE_PROCESSES) ---------------------------------------------


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def connections_to(port: int, pid: int) -> int:
    """Established TCP connections of process `pid` whose local port is `port`."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    own = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            own += 1
    return own


def echo(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def test_several_processes_share_the_port_are_restarted_and_stop_together(tmp_path):
    """A supervisor of two: associations open at once are spread over both processes, each
    C-STORE counted once in the supervisor's metrics; a process killed is started again; a
    second gateway on the same port fails at once with a clear message; SIGTERM stops all."""
    from dicom_factory import make_instance
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    data = tmp_path / "archive"
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "dimse.log"
    environment = gateway_environment(data, port, metrics_port, DICOMWEB_DIMSE_PROCESSES="2", DICOMWEB_AUDIT_LOG="")
    gateway = start_gateway(environment, log)
    try:
        wait_listening(port, gateway, log)
        assert echo(port)
        first = children(gateway.pid)
        assert len(first) == 2, log.read_text()

        # Four associations at once: both processes take some.
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage)
        associations = []
        for _ in range(4):
            associations.append(ae.associate("127.0.0.1", port, ae_title=AE_TITLE))
            time.sleep(0.2)
        try:
            assert all(a.is_established for a in associations)
            served = {pid: connections_to(port, pid) for pid in first}
            assert sum(served.values()) == 4 and all(served.values()), served
            for assoc in associations:
                assert assoc.send_c_store(make_instance()).Status == 0x0000
        finally:
            for assoc in associations:
                assoc.release()

        # One killed: another takes its place; the gateway answers meanwhile and after.
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = children(gateway.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no process replaced {victim}: {children(gateway.pid)}\n{log.read_text()}")
        assert echo(port)
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        try:
            assert assoc.send_c_store(make_instance()).Status == 0x0000
        finally:
            assoc.release()
        # Counted once each, whichever process stored it (the killed one's counts stay).
        scrape = get(f"http://127.0.0.1:{metrics_port}/metrics", accept="text/plain").decode()
        assert 'dicomweb_dimse_requests_total{command="C-STORE",status="success"} 5.0' in scrape.splitlines(), scrape
        assert 'dicomweb_stow_instances_total{outcome="stored",reason=""} 5.0' in scrape.splitlines(), scrape

        # A second gateway on the same port: refused at once, said why.
        second = subprocess.run([sys.executable, "-m", "dicomserver", "dimse"], cwd=REPO, env=environment,
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode != 0
        assert "cannot listen" in second.stderr and "Traceback" not in second.stderr, second.stderr

        last = children(gateway.pid)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=60) == 0, log.read_text()
        assert not any(Path(f"/proc/{pid}").exists() for pid in last)
        assert "Traceback" not in log.read_text()
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
