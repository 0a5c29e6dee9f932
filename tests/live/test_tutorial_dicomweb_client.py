"""End-to-end: the C# DicomWebClient tutorial (seed 004), replayed with Python's dicomweb-client.

Each C# call maps to its `dicomweb_client.DICOMwebClient` counterpart:
StoreAsync -> store_instances, RetrieveStudyAsync -> retrieve_study, RetrieveFramesAsync ->
retrieve_instance_frames, QueryAsync("/studies?StudyInstanceUID=...") -> search_for_studies(
search_filters=...), DeleteInstanceAsync -> delete_instance, and so on. "Before moving on ...,
upload the green-square.dcm file using either of the preceding methods": that upload is done
with the `dicomweb_client` command-line tool, which is then used once more to search.

Every response the client receives is recorded (a requests response hook on its session), so
steps assert the HTTP status too, not only the decoded result. The samples (~2.9 MB) exceed
the client's chunk_size (1e6), so every STOW here goes out with Transfer-Encoding: chunked.

The flow runs under /v1 and then /v2 on the module's server; steps run in file order and
depend on each other; it ends with the tutorial's deletes (the fixture deletes the study again
on teardown, so a failed flow does not leak into the next one).
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests
import tutorial_common
from dicom_samples import SERIES_GREEN_RED, SOP_BLUE, SOP_GREEN, SOP_RED, STUDY_UID, sample
from dicomweb_client import DICOMwebClient
from tutorial_common import (
    FILE_OF,
    SERIES_OF,
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_UID,
    assert_metadata_documents,
    native_frame,
    value,
)
from tutorial_common import dataset as file_dataset  # the sample file, beside what the client returns

pytestmark = pytest.mark.live

CLI = Path(sys.executable).with_name("dicomweb_client")

# The tutorial's variables.
studyInstanceUid = STUDY_UID  # StudyInstanceUID for all 3 examples
seriesInstanceUid = SERIES_GREEN_RED  # SeriesInstanceUID for green-square and red-triangle
sopInstanceUid = SOP_RED  # SOPInstanceUID for red-triangle

# --- the client ----------------------------------------------------------------------------

@dataclass
class Flow:
    version: str  # "v1" or "v2"
    server_url: str
    workdir: Path
    responses: list[requests.Response] = field(default_factory=list)
    client: DICOMwebClient = field(init=False)

    def __post_init__(self) -> None:
        session = requests.Session()
        session.hooks["response"].append(self._record)
        # C#: client.HttpClient.DefaultRequestHeaders.Authorization = Bearer {token}
        self.client = DICOMwebClient(url=self.base_url, session=session, headers={"Authorization": f"Bearer {tutorial_common.TOKEN}"})

    def _record(self, response, *args, **kwargs):
        self.responses.append(response)

    @property
    def base_url(self) -> str:
        return f"{self.server_url}/{self.version}"

    @property
    def last(self) -> requests.Response:
        return self.responses[-1]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(CLI), "--url", self.base_url, "--bearer-token", tutorial_common.TOKEN, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.workdir,
        )


@pytest.fixture(scope="module", params=["v1", "v2"])
def flow(request, live_server, tmp_path_factory):
    flow = Flow(request.param, live_server.url, tmp_path_factory.mktemp(f"dicomweb-client-{request.param}"))
    yield flow
    # Leave the server empty for the next flow even if a step failed half-way.
    requests.delete(f"{flow.base_url}/studies/{STUDY_UID}", headers={"Authorization": f"Bearer {tutorial_common.TOKEN}"})


@pytest.fixture(scope="module")
def live_server(token_server):
    """The tutorial sends a bearer token: replay it against a server that checks it."""
    return token_server


# --- assertions ----------------------------------------------------------------------------

def assert_chunked_stow(response: requests.Response, url: str) -> None:
    assert response.request.method == "POST"
    assert response.request.url == url
    assert response.request.headers.get("Transfer-Encoding") == "chunked", response.request.headers
    assert response.request.headers["Authorization"] == f"Bearer {tutorial_common.TOKEN}"
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"


def assert_referenced(result: pydicom.Dataset, flow: Flow, sops: set[str]) -> None:
    assert "FailedSOPSequence" not in result, result
    items = result.ReferencedSOPSequence
    assert sorted(item.ReferencedSOPInstanceUID for item in items) == sorted(sops)
    for item in items:
        sop = item.ReferencedSOPInstanceUID
        assert item.ReferencedSOPClassUID == file_dataset(FILE_OF[sop]).SOPClassUID
        assert item.RetrieveURL == f"{flow.base_url}/studies/{STUDY_UID}/series/{SERIES_OF[sop]}/instances/{sop}"


def assert_same_instances(datasets: list[pydicom.Dataset], sops: set[str]) -> None:
    """The retrieved instances are exactly `sops`, each equal to its sample file."""
    assert sorted(str(ds.SOPInstanceUID) for ds in datasets) == sorted(sops)
    for ds in datasets:
        expected = file_dataset(FILE_OF[str(ds.SOPInstanceUID)])
        assert ds.StudyInstanceUID == STUDY_UID
        assert ds.SeriesInstanceUID == expected.SeriesInstanceUID
        assert ds.PatientName == expected.PatientName
        assert ds.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
        assert ds.PixelData == expected.PixelData


def assert_metadata(documents: list[dict], sops: set[str]) -> None:
    assert_metadata_documents(documents, sops)
    for document in documents:
        # ... and exactly one value each for the study and series UID.
        assert document[TAG_STUDY_UID]["Value"] == [STUDY_UID]
        assert document[TAG_SERIES_UID]["Value"] == [SERIES_OF[value(document, TAG_SOP_UID)]]


def assert_one_match(results: list[dict], response: requests.Response, tag: str, uid: str) -> None:
    assert response.status_code == 200
    assert len(results) == 1, results
    assert results[0][tag]["Value"] == [uid]


def assert_ok(response: requests.Response, status: int = 200) -> None:
    assert response.status_code == status, response.text
    assert response.request.headers["Authorization"] == f"Bearer {tutorial_common.TOKEN}"


# --- Store DICOM Instances (STOW) ----------------------------------------------------------

def test_store_single_instance(flow):
    # "Store single instance": client.StoreAsync(new[] { dicomFile }) with blue-circle.dcm
    dicomFile = pydicom.dcmread(sample("blue-circle.dcm"))
    response = flow.client.store_instances([dicomFile])
    assert_chunked_stow(flow.last, f"{flow.base_url}/studies")
    assert_referenced(response, flow, {SOP_BLUE})


def test_store_instances_for_a_specific_study(flow):
    # "Store instances for a specific study": client.StoreAsync(new[] { dicomFile }, study) with red-triangle.dcm
    dicomFile = pydicom.dcmread(sample("red-triangle.dcm"))
    response = flow.client.store_instances([dicomFile], study_instance_uid=studyInstanceUid)
    assert_chunked_stow(flow.last, f"{flow.base_url}/studies/{studyInstanceUid}")
    assert_referenced(response, flow, {SOP_RED})
    assert response.RetrieveURL == f"{flow.base_url}/studies/{studyInstanceUid}"


def test_upload_green_square_with_the_cli(flow):
    # "Before moving on to the next part of the tutorial, upload the green-square.dcm file
    #  using either of the preceding methods": the dicomweb_client command line, POST /studies.
    stored = flow.cli("store", "instances", str(sample("green-square.dcm")))
    assert stored.returncode == 0, stored.stderr
    # ... and search for the study with it: one study, now of three instances.
    found = flow.cli("search", "studies", "--filter", f"StudyInstanceUID={studyInstanceUid}")
    assert found.returncode == 0, found.stderr
    studies = json.loads(found.stdout)
    assert len(studies) == 1, studies
    assert studies[0][TAG_STUDY_UID]["Value"] == [studyInstanceUid]
    assert flow.client.search_for_instances(studyInstanceUid, search_filters={"SOPInstanceUID": SOP_GREEN})


# --- Retrieving DICOM instance(s) (WADO) ---------------------------------------------------

def test_retrieve_all_instances_within_a_study(flow):
    # "Retrieve all instances within a study" + "Use the retrieved instances"
    response = flow.client.retrieve_study(studyInstanceUid)
    assert_ok(flow.last)
    assert_same_instances(response, {SOP_BLUE, SOP_GREEN, SOP_RED})
    for file in response:
        expected = file_dataset(FILE_OF[str(file.SOPInstanceUID)])
        patientName = str(file.PatientName)
        studyId = file.StudyID
        seriesNumber = file.SeriesNumber
        instanceNumber = file.InstanceNumber
        assert (studyId, seriesNumber, instanceNumber) == (expected.StudyID, expected.SeriesNumber, expected.InstanceNumber)
        # file.Save($"<path_to_save>\\{patientName}{studyId}{seriesNumber}{instanceNumber}.dcm")
        path = flow.workdir / f"{patientName}{studyId}{seriesNumber}{instanceNumber}-{file.SOPInstanceUID}.dcm"
        file.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).PixelData == expected.PixelData


def test_retrieve_metadata_of_all_instances_in_study(flow):
    # "Retrieve metadata of all instances in study"
    response = flow.client.retrieve_study_metadata(studyInstanceUid)
    assert_ok(flow.last)
    assert_metadata(response, {SOP_BLUE, SOP_GREEN, SOP_RED})


def test_retrieve_all_instances_within_a_series(flow):
    # "Retrieve all instances within a series"
    response = flow.client.retrieve_series(studyInstanceUid, seriesInstanceUid)
    assert_ok(flow.last)
    assert_same_instances(response, {SOP_GREEN, SOP_RED})


def test_retrieve_metadata_of_all_instances_within_a_series(flow):
    # "Retrieve metadata of all instances within a series"
    response = flow.client.retrieve_series_metadata(studyInstanceUid, seriesInstanceUid)
    assert_ok(flow.last)
    assert_metadata(response, {SOP_GREEN, SOP_RED})


def test_retrieve_a_single_instance_within_a_series_of_a_study(flow):
    # "Retrieve a single instance within a series of a study"
    response = flow.client.retrieve_instance(studyInstanceUid, seriesInstanceUid, sopInstanceUid)
    assert_ok(flow.last)
    assert_same_instances([response], {SOP_RED})


def test_retrieve_metadata_of_a_single_instance_within_a_series_of_a_study(flow):
    # "Retrieve metadata of a single instance within a series of a study"
    response = flow.client.retrieve_instance_metadata(studyInstanceUid, seriesInstanceUid, sopInstanceUid)
    assert_ok(flow.last)
    assert_metadata([response], {SOP_RED})


def test_retrieve_one_or_more_frames_from_a_single_instance(flow):
    # "Retrieve one or more frames from a single instance": frames: new[] { 1 }
    response = flow.client.retrieve_instance_frames(
        studyInstanceUid, seriesInstanceUid, sopInstanceUid, frame_numbers=[1]
    )
    assert_ok(flow.last)
    assert flow.last.request.url.endswith(f"/instances/{sopInstanceUid}/frames/1")
    assert flow.last.request.headers["Accept"] == 'multipart/related; type="*/*"'
    assert len(response) == 1
    assert response[0] == native_frame("red-triangle.dcm")


# --- Query DICOM (QIDO) --------------------------------------------------------------------

def test_search_for_studies(flow):
    # "Search for studies": QueryAsync($"/studies?StudyInstanceUID={studyInstanceUid}")
    response = flow.client.search_for_studies(search_filters={"StudyInstanceUID": studyInstanceUid})
    assert flow.last.request.url == f"{flow.base_url}/studies?StudyInstanceUID={studyInstanceUid}"
    assert_one_match(response, flow.last, TAG_STUDY_UID, studyInstanceUid)


def test_search_for_series(flow):
    # "Search for series": QueryAsync($"/series?SeriesInstanceUID={seriesInstanceUid}")
    response = flow.client.search_for_series(search_filters={"SeriesInstanceUID": seriesInstanceUid})
    assert flow.last.request.url == f"{flow.base_url}/series?SeriesInstanceUID={seriesInstanceUid}"
    assert_one_match(response, flow.last, TAG_SERIES_UID, seriesInstanceUid)


def test_search_for_series_within_a_study(flow):
    # "Search for series within a study"
    response = flow.client.search_for_series(studyInstanceUid, search_filters={"SeriesInstanceUID": seriesInstanceUid})
    assert flow.last.request.url == (
        f"{flow.base_url}/studies/{studyInstanceUid}/series?SeriesInstanceUID={seriesInstanceUid}"
    )
    assert_one_match(response, flow.last, TAG_SERIES_UID, seriesInstanceUid)


def test_search_for_instances(flow):
    # "Search for instances"
    response = flow.client.search_for_instances(search_filters={"SOPInstanceUID": sopInstanceUid})
    assert flow.last.request.url == f"{flow.base_url}/instances?SOPInstanceUID={sopInstanceUid}"
    assert_one_match(response, flow.last, TAG_SOP_UID, sopInstanceUid)


def test_search_for_instances_within_a_study(flow):
    # "Search for instances within a study"
    response = flow.client.search_for_instances(studyInstanceUid, search_filters={"SOPInstanceUID": sopInstanceUid})
    assert flow.last.request.url == (
        f"{flow.base_url}/studies/{studyInstanceUid}/instances?SOPInstanceUID={sopInstanceUid}"
    )
    assert_one_match(response, flow.last, TAG_SOP_UID, sopInstanceUid)


def test_search_for_instances_within_a_study_and_series(flow):
    # "Search for instances within a study and series"
    # (tutorial's Details typo "/series/{series}instances" read as "/series/{series}/instances",
    #  which is what its code's query string says)
    response = flow.client.search_for_instances(
        studyInstanceUid, seriesInstanceUid, search_filters={"SOPInstanceUID": sopInstanceUid}
    )
    assert flow.last.request.url == (
        f"{flow.base_url}/studies/{studyInstanceUid}/series/{seriesInstanceUid}"
        f"/instances?SOPInstanceUID={sopInstanceUid}"
    )
    assert_one_match(response, flow.last, TAG_SOP_UID, sopInstanceUid)


# --- Delete DICOM --------------------------------------------------------------------------

def test_delete_a_specific_instance_within_a_study_and_series(flow):
    # "Delete a specific instance within a study and series": red-triangle
    sopInstanceUidRed = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
    flow.client.delete_instance(studyInstanceUid, seriesInstanceUid, sopInstanceUidRed)
    assert flow.last.request.method == "DELETE"
    assert_ok(flow.last, 204)
    assert flow.last.content == b""


def test_delete_a_specific_series_within_a_study(flow):
    # "Delete a specific series within a study": green-square is left in it
    flow.client.delete_series(studyInstanceUid, seriesInstanceUid)
    assert flow.last.request.method == "DELETE"
    assert_ok(flow.last, 204)
    assert flow.last.content == b""


def test_delete_a_specific_study(flow):
    # "Delete a specific study": blue-circle is left
    flow.client.delete_study(studyInstanceUid)
    assert flow.last.request.method == "DELETE"
    assert_ok(flow.last, 204)
    assert flow.last.content == b""


def test_deleted_items_are_gone(flow):
    # Deleting again finds nothing (404, which the client raises) ...
    for delete in (
        lambda: flow.client.delete_instance(studyInstanceUid, seriesInstanceUid, sopInstanceUid),
        lambda: flow.client.delete_series(studyInstanceUid, seriesInstanceUid),
        lambda: flow.client.delete_study(studyInstanceUid),
    ):
        with pytest.raises(requests.HTTPError) as error:
            delete()
        assert error.value.response.status_code == 404
    # ... the study is no longer retrievable ...
    with pytest.raises(requests.HTTPError) as error:
        flow.client.retrieve_study(studyInstanceUid)
    assert error.value.response.status_code == 404
    # ... nor found.
    assert flow.client.search_for_studies(search_filters={"StudyInstanceUID": studyInstanceUid}) == []
    assert flow.last.status_code == 200
