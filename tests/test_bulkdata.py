"""BulkDataURIs in metadata, following them (ranges, multipart, single part), and metadata ETags."""
from __future__ import annotations

import base64

import dicom_samples as samples
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import SERIES_GREEN_RED, SOP_RED, STUDY_UID, sample
from pydicom.dataset import Dataset
from requests_toolbelt import MultipartDecoder

RED = f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/instances/{SOP_RED}"
LARGE_PRIVATE = bytes(range(256)) * 20  # 5120 bytes: above the 1 KiB inline threshold
SMALL_PRIVATE = b"\x07" * 10


def parts(response) -> list:
    return MultipartDecoder(response.data, response.headers["Content-Type"]).parts


def relative(uri: str) -> str:
    assert uri.startswith("http://localhost/")
    return uri[len("http://localhost"):]


@pytest.fixture
def binary_instance(client):
    icon = Dataset()
    icon.Rows, icon.Columns = 40, 50
    icon.PixelData = bytes(i % 251 for i in range(2000))
    icon["PixelData"].VR = "OB"
    ds = make_instance(IconImageSequence=[icon])
    ds.add_new(0x00091010, "OB", LARGE_PRIVATE)
    ds.add_new(0x00091011, "OB", SMALL_PRIVATE)
    ds.add_new(0x00090010, "LO", "DICOMSERVER TEST")
    response = client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.data
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    return ds, url


