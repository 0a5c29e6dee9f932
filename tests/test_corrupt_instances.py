"""Corrupt instances are refused at STOW, and what is stored is served whole or refused cleanly.

STOW checks every length against the file: an element (Pixel Data included) whose value
runs past the end, encapsulated Pixel Data whose items do not parse, fewer pixel bytes
or fragments than the frames need, a VR DICOM does not define, or a value that does not
decode as its VR is refused with 43264 and one sentence; nothing is stored. Instances
that got in before these checks (put here into the store and index behind STOW's back)
are answered with a clean error status before the first byte, never a 200 cut short,
never a library's traceback.
"""
from __future__ import annotations

import io
import json
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from dicom_factory import (
    element_offsets,
    explicit_element,
    make_instance,
    multipart_body,
    to_bytes,
    with_element_before,
    with_length,
)
from dicom_samples import sample
from pydicom.data import get_testdata_files
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from dicomserver.ingest import INVALID_DATASET, Ingestor, InstanceRejected, blob_key

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
#: What must never reach a client: a traceback, an install path, a library's name.
LEAKS = ("Traceback", "site-packages", "pydicom", 'File "', ".py\"")
PATIENT_NAME = 0x00100010
PIXEL_DATA = 0x7FE00010
PRIVATE_CREATOR = explicit_element(0x00090010, "LO", b"ACME")


# -- corrupting valid instances -------------------------------------------------------------


def native(**attributes) -> bytes:
    return to_bytes(make_instance(rows=16, columns=16, **attributes))


def with_private(element: bytes) -> bytes:
    """A valid instance with a private element (after its creator) before PatientName."""
    return with_element_before(native(), PATIENT_NAME, PRIVATE_CREATOR + element)


def undefined_length_sequence(tag: int, *items: bytes) -> bytes:
    """A sequence of undefined length whose items (of undefined length) hold these bytes."""
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\x00\x00\xff\xff\xff\xff"
    return head + b"".join(item + i + item_end for i in items) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def jpeg_2000() -> bytes:
    """A real 10-frame JPEG 2000 Lossless instance: one fragment per frame, empty offset table."""
    return sample("emri_small_jpeg_2k_lossless.dcm").read_bytes()


def fragment_items(data: bytes) -> list[tuple[int, int]]:
    """(offset of the item header, value length) of each item of the encapsulated Pixel Data."""
    position, items = element_offsets(data)[PIXEL_DATA][2], []
    while data[position : position + 4] == b"\xfe\xff\x00\xe0":
        (length,) = struct.unpack_from("<L", data, position + 4)
        items.append((position, length))
        position += 8 + length
    return items


