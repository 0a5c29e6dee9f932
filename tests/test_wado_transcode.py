"""WADO-RS with transcoding, through the Flask test client: instances, studies, frames, 406s."""
from __future__ import annotations

import dataclasses
import io
import warnings

import dicom_samples as samples
import numpy as np
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import sample
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from requests_toolbelt import MultipartDecoder

MPEG2 = "1.2.840.10008.1.2.4.100"
OCTET = 'multipart/related; type="application/octet-stream"'


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def parts(response) -> list:
    return MultipartDecoder(response.data, response.headers["Content-Type"]).parts


def parse(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def url_of(ds: pydicom.Dataset, level: str = "instance") -> str:
    url = f"/v2/studies/{ds.StudyInstanceUID}"
    if level in ("series", "instance"):
        url += f"/series/{ds.SeriesInstanceUID}"
    if level == "instance":
        url += f"/instances/{ds.SOPInstanceUID}"
    return url


@pytest.fixture
def stored(store_file):
    """Store a sample file (path) and return its dataset."""

    def store(path) -> pydicom.Dataset:
        response = store_file(path)
        assert response.status_code in (200, 202), response.data  # 202: stored with a warning
        return pydicom.dcmread(path)

    return store


def compressed(ds: pydicom.Dataset, syntax: str) -> pydicom.Dataset:
    """ds with its pixel data compressed by pydicom itself (not by the server's code)."""
    plugin = {RLELossless: "pylibjpeg", JPEG2000Lossless: "pylibjpeg", JPEGLSLossless: "pyjpegls"}[syntax]
    ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)
    return ds


# -- whole instances --------------------------------------------------------------