def test_pixel_data_uri_resolves_to_the_whole_native_value(client, tutorial_study):
    (meta,) = client.get(RED + "/metadata").json
    uri = meta["7FE00010"]["BulkDataURI"]
    assert meta["7FE00010"]["vr"] == "OB"
    assert uri == f"http://localhost{RED}/bulkdata/7FE00010"
    ds = pydicom.dcmread(sample("red-triangle.dcm"))
    expected = ds.PixelData[: ds.Rows * ds.Columns * 3]
    response = client.get(relative(uri))  # no Accept: multipart
    assert response.status_code == 200
    (part,) = parts(response)
    assert part.content == expected
    assert part.headers[b"Content-Type"] == b"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    single = client.get(relative(uri), headers={"Accept": "application/octet-stream"})
    assert single.status_code == 200 and single.data == expected
    assert single.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    ("accept", "framing"),
    [
        ("application/*", "single"),  # covers application/octet-stream, not multipart/related
        ('multipart/related; type="application/octet-stream"; q=0, */*', "single"),
        ("application/octet-stream; q=0, */*", "multipart"),
        ("application/octet-stream; q=0, multipart/*; q=0, */*", 406),
        ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1; q=0, application/*", 406),
        ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50; q=0, application/*", "single"),
    ],
)
def test_refusals_and_application_wildcard(client, tutorial_study, accept, framing):
    ds = pydicom.dcmread(sample("red-triangle.dcm"))
    value = ds.PixelData[: ds.Rows * ds.Columns * 3]
    response = client.get(RED + "/bulkdata/7FE00010", headers={"Accept": accept})
    if framing == 406:
        assert response.status_code == 406, response.data
    elif framing == "single":
        assert response.status_code == 200 and response.data == value
        assert response.headers["Content-Type"].startswith("application/octet-stream")
    else:
        (part,) = parts(response)
        assert part.content == value


def test_range_requests(client, tutorial_study):
    ds = pydicom.dcmread(sample("red-triangle.dcm"))
    value = ds.PixelData[: ds.Rows * ds.Columns * 3]
    uri = RED + "/bulkdata/7FE00010"
    ranged = client.get(uri, headers={"Accept": "application/octet-stream", "Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.data == value[100:200]
    assert ranged.headers["Content-Range"] == f"bytes 100-199/{len(value)}"
    suffix = client.get(uri, headers={"Range": "bytes=-10"})  # */* implied: single part for a range
    assert suffix.status_code == 206 and suffix.data == value[-10:]
    assert client.get(uri, headers={"Range": f"bytes={len(value) + 5}-"}).status_code == 416


def test_binary_elements_inline_or_bulk(client, binary_instance):
    _ds, url = binary_instance
    (meta,) = client.get(url + "/metadata").json
    assert base64.b64decode(meta["00091011"]["InlineBinary"]) == SMALL_PRIVATE
    large_uri = meta["00091010"]["BulkDataURI"]
    assert large_uri.endswith("/bulkdata/00091010")
    response = client.get(relative(large_uri), headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200 and response.data == LARGE_PRIVATE
    # A binary value inside a sequence item gets a path through the item.
    icon = meta["00880200"]["Value"][0]
    nested_uri = icon["7FE00010"]["BulkDataURI"]
    assert nested_uri.endswith("/bulkdata/00880200/0/7FE00010")
    (part,) = parts(client.get(relative(nested_uri), headers={"Accept": 'multipart/related; type="application/octet-stream"'}))
    assert part.content == bytes(i % 251 for i in range(2000))


def test_encapsulated_pixel_data_one_part_per_frame(client, store_file):
    from pydicom.encaps import generate_frames

    path = sample("SC_rgb_rle_2frame.dcm")
    store_file(path)
    ds = pydicom.dcmread(path)
    url = f"/v1/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    (meta,) = client.get(url + "/metadata").json
    assert meta["7FE00010"]["BulkDataURI"].startswith("http://localhost/v1/")
    response = client.get(relative(meta["7FE00010"]["BulkDataURI"]))
    assert [p.content for p in parts(response)] == list(generate_frames(ds.PixelData, number_of_frames=2))
    assert client.get(url + "/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"}).status_code == 406


@pytest.mark.parametrize(
    "name, other_bulk",
    [
        (samples.MR_IMPLICIT_WINDOWED, 0),  # 16-bit MR: only Pixel Data is bulk
        ("gdcm-US-ALOKA-16.dcm", 3),  # and three segmented palette LUTs (OW, 55-114 KB each)
    ],
)
def test_implicit_vr_offsets(client, store_file, name, other_bulk):
    path = sample(name)
    store_file(path)
    ds = pydicom.dcmread(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    (meta,) = client.get(url + "/metadata").json
    assert meta["7FE00010"]["vr"] == "OW"
    data = client.get(relative(meta["7FE00010"]["BulkDataURI"]), headers={"Accept": "application/octet-stream"}).data
    assert data == ds.PixelData
    others = [key for key, element in meta.items() if "BulkDataURI" in element and key != "7FE00010"]
    assert len(others) == other_bulk
    for key in others:  # every bulk URI resolves to the element's bytes
        got = client.get(relative(meta[key]["BulkDataURI"]), headers={"Accept": "application/octet-stream"})
        assert got.data == ds[int(key, 16)].value


def test_bulk_uris_in_qido_and_changefeed(client, binary_instance):
    ds, _ = binary_instance
    (result,) = client.get(f"/v2/instances?SOPInstanceUID={ds.SOPInstanceUID}&includefield=all").json
    assert result["00091010"]["BulkDataURI"].startswith("http://localhost/v2/studies/")
    (entry,) = client.get("/v2/changefeed").json
    assert entry["metadata"]["00091010"]["BulkDataURI"].startswith("http://localhost/v2/studies/")


def test_bad_and_unknown_paths(client, binary_instance):
    _, url = binary_instance
    assert client.get(url + "/bulkdata/xyz").status_code == 400
    assert client.get(url + "/bulkdata/../../etc").status_code in (400, 404)
    assert client.get(url + "/bulkdata/00091012").status_code == 404
    assert client.get(url + "/bulkdata/00880200/5/7FE00010").status_code == 404
    assert client.get(url + "/bulkdata/00091010", headers={"Accept": "image/jpeg"}).status_code == 406


def test_metadata_etag_and_304(client, tutorial_study):
    first = client.get(f"/v2/studies/{STUDY_UID}/metadata")
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    cached = client.get(f"/v2/studies/{STUDY_UID}/metadata", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.data == b""
    assert client.get(RED + "/metadata", headers={"If-None-Match": etag}).status_code == 200
    # Another base URL is another representation (absolute URIs): another ETag.
    assert client.get(f"/v1/studies/{STUDY_UID}/metadata").headers["ETag"] != etag
    client.delete(RED)
    changed = client.get(f"/v2/studies/{STUDY_UID}/metadata", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and len(changed.json) == 2
    assert changed.headers["ETag"] != etag