def cut_inside_third_fragment(data: bytes) -> bytes:
    position, length = fragment_items(data)[3]  # items[0] is the Basic Offset Table
    return data[: position + 8 + length // 2]


def broken_item_tag(data: bytes) -> bytes:
    position, _ = fragment_items(data)[2]
    return data[:position] + b"\x00\x00\x00\x00" + data[position + 4 :]


def more_frames_than_fragments(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.NumberOfFrames = 12
    return to_bytes(ds)


CORRUPT = {
    "native Pixel Data cut short": (
        lambda: native()[:-100],
        "Pixel Data (7FE0,0010) has a value length of 512 bytes, but only 412 bytes remain in the file",
    ),
    "a header length longer than the file": (
        lambda: with_length(native(), PATIENT_NAME, 60000),
        "element (0010,0010) PatientName has a value length of 60000 bytes, but only",
    ),
    "a long value, skipped while parsing, longer than the file": (
        lambda: with_private(explicit_element(0x00091002, "OB", bytes(10), length=0x7FFFFFF0)),
        "element (0009,1002) has a value length of 2147483632 bytes, but only",
    ),
    "fewer pixel bytes than Rows x Columns x frames": (
        lambda: native(frames=2, pixel_data=bytes(600)),
        "Pixel Data (7FE0,0010) holds 600 bytes, but Rows x Columns x Samples per Pixel x Bits Allocated "
        "x Number of Frames needs 1024",
    ),
    "an unknown VR (IC)": (
        lambda: with_private(explicit_element(0x00091001, "IC", b"abcd")),
        "element (0009,1001) has the value representation 'IC', which DICOM does not define",
    ),
    "an unknown VR in a sequence item": (
        lambda: with_element_before(
            native(),
            PATIENT_NAME,
            undefined_length_sequence(
                0x00081140,
                explicit_element(0x00081150, "UI", b"1.2.3\x00") + explicit_element(0x00091001, "IC", b"abcd"),
            ),
        ),
        "element (0008,1140) ReferencedImageSequence item 1 > (0009,1001) has the value representation 'IC'",
    ),
    "a value that does not decode as its VR": (
        lambda: with_private(explicit_element(0x00091003, "US", b"abc")),
        "element (0009,1003): its 3 bytes cannot be decoded as US values",
    ),
    "an element after Pixel Data longer than the file": (
        lambda: native() + explicit_element(0xFFFCFFFC, "OB", bytes(10), length=1000),
        "element (FFFC,FFFC) DataSetTrailingPadding has a value length of 1000 bytes, but only 10 bytes remain",
    ),
    "a deflated file with fewer pixel bytes than the image needs": (
        lambda: native(pixel_data=bytes(100), transfer_syntax=DeflatedExplicitVRLittleEndian),
        "Pixel Data (7FE0,0010) holds 100 bytes, but Rows x Columns x Samples per Pixel x Bits Allocated",
    ),
    "an encapsulated fragment cut short": (
        lambda: cut_inside_third_fragment(jpeg_2000()),
        "Pixel Data (7FE0,0010) has an item of",
    ),
    "encapsulated Pixel Data without its Sequence Delimitation Item": (
        lambda: jpeg_2000()[:-8],
        "Pixel Data (7FE0,0010) ends without a Sequence Delimitation Item",
    ),
    "an encapsulated item tag broken": (
        lambda: broken_item_tag(jpeg_2000()),
        "Pixel Data (7FE0,0010) has (0000,0000) where an item or the Sequence Delimitation Item must be",
    ),
    "fewer fragments than Number of Frames": (
        lambda: more_frames_than_fragments(jpeg_2000()),
        "Pixel Data (7FE0,0010) holds 10 fragment(s), fewer than the 12 frame(s) of Number of Frames",
    ),
    "a real file cut inside its Pixel Data": (
        lambda: sample("CT_small.dcm").read_bytes()[:-1000],
        "Pixel Data (7FE0,0010) has a value length of 32768 bytes, but only",
    ),
    # pydicom's own deliberately damaged test files (they were stored with a 200 before).
    "MR_truncated.dcm": (
        lambda: sample("MR_truncated.dcm").read_bytes(),
        "Pixel Data (7FE0,0010) has a value length of 8192 bytes, but only 8130 bytes remain in the file",
    ),
    "rtplan_truncated.dcm": (
        lambda: sample("rtplan_truncated.dcm").read_bytes(),
        "element (300A,00B0) BeamSequence has a value length of 976 bytes, but only 711 bytes remain in the file",
    ),
    "emri_small_jpeg_2k_lossless_too_short.dcm": (
        lambda: sample("emri_small_jpeg_2k_lossless_too_short.dcm").read_bytes(),
        "Pixel Data (7FE0,0010) ends without a Sequence Delimitation Item",
    ),
}


def comments(item: dict) -> list[str]:
    return [c["00000902"]["Value"][0] for c in item.get("00741048", {}).get("Value", [])]


def sop_instance_uid(data: bytes) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        except Exception:
            return None


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_instance_is_refused_and_nothing_is_stored(app, client, case):
    build, expected = CORRUPT[case]
    data = build()
    response = client.post("/v2/studies", data=data, headers=DICOM)
    assert response.status_code == 409, response.get_data(as_text=True)
    (item,) = response.json["00081198"]["Value"]
    assert item["00081197"]["Value"] == [INVALID_DATASET]  # 43264 (0xA900)
    (comment,) = comments(item)  # one sentence naming the problem
    assert expected in comment, comment
    assert not any(leak in comment for leak in LEAKS)
    uid = sop_instance_uid(data)
    if uid is not None:
        assert item["00081155"]["Value"] == [uid]  # the refused instance is named when its UID can be read
        assert client.get("/v2/instances", query_string={"SOPInstanceUID": uid}).json == []
    assert "00081199" not in response.json
    assert list(app.extensions["dicomserver"].store.list()) == []  # no blob left behind


def test_a_corrupt_instance_fails_alone_in_a_multipart_request(client):
    body = multipart_body([native(), native()[:-100]])
    content_type = 'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234'
    response = client.post(
        "/v2/studies", data=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"}
    )
    assert response.status_code == 202
    assert len(response.json["00081199"]["Value"]) == 1
    (failed,) = response.json["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [INVALID_DATASET]


# -- no false refusals --------------------------------------------------------------------

#: Why STOW refused files before these checks existed (no meta, no UIDs): not our business here.
_EARLIER_REASONS = ("not a DICOM Part 10 file", "is missing or empty", "is not a valid UID", "TransferSyntaxUID")
_DAMAGED = {"MR_truncated.dcm", "rtplan_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"}


def _pydicom_test_files() -> list[Path]:
    files = sorted(Path(f) for f in get_testdata_files("**/*"))
    return [f for f in files if f.is_file() and f.suffix in (".dcm", "") and f.name not in _DAMAGED]


@pytest.mark.parametrize("path", _pydicom_test_files(), ids=lambda p: p.name)
def test_pydicom_test_files_are_not_refused_by_the_encoding_checks(path):
    """Every test file of pydicom and pydicom-data but the three it damages on purpose
    (refused above) passes the checks; the files refused are refused for the reasons STOW
    had before (no file meta, missing UIDs)."""
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            Ingestor(store=None, index=None).prepare(io.BytesIO(data), len(data), study_uid=None)  # type: ignore[arg-type]
        except InstanceRejected as rejection:
            assert all(any(r in c for r in _EARLIER_REASONS) for c in rejection.comments), rejection.comments


SERVED_AS_STORED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_padded.dcm",  # Data Set Trailing Padding after Pixel Data
    "JPEG2000.dcm",
    "emri_small_jpeg_2k_lossless.dcm",  # 10 frames
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_2frame.dcm",
    "OBXXXX1A.dcm",
    "OBXXXX1A_2frame.dcm",
    "SC_rgb_jpeg.dcm",  # Pixel Data header in implicit VR inside an explicit VR file
    "SC_ybr_full_422_uncompressed.dcm",  # 2/3 of the bytes Rows x Columns x 3 would say
    "liver.dcm",  # 3 frames, bit-packed segmentation
    "image_dfl.dcm",  # deflated
]


@pytest.mark.filterwarnings("ignore:Expected explicit VR, but found implicit VR")
@pytest.mark.parametrize("name", SERVED_AS_STORED)
def test_valid_real_files_are_stored_and_every_frame_served(client, name):
    data = sample(name).read_bytes()
    response = client.post("/v2/studies", data=data, headers=DICOM)
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    ds = pydicom.dcmread(io.BytesIO(data))
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    whole = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert whole.status_code == 200 and whole.data == data
    count = int(ds.get("NumberOfFrames") or 1)
    frames = client.get(
        f"{url}/frames/{','.join(str(n) for n in range(1, count + 1))}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    assert frames.status_code == 200, frames.get_data(as_text=True)
    assert frames.headers["Content-Length"] == str(len(frames.data))
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        # Cut from the stored file at the offsets recorded at STOW: exactly pydicom's frames.
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
        assert all(frame in frames.data for frame in expected)


# -- serving what got in before the checks ---------------------------------------------------


def store_behind_stows_back(app, intact: bytes, stored: bytes) -> str:
    """Index `intact` as the old STOW did (its header, frame map and metadata) but keep the
    `stored` bytes as its blob: an instance that got in before STOW checked its encoding."""
    archive = app.extensions["dicomserver"]
    prepared = Ingestor(archive.store, archive.index).prepare(io.BytesIO(intact), len(intact), study_uid=None)
    r = prepared.result
    assert r.study_instance_uid and r.series_instance_uid and r.sop_instance_uid
    key = blob_key(r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
    info = archive.store.put(key, io.BytesIO(stored), size=len(stored))
    archive.index.connect()
    try:
        archive.index.store_instance(prepared.record(key, info.size, info.sha256), replace=False)
    finally:
        archive.index.close()
    return f"/v2/studies/{r.study_instance_uid}/series/{r.series_instance_uid}/instances/{r.sop_instance_uid}"


def assert_clean_error(response, status: int, *words: str) -> None:
    """An error status with a one-sentence plain-text message: no traceback, path or library."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert not any(leak in text for leak in LEAKS), text
    assert text.count("\n") == 1
    for word in words:
        assert word in text, text


STAR = "transfer-syntax=*"
RLE = f"transfer-syntax={RLELossless}"


@pytest.fixture
def truncated(app):
    """Two 16x16 16-bit frames of 512 bytes; the stored file ends 300 bytes into frame 2."""
    intact = native(frames=2, study="1.2.826.0.1.3680043.99.1")
    return store_behind_stows_back(app, intact, intact[:-300]), intact[:-300]


def test_frames_beyond_the_stored_file_are_404_and_the_others_served(client, truncated):
    url, stored = truncated
    first = client.get(f"{url}/frames/1", headers={"Accept": f"application/octet-stream; {STAR}"})
    assert first.status_code == 200
    assert first.data == make_instance(rows=16, columns=16, frames=2).PixelData[:512]
    second = client.get(f"{url}/frames/2", headers={"Accept": f"application/octet-stream; {STAR}"})
    assert_clean_error(second, 404, "frame 2 of instance", "is not in the stored file")
    both = client.get(f"{url}/frames/1,2", headers={"Accept": f'multipart/related; type="application/octet-stream"; {STAR}'})
    assert_clean_error(both, 404, "frame 2")
    as_stored = client.get(url, headers={"Accept": f"application/dicom; {STAR}"})
    assert as_stored.status_code == 200 and as_stored.data == stored  # the file as kept: whole


def test_bulk_data_beyond_the_stored_file_is_404_before_the_first_byte(client, truncated):
    url, _stored = truncated
    for accept in ("application/octet-stream", 'multipart/related; type="application/octet-stream"'):
        assert_clean_error(client.get(f"{url}/bulkdata/7FE00010", headers={"Accept": accept}), 404,
                           "the value at 7FE00010", "is not in the stored file")


@pytest.mark.parametrize(
    "path, accept",
    [
        ("/frames/2", "image/dicom-rle"),
        ("/frames/1,2", 'multipart/related; type="image/dicom-rle"'),
        ("", f"application/dicom; {RLE}"),
        ("", f'multipart/related; type="application/dicom"; {RLE}'),
        ("", f"application/dicom; transfer-syntax={ImplicitVRLittleEndian}"),
        ("", f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}'),
    ],
)
def test_a_transcode_of_a_truncated_instance_is_a_clean_406(client, truncated, path, accept):
    """Single or multipart: converted before the status line, so never a 200 cut short."""
    url, _stored = truncated
    assert_clean_error(client.get(url + path, headers={"Accept": accept}), 406, "cannot transcode", STAR)


def test_a_failing_instance_in_a_study_fails_the_whole_transcode_before_the_first_byte(app, client, truncated):
    _url, _stored = truncated
    good = make_instance(rows=16, columns=16, study="1.2.826.0.1.3680043.99.1")
    assert client.post("/v2/studies", data=to_bytes(good), headers=DICOM).status_code == 200
    accept = f'multipart/related; type="application/dicom"; {RLE}'
    assert_clean_error(client.get("/v2/studies/1.2.826.0.1.3680043.99.1", headers={"Accept": accept}), 406)
    as_stored = client.get(
        "/v2/studies/1.2.826.0.1.3680043.99.1",
        headers={"Accept": f'multipart/related; type="application/dicom"; {STAR}'},
    )
    assert as_stored.status_code == 200 and as_stored.headers["Content-Length"] == str(len(as_stored.data))


def test_rendering_a_truncated_instance_is_a_clean_406(client, truncated):
    url, _stored = truncated
    assert_clean_error(client.get(f"{url}/frames/2/rendered"), 406, "could not be decoded")


@pytest.mark.parametrize(
    "accept",
    [
        f"application/dicom; transfer-syntax={ImplicitVRLittleEndian}",
        f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}',
    ],
)
def test_an_unknown_vr_stored_before_the_checks_is_a_clean_406(app, client, accept):
    """Implicit VR has no room for a VR the dictionary does not give: the header cannot be
    re-encoded (explicit VR targets carry the element over byte for byte)."""
    intact = native()
    stored = with_element_before(intact, PATIENT_NAME, PRIVATE_CREATOR + explicit_element(0x00091001, "IC", b"abcd"))
    url = store_behind_stows_back(app, intact, stored)
    assert_clean_error(client.get(url, headers={"Accept": accept}), 406, "could not be re-encoded", STAR)
    assert client.get(url, headers={"Accept": f"application/dicom; {STAR}"}).data == stored


def test_transcodes_that_work_have_a_content_length(client):
    """Transcoded parts are spooled before the answer starts, so its length is known."""
    ds = make_instance(rows=16, columns=16, frames=2)
    assert client.post("/v2/studies", data=to_bytes(ds), headers=DICOM).status_code == 200
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    for path, accept in [
        ("", f'multipart/related; type="application/dicom"; {RLE}'),
        ("/frames/1,2", 'multipart/related; type="image/dicom-rle"'),
    ]:
        response = client.get(url + path, headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["Content-Length"] == str(len(response.data))
    parts = client.get(url, headers={"Accept": f'multipart/related; type="application/dicom"; {RLE}'}).data
    start = parts.index(b"DICM") - 128
    got = pydicom.dcmread(io.BytesIO(parts[start : parts.rindex(b"\r\n--")]))
    assert got.file_meta.TransferSyntaxUID == RLELossless
    assert (got.pixel_array == ds.pixel_array).all()


@pytest.mark.live
def test_over_a_real_socket_refusals_leave_no_blob_and_failed_transcodes_are_whole_answers(tmp_path):
    """The tester's two findings, end to end through gunicorn: a STOW of a cut-short file
    leaves no blob file; the multipart transcode of an instance with an unknown VR that got
    in before the checks is a complete 406 (it was a 200 whose connection dropped)."""
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    from live_servers import blob_files, start_server, stop_server

    from dicomserver import Settings, close_app, create_app

    server = start_server(tmp_path / "live", workers=1, threads=2)
    try:
        connection = HTTPConnection(urlsplit(server.url).netloc, timeout=30)
        connection.request("POST", "/v2/studies", body=native()[:-100], headers=DICOM)
        refused = connection.getresponse()
        (failed,) = json.loads(refused.read())["00081198"]["Value"]
        assert refused.status == 409 and failed["00081197"]["Value"] == [INVALID_DATASET]
        assert blob_files(server) == []

        intact = native()
        stored = with_element_before(intact, PATIENT_NAME, PRIVATE_CREATOR + explicit_element(0x00091001, "IC", b"abcd"))
        side = create_app(
            Settings(blobstore_url=str(server.data_dir / "blobs"), database_url=f"sqlite:///{server.data_dir / 'index.db'}")
        )
        try:
            url = store_behind_stows_back(side, intact, stored)
        finally:
            close_app(side)
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={ImplicitVRLittleEndian}'
        connection.request("GET", url, headers={"Accept": accept})
        answer = connection.getresponse()
        body = answer.read()  # http.client raises IncompleteRead on a body cut short
        assert answer.status == 406
        assert int(answer.getheader("Content-Length")) == len(body)
        assert not any(leak.encode() in body for leak in LEAKS), body
        connection.close()
    finally:
        stop_server(server)