@pytest.mark.parametrize(
    "target, photometric",
    [
        (ExplicitVRLittleEndian, "RGB"),  # as stored
        (ImplicitVRLittleEndian, "RGB"),
        (JPEG2000Lossless, "YBR_RCT"),
        (HTJ2KLossless, "YBR_RCT"),
        (JPEGLSLossless, "RGB"),
        (RLELossless, "RGB"),
    ],
)
def test_instance_in_each_target(client, stored, target, photometric):
    ds = stored(sample(samples.RGB_NATIVE))
    single = client.get(url_of(ds), headers={"Accept": f"application/dicom; transfer-syntax={target}"})
    assert single.status_code == 200, single.data
    assert single.headers["Content-Type"] == f"application/dicom; transfer-syntax={target}"
    assert single.headers["Content-Length"] == str(len(single.data))
    got = parse(single.data)
    assert got.file_meta.TransferSyntaxUID == target
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.PhotometricInterpretation == photometric
    assert np.array_equal(got.pixel_array, ds.pixel_array)

    multi = client.get(url_of(ds), headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={target}'})
    assert multi.status_code == 200
    (part,) = parts(multi)
    assert part.headers[b"Content-Type"] == f"application/dicom; transfer-syntax={target}".encode()
    assert np.array_equal(parse(part.content).pixel_array, ds.pixel_array)


@pytest.mark.parametrize(
    "name",
    [samples.RGB_RLE, samples.RGB_BIG_ENDIAN, samples.RGB_DEFLATED, samples.RGB_JPEG_BASELINE],
)
def test_stored_syntaxes_served_as_explicit_little_endian(client, stored, name):
    ds = stored(sample(name))
    response = client.get(url_of(ds), headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    got = parse(response.data)
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    assert len(got.PixelData) == 100 * 100 * 3
    as_stored = client.get(url_of(ds), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert as_stored.data == sample(name).read_bytes()


def test_multi_instance_study_with_mixed_syntaxes(client, store_file, tmp_path):
    """The reference server refuses this; here each instance is transcoded in turn."""
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    originals = {}
    for n, syntax in enumerate([ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless, ImplicitVRLittleEndian]):
        ds = make_instance(study=study, series=series, rows=40, columns=48, frames=2, InstanceNumber=n + 1)
        ds.PixelData = (np.arange(2 * 40 * 48, dtype=np.uint16) * (n + 7) % 4096).tobytes()
        originals[ds.SOPInstanceUID] = ds.pixel_array.copy()
        if syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        elif syntax != ExplicitVRLittleEndian:
            compressed(ds, syntax)
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(to_bytes(ds))
        assert store_file(path).status_code in (200, 202)

    response = client.get(f"/v2/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200, response.data
    assert response.headers["Content-Length"] == str(len(response.data))  # transcoded before the status line
    got = [parse(p.content) for p in parts(response)]
    assert [p.headers[b"Content-Type"] for p in parts(response)] == [b"application/dicom; transfer-syntax=1.2.840.10008.1.2.1"] * 5
    assert {g.SOPInstanceUID for g in got} == set(originals)
    for g in got:
        assert g.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(g.pixel_array, originals[g.SOPInstanceUID])

    series_j2k = client.get(
        f"/v2/studies/{study}/series/{series}",
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG2000Lossless}'},
    )
    assert series_j2k.status_code == 200
    for part in parts(series_j2k):
        g = parse(part.content)
        assert g.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert np.array_equal(g.pixel_array, originals[g.SOPInstanceUID])

    as_stored = client.get(f"/v2/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert as_stored.headers["Content-Length"] == str(len(as_stored.data))


def test_q_values_fall_back_to_what_can_be_produced(client, stored):
    ds = stored(sample(samples.RGB_RLE))
    accept = f"application/dicom; transfer-syntax={MPEG2}, application/dicom; transfer-syntax={HTJ2KLossless}; q=0.5"
    response = client.get(url_of(ds), headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == f"application/dicom; transfer-syntax={HTJ2KLossless}"


def test_impossible_target_is_406_naming_both_syntaxes(client, stored):
    ds = stored(sample(samples.RGB_RLE))
    response = client.get(url_of(ds), headers={"Accept": f"application/dicom; transfer-syntax={MPEG2}"})
    assert response.status_code == 406
    assert MPEG2.encode() in response.data and RLELossless.encode() in response.data
    assert b"transfer-syntax=*" in response.data
    study = client.get(url_of(ds, "study"), headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={MPEG2}'})
    assert study.status_code == 406


def test_too_large_to_transcode_is_406_and_star_still_works(client, app, stored):
    ds = stored(sample(samples.RGB_RLE))  # 2,006 bytes stored
    server = app.extensions["dicomserver"]
    server.settings = dataclasses.replace(server.settings, max_transcode_bytes=20_000)
    response = client.get(url_of(ds), headers={"Accept": "application/dicom"})
    assert response.status_code == 406
    assert b"too large to transcode" in response.data and b"transfer-syntax=*" in response.data
    frame = client.get(url_of(ds) + "/frames/1", headers={"Accept": OCTET})
    assert frame.status_code == 406  # one decoded frame is 30,000 bytes
    assert client.get(url_of(ds), headers={"Accept": "application/dicom; transfer-syntax=*"}).status_code == 200
    assert client.get(url_of(ds) + "/frames/1", headers={"Accept": OCTET + "; transfer-syntax=*"}).status_code == 200


def test_bit_packed_instance_cannot_be_compressed(client, store_file, tmp_path):
    ds = make_instance(rows=8, columns=8)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelData = b"\x55" * 8
    path = tmp_path / "seg.dcm"
    path.write_bytes(to_bytes(ds))
    assert store_file(path).status_code in (200, 202)
    response = client.get(url_of(ds), headers={"Accept": f"application/dicom; transfer-syntax={JPEG2000Lossless}"})
    assert response.status_code == 406
    assert b"Bits Allocated 1" in response.data


# -- frames -----------------------------------------------------------------------


def test_compressed_frames_decode_to_native_by_default(client, stored):
    ds = stored(sample("SC_rgb_rle_2frame.dcm"))
    url = url_of(ds) + "/frames/2,1"
    for accept in (OCTET, OCTET + f"; transfer-syntax={ExplicitVRLittleEndian}"):
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == 200, response.data
        got = parts(response)
        assert [p.headers[b"Content-Type"] for p in got] == [b"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"] * 2
        assert [len(p.content) for p in got] == [100 * 100 * 3] * 2
        assert [p.content for p in got] == [ds.pixel_array[1].tobytes(), ds.pixel_array[0].tobytes()]
    single = client.get(url_of(ds) + "/frames/2", headers={"Accept": "application/octet-stream"})
    assert single.status_code == 200
    assert single.headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert single.headers["Content-Length"] == str(100 * 100 * 3)
    assert single.data == ds.pixel_array[1].tobytes()


def test_jpeg_baseline_frame_decoded_to_native(client, stored):
    ds = stored(sample(samples.MONO8_JPEG_BASELINE))
    response = client.get(url_of(ds) + "/frames/1", headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200
    assert len(response.data) == 768 * 1024
    assert response.data == ds.pixel_array.tobytes()


@pytest.mark.parametrize(
    "media_type, syntax, photometric",
    [
        ("image/jp2", JPEG2000Lossless, "YBR_RCT"),
        ("image/jphc", HTJ2KLossless, "YBR_RCT"),
        ("image/jls", JPEGLSLossless, "RGB"),
        ("image/dicom-rle", RLELossless, "RGB"),
    ],
)
def test_frames_in_compressed_media_types(client, stored, media_type, syntax, photometric):
    ds = stored(sample(samples.RGB_NATIVE))
    url = url_of(ds) + "/frames/1"
    for accept in (f'multipart/related; type="{media_type}"', media_type, f"{media_type}; transfer-syntax={syntax}"):
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.data)
        if accept.startswith("multipart"):
            (part,) = parts(response)
            content_type, data = part.headers[b"Content-Type"].decode(), part.content
        else:
            content_type, data = response.headers["Content-Type"], response.data
        assert content_type == f"{media_type}; transfer-syntax={syntax}"
        if syntax in (JPEG2000Lossless, HTJ2KLossless):
            assert data.startswith(b"\xff\x4f\xff\x51")  # a J2K codestream
        # Decode the frame as a one-frame dataset of that syntax.
        frame = pydicom.dcmread(sample(samples.RGB_NATIVE))
        frame.file_meta.TransferSyntaxUID = syntax
        frame.PhotometricInterpretation = photometric
        frame.PixelData = encapsulate([data])
        assert np.array_equal(frame.pixel_array, ds.pixel_array)


def test_image_media_types_serve_matching_stored_frames_as_they_are(client, stored):
    j2k = stored(sample(samples.J2K_LOSSLESS))
    (fragment,) = generate_frames(j2k.PixelData, number_of_frames=1)
    for accept in ('multipart/related; type="image/jp2"', 'multipart/related; type="image/jp2"; transfer-syntax=*'):
        (part,) = parts(client.get(url_of(j2k) + "/frames/1", headers={"Accept": accept}))
        assert part.content == fragment
        assert part.headers[b"Content-Type"] == f"image/jp2; transfer-syntax={JPEG2000Lossless}".encode()

    jpeg = stored(sample(samples.MONO8_JPEG_BASELINE))
    (fragment,) = generate_frames(jpeg.PixelData, number_of_frames=1)
    response = client.get(url_of(jpeg) + "/frames/1", headers={"Accept": "image/jpeg"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert response.data == fragment


def test_image_media_types_that_cannot_be_produced_are_406(client, stored):
    ds = stored(sample(samples.RGB_NATIVE))
    url = url_of(ds) + "/frames/1"
    # No JPEG encoder (lossy encoding is never done); '*' would label native data image/jp2.
    for accept in ("image/jpeg", 'multipart/related; type="image/jp2"; transfer-syntax=*', "image/jpx"):
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == 406, accept
        assert b"1.2.840.10008.1.2.1" in response.data
    # image/jp2 with a JPEG syntax is a contradiction: no acceptable entry at all.
    contradiction = client.get(url, headers={"Accept": "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert contradiction.status_code == 406
    assert b"image/jp2" in contradiction.data


def test_frames_of_deflated_and_big_endian_instances(client, store_file):
    # One image, one set of UIDs: the deflated instance is deleted before the big endian one is stored.
    reference = pydicom.dcmread(sample(samples.RGB_NATIVE)).pixel_array.tobytes()
    deflated = sample(samples.RGB_DEFLATED)
    assert store_file(deflated).status_code in (200, 202)
    ds = pydicom.dcmread(deflated, stop_before_pixels=True)
    for accept in (OCTET, OCTET + "; transfer-syntax=*"):
        (part,) = parts(client.get(url_of(ds) + "/frames/1", headers={"Accept": accept}))
        assert part.headers[b"Content-Type"] == b"application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        assert part.content == reference
    # A deflated frame is not a thing: naming the stored syntax cannot be honoured.
    named = client.get(url_of(ds) + "/frames/1", headers={"Accept": OCTET + "; transfer-syntax=1.2.840.10008.1.2.1.99"})
    assert named.status_code == 406
    assert client.delete(url_of(ds)).status_code == 204

    big = sample(samples.RGB_BIG_ENDIAN)
    assert store_file(big).status_code in (200, 202)
    (part,) = parts(client.get(url_of(ds) + "/frames/1", headers={"Accept": OCTET}))
    assert part.content == reference

    # A deflated file not written by pydicom (8-bit monochrome) decodes as pydicom inflates it.
    other = sample("image_dfl.dcm")
    assert store_file(other).status_code in (200, 202)
    ds = pydicom.dcmread(other)
    (part,) = parts(client.get(url_of(ds) + "/frames/1", headers={"Accept": OCTET}))
    assert part.content == ds.pixel_array.tobytes()


def test_frame_of_instance_without_pixel_data_is_404(client, store_file, tmp_path):
    ds = make_instance()
    del ds.PixelData, ds.Rows, ds.Columns
    path = tmp_path / "nopix.dcm"
    path.write_bytes(to_bytes(ds))
    assert store_file(path).status_code in (200, 202)
    assert client.get(url_of(ds) + "/frames/1", headers={"Accept": "image/jp2"}).status_code == 404
    whole = client.get(url_of(ds), headers={"Accept": f"application/dicom; transfer-syntax={JPEG2000Lossless}"})
    assert whole.status_code == 200
    assert parse(whole.data).file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_max_transcode_bytes_setting():
    from dicomserver.settings import ConfigError, Settings

    assert Settings().max_transcode_bytes == 512 * 1024**2
    assert Settings.from_env({"DICOMWEB_MAX_TRANSCODE_BYTES": "1000"}).max_transcode_bytes == 1000
    with pytest.raises(ConfigError, match="DICOMWEB_MAX_TRANSCODE_BYTES"):
        Settings.from_env({"DICOMWEB_MAX_TRANSCODE_BYTES": "-1"})
