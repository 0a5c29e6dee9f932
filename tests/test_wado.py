"""WADO-RS through the Flask test client: negotiation, bytes as stored, metadata, frames."""
from __future__ import annotations

import dicom_samples as samples
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import SERIES_BLUE, SERIES_GREEN_RED, SOP_BLUE, SOP_GREEN, SOP_RED, STUDY_UID, sample
from requests_toolbelt import MultipartDecoder

MULTI_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RED = f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/instances/{SOP_RED}"


def parts(response) -> list:
    return MultipartDecoder(response.data, response.headers["Content-Type"]).parts


def test_study_series_instance_bytes_as_stored(client, tutorial_study):
    study = client.get(f"/v2/studies/{STUDY_UID}", headers={"Accept": MULTI_ANY})
    assert study.status_code == 200
    assert study.headers["Content-Length"] == str(len(study.data))
    got = {pydicom.dcmread(__import__("io").BytesIO(p.content)).SOPInstanceUID: p for p in parts(study)}
    assert set(got) == {SOP_RED, SOP_GREEN, SOP_BLUE}
    assert got[SOP_RED].content == sample("red-triangle.dcm").read_bytes()
    assert got[SOP_RED].headers[b"Content-Type"] == b"application/dicom; transfer-syntax=1.2.840.10008.1.2.1"

    series = client.get(f"/v1/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}", headers={"Accept": MULTI_ANY})
    assert series.status_code == 200
    assert len(parts(series)) == 2

    single = client.get(RED, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.status_code == 200
    assert single.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert single.data == sample("red-triangle.dcm").read_bytes()


@pytest.mark.parametrize(
    "accept",
    [
        "*/*",
        None,
        'multipart/related; type="application/dicom"',  # default TS = Explicit VR LE = as stored
        "multipart/related; type=application/dicom",
        'multipart/related; type="application/dicom"; transfer-syntax="*"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        'application/dicom+json, multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90;q=0.9, */*;q=0.1',
    ],
)
def test_study_accept_variants(client, tutorial_study, accept):
    headers = {} if accept is None else {"Accept": accept}
    response = client.get(f"/v2/studies/{STUDY_UID}", headers=headers)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert len(parts(response)) == 3


@pytest.mark.parametrize(
    "accept",
    ["application/dicom", "application/octet-stream", "image/jpeg", 'multipart/related; type="image/jpeg"'],
)
def test_study_unacceptable_is_406(client, tutorial_study, accept):
    response = client.get(f"/v2/studies/{STUDY_UID}", headers={"Accept": accept})
    assert response.status_code == 406
    assert b"transfer-syntax" in response.data


def test_other_transfer_syntax_is_transcoded(client, tutorial_study):
    # Was a 406 before transcoding existed; tests/test_wado_transcode.py covers the matrix.
    response = client.get(RED, headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"})
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"
    got = pydicom.dcmread(__import__("io").BytesIO(response.data))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert (got.pixel_array == pydicom.dcmread(sample("red-triangle.dcm")).pixel_array).all()
    mpeg2 = client.get(RED, headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.100"})
    assert mpeg2.status_code == 406
    assert b"1.2.840.10008.1.2.4.100" in mpeg2.data and b"1.2.840.10008.1.2.1" in mpeg2.data


def test_compressed_instance_default_syntax_is_decoded_and_star_is_as_stored(client, store_file):
    path = sample(samples.J2K_LOSSLESS)
    assert store_file(path).status_code == 200
    ds = pydicom.dcmread(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    decoded = client.get(url, headers={"Accept": "application/dicom"})  # was a 406 before transcoding
    assert decoded.status_code == 200
    assert decoded.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert (pydicom.dcmread(__import__("io").BytesIO(decoded.data)).pixel_array == ds.pixel_array).all()
    ok = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert ok.status_code == 200
    assert ok.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert ok.data == path.read_bytes()


def test_instance_multipart_and_wildcard(client, tutorial_study):
    response = client.get(RED, headers={"Accept": "*/*"})
    assert response.status_code == 200
    (part,) = parts(response)
    assert part.content == sample("red-triangle.dcm").read_bytes()


@pytest.mark.parametrize(
    ("accept", "status", "content_type"),
    [
        # q=0 refuses what it names, even with a wildcard beside it (RFC 9110 §12.5.1)
        ('multipart/related; type="application/dicom"; q=0, */*', 406, None),
        ('multipart/related; type="application/dicom"; q=0, application/dicom; transfer-syntax=*', 200,
         "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
        # a refusal of one transfer syntax: the stored one is refused, the wildcard cannot be served
        ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0, */*', 406, None),
        # ... unless a more specific entry accepts it
        ('*/*; q=0, multipart/related; type="application/dicom"; transfer-syntax=*', 200,
         'multipart/related; type="application/dicom"'),
        # application/* covers application/dicom, never multipart/related
        ("application/*", 200, "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
        ("application/dicom+json; q=0, */*", 200, 'multipart/related; type="application/dicom"'),
    ],
)
def test_instance_accept_refusals_and_application_wildcard(client, tutorial_study, accept, status, content_type):
    response = client.get(RED, headers={"Accept": accept})
    assert response.status_code == status, response.data
    if content_type is not None:
        assert response.headers["Content-Type"].startswith(content_type)
        body = parts(response)[0].content if content_type.startswith("multipart/") else response.data
        assert body == sample("red-triangle.dcm").read_bytes()


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/*", 406),  # a study is only multipart/related
        ("application/dicom+json; q=0, */*", 200),  # refuses what a study is not
        ('multipart/related; type="application/*"; q=0, */*', 406),
    ],
)
def test_study_refusals(client, tutorial_study, accept, status):
    response = client.get(f"/v2/studies/{STUDY_UID}", headers={"Accept": accept})
    assert response.status_code == status, response.data


def test_metadata_refusals(client, tutorial_study):
    def status(accept: str) -> int:
        return client.get(f"/v2/studies/{STUDY_UID}/metadata", headers={"Accept": accept}).status_code

    assert status("application/dicom+json; q=0, */*") == 406
    assert status("application/json; q=0, */*") == 406
    assert status("application/dicom+json, application/json; q=0") == 200
    assert status("application/*") == 200


def test_metadata_three_levels(client, tutorial_study):
    study = client.get(f"/v2/studies/{STUDY_UID}/metadata", headers={"Accept": "application/dicom+json"})
    assert study.status_code == 200
    assert study.headers["Content-Type"] == "application/dicom+json"
    assert {m["00080018"]["Value"][0] for m in study.json} == {SOP_RED, SOP_GREEN, SOP_BLUE}
    # Pixel Data is a BulkDataURI (absolute, under the request's versioned base).
    assert {m["7FE00010"]["BulkDataURI"].split("/instances/")[0] for m in study.json} >= {
        f"http://localhost/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}"
    }
    series = client.get(f"/v1/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/metadata")
    assert len(series.json) == 2
    instance = client.get(RED + "/metadata")
    (meta,) = instance.json
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Anony Mous"}]}
    assert meta["00280010"] == {"vr": "US", "Value": [979]}
    assert client.get(RED + "/metadata", headers={"Accept": "application/dicom"}).status_code == 406


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        'multipart/related; type="application/octet-stream";',
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
        'multipart/related; type="*/*"',
        "*/*",
    ],
)
def test_native_frame_exact_length(client, tutorial_study, accept):
    response = client.get(RED + "/frames/1", headers={"Accept": accept})
    assert response.status_code == 200, response.data
    (part,) = parts(response)
    ds = pydicom.dcmread(sample("red-triangle.dcm"))
    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    assert len(part.content) == expected
    assert part.content == ds.PixelData[:expected]
    assert part.headers[b"Content-Type"] == b"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


