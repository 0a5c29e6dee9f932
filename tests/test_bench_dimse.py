"""The benchmark's DIMSE C-STORE client (bench/load.py's storescu runner) and its phase in
bench/run.py, against stand-in pynetdicom storage SCPs on loopback: every file arrives once in
the files' own transfer syntax, on one association per client; a failure status, and a server
that answers success without storing, stop the benchmark instead of counting as speed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import threading

import pytest
from dicom_factory import make_instance, to_bytes
from live_servers import free_port
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from bench import generate, load, run
from bench.load import BenchmarkError, QuietGate

needs_dcmtk = pytest.mark.skipif(not load.dcmtk_available(), reason="DCMTK (Debian package dcmtk) is not installed")


class StandInScp:
    """A storage SCP answering every C-STORE with `status`, noting what arrived and how."""

    def __init__(self, status: int = 0x0000, ae_title: str = "STANDIN") -> None:
        self.status = status
        self.ae_title = ae_title
        self.received: list[tuple[str, str, int]] = []  # (SOP Instance UID, transfer syntax, association)
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 65536
        self.dicom_port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.dicom_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.label = "stand-in SCP"

    def _store(self, event) -> int:
        with self.lock:
            self.received.append((event.request.AffectedSOPInstanceUID, str(event.context.transfer_syntax),
                                  id(event.assoc)))
        return self.status

    def instances_stored(self) -> int:
        return len({sop for sop, _, _ in self.received}) if self.status == 0 else 0

    def pids(self) -> list[int]:
        return []

    def log(self) -> str:
        return ""

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(9):
        path = tmp_path / "files" / f"{i}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(to_bytes(make_instance(rows=8, columns=8, transfer_syntax=ExplicitVRLittleEndian)))
        paths.append(path)
    return paths


@needs_dcmtk
def test_storescu_sends_every_file_once_in_its_own_syntax(files):
    scp = StandInScp()
    try:
        assert load.echo(scp.dicom_port, scp.ae_title) is None
        result = load.run_storescu(scp.dicom_port, scp.ae_title, files, concurrency=4)
    finally:
        scp.close()
    assert result.instances == 9 and result.associations == 3  # 3 files per client: 3 clients
    assert result.bytes == sum(f.stat().st_size for f in files) and result.seconds > 0
    assert len(scp.received) == 9 and scp.instances_stored() == 9
    assert {syntax for _, syntax, _ in scp.received} == {ExplicitVRLittleEndian}
    assert len({assoc for _, _, assoc in scp.received}) == 3


@needs_dcmtk
def test_a_failed_c_store_stops_the_benchmark(files):
    scp = StandInScp(status=0xA700)  # Out of Resources
    try:
        with pytest.raises(BenchmarkError, match="storescu failed"):
            load.run_storescu(scp.dicom_port, scp.ae_title, files, concurrency=2)
    finally:
        scp.close()


@needs_dcmtk
def test_no_listener_is_a_failure(files):
    port = free_port()
    assert load.echo(port, "NOBODY", timeout=1.0) is not None
    with pytest.raises(BenchmarkError, match="storescu failed"):
        load.run_storescu(port, "NOBODY", files[:1], concurrency=1)


def _args(concurrency: list[int]) -> argparse.Namespace:
    return argparse.Namespace(concurrency=concurrency, gate=QuietGate(None))


def _data(files) -> generate.DataSet:
    studies = generate.plan(len(files))
    data = generate.DataSet(files[0].parent, len(files), generate.DEFAULT_SEED, studies, 0)
    for (*_, planned), actual in zip(data.instances(), files, strict=True):
        planned.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(actual, planned)
    return data


@needs_dcmtk
def test_dimse_phase_records_each_slice_and_checks_the_count(files):
    scp = StandInScp()
    records: list[dict] = []
    try:
        run.dimse_phase(scp, "dicomserver", _data(files), _args([1, 4]), 0, records)
    finally:
        scp.close()
    assert [(r["op"], r["concurrency"], r["instances"], r["stored_after"], r["sent_after"]) for r in records] == [
        ("dimse-store", 1, 5, 5, 5), ("dimse-store", 4, 4, 9, 9)]
    assert all(r["server"] == "dicomserver" and r["instances_per_s"] > 0 for r in records)


@needs_dcmtk
def test_dimse_phase_refuses_a_server_that_answers_success_without_storing(files):
    scp = StandInScp()
    scp.instances_stored = lambda: 0  # says Success, keeps nothing
    try:
        with pytest.raises(BenchmarkError, match="holds 0 instances after 5 were sent"):
            run.dimse_phase(scp, "orthanc", _data(files), _args([1, 4]), 0, [])
    finally:
        scp.close()


def test_dcmtk_tool_skips_pynetdicom_scripts_of_the_same_name(tmp_path, monkeypatch):
    scripts, binaries = tmp_path / "venv-bin", tmp_path / "usr-bin"
    scripts.mkdir()
    binaries.mkdir()
    (scripts / "storescu").write_text("#!/usr/bin/env python\nfrom pynetdicom.apps.storescu import main\n")
    shutil.copyfile("/bin/true", binaries / "storescu")
    for f in (scripts / "storescu", binaries / "storescu"):
        os.chmod(f, 0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(scripts), str(binaries)]))
    assert load.dcmtk_tool("storescu") == str(binaries / "storescu")
    monkeypatch.setenv("PATH", str(scripts))
    assert load.dcmtk_tool("storescu") is None
