"""Range inside multipart: a bulk data Range with a multipart Accept is answered 206 with
the range as the one part of a multipart/related body, its Content-Range a part header
(what dicomweb-client's `retrieve_bulkdata(..., byte_range=...)` sends and reads).

The bare-bytes (application/octet-stream) answers to a Range are tests/test_overflow_and_range.py's.
"""
from __future__ import annotations

import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import RGB_DEFLATED, SERIES_GREEN_RED, SOP_RED, STUDY_UID, sample
from requests_toolbelt import MultipartDecoder

RED_PIXELS = f"/v2/studies/{STUDY_UID}/series/{SERIES_GREEN_RED}/instances/{SOP_RED}/bulkdata/7FE00010"
LARGE_PRIVATE = bytes(range(256)) * 20  # 5120 bytes: served as bulk data
MULTIPART = 'multipart/related; type="application/octet-stream"'
NATIVE = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"


def _stored(client, ds) -> str:
    response = client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.data
    return f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.fixture
def value_url(client) -> str:
    """The URL of a 5120-byte private bulk data value."""
    ds = make_instance()
    ds.add_new(0x00090010, "LO", "DICOMSERVER TEST")
    ds.add_new(0x00091010, "OB", LARGE_PRIVATE)
    return _stored(client, ds) + "/bulkdata/00091010"


def _red_pixels() -> bytes:
    ds = pydicom.dcmread(sample("red-triangle.dcm"))
    return ds.PixelData[: ds.Rows * ds.Columns * 3]


def only_part(response):
    """The one part of a multipart/related answer, checked to be exactly one and sized right."""
    assert response.mimetype == "multipart/related", response.headers
    assert response.content_length == len(response.data)
    (part,) = MultipartDecoder(response.data, response.headers["Content-Type"]).parts
    return part


@pytest.mark.parametrize(
    "accept",
    [
        MULTIPART,
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
        'multipart/related; type="*/*"',  # dicomweb-client's default
        "multipart/*",
        # The most specific entry decides: the single part is refused, multipart is left.
        "application/octet-stream; q=0, */*",
        # The first acceptable entry in q order wins.
        f"{MULTIPART}, application/octet-stream; q=0.5",
    ],
)
def test_native_pixel_data_range_in_one_part(client, tutorial_study, accept):
    value = _red_pixels()
    response = client.get(RED_PIXELS, headers={"Accept": accept, "Range": "bytes=100-199"})
    assert response.status_code == 206, response.data
    assert response.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"; boundary=')
    assert "Content-Range" not in response.headers  # the body is no slice of the value
    assert response.headers["Accept-Ranges"] == "bytes"
    part = only_part(response)
    assert part.content == value[100:200]
    assert part.headers[b"Content-Type"] == NATIVE.encode()
    assert part.headers[b"Content-Range"] == f"bytes 100-199/{len(value)}".encode()


@pytest.mark.parametrize(
    "header,first,last",
    [
        ("bytes=0-0", 0, 0),
        ("bytes=-10", 5110, 5119),
        ("bytes=5000-", 5000, 5119),
        ("bytes=100-999999", 100, 5119),  # cut to the value
        ("bytes=-99999", 0, 5119),
    ],
)
def test_other_values_and_range_forms(client, value_url, header, first, last):
    response = client.get(value_url, headers={"Accept": MULTIPART, "Range": header})
    assert response.status_code == 206
    part = only_part(response)
    assert part.headers[b"Content-Type"] == b"application/octet-stream"
    assert part.headers[b"Content-Range"] == f"bytes {first}-{last}/5120".encode()
    assert part.content == LARGE_PRIVATE[first : last + 1]


@pytest.mark.parametrize("header", ["bytes=5120-", "bytes=-0", "bytes=99999-100000"])
def test_unsatisfiable_range_is_416_in_text(client, value_url, header):
    response = client.get(value_url, headers={"Accept": MULTIPART, "Range": header})
    assert response.status_code == 416
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Range"] == "bytes */5120"
    assert response.data == b"the requested range is not satisfiable: the value is 5120 bytes long\n"


@pytest.mark.parametrize("header", ["bytes=0-1,3-4", "bytes=5-2", "items=0-1", "bytes=a-"])
def test_ignored_range_is_the_whole_value_in_one_part(client, value_url, header):
    response = client.get(value_url, headers={"Accept": MULTIPART, "Range": header})
    assert response.status_code == 200
    part = only_part(response)
    assert part.content == LARGE_PRIVATE
    assert b"Content-Range" not in part.headers
    assert response.headers["Accept-Ranges"] == "bytes"  # a valid Range would be honoured


def test_if_range_and_head_ignore_the_range(client, value_url):
    headers = {"Accept": MULTIPART, "Range": "bytes=0-9"}
    conditional = client.get(value_url, headers={**headers, "If-Range": '"an-etag"'})
    assert conditional.status_code == 200 and only_part(conditional).content == LARGE_PRIVATE
    head = client.head(value_url, headers=headers)
    assert head.status_code == 200 and head.mimetype == "multipart/related"
    whole = client.get(value_url, headers={"Accept": MULTIPART})
    assert head.content_length == whole.content_length


def test_a_range_without_multipart_accept_stays_bare(client, value_url):
    """`*/*` (and no Accept) with a Range keep answering the bare bytes, as before."""
    for headers in ({"Accept": "*/*"}, {}):
        response = client.get(value_url, headers={**headers, "Range": "bytes=10-19"})
        assert response.status_code == 206 and response.data == LARGE_PRIVATE[10:20]
        assert response.headers["Content-Range"] == "bytes 10-19/5120"
    refused = client.get(value_url, headers={"Accept": f"{MULTIPART}; q=0, */*", "Range": "bytes=10-19"})
    assert refused.status_code == 206 and refused.data == LARGE_PRIVATE[10:20]


def test_encapsulated_pixel_data_ignores_the_range(client, store_file):
    """One part per frame: no single byte sequence for a range to cut, so the whole value."""
    from pydicom.encaps import generate_frames

    path = sample("SC_rgb_rle_2frame.dcm")
    store_file(path)
    ds = pydicom.dcmread(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = client.get(url + "/bulkdata/7FE00010", headers={"Accept": MULTIPART, "Range": "bytes=0-9"})
    assert response.status_code == 200
    parts = MultipartDecoder(response.data, response.headers["Content-Type"]).parts
    assert [p.content for p in parts] == list(generate_frames(ds.PixelData, number_of_frames=2))
    assert all(b"Content-Range" not in p.headers for p in parts)
    assert "Accept-Ranges" not in response.headers


def test_pixel_data_found_by_parsing_the_file(client):
    """A deflated file's Pixel Data (no recorded offsets) is cut the same way."""
    path = sample(RGB_DEFLATED)
    ds = pydicom.dcmread(path)
    response = client.post("/v2/studies", data=path.read_bytes(), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.data
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    value = ds.PixelData
    ranged = client.get(url, headers={"Accept": MULTIPART, "Range": "bytes=10-19"})
    assert ranged.status_code == 206
    part = only_part(ranged)
    assert part.content == value[10:20]
    assert part.headers[b"Content-Range"] == f"bytes 10-19/{len(value)}".encode()
    assert part.headers[b"Content-Type"] == NATIVE.encode()
    assert client.get(url, headers={"Accept": MULTIPART, "Range": "bytes=-0"}).status_code == 416
    whole = client.get(url, headers={"Accept": MULTIPART, "Range": "bytes=0-1,4-5"})
    assert whole.status_code == 200 and only_part(whole).content == value
    assert whole.headers["Accept-Ranges"] == "bytes"
