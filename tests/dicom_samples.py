"""The one place that names the tests' sample DICOM files; the tutorial files' UIDs.

`sample(name)` returns the path of a sample file, from one of three sources, all on this
machine (nothing is downloaded):

- tests/data: the tutorials' three files (from microsoft/dicom-server, MIT License; see
  tests/data/LICENSE and tests/data/README.md).
- pydicom's test data: files shipped in the pydicom package and in the pydicom-data package
  (the `test` extra installs it), looked up with `get_testdata_file(name, download=False)`.
- `generated/<name>`: built on first use by tests/dicom_factory.py from one of those real
  files, for the few forms pydicom's test data lacks (see GENERATED).

Names used for a purpose (one image in several syntaxes, decode pairs, ...) are collected
below, with the properties the tests rely on.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

DATA_DIR = Path(__file__).resolve().parent / "data"

# -- the tutorials' files (tests/data) --------------------------------------------------

TUTORIAL_FILES = ("blue-circle.dcm", "green-square.dcm", "red-triangle.dcm")

STUDY_UID = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420"
SERIES_GREEN_RED = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652"
SERIES_BLUE = "1.2.826.0.1.3680043.8.498.77033797676425927098669402985243398207"
SOP_RED = "1.2.826.0.1.3680043.8.498.47359123102728459884412887463296905395"
SOP_GREEN = "1.2.826.0.1.3680043.8.498.12714725698140337137334606354172323212"
SOP_BLUE = "1.2.826.0.1.3680043.8.498.13273713909719068980354078852867170114"

# -- one RGB image in several transfer syntaxes ------------------------------------------
# pydicom's SC_rgb*.dcm: a 100x100 8-bit RGB secondary capture (colour bars). All share
# one Study and Series UID; SC_rgb, SC_rgb_expb, SC_rgb_rle, SC_rgb_jpeg_gdcm and the
# generated implicit/deflated forms also share the SOP Instance UID, so storing two of them
# is a duplicate.

#: Explicit VR Little Endian: the reference pixels of the family.
RGB_NATIVE = "SC_rgb.dcm"
#: These decode to exactly RGB_NATIVE's pixels.
RGB_IMPLICIT = "generated/SC_rgb_implicit.dcm"
RGB_BIG_ENDIAN = "SC_rgb_expb.dcm"
RGB_DEFLATED = "generated/SC_rgb_deflated.dcm"
RGB_RLE = "SC_rgb_rle.dcm"
RGB_JPEG_LOSSLESS_SV1 = "SC_rgb_jpeg_gdcm.dcm"  # JPEG Lossless SV1 (1.2.840.10008.1.2.4.70)
RGB_JPEG_LOSSLESS_P14 = "generated/SC_rgb_jpeg_gdcm_process14.dcm"  # the same stream as ...4.57
RGB_J2K_91_EXACT = "SC_rgb_gdcm_KY.dcm"  # JPEG 2000 (...4.91, its own SOP UID), reversible in fact
#: Lossy: these decode close to RGB_NATIVE, not exactly (maximum difference measured).
RGB_JPEG_BASELINE = "SC_rgb_jpeg_dcmtk.dcm"  # YBR_FULL, JFIF stream: at most 6 off
RGB_JPEG_BASELINE_MAX_DIFF = 6
RGB_JPEG_BASELINE_NO_TRANSFORM = "SC_rgb_dcmtk_+eb+cr.dcm"  # RGB in the JPEG stream (Adobe APP14)
RGB_JPEG_BASELINE_422 = "SC_rgb_dcmtk_+eb+cy+np.dcm"  # YBR_FULL_422: chroma subsampled
RGB_JPEG_EXTENDED = "generated/SC_rgb_jpeg_dcmtk_process2_4.dcm"  # RGB_JPEG_BASELINE as ...4.51

# -- decode pairs: a compressed file and its uncompressed counterpart --------------------
# Each expected file is RGB Explicit VR Little Endian; the tolerance is the largest pixel
# difference allowed between our decoding and the expected file (all measure 0 here; the
# JPEG Baseline pair allows for rounding between JPEG decoders, as before).
DECODE_PAIRS = {
    # NEMA's JPEG 2000 ultrasound test image (480x640): reversible (YBR_RCT) and irreversible
    # (YBR_ICT) codestreams, each with its decompressed reference.
    "FromJPEG2000Lossless": ("US1_J2KR.dcm", "US1_UNCR.dcm", 0),
    "FromJPEG2000Lossy": ("US1_J2KI.dcm", "US1_UNCI.dcm", 0),
    "FromJPEGProcess14": (RGB_JPEG_LOSSLESS_P14, RGB_NATIVE, 0),
    "FromJPEGProcess14SV1": (RGB_JPEG_LOSSLESS_SV1, RGB_NATIVE, 0),
    "FromRLELossless": (RGB_RLE, RGB_NATIVE, 0),
    # A JPEG Baseline (YBR_FULL, 4:2:2) made with DCMTK and its uncompressed counterpart,
    # the reference pydicom's own JPEG decoder tests compare with.
    "FromJPEGProcess1": ("SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_rgb_dcmtk_ebcyn2_dcmd.dcm", 3),
}
#: Encode pair: an RGB image and its reversible JPEG 2000 (YBR_RCT) encoding, from NEMA.
ENCODE_J2K_INPUT, ENCODE_J2K_EXPECTED = "US1_UNCR.dcm", "US1_J2KR.dcm"

# -- single files with a property the tests need -----------------------------------------

#: JPEG 2000 Lossless (...4.90), RGB image coded YBR_RCT, 480x640.
J2K_LOSSLESS = "US1_J2KR.dcm"
#: 16-bit MR in Implicit VR Little Endian, with Window Center/Width (600/1600) in the file;
#: 64x64, signed, stored values 127..2145, no Rescale Slope/Intercept.
MR_IMPLICIT_WINDOWED = "MR_small_implicit.dcm"
#: 8-bit MONOCHROME2 JPEG Baseline (...4.50): a real ultrasound image (768x1024, from
#: JPGLosslessP14SV1_1s_1f_8b.dcm) compressed by libjpeg; pydicom's data has no such file.
MONO8_JPEG_BASELINE = "generated/US_mono8_jpeg_baseline.dcm"
#: 8-bit MONOCHROME2 JPEG Baseline (...4.50) computed radiograph: RG3_UNCR.dcm (a 10-bit
#: MONOCHROME1 CR of a tibia, 1760x1760) through its window, inverted, every 4th pixel (440x440).
CR_JPEG_BASELINE = "generated/CR_mono8_jpeg_baseline.dcm"

# -- every sample: the variety the "every file" tests go through ---------------------------
#: Fixed, so that results do not change with the pydicom-data release. Each is decodable here,
#: has pixel data and Study/Series/SOP Instance UIDs.
EVERY_SAMPLE = (
    *TUTORIAL_FILES,
    "CT_small.dcm",  # CT, 16-bit signed, many private elements
    "MR_small_implicit.dcm",  # Implicit VR, 16-bit, a window in the file
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian, 16-bit
    "MR_small_RLE.dcm",  # RLE, 16-bit
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless, 16-bit signed
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # Siemens private (CSA) elements, an overlay plane
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "SC_rgb.dcm",  # RGB 8-bit
    "SC_rgb_expb.dcm",  # RGB, Big Endian
    "SC_rgb_rle.dcm",  # RGB, RLE
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, YBR_FULL
    "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG Baseline, RGB stream (Adobe marker)
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG Baseline, YBR_FULL_422
    "SC_jpeg_no_color_transform.dcm",  # JPEG Baseline, RGB with neither JFIF nor Adobe marker
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1, RGB
    "JPEG-LL.dcm",  # JPEG Lossless SV1, 16-bit signed
    "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG Lossless SV1, 8-bit, private sequences
    "US1_J2KR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "US1_J2KI.dcm",  # JPEG 2000 lossy, YBR_ICT
    "SC_rgb_gdcm_KY.dcm",  # JPEG 2000 (...4.91), RGB
    "examples_ybr_color.dcm",  # multi-frame (30) JPEG Baseline YBR_FULL_422
    "emri_small_jpeg_2k_lossless.dcm",  # Enhanced MR, multi-frame (10) JPEG 2000
    "eCT_Supplemental.dcm",  # Enhanced CT, 2 frames, functional group sequences
    "rtdose.dcm",  # RT Dose, Implicit VR, 32-bit, 15 frames, sequences
    MONO8_JPEG_BASELINE,  # JPEG Baseline, 8-bit monochrome
)


# -- generated files ---------------------------------------------------------------------


def _read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(sample(name))


def _implicit() -> bytes:
    from dicom_factory import in_transfer_syntax

    return in_transfer_syntax(_read(RGB_NATIVE), ImplicitVRLittleEndian)


def _deflated() -> bytes:
    from dicom_factory import in_transfer_syntax

    return in_transfer_syntax(_read(RGB_NATIVE), DeflatedExplicitVRLittleEndian)


def _process14() -> bytes:
    from dicom_factory import relabelled

    return relabelled(_read(RGB_JPEG_LOSSLESS_SV1), "1.2.840.10008.1.2.4.57")


def _process2_4() -> bytes:
    from dicom_factory import relabelled

    return relabelled(_read(RGB_JPEG_BASELINE), "1.2.840.10008.1.2.4.51")


def _mono8_jpeg() -> bytes:
    from dicom_factory import jpeg_baseline

    return jpeg_baseline(_read("JPGLosslessP14SV1_1s_1f_8b.dcm"), quality=90)


def _cr_jpeg() -> bytes:
    from dicom_factory import jpeg_baseline, mono8

    return jpeg_baseline(mono8(_read("RG3_UNCR.dcm"), step=4), quality=90)


#: generated/<name>: how it is built, from which real file.
GENERATED = {
    "generated/SC_rgb_implicit.dcm": _implicit,  # SC_rgb.dcm in Implicit VR Little Endian
    "generated/SC_rgb_deflated.dcm": _deflated,  # SC_rgb.dcm in Deflated Explicit VR LE
    "generated/SC_rgb_jpeg_gdcm_process14.dcm": _process14,  # SC_rgb_jpeg_gdcm.dcm as ...4.57
    "generated/SC_rgb_jpeg_dcmtk_process2_4.dcm": _process2_4,  # SC_rgb_jpeg_dcmtk.dcm as ...4.51
    "generated/US_mono8_jpeg_baseline.dcm": _mono8_jpeg,  # see MONO8_JPEG_BASELINE
    CR_JPEG_BASELINE: _cr_jpeg,  # see CR_JPEG_BASELINE
}


@functools.cache
def _generated_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="dicomserver-samples-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


@functools.cache
def _generated(name: str) -> Path:
    path = _generated_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GENERATED[name]())
    return path


# -- lookup ------------------------------------------------------------------------------


@functools.cache
def _pydicom_file(name: str) -> Path | None:
    found = get_testdata_file(name, download=False)
    return Path(found) if found else None


def sample(name: str) -> Path:
    """The path of a sample file: tests/data, a generated file, or pydicom's test data."""
    if name in TUTORIAL_FILES:
        path = DATA_DIR / name
        if not path.exists():
            pytest.fail(f"sample file {path} not found: tests/data is part of the repository")
        return path
    if name in GENERATED:
        return _generated(name)
    path = _pydicom_file(name)
    if path is None:
        pytest.fail(
            f"{name} is not in pydicom's test data on this machine: install the test extra "
            "(pip install -e '.[test]', which brings pydicom-data)"
        )
    return path