def test_single_part_frame(client, tutorial_study):
    response = client.get(RED + "/frames/1", headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert len(response.data) == 979 * 985 * 3


def test_multiframe_list(client, store_file, tmp_path):
    ds = make_instance(rows=3, columns=5, frames=4)
    path = tmp_path / "mf.dcm"
    path.write_bytes(to_bytes(ds))
    assert store_file(path).status_code == 200
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames"
    response = client.get(url + "/1,3,4", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 200
    frames = [p.content for p in parts(response)]
    assert frames == [bytes([n, 0]) * 15 for n in (1, 3, 4)]
    assert client.get(url + "/5").status_code == 404
    assert client.get(url + "/0").status_code == 400
    assert client.get(url + "/1,x").status_code == 400
    assert client.get(url + "/1,2", headers={"Accept": "application/octet-stream"}).status_code == 400


def test_implicit_vr_frames_served_as_explicit(client, store_file):
    path = sample(samples.MR_IMPLICIT_WINDOWED)
    assert store_file(path).status_code == 202  # implicit VR: stored with WarningReason 45063
    ds = pydicom.dcmread(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"
    response = client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 200
    (part,) = parts(response)
    assert part.content == ds.PixelData[: 64 * 64 * 2]


def test_encapsulated_frame_as_stored(client, store_file):
    path = sample(samples.MONO8_JPEG_BASELINE)
    assert store_file(path).status_code == 200
    ds = pydicom.dcmread(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"
    response = client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert response.status_code == 200
    (part,) = parts(response)
    from pydicom.encaps import generate_frames

    (expected,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert part.content == expected
    assert part.headers[b"Content-Type"] == b"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    # The default transfer syntax decodes the frame (a 406 before transcoding existed).
    decoded = client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert decoded.status_code == 200
    (part,) = parts(decoded)
    assert part.headers[b"Content-Type"] == b"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert part.content == ds.pixel_array.tobytes()


def test_encapsulated_multiframe_rle(client, store_file):
    from pydicom.encaps import generate_frames

    path = sample("SC_rgb_rle_2frame.dcm")
    assert store_file(path).status_code == 200
    ds = pydicom.dcmread(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/2,1"
    response = client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert response.status_code == 200
    expected = list(generate_frames(ds.PixelData, number_of_frames=2))
    assert [p.content for p in parts(response)] == [expected[1], expected[0]]


def test_not_found_and_bad_uids(client, tutorial_study):
    assert client.get("/v2/studies/1.2.3", headers={"Accept": MULTI_ANY}).status_code == 404
    assert client.get(f"/v2/studies/{STUDY_UID}/series/1.2.3", headers={"Accept": MULTI_ANY}).status_code == 404
    assert client.get(f"/v2/studies/{STUDY_UID}/series/{SERIES_BLUE}/instances/{SOP_RED}").status_code == 404
    assert client.get("/v2/studies/1.2.3/metadata").status_code == 404
    bad = client.get("/v2/studies/1.2.x/metadata")
    assert bad.status_code == 400
    assert b"not a valid DICOM UID" in bad.data
    assert client.get("/v2/studies/..%2F..%2Fetc").status_code in (400, 404)
    assert client.get(f"/v2/studies/{STUDY_UID}/series/{SERIES_BLUE}/instances/{SOP_BLUE}/frames/abc").status_code == 400


def test_unversioned_route_names_v2(client):
    response = client.get(f"/studies/{STUDY_UID}")
    assert response.status_code == 404
    assert b"/v2/studies" in response.data
    assert client.get("/v3/studies").status_code == 404


@pytest.mark.parametrize("accept", [MULTI_ANY, "application/dicom; transfer-syntax=*"])
def test_blob_lost_from_the_store_is_an_error_status_not_a_cut_body(app, client, tutorial_study, accept):
    """Storage lost a blob the index still lists: the answer says so before any byte is sent."""
    state = app.extensions["dicomserver"]
    state.index.connect()
    (row,) = state.index.instances(STUDY_UID, SERIES_GREEN_RED, SOP_RED)
    state.store.delete(row.blob_key)
    response = client.get(RED, headers={"Accept": accept})
    assert response.status_code in (404, 500)
    assert b"missing" in response.data or b"deleted" in response.data
