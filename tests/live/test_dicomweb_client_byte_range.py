"""End-to-end: dicomweb-client's `retrieve_bulkdata(url, byte_range=...)` against gunicorn.

The client sends `Range: bytes=first-last` with a multipart Accept and decodes the answer
as multipart/related: the range arrives as the one part of the body. Each answer is also
recorded (a response hook on the client's session) to check its status and framing.
"""
from __future__ import annotations

import io

import pydicom
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from dicomweb_client import DICOMwebClient

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def stored(live_server):
    """A 3-frame 64 x 64 16-bit native instance (24 KiB of Pixel Data), stored through the client."""
    answers: list[requests.Response] = []
    client = DICOMwebClient(live_server.url + "/v2")
    client._session.hooks["response"].append(lambda response, *_, **__: answers.append(response))
    pixel_data = bytes(i * 7 % 256 for i in range(64 * 64 * 2 * 3))  # no two neighbours alike
    ds = pydicom.dcmread(io.BytesIO(to_bytes(make_instance(rows=64, columns=64, frames=3, pixel_data=pixel_data))))
    client.store_instances([ds])  # read back from a Part 10 file: the client writes its preamble
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert metadata["7FE00010"]["vr"] == "OW" and "InlineBinary" not in metadata["7FE00010"]
    url = metadata["7FE00010"]["BulkDataURI"]
    assert url.startswith(live_server.url + "/v2/")
    yield client, answers, url, pixel_data
    client.delete_study(ds.StudyInstanceUID)


@pytest.mark.parametrize(
    "media_types",
    [None, (("application/octet-stream", "*"),), (("application/octet-stream", "1.2.840.10008.1.2.1"),)],
    ids=["default", "octet-stream-any-syntax", "octet-stream-native"],
)
@pytest.mark.parametrize("byte_range", [(0, 0), (100, 4195), (24000, 24575), (8192, 99999)])
def test_byte_range_of_pixel_data(stored, media_types, byte_range):
    client, answers, url, pixel_data = stored
    first, last = byte_range
    answers.clear()
    (part,) = client.retrieve_bulkdata(url, media_types=media_types, byte_range=byte_range)
    assert part == pixel_data[first : last + 1]
    (answer,) = answers
    assert answer.request.headers["Range"] == f"bytes={first}-{last}"
    assert answer.request.headers["Accept"].startswith("multipart/related")
    assert answer.status_code == 206
    assert answer.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    assert f"\r\nContent-Range: bytes {first}-{min(last, len(pixel_data) - 1)}/{len(pixel_data)}\r\n".encode() in answer.content


def test_without_a_range_the_whole_value(stored):
    client, answers, url, pixel_data = stored
    answers.clear()
    assert client.retrieve_bulkdata(url) == [pixel_data]
    assert answers[0].status_code == 200


def test_unsatisfiable_range_is_an_http_error(stored):
    client, _, url, pixel_data = stored
    with pytest.raises(requests.HTTPError) as raised:
        client.retrieve_bulkdata(url, byte_range=(len(pixel_data), len(pixel_data) + 10))
    assert raised.value.response.status_code == 416
    assert raised.value.response.headers["Content-Range"] == f"bytes */{len(pixel_data)}"
