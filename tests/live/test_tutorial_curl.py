"""End-to-end: the cURL tutorial (seed 001, "DICOMweb Standard APIs with cURL"), with the real curl.

Every command is the tutorial's text, pasted as written; only its placeholders are replaced
({Service URL}, {version}, {token value}, {path-to-dicoms}) and these options are added to
observe the answer: `-sS` (no progress meter), `-D <file>` (response headers) and
`-w` (status code and Content-Type). Commands run with the working directory in a temporary
folder, so the tutorial's `--output "suppressWarnings.txt"` and `--trace-ascii "trace.txt"`
land there.

The flow runs under /v1 and then /v2 on the module's server; the steps run in file order and
depend on each other, and the flow ends with the tutorial's deletes (the fixture deletes the
study again on teardown, so a failed flow does not leak into the next one).

Typos in the tutorial, read as the request they clearly mean:
- "Retrieve metadata of all instances within a series": `/studies1.2.826...` -> `/studies/1.2.826...`
- "Delete a specific study": `curl--request` -> `curl --request`, and the truncated study UID
  `.../studies/1.2.826.0.1.3680043.8.498` (missing closing quote) -> the full study UID.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import tutorial_common
from dicom_samples import DATA_DIR, SERIES_GREEN_RED, SOP_BLUE, SOP_GREEN, SOP_RED, STUDY_UID
from requests_toolbelt.multipart.decoder import MultipartDecoder
from tutorial_common import (
    FILE_OF,
    TAG_RETRIEVE_URL,
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_UID,
    assert_instance_parts,
    assert_metadata_documents,
    assert_one_result,
    assert_stored_body,
    native_frame,
    raw,
    value,
)

pytestmark = pytest.mark.live

CURL = "/usr/bin/curl"


# --- running the tutorial's commands -------------------------------------------------------

WRITE_OUT_MARK = "\n@@curl-write-out@@"


@dataclass
class CurlResult:
    status: int
    content_type: str
    headers: str  # raw response header block(s), from -D
    body: bytes  # stdout, or the --output file when the command has one

    def json(self):
        return json.loads(self.body)


@dataclass
class Flow:
    version: str  # "1" or "2", as in the tutorial's "v{version}"
    server_url: str
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"{self.server_url}/v{self.version}"

    def curl(self, command: str) -> CurlResult:
        """Run one tutorial command: its text with the placeholders filled in, plus observers."""
        text = (
            command.replace("{Service URL}", self.server_url)
            .replace("{version}", self.version)
            .replace("{token value}", tutorial_common.TOKEN)
            .replace("{path-to-dicoms}", str(DATA_DIR))
        )
        argv = shlex.split(text)
        assert argv[0] == "curl", argv
        headers_file = self.workdir / "response-headers.txt"
        output = None
        if "--output" in argv:
            output = self.workdir / argv[argv.index("--output") + 1]
            output.unlink(missing_ok=True)
        completed = subprocess.run(
            [CURL, "-sS", "-D", str(headers_file), "-w", WRITE_OUT_MARK + "%{http_code} %{content_type}", *argv[1:]],
            cwd=self.workdir,
            capture_output=True,
            timeout=120,
        )
        assert completed.returncode == 0, f"curl failed ({completed.returncode}): {completed.stderr.decode()}"
        stdout, mark, write_out = completed.stdout.rpartition(WRITE_OUT_MARK.encode())
        assert mark, completed.stdout[-200:]
        status, _, content_type = write_out.decode().partition(" ")
        body = output.read_bytes() if output is not None else stdout
        return CurlResult(int(status), content_type, headers_file.read_text(errors="replace"), body)


@pytest.fixture(scope="module", params=["1", "2"], ids=["v1", "v2"])
def flow(request, live_server, tmp_path_factory):
    flow = Flow(request.param, live_server.url, tmp_path_factory.mktemp(f"curl-v{request.param}"))
    yield flow
    # Leave the server empty for the next flow even if a step failed half-way.
    requests.delete(f"{flow.base_url}/studies/{STUDY_UID}", headers={"Authorization": f"Bearer {tutorial_common.TOKEN}"})


@pytest.fixture(scope="module")
def live_server(token_server):
    """The tutorial sends a bearer token: replay it against a server that checks it."""
    return token_server


# --- assertions ----------------------------------------------------------------------------

def assert_stored(result: CurlResult, flow: Flow, sops: set[str]) -> dict:
    assert result.status == 200, result.body
    assert result.content_type == "application/dicom+json"
    body = result.json()
    assert_stored_body(body, flow.base_url, sops)
    return body


def assert_trace(flow: Flow, method: str, path: str) -> None:
    """--trace-ascii "trace.txt" recorded the request the tutorial sent."""
    trace = (flow.workdir / "trace.txt").read_text(errors="replace")
    assert f"{method} {path} HTTP/1.1" in trace
    # The ASCII trace breaks lines of 64 bytes ("0040: ..."): put the sent bytes back together.
    sent = "".join(line.partition(": ")[2] for line in trace.splitlines() if line[:4].isalnum() and line[4:6] == ": ")
    assert f"Authorization: Bearer {tutorial_common.TOKEN}" in sent
    assert 'Content-Type: multipart/related; type="application/dicom"' in trace


def multipart_parts(result: CurlResult):
    """Split a saved multipart/related body with the Content-Type curl reported."""
    assert result.content_type.startswith("multipart/related"), result.content_type
    return MultipartDecoder(result.body, result.content_type).parts


def assert_instances(result: CurlResult, sops: set[str]) -> None:
    assert result.status == 200, result.body[:500]
    for sop in FILE_OF:
        assert (sop.encode() in result.body) == (sop in sops), sop
    assert_instance_parts(multipart_parts(result), sops)


def assert_metadata(result: CurlResult, sops: set[str]) -> None:
    assert result.status == 200, result.body
    assert result.content_type.startswith("application/dicom+json"), result.content_type
    assert_metadata_documents(result.json(), sops)


def assert_one_match(result: CurlResult, tag: str, uid: str) -> None:
    assert result.status == 200, result.body
    assert result.content_type.startswith("application/dicom+json"), result.content_type
    assert_one_result(result.json(), tag, uid)


# --- Upload DICOM files --------------------------------------------------------------------

def test_store_instances_using_multipart_related(flow):
    # "Store instances using multipart/related"
    result = flow.curl('''
curl --location --request POST "{Service URL}/v{version}/studies"
--header "Accept: application/dicom+json"
--header "Content-Type: multipart/related; type=\\"application/dicom\\""
--header "Authorization: Bearer {token value}"
--form "file1=@{path-to-dicoms}/red-triangle.dcm;type=application/dicom"
--trace-ascii "trace.txt"
''')
    assert_stored(result, flow, {SOP_RED})
    assert_trace(flow, "POST", f"/v{flow.version}/studies")


def test_store_instances_for_a_specific_study(flow):
    # "Store instances for a specific study"
    result = flow.curl('''
curl --request POST "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: application/dicom+json"
--header "Content-Type: multipart/related; type=\\"application/dicom\\""
--header "Authorization: Bearer {token value}"
--form "file1=@{path-to-dicoms}/blue-circle.dcm;type=application/dicom"
''')
    body = assert_stored(result, flow, {SOP_BLUE})
    # POST /studies/{study} also answers the study's RetrieveURL at the top level.
    assert value(body, TAG_RETRIEVE_URL) == f"{flow.base_url}/studies/{STUDY_UID}"


def test_store_single_instance(flow):
    # "Store single instance" (non-standard: the file as the body)
    result = flow.curl('''
curl --location --request POST "{Service URL}/v{version}/studies"
--header "Accept: application/dicom+json"
--header "Content-Type: application/dicom"
--header "Authorization: Bearer {token value}"
--data-binary "@{path-to-dicoms}/green-square.dcm"
''')
    assert_stored(result, flow, {SOP_GREEN})


def test_upsert_instances_using_multipart_related(flow):
    # "Upsert instances using multipart/related": red-triangle exists, PUT replaces it -> 200
    result = flow.curl('''
curl --location --request PUT "{Service URL}/v{version}/studies"
--header "Accept: application/dicom+json"
--header "Content-Type: multipart/related; type=\\"application/dicom\\""
--header "Authorization: Bearer {token value}"
--form "file1=@{path-to-dicoms}/red-triangle.dcm;type=application/dicom"
--trace-ascii "trace.txt"
''')
    assert_stored(result, flow, {SOP_RED})
    assert_trace(flow, "PUT", f"/v{flow.version}/studies")


def test_upsert_instances_for_a_specific_study(flow):
    # "Upsert instances for a specific study": blue-circle again, under the study path -> 200
    result = flow.curl('''
curl --request PUT "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: application/dicom+json"
--header "Content-Type: multipart/related; type=\\"application/dicom\\""
--header "Authorization: Bearer {token value}"
--form "file1=@{path-to-dicoms}/blue-circle.dcm;type=application/dicom"
''')
    body = assert_stored(result, flow, {SOP_BLUE})
    assert value(body, TAG_RETRIEVE_URL) == f"{flow.base_url}/studies/{STUDY_UID}"


def test_upsert_single_instance(flow):
    # "Upsert single instance": green-square again, as the body -> 200
    result = flow.curl('''
curl --location --request PUT "{Service URL}/v{version}/studies"
--header "Accept: application/dicom+json"
--header "Content-Type: application/dicom"
--header "Authorization: Bearer {token value}"
--data-binary "@{path-to-dicoms}/green-square.dcm"
''')
    assert_stored(result, flow, {SOP_GREEN})


# --- Retrieve DICOM ------------------------------------------------------------------------

def test_retrieve_all_instances_within_a_study(flow):
    # "Retrieve all instances within a study"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: multipart/related; type=\\"application/dicom\\"; transfer-syntax=*"
--header "Authorization: Bearer {token value}"
--output "suppressWarnings.txt"
''')
    # Upserts replaced, never duplicated: still exactly three instances.
    assert_instances(result, {SOP_BLUE, SOP_GREEN, SOP_RED})


def test_retrieve_metadata_of_all_instances_in_study(flow):
    # "Retrieve metadata of all instances in study"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/metadata"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_metadata(result, {SOP_BLUE, SOP_GREEN, SOP_RED})


def test_retrieve_all_instances_within_a_series(flow):
    # "Retrieve all instances within a series"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
--header "Accept: multipart/related; type=\\"application/dicom\\"; transfer-syntax=*"
--header "Authorization: Bearer {token value}"
--output "suppressWarnings.txt"
''')
    assert_instances(result, {SOP_GREEN, SOP_RED})


def test_retrieve_metadata_of_all_instances_within_a_series(flow):
    # "Retrieve metadata of all instances within a series"
    # (tutorial typo "studies1.2.826..." read as "studies/1.2.826...")
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652/metadata"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_metadata(result, {SOP_GREEN, SOP_RED})


def test_retrieve_a_single_instance_within_a_series_of_a_study(flow):
    # "Retrieve a single instance within a series of a study"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652/instances/1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
--header "Accept: application/dicom; transfer-syntax=*"
--header "Authorization: Bearer {token value}"
--output "suppressWarnings.txt"
''')
    assert result.status == 200, result.body[:500]
    assert result.content_type.startswith("application/dicom"), result.content_type
    assert not result.content_type.startswith("application/dicom+json")
    # "returns it as a DICOM formatted stream of bytes": the file itself, not multipart.
    assert result.body == raw("red-triangle.dcm")


def test_retrieve_metadata_of_a_single_instance_within_a_series_of_a_study(flow):
    # "Retrieve metadata of a single instance within a series of a study"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652/instances/1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395/metadata"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_metadata(result, {SOP_RED})


def test_retrieve_one_or_more_frames_from_a_single_instance(flow):
    # "Retrieve one or more frames from a single instance"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652/instances/1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395/frames/1"
--header "Accept: multipart/related; type=\\"application/octet-stream\\"; transfer-syntax=1.2.840.10008.1.2.1"
--header "Authorization: Bearer {token value}"
--output "suppressWarnings.txt"
''')
    assert result.status == 200, result.body[:500]
    parts = multipart_parts(result)
    assert len(parts) == 1
    (part,) = parts
    part_type = part.headers[b"content-type"]
    assert part_type.startswith(b"application/octet-stream"), part_type
    assert b"transfer-syntax=1.2.840.10008.1.2.1" in part_type, part_type
    expected = native_frame("red-triangle.dcm")
    assert len(part.content) == len(expected)
    assert part.content == expected


# --- Query DICOM (QIDO) --------------------------------------------------------------------

def test_search_for_studies(flow):
    # "Search for studies"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies?StudyInstanceUID=1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_one_match(result, TAG_STUDY_UID, STUDY_UID)


def test_search_for_series(flow):
    # "Search for series"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/series?SeriesInstanceUID=1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_one_match(result, TAG_SERIES_UID, SERIES_GREEN_RED)


def test_search_for_series_within_a_study(flow):
    # "Search for series within a study"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series?SeriesInstanceUID=1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_one_match(result, TAG_SERIES_UID, SERIES_GREEN_RED)


def test_search_for_instances(flow):
    # "Search for instances"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/instances?SOPInstanceUID=1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_one_match(result, TAG_SOP_UID, SOP_RED)


def test_search_for_instances_within_a_study(flow):
    # "Search for instances within a study"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/instances?SOPInstanceUID=1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_one_match(result, TAG_SOP_UID, SOP_RED)


def test_search_for_instances_within_a_study_and_series(flow):
    # "Search for instances within a study and series"
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652/instances?SOPInstanceUID=1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert_one_match(result, TAG_SOP_UID, SOP_RED)


# --- Delete --------------------------------------------------------------------------------

DELETE_INSTANCE = '''
curl --request DELETE "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652/instances/1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
--header "Authorization: Bearer {token value}"
'''
DELETE_SERIES = '''
curl --request DELETE "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420/series/1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
--header "Authorization: Bearer {token value}"
'''
# Tutorial: `curl--request DELETE "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498`
# (missing space, truncated UID, no closing quote); read as the full study UID.
DELETE_STUDY = '''
curl --request DELETE "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Authorization: Bearer {token value}"
'''


def test_delete_a_specific_instance_within_a_study_and_series(flow):
    # "Delete a specific instance within a study and series": red-triangle
    result = flow.curl(DELETE_INSTANCE)
    assert result.status == 204, result.body
    assert result.body == b""


def test_delete_a_specific_series_within_a_study(flow):
    # "Delete a specific series within a study": green-square is left in it
    result = flow.curl(DELETE_SERIES)
    assert result.status == 204, result.body
    assert result.body == b""


def test_delete_a_specific_study(flow):
    # "Delete a specific study": blue-circle is left
    result = flow.curl(DELETE_STUDY)
    assert result.status == 204, result.body
    assert result.body == b""


def test_deleted_items_are_gone(flow):
    # Repeating each delete finds nothing: 404.
    for command in (DELETE_INSTANCE, DELETE_SERIES, DELETE_STUDY):
        result = flow.curl(command)
        assert result.status == 404, (command, result.status, result.body)
    # The study can be neither retrieved nor found.
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: multipart/related; type=\\"application/dicom\\"; transfer-syntax=*"
--header "Authorization: Bearer {token value}"
--output "suppressWarnings.txt"
''')
    assert result.status == 404, result.body
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies?StudyInstanceUID=1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: application/dicom+json"
--header "Authorization: Bearer {token value}"
''')
    assert result.status == 200, result.body
    assert result.json() == []


def test_upsert_stores_a_new_instance(flow):
    # Beyond the tutorial's order: "Upsert single instance" into the now empty study stores it
    # (200), a second upsert replaces it (200), and the study is deleted again.
    upsert = '''
curl --location --request PUT "{Service URL}/v{version}/studies"
--header "Accept: application/dicom+json"
--header "Content-Type: application/dicom"
--header "Authorization: Bearer {token value}"
--data-binary "@{path-to-dicoms}/green-square.dcm"
'''
    assert_stored(flow.curl(upsert), flow, {SOP_GREEN})
    assert_stored(flow.curl(upsert), flow, {SOP_GREEN})
    result = flow.curl('''
curl --request GET "{Service URL}/v{version}/studies/1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
--header "Accept: multipart/related; type=\\"application/dicom\\"; transfer-syntax=*"
--header "Authorization: Bearer {token value}"
--output "suppressWarnings.txt"
''')
    assert_instances(result, {SOP_GREEN})
    result = flow.curl(DELETE_STUDY)
    assert result.status == 204, result.body


def test_the_server_checked_the_tutorials_token(live_server):
    """The replay above ran against a server that requires the token (unless an external one)."""
    if os.environ.get("DICOMSERVER_LIVE_URL"):
        pytest.skip("an external server: its authentication is its own")
    assert requests.get(f"{live_server.url}/v2/studies", timeout=30).status_code == 401
    bad = {"Authorization": "Bearer " + tutorial_common.TOKEN[:-4] + "AAAA"}
    assert requests.get(f"{live_server.url}/v2/studies", headers=bad, timeout=30).status_code == 401
