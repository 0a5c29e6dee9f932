"""End-to-end: the Python `requests` tutorials, replayed request by request against a live server.

Sources (the tutorial texts, numbered as the project's seeds):
- 000 "Using DICOMweb Standard APIs with Python" (Medical Imaging Server for DICOM), and
  002, its Chinese translation (the very same requests): no Authorization header.
- 003 "Use DICOMweb Standard APIs with Python" (Azure Health Data Services): the same
  flow, plus a change-feed call, with `Authorization: Bearer <token>` on every request but
  the last search (exactly as the tutorial writes it).

Each flow runs under /v1 and under /v2 on the module's server. The steps below run in file
order and depend on each other, as the tutorial's cells do; the flow ends with deletes that
leave the server empty for the next flow (the fixture deletes the study again on teardown,
so one failed flow does not leak data into the next).

Each step carries the tutorial's section title as a comment and sends its request as
written: same path, query, headers, body encoding (urllib3 `encode_multipart_formdata`
relabelled multipart/related) and response decoding (requests-toolbelt `MultipartDecoder`,
pydicom).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from io import BytesIO

import pydicom
import pytest
import requests
import requests_toolbelt as tb
import tutorial_common
from dicom_samples import SERIES_GREEN_RED, SOP_BLUE, SOP_GREEN, SOP_RED, STUDY_UID
from tutorial_common import (
    FILE_OF,
    TAG_FAILED_SOP_SEQUENCE,
    TAG_FAILURE_REASON,
    TAG_REFERENCED_SOP_CLASS,
    TAG_REFERENCED_SOP_INSTANCE,
    TAG_REFERENCED_SOP_SEQUENCE,
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_UID,
    assert_instance_parts,
    assert_metadata_documents,
    assert_one_result,
    assert_stored_body,
    dataset,
    native_frame,
    raw,
    value,
)
from urllib3.filepost import choose_boundary, encode_multipart_formdata

pytestmark = pytest.mark.live

# The tutorial's variables.
study_uid = STUDY_UID  # StudyInstanceUID for all 3 examples
series_uid = SERIES_GREEN_RED  # SeriesInstanceUID for green-square and red-triangle
instance_uid = SOP_RED  # SOPInstanceUID for red-triangle

ALREADY_EXISTS = 45070  # FailureReason 0xB00E, Microsoft's "SOP instance already exists"


# --- the tutorial's helper, verbatim -------------------------------------------------------

def encode_multipart_related(fields, boundary=None):
    if boundary is None:
        boundary = choose_boundary()

    body, _ = encode_multipart_formdata(fields, boundary)
    content_type = str('multipart/related; boundary=%s' % boundary)  # noqa: UP031 - the tutorial's code, as written

    return body, content_type


# --- flows ---------------------------------------------------------------------------------

@dataclass
class Flow:
    version: str  # "v1" or "v2"
    seed: str  # "000" (also 002) or "003"
    server_url: str
    client: requests.Session = field(default_factory=requests.session)

    @property
    def base_url(self) -> str:
        return f"{self.server_url}/{self.version}"

    @property
    def auth(self) -> dict:
        """The Authorization header 003 adds to its requests (000/002 send none)."""
        return {"Authorization": f"Bearer {tutorial_common.TOKEN}"} if self.seed == "003" else {}


FLOWS = [("v1", "000"), ("v2", "000"), ("v1", "003"), ("v2", "003")]


@pytest.fixture(scope="module", params=FLOWS, ids=[f"{v}-tutorial{s}" for v, s in FLOWS])
def flow(request, live_server):
    version, seed = request.param
    # The open server for every flow: 003 itself sends no token on one of its searches, so
    # only its authentication check (test_003_verify_authentication_changefeed) meets a
    # server that requires one.
    flow = Flow(version, seed, live_server.url)
    yield flow
    # Leave the server empty for the next flow even if a step failed half-way.
    flow.client.delete(f"{flow.base_url}/studies/{study_uid}", headers=flow.auth)
    flow.client.close()


# --- helpers for assertions ----------------------------------------------------------------

def assert_dicom_json(response: requests.Response) -> None:
    assert response.headers.get("Content-Type") == "application/dicom+json", response.headers


def assert_stored(response: requests.Response, base_url: str, sops: set[str]) -> dict:
    """A 200 STOW response listing exactly `sops` in ReferencedSOPSequence, nothing failed."""
    assert response.status_code == 200, response.text
    assert_dicom_json(response)
    body = response.json()
    assert_stored_body(body, base_url, sops)
    return body


def assert_conflict(response: requests.Response, sops: set[str]) -> dict:
    """A 409 STOW response: every instance in FailedSOPSequence with 45070, nothing stored."""
    assert response.status_code == 409, response.text
    assert_dicom_json(response)
    body = response.json()
    assert TAG_REFERENCED_SOP_SEQUENCE not in body, body
    failed = body[TAG_FAILED_SOP_SEQUENCE]["Value"]
    assert sorted(value(i, TAG_REFERENCED_SOP_INSTANCE) for i in failed) == sorted(sops)
    for item in failed:
        sop = value(item, TAG_REFERENCED_SOP_INSTANCE)
        assert value(item, TAG_FAILURE_REASON) == ALREADY_EXISTS
        assert value(item, TAG_REFERENCED_SOP_CLASS) == dataset(FILE_OF[sop]).SOPClassUID
    return body


def assert_instances(response: requests.Response, sops: set[str]) -> None:
    """A 200 multipart/related of whole instances: exactly `sops`, each byte-identical to its file."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("multipart/related"), response.headers
    # "Use the retrieved instances", as the tutorial does it.
    mpd = tb.MultipartDecoder.from_response(response)
    for dcm in assert_instance_parts(mpd.parts, sops):
        assert str(dcm.PatientName) == str(dataset(FILE_OF[str(dcm.SOPInstanceUID)]).PatientName)


