"""Transfer syntax UIDs (PS3.6 Annex A) by their standard names: the one definition.

Every module that compares or chooses a transfer syntax imports it from here, so a
UID is never spelled twice. The values are pydicom's `UID` objects (a `str`), which
also know whether a syntax is encapsulated or lossy.
"""
from __future__ import annotations

from pydicom import uid

IMPLICIT_VR_LITTLE_ENDIAN = uid.ImplicitVRLittleEndian
EXPLICIT_VR_LITTLE_ENDIAN = uid.ExplicitVRLittleEndian
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = uid.DeflatedExplicitVRLittleEndian
EXPLICIT_VR_BIG_ENDIAN = uid.ExplicitVRBigEndian
JPEG_BASELINE_8BIT = uid.JPEGBaseline8Bit
JPEG_EXTENDED_12BIT = uid.JPEGExtended12Bit
JPEG_LOSSLESS = uid.JPEGLossless
JPEG_LOSSLESS_SV1 = uid.JPEGLosslessSV1
JPEG_LS_LOSSLESS = uid.JPEGLSLossless
JPEG_LS_NEAR_LOSSLESS = uid.JPEGLSNearLossless
JPEG_2000_LOSSLESS = uid.JPEG2000Lossless
JPEG_2000 = uid.JPEG2000
JPEG_2000_MC_LOSSLESS = uid.JPEG2000MCLossless
JPEG_2000_MC = uid.JPEG2000MC
HTJ2K_LOSSLESS = uid.HTJ2KLossless
HTJ2K_LOSSLESS_RPCL = uid.HTJ2KLosslessRPCL
HTJ2K = uid.HTJ2K
RLE_LOSSLESS = uid.RLELossless

#: Native (uncompressed, little endian) encodings: their pixel bytes are identical.
NATIVE_LITTLE_ENDIAN = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
#: Every native encoding: converting between them copies or byte-swaps pixels.
NATIVE = NATIVE_LITTLE_ENDIAN | {EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}

#: Media types of compressed pixel data and the transfer syntaxes each may carry, the
#: one it implies when none is named first (PS3.18 Table 8.7.3-5; frames and bulk data).
IMAGE_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (JPEG_BASELINE_8BIT, JPEG_EXTENDED_12BIT, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1),
    "image/jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS),
    "image/jp2": (JPEG_2000_LOSSLESS, JPEG_2000),
    "image/jpx": (JPEG_2000_MC_LOSSLESS, JPEG_2000_MC),
    "image/jphc": (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K),
    "image/dicom-rle": (RLE_LOSSLESS,),
    "image/x-dicom-rle": (RLE_LOSSLESS,),
}


def is_encapsulated(transfer_syntax: str) -> bool:
    """Whether pixel data in this syntax is encapsulated; False for a syntax pydicom does not know."""
    try:
        return uid.UID(transfer_syntax).is_encapsulated
    except (ValueError, AttributeError):
        return False
