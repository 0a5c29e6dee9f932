"""STOW-RS of DICOM JSON metadata plus bulk data parts (PS3.18 §10.5): a proper Part 10 file results."""
from __future__ import annotations

import io
import json

import dicom_samples as samples
import pydicom
from dicom_factory import make_instance
from dicom_samples import sample
from pydicom.encaps import generate_frames
from requests_toolbelt import MultipartDecoder

BOUNDARY = "JSON-BULK-BOUNDARY"


def body(parts: list[tuple[dict[str, str], bytes]]) -> bytes:
    out = b""
    for headers, data in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post(client, payload: bytes, url="/v2/studies"):
    return client.post(
        url,
        data=payload,
        headers={"Content-Type": f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'},
    )


def json_part(datasets: list[dict]) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/dicom+json"}, json.dumps(datasets).encode()


def as_json_with_bulk(ds, uri_for: dict[int, str]) -> dict:
    """pydicom's DICOM JSON with the given tags turned into BulkDataURIs."""
    document = ds.to_json_dict(bulk_data_threshold=1 << 30)
    for tag, uri in uri_for.items():
        key = f"{tag:08X}"
        document[key] = {"vr": document[key]["vr"], "BulkDataURI": uri}
    return document


def retrieve(client, ds):
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    response = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert response.status_code == 200, response.data
    return pydicom.dcmread(io.BytesIO(response.data)), url


def test_native_pixel_data_and_small_bulk(client):
    ds = make_instance(rows=16, columns=8, frames=3)
    ds.add_new(0x00091010, "OB", b"\x05" * 3000)
    ds.add_new(0x00090010, "LO", "DICOMSERVER TEST")
    document = as_json_with_bulk(ds, {0x7FE00010: "http://client.example/bulk/pixels", 0x00091010: "bulk/private"})
    response = post(
        client,
        body(
            [
                json_part([document]),
                ({"Content-Type": "application/octet-stream", "Content-Location": "http://client.example/bulk/pixels"}, ds.PixelData),
                ({"Content-Type": "application/octet-stream", "Content-Location": "bulk/private"}, b"\x05" * 3000),
            ]
        ),
    )
    assert response.status_code == 200, response.data
    assert response.json["00081199"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    stored, url = retrieve(client, ds)
    assert stored.preamble == b"\x00" * 128 and stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert stored[0x00091010].value == b"\x05" * 3000
    assert stored.PatientName == ds.PatientName
    frames = client.get(url + "/frames/2", headers={"Accept": "application/octet-stream"})
    assert frames.data == ds.PixelData[16 * 8 * 2 : 2 * 16 * 8 * 2]


def test_compressed_single_frame_part(client):
    source = pydicom.dcmread(sample(samples.MONO8_JPEG_BASELINE))
    (fragment,) = list(generate_frames(source.PixelData, number_of_frames=1))
    document = as_json_with_bulk(source, {0x7FE00010: "urn:frame1"})
    response = post(
        client,
        body(
            [
                json_part([document]),
                ({"Content-Type": "image/jpeg", "Content-Location": "urn:frame1"}, fragment),
            ]
        ),
    )
    assert response.status_code == 200, response.data
    stored, url = retrieve(client, source)
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    (stored_fragment,) = list(generate_frames(stored.PixelData, number_of_frames=1))
    assert stored_fragment.rstrip(b"\x00") == fragment.rstrip(b"\x00")
    frame = client.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    (part,) = MultipartDecoder(frame.data, frame.headers["Content-Type"]).parts
    assert part.content.rstrip(b"\x00") == fragment.rstrip(b"\x00")


def test_bulk_part_before_metadata_and_two_datasets(client):
    a, b = make_instance(), make_instance()
    docs = [as_json_with_bulk(a, {0x7FE00010: "a"}), as_json_with_bulk(b, {0x7FE00010: "b"})]
    response = post(
        client,
        body(
            [
                ({"Content-Type": "application/octet-stream", "Content-Location": "a"}, a.PixelData),
                json_part(docs),
                ({"Content-Type": "application/octet-stream", "Content-Location": "b"}, b.PixelData),
            ]
        ),
    )
    assert response.status_code == 200, response.data
    assert retrieve(client, a)[0].PixelData == a.PixelData
    assert retrieve(client, b)[0].PixelData == b.PixelData


def test_missing_bulk_part_fails_that_dataset(client):
    good, missing = make_instance(), make_instance()
    docs = [as_json_with_bulk(good, {0x7FE00010: "good"}), as_json_with_bulk(missing, {0x7FE00010: "nowhere"})]
    response = post(
        client,
        body([json_part(docs), ({"Content-Type": "application/octet-stream", "Content-Location": "good"}, good.PixelData)]),
    )
    assert response.status_code == 202
    (failed,) = response.json["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [43264]
    assert failed["00081155"]["Value"] == [missing.SOPInstanceUID]
    assert "nowhere" in failed["00741048"]["Value"][0]["00000902"]["Value"][0]


def test_invalid_json_and_missing_uids(client):
    response = post(client, body([({"Content-Type": "application/dicom+json"}, b"{not json")]))
    assert response.status_code == 409
    assert response.json["00081198"]["Value"][0]["00081197"]["Value"] == [43264]
    response = post(client, body([json_part([{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "No^Uids"}]}}])]))
    assert response.status_code == 409
    comments = [c["00000902"]["Value"][0] for c in response.json["00081198"]["Value"][0]["00741048"]["Value"]]
    assert any("SOPInstanceUID" in c for c in comments)


def test_our_own_metadata_round_trips(client, store_file, tmp_path):
    """Metadata + bulk data fetched from this server, stored again under a new SOP Instance UID."""
    ds = make_instance(rows=4, columns=4)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    store_file(path)
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    (document,) = client.get(url + "/metadata").json
    pixel_uri = document["7FE00010"]["BulkDataURI"]
    pixels = client.get(pixel_uri.replace("http://localhost", ""), headers={"Accept": "application/octet-stream"}).data
    document["00080018"]["Value"] = ["1.2.3.4.5.6.7"]
    response = post(
        client,
        body([json_part([document]), ({"Content-Type": "application/octet-stream", "Content-Location": pixel_uri}, pixels)]),
    )
    assert response.status_code == 200, response.data
    copy_url = url.replace(ds.SOPInstanceUID, "1.2.3.4.5.6.7")
    copy = client.get(copy_url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert pydicom.dcmread(io.BytesIO(copy.data)).PixelData == ds.PixelData