def assert_metadata(response: requests.Response, sops: set[str]) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/dicom+json"), response.headers
    documents = response.json()
    assert isinstance(documents, list)
    assert_metadata_documents(documents, sops)


def assert_one_match(response: requests.Response, tag: str, uid: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/dicom+json"), response.headers
    assert_one_result(response.json(), tag, uid)


# --- "Verify authentication is configured correctly" (003 only) ----------------------------

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_003_verify_authentication_changefeed(token_server, version):
    base_url = f"{token_server.url}/{version}"
    client = requests.session()
    headers = {"Authorization": f"Bearer {tutorial_common.TOKEN}"}
    url = f'{base_url}/changefeed'

    response = client.get(url, headers=headers)
    assert response.status_code == 200, f"Error! Likely not authenticated! {response.status_code} {response.text}"
    if not os.environ.get("DICOMSERVER_LIVE_URL"):  # ours checks tokens: 200 only with a good one
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer not-a-token"}).status_code == 401


# --- Upload DICOM instances (STOW) ---------------------------------------------------------

def test_store_instances_using_multipart_related(flow):
    # "Store instances using multipart/related": upload blue-circle.dcm
    rawfile = raw("blue-circle.dcm")
    files = {'file': ('dicomfile', rawfile, 'application/dicom')}

    # encode as multipart_related
    body, content_type = encode_multipart_related(fields=files)

    headers = {'Accept': 'application/dicom+json', "Content-Type": content_type, **flow.auth}

    url = f'{flow.base_url}/studies'
    response = flow.client.post(url, body, headers=headers, verify=False)
    assert_stored(response, flow.base_url, {SOP_BLUE})


def test_store_instances_for_a_specific_study(flow):
    # "Store instances for a specific study": red-triangle + green-square in one POST.
    # The code cell posts to ../studies (its "Details" say ../studies/{study}; see the next step).
    rawfile_red = raw("red-triangle.dcm")
    rawfile_green = raw("green-square.dcm")
    files = {'file_red': ('dicomfile', rawfile_red, 'application/dicom'),
             'file_green': ('dicomfile', rawfile_green, 'application/dicom')}

    # encode as multipart_related
    body, content_type = encode_multipart_related(fields=files)

    headers = {'Accept': 'application/dicom+json', "Content-Type": content_type, **flow.auth}

    url = f'{flow.base_url}/studies'
    response = flow.client.post(url, body, headers=headers, verify=False)
    assert_stored(response, flow.base_url, {SOP_RED, SOP_GREEN})


def test_store_instances_for_a_specific_study_details_path(flow):
    # "Store instances for a specific study", Details: "Path: ../studies/{study}".
    # The same two files again, now under the study path: both already exist -> 409.
    files = {'file_red': ('dicomfile', raw("red-triangle.dcm"), 'application/dicom'),
             'file_green': ('dicomfile', raw("green-square.dcm"), 'application/dicom')}
    body, content_type = encode_multipart_related(fields=files)
    headers = {'Accept': 'application/dicom+json', "Content-Type": content_type, **flow.auth}

    url = f'{flow.base_url}/studies/{study_uid}'
    response = flow.client.post(url, body, headers=headers, verify=False)
    assert_conflict(response, {SOP_RED, SOP_GREEN})


def test_store_single_instance_nonstandard(flow):
    # "Store single instance (non-standard)": upload blue-circle.dcm as application/dicom
    body = raw("blue-circle.dcm")

    headers = {'Accept': 'application/dicom+json', 'Content-Type': 'application/dicom', **flow.auth}

    url = f'{flow.base_url}/studies'
    response = flow.client.post(url, body, headers=headers, verify=False)
    # "response should be a 409 Conflict if the file was already uploaded in the above request"
    assert_conflict(response, {SOP_BLUE})


# --- Retrieve DICOM instances (WADO) -------------------------------------------------------

def test_retrieve_all_instances_within_a_study(flow):
    # "Retrieve all instances within a study" + "Use the retrieved instances"
    url = f'{flow.base_url}/studies/{study_uid}'
    headers = {'Accept': 'multipart/related; type="application/dicom"; transfer-syntax=*', **flow.auth}

    response = flow.client.get(url, headers=headers)
    # "the response should return all three instances"
    assert_instances(response, {SOP_BLUE, SOP_GREEN, SOP_RED})


def test_retrieve_metadata_of_all_instances_in_study(flow):
    # "Retrieve metadata of all instances in study"
    url = f'{flow.base_url}/studies/{study_uid}/metadata'
    headers = {'Accept': 'application/dicom+json', **flow.auth}

    response = flow.client.get(url, headers=headers)
    assert_metadata(response, {SOP_BLUE, SOP_GREEN, SOP_RED})


def test_retrieve_all_instances_within_a_series(flow):
    # "Retrieve all instances within a series"
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}'
    headers = {'Accept': 'multipart/related; type="application/dicom"; transfer-syntax=*', **flow.auth}

    response = flow.client.get(url, headers=headers)
    # "This series has two instances (green-square and red-triangle)"
    assert_instances(response, {SOP_GREEN, SOP_RED})


