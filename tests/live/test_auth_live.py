"""End-to-end: a gunicorn server that requires bearer tokens, answers CORS and keeps an audit trail.

The exchanges a deployment's operator would try first, with real tools: curl without a token,
with a reader's token on STOW, with a writer's, a CORS preflight; dicomweb-client with its
bearer-token option through a whole store/search/retrieve/delete flow; absolute URLs when
the client's Host header has no port or names a host the server does not trust; and the
audit records all this leaves, with no token in them or in the server's log.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests
from auth_fixtures import AUDIENCE, IdentityProvider
from dicom_samples import SOP_BLUE, STUDY_UID, sample
from dicomweb_client import DICOMwebClient
from live_servers import start_server, stop_server

pytestmark = pytest.mark.live

ORIGIN = "https://viewer.example"
CURL = shutil.which("curl") or "curl"


@pytest.fixture(scope="module")
def idp():
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def server(idp, tmp_path_factory):
    data = tmp_path_factory.mktemp("auth-live")
    env = {
        "DICOMWEB_AUTH_AUTHORITY": idp.issuer,
        "DICOMWEB_AUTH_AUDIENCE": AUDIENCE,
        "DICOMWEB_AUTH_ALLOW_HTTP": "1",
        "DICOMWEB_CORS_ORIGINS": ORIGIN,
        "DICOMWEB_AUDIT_LOG": str(data / "audit.jsonl"),
    }
    live = start_server(data, workers=2, threads=2, env=env)
    yield live
    stop_server(live)


def curl(*args: str) -> tuple[int, str, bytes]:
    """(status, response headers, body) of one curl call."""
    completed = subprocess.run(
        [CURL, "-sS", "-D", "-", "-o", "/dev/stderr", "-w", "\n%{http_code}", *args],
        capture_output=True, timeout=60, check=True,
    )
    headers, _, status = completed.stdout.decode(errors="replace").rpartition("\n")
    return int(status), headers, completed.stderr


def audit_records(server) -> list[dict]:
    return [json.loads(line) for line in (server.data_dir / "audit.jsonl").read_text().splitlines()]


def test_the_first_exchanges_an_operator_tries(server, idp):
    url = f"{server.url}/v2/studies"
    dicom = ["-H", "Content-Type: application/dicom", "-H", "Accept: application/dicom+json"]
    body = ["--data-binary", f"@{sample('blue-circle.dcm')}"]

    status, headers, data = curl(url)
    assert status == 401 and data == b""
    assert f'WWW-Authenticate: Bearer authorization_uri="{idp.issuer}", resource_id="{AUDIENCE}"' in headers

    reader = idp.token(roles=["globalReader"], sub="reader-1")
    status, headers, data = curl("-X", "POST", url, "-H", f"Authorization: Bearer {reader}", *dicom, *body)
    assert status == 403 and data.strip() == b"Authorization failed."

    writer = idp.token(roles=["globalWriter"], sub="writer-1")
    status, headers, data = curl("-X", "POST", url, "-H", f"Authorization: Bearer {writer}", *dicom, *body)
    assert status == 200, data
    assert json.loads(data)["00081199"]["Value"][0]["00081155"]["Value"] == [SOP_BLUE]

    status, headers, data = curl(
        "-X", "OPTIONS", url, "-H", f"Origin: {ORIGIN}", "-H", "Access-Control-Request-Method: POST",
        "-H", "Access-Control-Request-Headers: authorization, content-type",
    )
    assert status == 200
    assert f"Access-Control-Allow-Origin: {ORIGIN}" in headers
    assert "Access-Control-Allow-Methods:" in headers and "authorization" in headers.lower()

    records = audit_records(server)
    refused, forbidden, stored = records[-3:]
    assert (refused["status"], refused["subject"]) == (401, "-")
    assert (forbidden["status"], forbidden["subject"], forbidden["action"]) == (403, "reader-1", "write")
    assert (stored["status"], stored["subject"], stored["action"]) == (200, "writer-1", "write")
    text = (server.data_dir / "audit.jsonl").read_text() + server.log()
    assert reader not in text and writer not in text
    for token in (reader, writer):
        assert token.rsplit(".", 1)[1] not in text  # not even the signature


def test_dicomweb_client_with_a_bearer_token(server, idp):
    admin = idp.token(roles=["globalAdmin"], sub="pacs-admin")
    client = DICOMwebClient(url=f"{server.url}/v2", headers={"Authorization": f"Bearer {admin}"})
    import pydicom

    client.store_instances(datasets=[pydicom.dcmread(sample("red-triangle.dcm"))])
    found = client.search_for_studies(search_filters={"StudyInstanceUID": STUDY_UID})
    assert len(found) == 1
    assert client.retrieve_study_metadata(STUDY_UID)
    client.delete_study(STUDY_UID)
    assert client.search_for_studies(search_filters={"StudyInstanceUID": STUDY_UID}) == []
    anonymous = DICOMwebClient(url=f"{server.url}/v2")
    with pytest.raises(requests.HTTPError) as raised:
        anonymous.search_for_studies()
    assert raised.value.response.status_code == 401


def test_absolute_urls_keep_the_port_and_ignore_forged_hosts(server, idp):
    token = idp.token(roles=["globalAdmin"])
    port = server.url.rsplit(":", 1)[1]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/dicom",
               "Accept": "application/dicom+json"}
    data = sample("green-square.dcm").read_bytes()
    for host, expected in (("127.0.0.1", f"http://127.0.0.1:{port}"), ("evil.example", f"http://127.0.0.1:{port}")):
        response = requests.post(f"{server.url}/v2/studies", data=data, headers={**headers, "Host": host}, timeout=60)
        assert response.status_code in (200, 409), response.text
        studies = requests.get(
            f"{server.url}/v2/studies", headers={"Authorization": f"Bearer {token}", "Host": host}, timeout=60
        ).json()
        assert studies and all(s["00081190"]["Value"][0].startswith(expected + "/v2/studies/") for s in studies)
    requests.delete(f"{server.url}/v2/studies/{STUDY_UID}", headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_an_auditor_finds_the_exchanges_of_every_worker_at_audit(server, idp):
    """The index copy of the trail: records from both workers reach /audit within seconds."""
    import time

    reader = idp.token(roles=["globalReader"], sub="audit-probe")
    for _ in range(8):  # keep-alive off: the requests spread over the two workers
        requests.get(f"{server.url}/v2/studies", headers={"Authorization": f"Bearer {reader}", "Connection": "close"},
                     timeout=60)
    auditor = {"Authorization": f"Bearer {idp.token(roles=['globalAuditor'], sub='auditor-1')}"}
    deadline, events = time.monotonic() + 15, []
    while time.monotonic() < deadline:
        response = requests.get(f"{server.url}/v2/audit?subject=audit-probe", headers=auditor, timeout=60)
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/fhir+json"
        events = [entry["resource"] for entry in response.json()["entry"]]
        if len(events) == 8:
            break
        time.sleep(0.3)
    assert len(events) == 8 and {e["subtype"][0]["code"] for e in events} == {"search-type"}
    lines = {r["request_id"] for r in audit_records(server) if r["subject"] == "audit-probe"}
    stored = {next(x["what"]["identifier"]["value"] for x in e["entity"] if x["type"]["code"] == "XrequestId")
              for e in events}
    assert stored == lines  # the same requests in the JSON lines and in the index
    reader_refused = requests.get(f"{server.url}/v2/audit", headers={"Authorization": f"Bearer {reader}"}, timeout=60)
    assert reader_refused.status_code == 403


def test_a_stopping_server_stores_every_queued_audit_record(tmp_path):
    import sqlite3

    live = start_server(tmp_path / "stopping", workers=2, threads=2, env={"DICOMWEB_AUDIT_LOG": "off"})
    try:
        for _ in range(20):
            assert requests.get(f"{live.url}/v2/studies", headers={"Connection": "close"}, timeout=60).status_code == 200
    finally:
        stop_server(live)  # SIGTERM at once: the records are still queued in the workers
    assert live.process.returncode == 0
    with sqlite3.connect(tmp_path / "stopping" / "index.db") as db:
        assert db.execute("SELECT count(*) FROM audit_event WHERE route = '/v2/studies'").fetchone()[0] == 20
