"""transcode.py: the conversion matrix, pixel equality after lossless round trips, frames.

Pixel data is compared as decoded by pydicom. Sources that are lossless (native, RLE,
deflate, JPEG lossless, reversible JPEG 2000, the decode pairs) must come back exactly;
lossy sources must come back exactly as pydicom decodes them (re-encoding is lossless),
and close to the uncompressed original. tests/dicom_samples.py names the files.
"""
from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import dicom_samples as samples
import numpy as np
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import sample
from pydicom.encaps import generate_frames
from pydicom.pixels import pack_bits
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicomserver import transcode
from dicomserver.errors import NotAcceptable
from dicomserver.transcode import can_transcode, transcode_frames, transcode_instance

TARGETS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, HTJ2KLossless, JPEGLSLossless, RLELossless]
COMPRESSED_TARGETS = [JPEG2000Lossless, HTJ2KLossless, JPEGLSLossless, RLELossless]

#: (source, reference): each source decodes exactly to its reference's pixels. Two images,
#: each in several syntaxes: pydicom's RGB colour bars (SC_rgb*) and its 16-bit signed MR
#: (MR_small*); plus NEMA's reversible JPEG 2000 image and a deflated file read against
#: pydicom's own inflate.
EXACT_SOURCES = [
    (samples.RGB_NATIVE, samples.RGB_NATIVE),
    (samples.RGB_IMPLICIT, samples.RGB_NATIVE),
    (samples.RGB_BIG_ENDIAN, samples.RGB_NATIVE),
    (samples.RGB_DEFLATED, samples.RGB_NATIVE),
    (samples.RGB_RLE, samples.RGB_NATIVE),
    (samples.RGB_JPEG_LOSSLESS_SV1, samples.RGB_NATIVE),
    ("MR_small.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    (samples.J2K_LOSSLESS, "US1_UNCR.dcm"),
    ("image_dfl.dcm", "image_dfl.dcm"),
]
#: ... and these do not (lossy, chroma-subsampled, or RGB in the JPEG stream):
#: (source, reference, largest difference allowed). The reference is the uncompressed
#: original where the loss is small (the bound is the measured maximum), else the file's
#: decompressed counterpart in pydicom's test data (NEMA's for US1_J2KI).
OTHER_SOURCES = [
    (samples.RGB_JPEG_BASELINE, samples.RGB_NATIVE, samples.RGB_JPEG_BASELINE_MAX_DIFF),
    (samples.RGB_JPEG_EXTENDED, samples.RGB_NATIVE, samples.RGB_JPEG_BASELINE_MAX_DIFF),
    (samples.RGB_JPEG_BASELINE_NO_TRANSFORM, samples.RGB_NATIVE, 2),
    (samples.RGB_JPEG_BASELINE_422, "SC_rgb_dcmtk_ebcynp_dcmd.dcm", 3),  # 77 off the original
    (samples.RGB_J2K_91_EXACT, samples.RGB_NATIVE, 0),
    ("US1_J2KI.dcm", "US1_UNCI.dcm", 0),
]


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    # Some samples say RGB over a YCbCr JPEG stream; pydicom warns, which is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def run(data: bytes, target: str) -> pydicom.Dataset:
    """Transcode Part 10 bytes and parse the result."""
    with transcode_instance(io.BytesIO(data), target) as out:
        result = out.read()
    return pydicom.dcmread(io.BytesIO(result))


def decoded(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array


def reference(name: str = samples.RGB_NATIVE) -> np.ndarray:
    return decoded(pydicom.dcmread(sample(name)))


def check_output(out: pydicom.Dataset, source: pydicom.Dataset, target: str) -> None:
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == source.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert out.StudyInstanceUID == source.StudyInstanceUID
    assert out.get("NumberOfFrames", 1) == source.get("NumberOfFrames", 1)
    assert "ExtendedOffsetTable" not in out
    if target in (JPEG2000Lossless, HTJ2KLossless) and out.SamplesPerPixel == 3:
        assert out.PhotometricInterpretation in ("YBR_RCT", "YBR_FULL")
    if target in transcode.TARGETS[2:]:
        assert out["PixelData"].is_undefined_length


# -- capabilities -----------------------------------------------------------------


def test_codecs_probe_finds_the_installed_extra():
    available = transcode.codecs()
    assert set(TARGETS) <= available.encoders
    for syntax in (RLELossless, JPEG2000Lossless, "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50",
                   "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", JPEGLSLossless, HTJ2KLossless):
        assert syntax in available.decoders


@pytest.mark.parametrize(
    "source, target, expected",
    [
        (ExplicitVRLittleEndian, ImplicitVRLittleEndian, True),
        (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, True),
        ("1.2.840.10008.1.2.4.50", JPEG2000Lossless, True),
        (HTJ2KLossless, ExplicitVRLittleEndian, True),
        (ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.100", False),  # MPEG2: never produced
        (ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.50", False),  # lossy encoding: never
        ("1.2.840.10008.1.2.4.100", ExplicitVRLittleEndian, False),  # no video decoder
        ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100", True),  # as stored
    ],
)
def test_can_transcode(source, target, expected):
    assert can_transcode(source, target) is expected


def test_why_not_names_the_syntaxes():
    assert "1.2.840.10008.1.2.4.100" in transcode.why_not(ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.100")
    assert "1.2.840.10008.1.2.4.100" in transcode.why_not("1.2.840.10008.1.2.4.100", ExplicitVRLittleEndian)


def test_capabilities_are_logged(caplog):
    caplog.set_level("INFO", logger="dicomserver.transcode")
    transcode.log_capabilities()
    assert HTJ2KLossless in caplog.text and JPEG2000Lossless in caplog.text


# -- the matrix: each image in several syntaxes, to each target -------------------


def _id(case) -> str | None:
    return Path(case).name if isinstance(case, str) else None


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name, original", EXACT_SOURCES, ids=_id)
def test_lossless_sources_round_trip_exactly(name, original, target):
    path = sample(name)
    source = pydicom.dcmread(path)
    out = run(path.read_bytes(), target)
    check_output(out, source, target)
    assert np.array_equal(decoded(out), reference(original))
    assert out.get("LossyImageCompression") == source.get("LossyImageCompression")  # not touched


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name, original, max_diff", OTHER_SOURCES, ids=_id)
def test_other_sources_keep_their_decoded_pixels(name, original, max_diff, target):
    path = sample(name)
    source = pydicom.dcmread(path)
    out = run(path.read_bytes(), target)
    check_output(out, source, target)
    got, expected = decoded(out), decoded(source)
    assert got.shape == expected.shape == reference(original).shape and got.dtype == expected.dtype == np.uint8
    assert np.array_equal(got, expected)  # the re-encoding adds no loss of its own
    assert out.LossyImageCompression == "01"  # every one of them is lossy-coded, or says so
    assert np.abs(got.astype(int) - reference(original).astype(int)).max() <= max_diff


def test_lossy_source_without_the_attribute_is_marked_lossy():
    source = pydicom.dcmread(sample(samples.RGB_JPEG_BASELINE))
    del source.LossyImageCompression
    del source.LossyImageCompressionMethod
    out = run(to_bytes(source), JPEG2000Lossless)
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_10918_1"


def test_big_endian_header_and_pixels_become_little_endian():
    for big, little in (
        (sample(samples.RGB_BIG_ENDIAN), sample(samples.RGB_NATIVE)),
        (sample("MR_small_bigendian.dcm"), sample("MR_small.dcm")),
    ):
        out = run(Path(big).read_bytes(), ExplicitVRLittleEndian)
        expected = pydicom.dcmread(little)
        for element in expected:
            if element.keyword != "DataSetTrailingPadding":  # dropped: it follows Pixel Data
                assert out[element.tag].value == element.value, element.keyword
        assert "DataSetTrailingPadding" not in out


def test_implicit_target_writes_implicit_vr():
    path = sample(samples.RGB_RLE)
    with transcode_instance(io.BytesIO(path.read_bytes()), ImplicitVRLittleEndian) as out:
        data = out.read()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, reference())
    # (7FE0,0010) followed directly by a 4-byte length, no VR.
    at = data.index(b"\xe0\x7f\x10\x00")
    assert struct.unpack("<L", data[at + 4 : at + 8])[0] == 100 * 100 * 3


# -- decode pairs: a compressed file and its uncompressed counterpart -------------


@pytest.mark.parametrize("case", list(samples.DECODE_PAIRS))
def test_transcoder_decode_pairs(case):
    source_name, expected_name, tolerance = samples.DECODE_PAIRS[case]
    source = sample(source_name)
    expected = pydicom.dcmread(sample(expected_name))
    out = run(source.read_bytes(), ExplicitVRLittleEndian)
    check_output(out, pydicom.dcmread(source), ExplicitVRLittleEndian)
    assert out.PhotometricInterpretation == expected.PhotometricInterpretation == "RGB"
    diff = np.abs(decoded(out).astype(int) - decoded(expected).astype(int)).max()
    assert diff <= tolerance
    assert len(out.PixelData) == len(expected.PixelData) == expected.Rows * expected.Columns * 3


def test_transcoder_encode_pair_to_jpeg2000_lossless():
    source = sample(samples.ENCODE_J2K_INPUT)
    expected = pydicom.dcmread(sample(samples.ENCODE_J2K_EXPECTED))
    out = run(source.read_bytes(), JPEG2000Lossless)
    assert out.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
    assert out.PhotometricInterpretation == expected.PhotometricInterpretation == "YBR_RCT"
    assert np.array_equal(decoded(out), decoded(expected))
    assert np.array_equal(decoded(out), decoded(pydicom.dcmread(source)))
    (codestream,) = generate_frames(out.PixelData, number_of_frames=1)
    assert codestream.startswith(b"\xff\x4f\xff\x51")  # a raw J2K codestream, not JP2


# -- pydicom's multi-frame files --------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_multiframe_files(name, target):
    path = sample(name)
    source = pydicom.dcmread(path)
    out = run(Path(path).read_bytes(), target)
    check_output(out, source, target)
    assert np.array_equal(decoded(out), decoded(source))
    frames = int(source.NumberOfFrames)
    if target in COMPRESSED_TARGETS:
        # One fragment per frame, found by the Basic Offset Table.
        assert len(list(generate_frames(out.PixelData, number_of_frames=frames))) == frames
        offsets = pydicom.encaps.parse_basic_offsets(io.BytesIO(out.PixelData))
        assert len(offsets) == frames and offsets[0] == 0 and offsets == sorted(offsets)
    else:
        assert len(out.PixelData) == frames * source.Rows * source.Columns * 3


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless])
def test_rtdose_32_bit_multiframe(target):
    path = sample("rtdose.dcm")
    source = pydicom.dcmread(path)
    out = run(Path(path).read_bytes(), target)
    check_output(out, source, target)
    assert decoded(out).dtype == np.uint32 and decoded(out).shape == (15, 10, 10)
    assert np.array_equal(decoded(out), decoded(source))


@pytest.mark.parametrize("target", [HTJ2KLossless, JPEGLSLossless, RLELossless])
def test_rtdose_32_bit_cannot_be_encoded_in_16_bit_codecs(target):
    with pytest.raises(NotAcceptable) as info:
        run(Path(sample("rtdose.dcm")).read_bytes(), target)
    assert ImplicitVRLittleEndian in info.value.message and target in info.value.message


@pytest.mark.parametrize("target", TARGETS)
def test_signed_16_bit_and_its_own_htj2k_output_as_a_source(target):
    source = pydicom.dcmread(sample("MR_small.dcm"))
    assert source.PixelRepresentation == 1
    htj2k = run(to_bytes(source), HTJ2KLossless)
    assert np.array_equal(decoded(htj2k), decoded(source))
    # HTJ2K (and every other target) decodes back to the same signed values.
    out = run(to_bytes(htj2k), target)
    assert np.array_equal(decoded(out), decoded(source))


def test_tiny_images_encode_too():
    # OpenJPEG's default of 6 resolution levels fails below 32 pixels a side.
    source = pydicom.dcmread(sample("SC_rgb_small_odd.dcm"))
    for target in (JPEG2000Lossless, HTJ2KLossless, RLELossless):
        assert np.array_equal(decoded(run(to_bytes(source), target)), decoded(source))


def test_jpeg2000_falls_back_to_pydicom_encoder_without_imagecodecs(monkeypatch):
    monkeypatch.setattr(transcode, "_imagecodecs", lambda: None)
    source = pydicom.dcmread(sample(samples.ENCODE_J2K_INPUT))
    out = run(to_bytes(source), JPEG2000Lossless)
    assert out.PhotometricInterpretation == "YBR_RCT"
    assert np.array_equal(decoded(out), decoded(source))


# -- special cases ----------------------------------------------------------------


def bit_packed(transfer_syntax: str, frames: int = 3, rows: int = 5, columns: int = 5) -> tuple[pydicom.Dataset, np.ndarray]:
    """A 1-bit instance whose frames do not end on byte boundaries (5x5 = 25 bits)."""
    ds = make_instance(rows=rows, columns=columns, frames=frames, transfer_syntax=transfer_syntax)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    pixels = (np.arange(frames * rows * columns) % 3 == 0).astype(np.uint8).reshape(frames, rows, columns)
    ds.PixelData = pack_bits(pixels)
    return ds, pixels


def test_bit_packed_pixels_stay_packed():
    for syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        ds, pixels = bit_packed(syntax)
        out = run(to_bytes(ds), ExplicitVRLittleEndian)
        assert out.BitsAllocated == 1
        assert out.PixelData == pack_bits(pixels)
        assert np.array_equal(out.pixel_array, pixels)


def test_bit_packed_to_compressed_is_not_acceptable():
    ds, _ = bit_packed(ExplicitVRLittleEndian)
    with pytest.raises(NotAcceptable) as info:
        run(to_bytes(ds), JPEG2000Lossless)
    assert "Bits Allocated 1" in info.value.message
    assert ExplicitVRLittleEndian in info.value.message and JPEG2000Lossless in info.value.message


def test_instance_without_pixel_data_only_changes_its_encoding():
    ds = make_instance()
    del ds.PixelData
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = run(to_bytes(ds), JPEG2000Lossless)
    assert out.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert out.PatientName == "Test^Patient" and "PixelData" not in out


def test_corrupt_codestream_is_not_acceptable_naming_both_syntaxes():
    source = pydicom.dcmread(sample(samples.J2K_LOSSLESS))
    (frame,) = generate_frames(source.PixelData, number_of_frames=1)
    source.PixelData = pydicom.encaps.encapsulate([frame[:200] + b"\x00" * 200])
    with pytest.raises(NotAcceptable) as info:
        run(to_bytes(source), ExplicitVRLittleEndian)
    message = info.value.message
    assert JPEG2000Lossless in message and ExplicitVRLittleEndian in message and "transfer-syntax=*" in message


def test_spool_goes_to_disk_above_the_memory_size(tmp_path):
    path = sample(samples.RGB_RLE)  # 2 KB stored, 30 KB decoded
    out = transcode_instance(io.BytesIO(path.read_bytes()), ExplicitVRLittleEndian,
                             spool_memory_bytes=1024, spool_dir=str(tmp_path))
    with out:
        assert out._rolled  # on disk, in the configured directory
        assert len(out.read()) > 100 * 100 * 3


# -- frames -----------------------------------------------------------------------


def test_frames_decoded_to_native_in_the_order_asked():
    path = sample("examples_ybr_color.dcm")
    expected = decoded(pydicom.dcmread(path))
    with open(path, "rb") as fp:
        got = list(transcode_frames(fp, [30, 1, 7], ExplicitVRLittleEndian))
    assert [len(f) for f in got] == [240 * 320 * 3] * 3
    assert got == [expected[29].tobytes(), expected[0].tobytes(), expected[6].tobytes()]


@pytest.mark.parametrize("target", COMPRESSED_TARGETS)
def test_frames_reencoded(target):
    path = sample("SC_rgb_rle_2frame.dcm")
    source = pydicom.dcmread(path)
    with open(path, "rb") as fp:
        (second,) = transcode_frames(fp, [2], target)
    # Decode the single codestream as a one-frame instance of the target syntax.
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = target
    ds.NumberOfFrames = 1
    ds.PixelData = pydicom.encaps.encapsulate([second])
    if target in (JPEG2000Lossless, HTJ2KLossless):
        ds.PhotometricInterpretation = "YBR_RCT"
    assert np.array_equal(ds.pixel_array, decoded(source)[1])


def test_frames_of_deflated_and_big_endian_instances():
    for name in (samples.RGB_DEFLATED, samples.RGB_BIG_ENDIAN):
        with open(sample(name), "rb") as fp:
            (frame,) = transcode_frames(fp, [1], ExplicitVRLittleEndian)
        assert frame == reference().tobytes()
    ds, pixels = bit_packed(DeflatedExplicitVRLittleEndian)
    (second,) = transcode_frames(io.BytesIO(to_bytes(ds)), [2], ExplicitVRLittleEndian)
    assert second == pack_bits(pixels[1], pad=False)


def test_memory_stays_flat_frame_by_frame(tmp_path):
    """A 32 MiB instance is converted holding about one frame (512 KiB) at a time."""
    import tracemalloc

    ds = make_instance(rows=512, columns=512, frames=64)
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, (64, 512, 512), dtype=np.uint16).tobytes()
    path = tmp_path / "big.dcm"
    path.write_bytes(to_bytes(ds))
    del ds
    for target in (RLELossless, ImplicitVRLittleEndian):
        tracemalloc.start()
        try:
            with path.open("rb") as fp, transcode_instance(fp, target, spool_dir=str(tmp_path)) as out:
                assert out.seek(0, 2) > 10 * 2**20
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2**20, (target, peak)
