"""End-to-end: Orthanc (Debian's orthanc + orthanc-dicomweb) as a DICOMweb client of dicomserver.

Orthanc gets a DICOMweb server entry pointing at a real gunicorn, as README's "Orthanc as a
DICOMweb client" configures it (an API key sent as a bearer token through `HttpHeaders`).
Instances are uploaded into Orthanc's own store, pushed to dicomserver with Orthanc's STOW
client, searched through Orthanc's QIDO client, deleted from Orthanc and retrieved back
into it with its WADO-RS client: every copy is the original file, byte for byte. Pushing one
of them again fails Orthanc's job: dicomserver answers 409, naming the instance that exists.

The Orthanc process is the benchmark's (bench/servers.py: free ports, a throw-away storage
area, bounded start-up); only its DICOMweb server entry is added here.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicom_factory import jpeg_baseline, make_instance, to_bytes
from dicom_samples import RGB_JPEG_BASELINE, sample
from live_servers import start_server, stop_server

from bench.servers import Orthanc, free_port, render_orthanc_config

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not Orthanc.available() and os.geteuid() != 0,
        reason="Orthanc and its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) are not "
        "installed; `make test` installs them when run as root",
    ),
]

#: pydicom's test files: native, JPEG baseline, native multi-frame (10), JPEG baseline multi-frame (30).
SAMPLES = ("CT_small.dcm", RGB_JPEG_BASELINE, "emri_small.dcm", "examples_ybr_color.dcm")
#: Orthanc's jobs run on its own threads; a job that has not ended by then has hung.
JOB_DEADLINE = 60.0


class OrthancClient(Orthanc):
    """The benchmark's Orthanc, with one DICOMweb server entry: `entry` under the name "dicomserver"."""

    def __init__(self, entry: dict) -> None:
        super().__init__()
        self.entry = entry

    def prepare(self) -> None:
        assert self.workdir is not None and self.port is not None
        config = render_orthanc_config(
            storage=self.workdir / "storage", index=self.workdir / "index", http_port=self.port, dicom_port=free_port()
        )
        config["DicomWeb"]["Servers"] = {"dicomserver": self.entry}
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))


