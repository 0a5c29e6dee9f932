"""The DIMSE gateway (`dicomserver dimse`) on a loopback port, driven by DCMTK's tools
(echoscu, storescu, findscu, getscu, movescu; skipped where DCMTK is not installed) and by
pynetdicom clients, against one archive that a Flask app serves over DICOMweb as well:
what C-STORE stores QIDO and WADO see, and what STOW stores C-FIND finds and C-GET sends.
"""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dcmtk
import pytest
from dicom_factory import jpeg_baseline, make_instance, to_bytes, write_large_instance
from live_servers import free_port
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomserver import Settings, close_app, create_app
from dicomserver.archive import open_archive
from dicomserver.dimse import Gateway, peers, store_status
from dicomserver.ingest import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ELEMENTS_DISCARDED,
    INSTANCE_ALREADY_EXISTS,
    INVALID_DATASET,
    PROCESSING_FAILURE,
    PartResult,
)
from dicomserver.settings import ConfigError
from dicomserver.stow import NotStored

needs_dcmtk = pytest.mark.skipif(not dcmtk.AVAILABLE, reason="DCMTK (Debian package dcmtk) is not installed")
AE_TITLE = "TESTARCHIVE"


class Running:
    def __init__(self, tmp_path: Path, **settings: object):
        self.port = free_port()
        self.settings = Settings(
            blobstore_url=str(tmp_path / "blobs"),
            database_url=f"sqlite:///{tmp_path / 'index.db'}",
            dimse_ae_title=AE_TITLE,
            dimse_port=self.port,
            **settings,  # type: ignore[arg-type]
        )
        self.archive = open_archive(self.settings)
        self.gateway = Gateway(self.archive)
        self.server = self.gateway.start(block=False)
        self.app = create_app(self.settings)
        self.client = self.app.test_client()

    def stop(self) -> None:
        assert self.server is not None
        self.gateway.stop(self.server)
        close_app(self.app)
        self.archive.close()


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path)
    yield running
    running.stop()


def associate(gateway: Running, *contexts: str, title: str = "TESTSCU", **kwargs):
    ae = AE(ae_title=title)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=AE_TITLE, **kwargs)
    assert assoc.is_established
    return assoc