def test_retrieve_metadata_of_all_instances_in_series(flow):
    # "Retrieve metadata of all instances in series"
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/metadata'
    headers = {'Accept': 'application/dicom+json', **flow.auth}

    response = flow.client.get(url, headers=headers)
    assert_metadata(response, {SOP_GREEN, SOP_RED})


def test_retrieve_a_single_instance_within_a_series_of_a_study(flow):
    # "Retrieve a single instance within a series of a study"
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}'
    headers = {'Accept': 'application/dicom; transfer-syntax=*', **flow.auth}

    response = flow.client.get(url, headers=headers)
    # "This should only return the instance red-triangle"
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/dicom"), response.headers
    assert not response.headers["Content-Type"].startswith("application/dicom+json")
    assert response.content == raw("red-triangle.dcm")
    assert pydicom.dcmread(BytesIO(response.content)).SOPInstanceUID == instance_uid


def test_retrieve_metadata_of_a_single_instance_within_a_series_of_a_study(flow):
    # "Retrieve metadata of a single instance within a series of a study"
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/metadata'
    headers = {'Accept': 'application/dicom+json', **flow.auth}

    response = flow.client.get(url, headers=headers)
    assert_metadata(response, {SOP_RED})


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        'multipart/related; type="application/octet-stream";',
    ],
    ids=["explicit-vr-le", "any", "trailing-semicolon"],
)
def test_retrieve_one_or_more_frames_from_a_single_instance(flow, accept):
    # "Retrieve one or more frames from a single instance": each Accept the Details list.
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/1'
    headers = {'Accept': accept, **flow.auth}

    response = flow.client.get(url, headers=headers)
    # "This should return the only frame from the red-triangle"
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("multipart/related"), response.headers
    parts = tb.MultipartDecoder.from_response(response).parts
    assert len(parts) == 1
    (part,) = parts
    part_type = part.headers[b"content-type"]
    assert part_type.startswith(b"application/octet-stream"), part_type
    assert b"transfer-syntax=" in part_type, part_type
    expected = native_frame("red-triangle.dcm")
    assert len(part.content) == 979 * 985 * 3 == len(expected)
    assert part.content == expected


# --- Query DICOM (QIDO) --------------------------------------------------------------------