def _api_key(keys: list[dict], name: str, roles: list[str]) -> str:
    key = "dcm_" + secrets.token_urlsafe(32)
    keys.append({"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "roles": roles})
    return key


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """dicomserver (API keys on, audit records in a file) and an Orthanc pointed at it."""
    data = tmp_path_factory.mktemp("orthanc-client")
    keys: list[dict] = []
    orthanc_key = _api_key(keys, "orthanc", ["globalWriter"])
    test_key = _api_key(keys, "test", ["globalWriter"])
    (data / "keys.json").write_text(json.dumps({"keys": keys}))
    env = {"DICOMWEB_AUTH_TOKENS_FILE": str(data / "keys.json"), "DICOMWEB_AUDIT_LOG": str(data / "audit.jsonl")}
    dicomserver = start_server(data / "server", env=env)
    orthanc = OrthancClient({"Url": dicomserver.url + "/v2/", "HttpHeaders": {"Authorization": f"Bearer {orthanc_key}"}})
    try:
        orthanc.start()
    except BaseException:
        stop_server(dicomserver)
        raise
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {test_key}"
    yield dicomserver, orthanc, session, data / "audit.jsonl"
    orthanc.stop()
    stop_server(dicomserver)
    session.close()


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    """SOP Instance UID → the Part 10 file: pydicom's samples and two built here (a native
    3-frame instance, a JPEG baseline one)."""
    files = [sample(name).read_bytes() for name in SAMPLES]
    files.append(to_bytes(make_instance(rows=32, columns=32, frames=3)))
    mono8 = make_instance(rows=16, columns=16, bits=8, pixel_data=bytes(range(256)))
    files.append(jpeg_baseline(pydicom.dcmread(io.BytesIO(to_bytes(mono8)))))
    found = {pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID: f for f in files}
    assert len(found) == len(files)
    return found


def _upload(orthanc: Orthanc, data: bytes) -> str:
    """Store a file in Orthanc's own store (again, if it is there already); its Orthanc id."""
    answer = requests.post(orthanc.origin + "/instances", data=data, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["Status"] in ("Success", "AlreadyStored"), answer.text
    return answer.json()["ID"]


def _orthanc_instances(orthanc: Orthanc) -> dict[str, str]:
    """SOP Instance UID → Orthanc id of every instance in Orthanc's store."""
    found = {}
    for orthanc_id in requests.get(orthanc.origin + "/instances", timeout=30).json():
        tags = requests.get(f"{orthanc.origin}/instances/{orthanc_id}/simplified-tags", timeout=30).json()
        found[tags["SOPInstanceUID"]] = orthanc_id
    return found


@pytest.fixture(scope="module")
def pushed(servers, originals):
    """Every original uploaded into Orthanc and pushed to dicomserver by Orthanc's STOW client."""
    _, orthanc, _, _ = servers
    ids = [_upload(orthanc, data) for data in originals.values()]
    answer = requests.post(orthanc.origin + "/dicom-web/servers/dicomserver/stow", json={"Resources": ids}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert int(answer.json()["InstancesCount"]) == len(originals)
    return originals


def _retrieve_url(dicomserver, sop: str, data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return f"{dicomserver.url}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}"


def test_push_from_orthanc_stores_the_files_unchanged(servers, pushed):
    dicomserver, _, session, _ = servers
    for sop, data in pushed.items():
        answer = session.get(_retrieve_url(dicomserver, sop, data), headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.content == data, f"instance {sop} is not the file Orthanc pushed"


def test_qido_through_orthanc(servers, pushed):
    _, orthanc, _, _ = servers
    qido = orthanc.origin + "/dicom-web/servers/dicomserver/qido"
    answer = requests.post(qido, json={"Uri": "/instances", "Arguments": {"limit": "100"}}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert {_value(match, "00080018") for match in answer.json()} == set(pushed)
    ct = pydicom.dcmread(io.BytesIO(next(iter(pushed.values()))), stop_before_pixels=True)
    answer = requests.post(
        qido, json={"Uri": "/studies", "Arguments": {"PatientID": ct.PatientID, "StudyDate": ct.StudyDate}}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert [_value(match, "0020000D") for match in answer.json()] == [ct.StudyInstanceUID]


def _value(match: dict, tag: str) -> str:
    """A single value of Orthanc's rendering of a QIDO match (its "Value" is a string or a list)."""
    value = match[tag]["Value"]
    return value[0] if isinstance(value, list) else value


def test_retrieve_into_orthanc_gives_back_the_files(servers, pushed):
    _, orthanc, _, _ = servers
    for orthanc_id in requests.get(orthanc.origin + "/instances", timeout=30).json():
        assert requests.delete(f"{orthanc.origin}/instances/{orthanc_id}", timeout=30).status_code == 200
    assert _orthanc_instances(orthanc) == {}
    resources = []
    for sop, data in pushed.items():  # at study level, and one at instance level
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        resource = {"Study": ds.StudyInstanceUID}
        if not resources:
            resource |= {"Series": ds.SeriesInstanceUID, "Instance": sop}
        resources.append(resource)
    answer = requests.post(
        orthanc.origin + "/dicom-web/servers/dicomserver/retrieve", json={"Resources": resources}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    retrieved = _orthanc_instances(orthanc)
    assert set(retrieved) == set(pushed)
    for sop, orthanc_id in retrieved.items():
        copy = requests.get(f"{orthanc.origin}/instances/{orthanc_id}/file", timeout=30).content
        assert copy == pushed[sop], f"Orthanc's copy of {sop} is not the original file"


def test_duplicate_push_is_409_naming_the_instance(servers, pushed):
    dicomserver, orthanc, session, audit_log = servers
    sop, data = next(iter(pushed.items()))
    refusals = _orthanc_409s(audit_log)
    job = requests.post(
        orthanc.origin + "/dicom-web/servers/dicomserver/stow",
        json={"Resources": [_upload(orthanc, data)], "Synchronous": False},
        timeout=30,
    )
    assert job.status_code == 200, job.text
    assert _finished(orthanc, job.json()["ID"])["State"] == "Failure"
    assert "409" in orthanc.log()  # Orthanc logs the HTTP status its STOW client received
    assert _wait_for(lambda: _orthanc_409s(audit_log) == refusals + 1), "dicomserver did not answer Orthanc's push 409"

    # What dicomserver answers to that push: the same file, sent as Orthanc sends it.
    answer = session.post(
        dicomserver.url + "/v2/studies",
        data=_multipart(data),
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=orthanc-duplicate'},
        timeout=30,
    )
    assert answer.status_code == 409
    (failed,) = answer.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [45070]
    assert failed["00081155"]["Value"] == [sop]
    (comment,) = [item["00000902"]["Value"][0] for item in failed["00741048"]["Value"]]
    assert comment == f"instance {sop} already exists; use PUT to replace it"
    assert session.get(_retrieve_url(dicomserver, sop, data), headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30).content == data


def _multipart(data: bytes) -> bytes:
    return b"--orthanc-duplicate\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--orthanc-duplicate--\r\n"


def _orthanc_409s(audit_log: Path) -> int:
    """How many STOW requests of the caller "orthanc" dicomserver answered 409 (its audit trail)."""
    records = [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]
    return sum(
        1 for r in records if r["subject"] == "orthanc" and r["method"] == "POST" and r["route"] == "/v2/studies" and r["status"] == 409
    )


def _finished(orthanc: Orthanc, job_id: str) -> dict:
    """An Orthanc job once it has ended."""
    states: list[dict] = []

    def ended() -> bool:
        states.append(requests.get(f"{orthanc.origin}/jobs/{job_id}", timeout=30).json())
        return states[-1]["State"] in ("Success", "Failure")

    assert _wait_for(ended), f"Orthanc's job did not end: {states[-1]}"
    return states[-1]


def _wait_for(condition, deadline: float = JOB_DEADLINE) -> bool:
    """Poll `condition` until it holds or `deadline` seconds pass (a hang fails, not a slow machine)."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True