def write(tmp_path: Path, ds: Dataset, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(to_bytes(ds))
    return path



def wait_listening(port: int) -> None:
    """Until a server accepts connections on the loopback port (a process just started)."""
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def qido(gateway: Running, url: str) -> list[dict]:
    response = gateway.client.get("/v2" + url)
    assert response.status_code == 200, response.data
    return json.loads(response.data)


# -- pynetdicom clients --------------------------------------------------------------------


def test_echo(gateway):
    assoc = associate(gateway, Verification)
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_c_store_is_stored_as_stow_stores_and_seen_over_dicomweb(gateway):
    ds = make_instance(PatientName="Store^Scp", PatientID="DIMSE-1")
    assoc = associate(gateway, CTImageStorage)
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        # The same SOP Instance UID again: success, the archive keeps the first copy.
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    found = qido(gateway, f"/studies?StudyInstanceUID={ds.StudyInstanceUID}")
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Store^Scp"}]
    wado = gateway.client.get(
        f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert wado.status_code == 200
    assert ds.PixelData in wado.data
    # The change feed has it, as for a STOW.
    feed = json.loads(gateway.client.get("/v2/changefeed").data)
    assert [e["sopInstanceUid"] for e in feed] == [ds.SOPInstanceUID]


def test_c_store_of_an_invalid_dataset_fails_as_stow_refuses_it(gateway):
    ds = make_instance()
    del ds.StudyInstanceUID
    assoc = associate(gateway, CTImageStorage)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xA900
    assert "StudyInstanceUID" in status.ErrorComment or "0020,000D" in status.ErrorComment
    assert qido(gateway, "/studies") == []


def test_stow_then_c_find_and_c_get(gateway, tmp_path):
    study = generate_uid()
    first = make_instance(study=study, PatientName="Web^Stored", PatientID="WEB-1", Modality="MR")
    second = make_instance(study=study, PatientName="Web^Stored", PatientID="WEB-1", Modality="MR")
    other = make_instance(PatientName="Other^Patient", PatientID="WEB-2")
    for ds in (first, second, other):
        response = gateway.client.post("/v2/studies", data=to_bytes(ds), content_type="application/dicom")
        assert response.status_code == 200

    assoc = associate(gateway, StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "Web*"
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = ""
        query.NumberOfStudyRelatedInstances = ""
        answers = [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind) if i]
        assert [(a.StudyInstanceUID, a.ModalitiesInStudy, a.NumberOfStudyRelatedInstances) for a in answers] == [
            (study, "MR", 2)
        ]
        assert answers[0].RetrieveAETitle == AE_TITLE

        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        answers = [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind) if i]
        assert sorted(a.SOPInstanceUID for a in answers) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])

        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = ""
        query.PatientName = ""
        answers = [i for s, i in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind) if i]
        assert sorted(a.PatientID for a in answers) == ["WEB-1", "WEB-2"]
    finally:
        assoc.release()

    received: list[Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    assoc = get_association(gateway, on_store)
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        statuses = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert sorted(d.SOPInstanceUID for d in received) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    assert received[0].PixelData == first.PixelData


def test_c_find_with_an_invalid_value_is_refused(gateway):
    assoc = associate(gateway, StudyRootQueryRetrieveInformationModelFind)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyDate = "yesterday"
        statuses = [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    assert statuses == [0xC000]


def test_peers_limit_who_associates_and_where_c_move_sends(tmp_path):
    destination_port = free_port()
    received: list[str] = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    destination = AE(ae_title="DEST")
    destination.supported_contexts = StoragePresentationContexts
    store_scp = destination.start_server(
        ("127.0.0.1", destination_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    running = Running(tmp_path, dimse_peers=("TESTSCU@127.0.0.1", f"DEST@127.0.0.1:{destination_port}",
                                             "NOPORT@127.0.0.1"))
    try:
        ds = make_instance()
        assert running.client.post("/v2/studies", data=to_bytes(ds), content_type="application/dicom").status_code == 200

        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        refused = stranger.associate("127.0.0.1", running.port, ae_title=AE_TITLE)
        assert refused.is_rejected

        assoc = associate(running, Verification, StudyRootQueryRetrieveInformationModelMove)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = ds.StudyInstanceUID
            query.SeriesInstanceUID = ds.SeriesInstanceUID
            for unknown in ("NOPORT", "ELSEWHERE"):
                statuses = [s.Status for s, _ in assoc.send_c_move(query, unknown, StudyRootQueryRetrieveInformationModelMove)]
                assert statuses == [0xA801]
            statuses = [s.Status for s, _ in assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove)]
            assert statuses[-1] == 0x0000
        finally:
            assoc.release()
        assert received == [ds.SOPInstanceUID]
    finally:
        running.stop()
        store_scp.shutdown()


# -- DCMTK ---------------------------------------------------------------------------------


@needs_dcmtk
def test_dcmtk_echo_store_find_get_move(tmp_path):
    destination_port = free_port()
    running = Running(tmp_path / "archive", dimse_peers=(
        "ECHOSCU@127.0.0.1", "STORESCU@127.0.0.1", "FINDSCU@127.0.0.1", "GETSCU@127.0.0.1", "MOVESCU@127.0.0.1",
        f"STORESCP@127.0.0.1:{destination_port}",
    ))
    port = str(running.port)
    try:
        echo = dcmtk.run("echoscu", "-aec", AE_TITLE, "127.0.0.1", port)
        assert echo.returncode == 0, echo.stderr

        ct = get_testdata_file("CT_small.dcm")
        mr = get_testdata_file("MR_small.dcm")
        store = dcmtk.run("storescu", "-v", "-aec", AE_TITLE, "127.0.0.1", port, str(ct), str(mr))
        assert store.returncode == 0, store.stderr
        # DCMTK words it "(Success)" or "(Status: 0x0000 - Success)" depending on its version.
        assert len(re.findall(r"Received Store Response \((?:Status: 0x0000 - )?Success\)", store.stderr)) == 2, \
            store.stderr
        ct_ds, mr_ds = dcmread(ct), dcmread(mr)
        # Visible over DICOMweb.
        found = qido(running, "/studies?includefield=StudyInstanceUID")
        assert sorted(s["0020000D"]["Value"][0] for s in found) == sorted(
            [ct_ds.StudyInstanceUID, mr_ds.StudyInstanceUID]
        )

        find = dcmtk.run("findscu", "-v", "-S", "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"StudyInstanceUID={ct_ds.StudyInstanceUID}", "-k", "SeriesInstanceUID", "-k", "Modality",
                   "127.0.0.1", port)
        assert find.returncode == 0, find.stderr
        assert find.stderr.count("(Pending)") == 1, find.stderr
        assert ct_ds.SeriesInstanceUID in find.stderr
        assert "[CT]" in find.stderr
        find = dcmtk.run("findscu", "-v", "-S", "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=STUDY",
                   "-k", "StudyInstanceUID", "-k", "PatientName=*MR*", "127.0.0.1", port)
        assert find.stderr.count("(Pending)") == 1, find.stderr
        assert mr_ds.StudyInstanceUID in find.stderr

        got = tmp_path / "got"
        got.mkdir()
        get = dcmtk.run("getscu", "-aec", AE_TITLE, "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={ct_ds.StudyInstanceUID}", "127.0.0.1", port)
        assert get.returncode == 0, get.stderr
        [fetched] = list(got.iterdir())
        assert dcmread(fetched).SOPInstanceUID == ct_ds.SOPInstanceUID

        moved = tmp_path / "moved"
        moved.mkdir()
        scp = subprocess.Popen(dcmtk.command("storescp", "-aet", "STORESCP", "-od", str(moved), str(destination_port)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(destination_port)
            move = dcmtk.run("movescu", "-aec", AE_TITLE, "-aem", "STORESCP", "-S", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={mr_ds.StudyInstanceUID}", "127.0.0.1", port)
        finally:
            scp.terminate()
            scp.wait(timeout=10)
        assert move.returncode == 0, move.stderr
        [sent] = list(moved.iterdir())
        assert dcmread(sent).SOPInstanceUID == mr_ds.SOPInstanceUID
    finally:
        running.stop()


# -- statuses and settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (PartResult(), 0x0000),
        (PartResult(failure_reason=INSTANCE_ALREADY_EXISTS, comments=["exists"]), 0x0000),
        (PartResult(warning_reason=ELEMENTS_DISCARDED, comments=["PatientAge: bad"]), 0xB006),
        (PartResult(warning_reason=DATASET_DOES_NOT_MATCH_SOP_CLASS, comments=["implicit VR"]), 0xB007),
        (PartResult(failure_reason=INVALID_DATASET, comments=["no StudyInstanceUID"]), 0xA900),
        (NotStored(failure_reason=PROCESSING_FAILURE, comments=["the blob store is full"]), 0xA700),
        (PartResult(failure_reason=PROCESSING_FAILURE, comments=["?"]), 0xC000),
    ],
)
def test_stow_results_as_c_store_statuses(result, status):
    answer = store_status(result)
    assert (answer if isinstance(answer, int) else answer.Status) == status
    if not isinstance(answer, int):
        assert answer.ErrorComment == result.comments[0]


def test_dimse_settings():
    settings = Settings.from_env({
        "DICOMWEB_DIMSE_AE_TITLE": " ARCHIVE ",
        "DICOMWEB_DIMSE_PEERS": "CT1@10.0.0.5, PACS@pacs.example:104, V6@[::1]:11112",
        "DICOMWEB_DIMSE_PORT": "4242",
        "DICOMWEB_DIMSE_METRICS_PORT": "9112",
        "DICOMWEB_DIMSE_PARTITION": "ct.unit-1",
        "DICOMWEB_PARTITIONS": "1",
    })
    assert settings.dimse_ae_title == "ARCHIVE"
    assert settings.dimse_port == 4242
    assert (settings.dimse_metrics_bind, settings.dimse_metrics_port) == ("127.0.0.1", 9112)
    assert settings.dimse_partition == "ct.unit-1"
    assert Settings().dimse_metrics_port is None  # the metrics listener is off by default
    with pytest.raises(ConfigError, match=r"DICOMWEB_DIMSE_PARTITION.*DICOMWEB_PARTITIONS"):
        Settings(dimse_partition="ct.unit-1").validate()
    assert [(p.ae_title, p.host, p.port) for p in peers(settings)] == [
        ("CT1", "10.0.0.5", None), ("PACS", "pacs.example", 104), ("V6", "::1", 11112)
    ]
    for variable, value in (
        ("DICOMWEB_DIMSE_AE_TITLE", "A_TITLE_LONGER_THAN_16"),
        ("DICOMWEB_DIMSE_AE_TITLE", "BACK\\SLASH"),
        ("DICOMWEB_DIMSE_PEERS", "10.0.0.5"),
        ("DICOMWEB_DIMSE_PEERS", "CT@host:port"),
        ("DICOMWEB_DIMSE_PEERS", "@host"),
        ("DICOMWEB_DIMSE_PARTITION", "no/slash"),
        ("DICOMWEB_DIMSE_METRICS_PORT", "0"),
    ):
        with pytest.raises(ConfigError, match=variable):
            Settings.from_env({variable: value})


def test_a_silent_peer_is_disconnected_and_associations_are_bounded(tmp_path):
    running = Running(tmp_path, dimse_acse_timeout=0.5, dimse_network_timeout=0.5, dimse_max_associations=1)
    try:
        # Connects and sends nothing: the gateway closes the connection (an ARTIM/idle timeout).
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as silent:
            assert silent.recv(1024) in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # closed, or A-ABORT
        first = associate(running, Verification)
        try:
            ae = AE(ae_title="SECOND")
            ae.add_requested_context(Verification)
            second = ae.associate("127.0.0.1", running.port, ae_title=AE_TITLE)
            assert second.is_rejected
            assert first.send_c_echo().Status == 0x0000
        finally:
            first.release()
    finally:
        running.stop()


def test_a_listed_ae_title_from_another_host_is_refused(tmp_path):
    running = Running(tmp_path, dimse_peers=("TESTSCU@192.0.2.7",))
    try:
        ds = make_instance()
        assert running.client.post("/v2/studies", data=to_bytes(ds), content_type="application/dicom").status_code == 200
        assoc = associate(running, Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                          StudyRootQueryRetrieveInformationModelGet)
        try:
            assert assoc.send_c_echo().Status == 0x0124
            assert assoc.send_c_store(make_instance()).Status == 0x0124
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ds.StudyInstanceUID
            found = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
            assert [s.Status for s, _ in found] == [0x0124]
            got = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
            assert [s.Status for s, _ in got] == [0x0124]
        finally:
            assoc.release()
        assert len(qido(running, "/studies")) == 1
    finally:
        running.stop()


def test_c_store_keeps_a_compressed_transfer_syntax(gateway):
    ds = dcmread(io.BytesIO(jpeg_baseline(make_instance(bits=8, rows=16, columns=16))))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, JPEGBaseline8Bit)
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    [found] = qido(gateway, f"/instances?SOPInstanceUID={ds.SOPInstanceUID}&includefield=00020010")
    wado = gateway.client.get(
        f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert wado.status_code == 200
    assert f"transfer-syntax={JPEGBaseline8Bit}".encode() in wado.data  # the part's, as stored
    assert found["00080018"]["Value"] == [ds.SOPInstanceUID]


def test_c_get_of_a_malformed_identifier_is_refused(gateway):
    assoc = associate(gateway, StudyRootQueryRetrieveInformationModelGet)
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.SeriesInstanceUID = generate_uid()  # no StudyInstanceUID
        [(status, _)] = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert status.Status == 0xC000
    assert "StudyInstanceUID" in status.ErrorComment


def get_association(gateway, on_store, maximum_pdu_size: int | None = None) -> Any:
    """A C-GET requestor's association with the gateway: Study Root GET, and CT storage in the
    SCP role so the sub-operations come back over it to `on_store`."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate(
        "127.0.0.1", gateway.port, ae_title=AE_TITLE, ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        **({} if maximum_pdu_size is None else {"max_pdu": maximum_pdu_size}),
    )


def big_instance(tmp_path: Path) -> tuple[Dataset, Path, bytes]:
    """A 96 MiB CT instance written to a file without holding its pixel data whole."""
    path = tmp_path / "big.dcm"
    ds, frame = write_large_instance(path)
    return ds, path, frame


def test_c_store_of_a_large_instance_streams(gateway, tmp_path):
    """A 96 MiB C-STORE is received into a file and stored from it: the process's Python
    allocations (both ends: the SCU sends from the file, paced as the gateway sends) stay small."""
    import tracemalloc

    from dicomserver.dimse import StoredFile

    ds, path, frame = big_instance(tmp_path)
    assoc = associate(gateway, CTImageStorage)
    tracemalloc.start()
    try:
        status = assoc.send_c_store(StoredFile(str(path), ds.SOPClassUID, ds.SOPInstanceUID))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assoc.release()
    assert status.Status == 0x0000
    assert peak < 16 * 2**20, peak
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    last = gateway.client.get(f"{url}/frames/48", headers={"Accept": "application/octet-stream; transfer-syntax=*"})
    assert last.data == frame


def test_c_get_from_a_store_without_local_files_sends_a_temporary_copy(gateway, tmp_path, monkeypatch):
    """On a store with no local path (S3), each instance is streamed into a temporary file,
    sent from it, and the file deleted."""
    ds = make_instance()
    response = gateway.client.post("/v2/studies", data=to_bytes(ds), content_type="application/dicom")
    assert response.status_code == 200
    monkeypatch.setattr(gateway.archive.store, "local_path", lambda key: None)
    copies: list[str] = []
    copy = Gateway._copy

    def recorded(self, key):
        copies.append(copy(self, key))
        return copies[-1]

    monkeypatch.setattr(Gateway, "_copy", recorded)
    received: list[Dataset] = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    assoc = get_association(gateway, on_store)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ds.StudyInstanceUID
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert [d.SOPInstanceUID for d in received] == [ds.SOPInstanceUID]
    assert received[0].PixelData == ds.PixelData
    assert len(copies) == 1 and not Path(copies[0]).exists()


@pytest.mark.parametrize("maximum_pdu_size", [None, 0])
def test_c_get_of_a_large_instance_streams(gateway, tmp_path, maximum_pdu_size):
    """A 96 MiB instance goes out by C-GET sent from its blob's file in PDU-sized chunks (and
    comes in to the test's SCU into a file): the process's Python allocations stay small. Also
    to a peer that sets no maximum PDU length (0): the gateway's own maximum bounds its PDUs."""
    import tracemalloc

    ds, path, frame = big_instance(tmp_path)
    with path.open("rb") as file:
        response = gateway.client.post("/v2/studies", data=file, content_type="application/dicom")
    assert response.status_code == 200, response.data

    received: list[int] = []

    def on_store(event):
        received.append(event.dataset_path.stat().st_size)
        return 0x0000

    assoc = get_association(gateway, on_store, maximum_pdu_size)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.SeriesInstanceUID = ds.SeriesInstanceUID
    query.SOPInstanceUID = ds.SOPInstanceUID
    tracemalloc.start()
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assoc.release()
    assert statuses[-1] == 0x0000
    assert len(received) == 1 and received[0] > 48 * len(frame)
    assert peak < 16 * 2**20, peak


@pytest.mark.parametrize("field", ["MediaStorageSOPInstanceUID", "MediaStorageSOPClassUID"])
def test_c_store_whose_affected_uid_is_not_the_data_sets_is_refused(gateway, tmp_path, monkeypatch, field):
    """pynetdicom takes the request's Affected SOP Class/Instance UID from a file's meta
    information when it sends a file: a file whose meta says otherwise than its data set
    makes the mismatched request."""
    from pynetdicom import _config
    from pynetdicom.sop_class import MRImageStorage

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = make_instance()
    # The meta's UID changed in place, to another of the same length (pydicom writes the meta
    # from the data set's UIDs); the meta comes first, so the first occurrence is the meta's.
    uid = ds.SOPInstanceUID if field == "MediaStorageSOPInstanceUID" else ds.SOPClassUID
    other = MRImageStorage if uid == CTImageStorage else uid[:-1] + ("2" if uid[-1] == "1" else "1")
    path = tmp_path / "mismatch.dcm"
    path.write_bytes(to_bytes(ds).replace(uid.encode(), other.encode(), 1))
    written = dcmread(path)
    assert (written.file_meta.MediaStorageSOPClassUID, written.file_meta.MediaStorageSOPInstanceUID) != (
        written.SOPClassUID, written.SOPInstanceUID)
    assoc = associate(gateway, CTImageStorage, MRImageStorage)
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    if field == "MediaStorageSOPClassUID":
        assert status.Status == 0xA900
        assert "Affected SOP Class UID" in status.ErrorComment
    else:
        assert status.Status == 0xC000
        assert "Affected SOP Instance UID" in status.ErrorComment
    assert qido(gateway, "/studies") == []


# -- the audit trail and the metrics -------------------------------------------------------------


def audit_events(running: Running) -> list[dict]:
    """The gateway's audit records as the HTTP API serves them (FHIR AuditEvents), oldest first."""
    running.gateway.audit.flush()
    response = running.client.get("/v2/audit", headers={"Accept": "application/fhir+json"})
    assert response.status_code == 200, response.data
    return [entry["resource"] for entry in reversed(json.loads(response.data)["entry"])]


def described(event: dict) -> tuple:
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    study = next((e["what"]["identifier"]["value"].removeprefix("urn:oid:") for e in event["entity"][1:]), None)
    user = next((a["who"]["identifier"]["value"] for a in event["agent"] if "who" in a and "identifier" in a["who"]),
                None)
    return (details["method"], details["route"], user, event["action"], event["outcome"], event["outcomeDesc"], study)


def test_every_request_and_refusal_is_in_the_audit_trail(tmp_path):
    """C-STORE, C-FIND, C-GET, C-MOVE and a refused association are records of the same audit
    trail as HTTP requests (/audit): the calling AE title as the user, the peer's address, the
    service, its DIMSE status, the studies (C-FIND: the level and matching keys, no values)."""
    from dicomserver import metrics

    destination_port = free_port()
    destination = AE(ae_title="DEST")
    destination.supported_contexts = StoragePresentationContexts
    store_scp = destination.start_server(
        ("127.0.0.1", destination_port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    running = Running(tmp_path, audit_log=None, dimse_peers=(
        "TESTSCU@127.0.0.1", f"DEST@127.0.0.1:{destination_port}", f"NOWHERE@127.0.0.1:{free_port()}"))
    try:
        ds = make_instance(PatientID="AUDIT-1", rows=256, columns=256)
        assoc = associate(running, CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                          StudyRootQueryRetrieveInformationModelMove)
        try:
            assert assoc.send_c_store(ds).Status == 0x0000
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientID = "AUDIT-1"
            query.StudyInstanceUID = ""
            assert [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)] == [
                0xFF00, 0x0000]
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ds.StudyInstanceUID
            sent = metrics.DIMSE_BYTES.labels("sent")._value.get()
            moved = [s.Status for s, _ in assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove)]
            assert moved[-1] == 0x0000
            # The bytes sent to the destination count (an association of the gateway's own).
            assert metrics.DIMSE_BYTES.labels("sent")._value.get() - sent > len(ds.PixelData)
            # A listed destination that does not answer.
            moved = [s.Status for s, _ in assoc.send_c_move(query, "NOWHERE", StudyRootQueryRetrieveInformationModelMove)]
            assert moved == [0xA801]
        finally:
            assoc.release()
        assoc = get_association(running, lambda event: 0x0000)
        try:
            got = [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
            assert got[-1] == 0x0000
            nothing = Dataset()
            nothing.QueryRetrieveLevel = "STUDY"
            nothing.StudyInstanceUID = generate_uid()
            got = [s.Status for s, _ in assoc.send_c_get(nothing, StudyRootQueryRetrieveInformationModelGet)]
            assert got == [0x0000]
        finally:
            assoc.release()
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        assert stranger.associate("127.0.0.1", running.port, ae_title=AE_TITLE).is_rejected

        events = audit_events(running)
        study = ds.StudyInstanceUID
        assert [described(e) for e in events] == [
            ("C-STORE", "C-STORE", "TESTSCU", "C", "0", "DIMSE 0x0000", study),
            ("C-FIND", "C-FIND STUDY PatientID", "TESTSCU", "E", "0", "DIMSE 0x0000", None),
            ("C-MOVE", "C-MOVE STUDY to DEST", "TESTSCU", "R", "0", "DIMSE 0x0000", study),
            ("C-MOVE", "C-MOVE STUDY to NOWHERE", "TESTSCU", "R", "4", "DIMSE 0xA801", study),
            ("C-GET", "C-GET STUDY", "TESTSCU", "R", "0", "DIMSE 0x0000", study),
            ("C-GET", "C-GET STUDY", "TESTSCU", "R", "0", "DIMSE 0x0000", None),
            ("A-ASSOCIATE", "A-ASSOCIATE", "STRANGER", "E", "4", "DIMSE 0x0124", None),
        ]
        store = events[0]
        assert store["type"]["code"] == "110104"
        assert {"network": {"address": "127.0.0.1", "type": "2"}}.items() <= store["agent"][1].items()
        assert {d["valueString"] for d in store["entity"][1]["detail"]} == {ds.SeriesInstanceUID, ds.SOPInstanceUID}
        sizes = [next(int(d["valueString"]) for d in e["entity"][0]["detail"] if d["type"] == "bytes")
                 for e in (events[0], events[2], events[4])]
        assert sizes[0] > len(ds.PixelData) and sizes[1] == sizes[2] > len(ds.PixelData)
    finally:
        running.stop()
        store_scp.shutdown()


def test_the_gateways_metrics_listener(tmp_path):
    """DICOMWEB_DIMSE_METRICS_PORT: this process' requests by service and status class,
    STOW's instance outcomes counted once for a C-STORE, bytes, open associations; the
    scrape token applies."""
    import urllib.error
    import urllib.request

    port = free_port()
    running = Running(tmp_path, dimse_metrics_port=port, metrics_token="scrape-secret")
    listener = running.gateway.serve_metrics(running.server)

    def scrape() -> dict[str, float]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                         headers={"Authorization": "Bearer scrape-secret"})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in text.splitlines() if line and not line.startswith("#")}

    def value(series: str) -> float:
        return scrape().get(series, 0.0)

    stored = 'dicomweb_stow_instances_total{outcome="stored",reason=""}'
    stores = 'dicomweb_dimse_requests_total{command="C-STORE",status="success"}'
    before = {name: value(name) for name in (stored, stores)}
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert refused.value.code == 401
        assoc = associate(running, CTImageStorage, Verification)
        try:
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_store(make_instance()).Status == 0x0000
            during = scrape()
        finally:
            assoc.release()
        assert during["dicomweb_dimse_active_associations"] == 1
        assert during[stored] == before[stored] + 1
        assert during[stores] == before[stores] + 1
        assert during['dicomweb_dimse_requests_total{command="C-ECHO",status="success"}'] >= 1
        assert during['dicomweb_dimse_bytes_total{direction="received"}'] > 0
        assert during['dicomweb_dimse_bytes_total{direction="sent"}'] > 0
        assert during['dicomweb_dimse_associations_total{outcome="accepted"}'] >= 1
    finally:
        listener.shutdown()
        listener.server_close()
        running.stop()


# -- the C-STORE receive path ---------------------------------------------------------------------


def disk_use(*folders: Path) -> int:
    return sum(f.stat().st_size for folder in folders if folder.exists() for f in folder.rglob("*") if f.is_file())


def test_an_instance_over_the_size_limit_is_aborted_while_it_arrives(tmp_path, monkeypatch):
    """DICOMWEB_MAX_INSTANCE_BYTES is enforced as the data set arrives: past it the
    association is aborted (A-ABORT), what was received is removed, nothing is stored, and
    the disk never held much more than the limit (not the whole 16 MiB first)."""
    import tempfile
    import threading

    from dicomserver.dimse import StoredFile

    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # an older gateway changed it
    limit = 1024 * 1024
    spool = tmp_path / "spool"
    spool.mkdir()
    path = tmp_path / "big.dcm"
    ds, _ = write_large_instance(path, frames=8)
    running = Running(tmp_path, max_instance_bytes=limit, spool_dir=str(spool))
    folders = (spool, tmp_path / "blobs")
    peak = [0]
    sending = threading.Event()
    sending.set()

    def watch() -> None:
        while sending.is_set():
            peak[0] = max(peak[0], disk_use(*folders))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    try:
        assoc = associate(running, CTImageStorage)
        watcher.start()
        try:
            status = assoc.send_c_store(StoredFile(str(path), ds.SOPClassUID, ds.SOPInstanceUID))
        finally:
            sending.clear()
            watcher.join()
            assoc.release()
        assert assoc.is_aborted and "Status" not in status
        assert peak[0] < 2 * limit, peak[0]
        for _ in range(100):  # the gateway's association ends after the abort
            if not running.server.active_associations:
                break
            time.sleep(0.05)
        assert disk_use(*folders) == 0
        assert qido(running, "/studies") == []
        refusals = [e["outcomeDesc"] for e in audit_events(running) if e["outcomeDesc"].startswith("DIMSE")]
        assert refusals == ["DIMSE 0xA700"]
    finally:
        running.stop()


def test_a_c_store_is_written_to_disk_once(gateway, tmp_path):
    """The data set goes into a spool of the blob store as it arrives, and that file becomes
    the blob (renamed): not into a temporary file first and then copied into STOW's spool.
    The process' write() bytes (/proc/self/io) count the instance once."""
    from dicomserver.dimse import StoredFile

    io_stats = Path("/proc/self/io")
    if not io_stats.exists():
        pytest.skip("needs Linux' /proc/self/io")

    def written() -> int:
        return int(next(line for line in io_stats.read_text().splitlines() if line.startswith("wchar:")).split()[1])

    path = tmp_path / "big.dcm"
    ds, _ = write_large_instance(path, frames=8)
    size = path.stat().st_size
    assoc = associate(gateway, CTImageStorage)
    try:
        before = written()
        status = assoc.send_c_store(StoredFile(str(path), ds.SOPClassUID, ds.SOPInstanceUID))
        after = written()
    finally:
        assoc.release()
    assert status.Status == 0x0000
    assert size <= after - before < 1.5 * size, (after - before, size)


def test_a_c_store_cut_off_by_the_peer_leaves_no_file(gateway, tmp_path):
    """A peer whose connection ends in the middle of a data set leaves nothing in the blob
    store's spool."""
    from dicomserver.dimse import StoredFile

    path = tmp_path / "big.dcm"
    ds, _ = write_large_instance(path, frames=8)
    sent = [0]

    def cut_off_midway(event):
        sent[0] += 1
        if sent[0] == 20:
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    assoc = associate(gateway, CTImageStorage, evt_handlers=[(evt.EVT_PDU_SENT, cut_off_midway)])
    status = assoc.send_c_store(StoredFile(str(path), ds.SOPClassUID, ds.SOPInstanceUID))
    assert "Status" not in status
    for _ in range(100):
        if not gateway.server.active_associations:
            break
        time.sleep(0.05)
    assert disk_use(tmp_path / "blobs") == 0
    assert qido(gateway, "/studies") == []


def test_the_gateway_stores_into_and_queries_its_data_partition(tmp_path):
    """DICOMWEB_DIMSE_PARTITION: a C-STORE goes into that partition (created on start), C-FIND
    and C-GET see only it, and the audit records name it."""
    running = Running(tmp_path, partitions=True, dimse_partition="dimse.part")
    try:
        ds = make_instance()
        assoc = associate(running, CTImageStorage, StudyRootQueryRetrieveInformationModelFind)
        elsewhere = make_instance()
        stow = running.client.post("/v2/partitions/other/studies", data=to_bytes(elsewhere),
                                   content_type="application/dicom")
        assert stow.status_code == 200
        try:
            assert assoc.send_c_store(ds).Status == 0x0000
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            found = [i.StudyInstanceUID for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                     if i]
        finally:
            assoc.release()
        assert found == [ds.StudyInstanceUID]
        assert [s["0020000D"]["Value"][0] for s in qido(running, "/partitions/dimse.part/studies")] == [
            ds.StudyInstanceUID]
        assert qido(running, "/partitions/Microsoft.Default/studies") == []

        received: list[str] = []

        def on_store(event):
            received.append(event.dataset.SOPInstanceUID)
            return 0x0000

        assoc = get_association(running, on_store)
        try:
            for study in (ds.StudyInstanceUID, elsewhere.StudyInstanceUID):
                query = Dataset()
                query.QueryRetrieveLevel = "STUDY"
                query.StudyInstanceUID = study
                assert [s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)][-1] \
                    == 0x0000
        finally:
            assoc.release()
        assert received == [ds.SOPInstanceUID]
        store = next(e for e in audit_events(running) if e["entity"][0]["detail"][0]["valueString"] == "C-STORE")
        assert {"type": "partition", "valueString": "dimse.part"} in store["entity"][0]["detail"]
    finally:
        running.stop()