def test_search_for_studies(flow):
    # "Search for studies"
    url = f'{flow.base_url}/studies'
    headers = {'Accept': 'application/dicom+json', **flow.auth}
    params = {'StudyInstanceUID': study_uid}

    response = flow.client.get(url, headers=headers, params=params)
    # "Validate that the response includes one study and that the response code is OK."
    assert_one_match(response, TAG_STUDY_UID, study_uid)


def test_search_for_series(flow):
    # "Search for series"
    url = f'{flow.base_url}/series'
    headers = {'Accept': 'application/dicom+json', **flow.auth}
    params = {'SeriesInstanceUID': series_uid}

    response = flow.client.get(url, headers=headers, params=params)
    assert_one_match(response, TAG_SERIES_UID, series_uid)


def test_search_for_series_within_a_study(flow):
    # "Search for series within a study"
    url = f'{flow.base_url}/studies/{study_uid}/series'
    headers = {'Accept': 'application/dicom+json', **flow.auth}
    params = {'SeriesInstanceUID': series_uid}

    response = flow.client.get(url, headers=headers, params=params)
    assert_one_match(response, TAG_SERIES_UID, series_uid)


def test_search_for_instances(flow):
    # "Search for instances"
    url = f'{flow.base_url}/instances'
    headers = {'Accept': 'application/dicom+json', **flow.auth}
    params = {'SOPInstanceUID': instance_uid}

    response = flow.client.get(url, headers=headers, params=params)
    assert_one_match(response, TAG_SOP_UID, instance_uid)


def test_search_for_instances_within_a_study(flow):
    # "Search for instances within a study"
    url = f'{flow.base_url}/studies/{study_uid}/instances'
    headers = {'Accept': 'application/dicom+json', **flow.auth}
    params = {'SOPInstanceUID': instance_uid}

    response = flow.client.get(url, headers=headers, params=params)
    assert_one_match(response, TAG_SOP_UID, instance_uid)


def test_search_for_instances_within_a_study_and_series(flow):
    # "Search for instances within a study and series" (003 sends no Authorization here either)
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/instances'
    headers = {'Accept': 'application/dicom+json'}
    params = {'SOPInstanceUID': instance_uid}

    response = flow.client.get(url, headers=headers, params=params)
    assert_one_match(response, TAG_SOP_UID, instance_uid)


# --- Delete DICOM --------------------------------------------------------------------------
# "A 204 response code is returned when the deletion is successful. A 404 response code is
#  returned if the item(s) never existed or are already deleted."

def test_delete_a_specific_instance_within_a_study_and_series(flow):
    # "Delete a specific instance within a study and series": red-triangle
    headers = {**flow.auth}
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}'
    response = flow.client.delete(url, headers=headers)
    assert response.status_code == 204, response.text
    assert response.content == b""


def test_delete_a_specific_series_within_a_study(flow):
    # "Delete a specific series within a study": green-square is the only instance left in it
    headers = {**flow.auth}
    url = f'{flow.base_url}/studies/{study_uid}/series/{series_uid}'
    response = flow.client.delete(url, headers=headers)
    assert response.status_code == 204, response.text
    assert response.content == b""


def test_delete_a_specific_study(flow):
    # "Delete a specific study": blue-circle is all that is left
    headers = {**flow.auth}
    url = f'{flow.base_url}/studies/{study_uid}'
    response = flow.client.delete(url, headers=headers)
    assert response.status_code == 204, response.text
    assert response.content == b""


def test_deleted_items_are_gone(flow):
    # "... A 404 response code is returned if the item(s) ... are already deleted."
    headers = {**flow.auth}
    for url in (
        f'{flow.base_url}/studies/{study_uid}/series/{series_uid}/instances/{instance_uid}',
        f'{flow.base_url}/studies/{study_uid}/series/{series_uid}',
        f'{flow.base_url}/studies/{study_uid}',
    ):
        response = flow.client.delete(url, headers=headers)
        assert response.status_code == 404, f"DELETE {url}: {response.status_code} {response.text}"

    # Nothing of the study is retrievable or searchable any more.
    response = flow.client.get(
        f'{flow.base_url}/studies/{study_uid}',
        headers={'Accept': 'multipart/related; type="application/dicom"; transfer-syntax=*', **flow.auth},
    )
    assert response.status_code == 404, response.text
    response = flow.client.get(
        f'{flow.base_url}/studies',
        headers={'Accept': 'application/dicom+json', **flow.auth},
        params={'StudyInstanceUID': study_uid},
    )
    assert response.status_code == 200, response.text
    assert response.json() == []
