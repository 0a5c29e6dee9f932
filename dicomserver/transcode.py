"""Transfer syntax conversion of stored instances and frames (PS3.5 §8, §10, Annex A).

This module owns three things:
- which conversions this installation can do: `codecs()` probes the installed pixel
  codecs once (pydicom's decoders and encoders, imagecodecs for HTJ2K) and
  `can_transcode` answers from that; `log_capabilities` says it at start-up;
- `transcode_instance`: a whole Part 10 file re-written in another transfer syntax,
  into a spool file, frame by frame: a frame is decoded, re-encoded and written
  before the next is read, so memory holds the header and one frame (a deflated
  file, which cannot be read in place, is the exception: it is inflated whole);
- `transcode_frames`: single frames decoded to native bytes or re-encoded.

Rules kept here, not in the callers:
- Pixel bytes of Implicit and Explicit VR Little Endian are identical, so
  conversions between them (and out of Deflated) copy the pixel data untouched.
- Lossless sources are decoded in their own colour space, so a round trip through a
  lossless target gives back exactly the stored values; lossy sources (JPEG
  baseline, ...) are decoded to RGB, which is how viewers want them.
- Encoding is lossless only. A lossy source may be re-encoded in a lossless syntax
  (the standard allows it); Lossy Image Compression stays "01" so nobody takes the
  result for an original.
- RGB sent to JPEG 2000 or HTJ2K uses the reversible colour transform and becomes
  YBR_RCT (PS3.5 §8.2.4): same pixels, much smaller.
- SOP Instance UID is kept: the instance is the same, only its encoding changes.
- Elements after Pixel Data (Digital Signatures, Data Set Trailing Padding) are not
  carried over: signatures over the old encoding would no longer verify.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from backends.base import BlobStoreError

from .errors import NotAcceptable
from .frames import read_element_header
from .transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE,
    NATIVE_LITTLE_ENDIAN,
    RLE_LOSSLESS,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


#: Compressed syntaxes this server will decode when a codec for them is installed.
COMPRESSED_SOURCES: tuple[str, ...] = (
    RLE_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
)

#: What this server can produce, best first: native, then the lossless encodings.
TARGETS = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    HTJ2K_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
)

#: Syntaxes whose encoding may have lost information, with the Lossy Image
#: Compression Method (0028,2114) term of each (PS3.3 C.7.6.1.1.5.1).
LOSSY_METHODS = {
    JPEG_BASELINE_8BIT: "ISO_10918_1",
    JPEG_EXTENDED_12BIT: "ISO_10918_1",
    JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    JPEG_2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}
#: Of those, the ones that are lossy whatever the header says (JPEG DCT processes).
_ALWAYS_LOSSY = frozenset({JPEG_BASELINE_8BIT, JPEG_EXTENDED_12BIT})

#: pydicom plugins to use, best first. gdcm comes last or not at all: its RLE encoder
#: aborts the whole process (an uncatchable C++ exception) on some image sizes.
_ENCODER_PREFERENCE: dict[str, tuple[str, ...]] = {
    JPEG_2000_LOSSLESS: ("pylibjpeg",),
    JPEG_LS_LOSSLESS: ("pyjpegls",),
    RLE_LOSSLESS: ("pylibjpeg", "pydicom"),
}
_J2K_DECODERS = ("pylibjpeg", "pillow", "gdcm")
_DECODER_PREFERENCE: dict[str, tuple[str, ...]] = {
    JPEG_2000_LOSSLESS: _J2K_DECODERS,
    JPEG_2000: _J2K_DECODERS,
    HTJ2K_LOSSLESS: _J2K_DECODERS,
    HTJ2K_LOSSLESS_RPCL: _J2K_DECODERS,
    HTJ2K: _J2K_DECODERS,
    JPEG_LS_LOSSLESS: ("pyjpegls", "gdcm"),
    JPEG_LS_NEAR_LOSSLESS: ("pyjpegls", "gdcm"),
    RLE_LOSSLESS: ("pylibjpeg", "pydicom"),
}

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_PIXEL_VR = {"FloatPixelData": "OF", "DoubleFloatPixelData": "OD"}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_COPY_CHUNK = 1 << 20


def _name(syntax: str) -> str:
    name = UID(syntax).name
    return syntax if name == syntax else f"{syntax} ({name})"


# -- what this installation can do ------------------------------------------------


@dataclass(frozen=True)
class Codecs:
    """The installed codecs: syntaxes we can decode from and encode to."""

    decoders: frozenset[str]
    encoders: frozenset[str]


@functools.cache
def codecs() -> Codecs:
    """Probe the installed codec packages once (importing them is slow)."""
    try:
        import numpy  # noqa: F401  (every pydicom pixel decoder needs it)
    except ImportError:
        return Codecs(frozenset(), frozenset())
    from pydicom.pixels import get_decoder, get_encoder

    decoders: set[str] = set(NATIVE)
    for syntax in COMPRESSED_SOURCES:
        try:
            if get_decoder(syntax).is_available:
                decoders.add(syntax)
        except NotImplementedError:
            pass
    encoders: set[str] = set(NATIVE_LITTLE_ENDIAN)
    for syntax, preference in _ENCODER_PREFERENCE.items():
        if _plugin(get_encoder(syntax).available_plugins, preference):
            encoders.add(syntax)
    if _imagecodecs() is not None:
        encoders.update((JPEG_2000_LOSSLESS, HTJ2K_LOSSLESS))
    return Codecs(frozenset(decoders), frozenset(encoders))


def _plugin(available: tuple[str, ...], preference: tuple[str, ...]) -> str | None:
    return next((name for name in preference if name in available), None)


def _decoding_plugin(syntax: str) -> str:
    """The plugin to decode `syntax` with; "" lets pydicom try every installed one."""
    from pydicom.pixels import get_decoder

    preference = _DECODER_PREFERENCE.get(syntax)
    if preference is None:
        return ""
    return _plugin(get_decoder(syntax).available_plugins, preference) or ""


def _imagecodecs() -> Any:
    """imagecodecs (the module), when installed with its JPEG 2000 and HTJ2K (OpenJPH) codecs; else None.

    pydicom 3.0 cannot encode HTJ2K, and its JPEG 2000 encoder fails on images
    smaller than 32 pixels a side; imagecodecs does both.
    """
    try:
        import imagecodecs
    except ImportError:
        return None
    if not (imagecodecs.HTJ2K.available and imagecodecs.JPEG2K.available):
        return None
    return imagecodecs


def _copies_pixels(source: str, target: str) -> bool:
    """True when the pixel data moves across untouched (no codec, no numpy)."""
    return target in NATIVE_LITTLE_ENDIAN and source in NATIVE_LITTLE_ENDIAN | {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}


def can_transcode(source: str, target: str) -> bool:
    """Whether an instance stored as `source` can be served as `target` here."""
    if source == target or _copies_pixels(source, target):
        return True
    available = codecs()
    return target in TARGETS and source in available.decoders and target in available.encoders


def why_not(source: str, target: str) -> str:
    """The reason can_transcode(source, target) is False, for a 406 message."""
    available = codecs()
    if target not in TARGETS:
        produced = ", ".join(t for t in TARGETS if t in available.encoders)
        return f"this server does not encode {_name(target)} (it can produce {produced})"
    if target not in available.encoders:
        return f"no encoder for {_name(target)} is installed (install the 'codecs' extra)"
    return f"no decoder for {_name(source)} is installed"


def log_capabilities() -> None:
    """Say once, at start-up, which conversions this installation can do."""
    available = codecs()
    if not available.decoders:
        log.warning(
            "transcoding: numpy is not installed, so only Implicit/Explicit VR Little Endian "
            "and Deflated sources can be served as Implicit/Explicit VR Little Endian"
        )
        return
    log.info(
        "transcoding: sources %s; targets %s",
        ", ".join(sorted(available.decoders)),
        ", ".join(t for t in TARGETS if t in available.encoders),
    )
    missing = [t for t in TARGETS if t not in available.encoders]
    if missing:
        log.info("transcoding: no encoder installed for %s", ", ".join(missing))


# -- reading the source -----------------------------------------------------------


@dataclass
class _Source:
    """A stored instance opened for transcoding: its header and where its pixels are."""

    ds: Dataset  # without Pixel Data, unless the file was deflated (then whole)
    syntax: UID
    keyword: str | None  # which pixel data element it has, if any
    vr: str | None  # that element's VR as stored (None in implicit VR)
    length: int | None  # value length; None when undefined (encapsulated)
    fp: BinaryIO | None  # positioned at the pixel data value; None for deflated
    data: bytes | None  # the pixel data value, for deflated files
    #: Decoding options (Image Pixel module, offset tables), taken before any edit.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.keyword is not None:
            from pydicom.pixels.utils import as_pixel_options

            self.options = as_pixel_options(self.ds)
            self.options["pixel_keyword"] = self.keyword
            self.options["pixel_vr"] = self.vr or _native_vr(self.ds, self.keyword)

    @property
    def pixel_source(self) -> BinaryIO | bytes:
        if self.data is not None:
            return self.data
        assert self.fp is not None  # one of the two is set when there is pixel data
        return self.fp


def _open(fp: BinaryIO) -> _Source:
    """Parse the header; leave fp at the start of the pixel data value."""
    with _data_errors_as("the stored file could not be parsed"):
        fp.seek(0)
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            # A deflate stream cannot be entered in the middle: inflate the whole file.
            fp.seek(0)
            ds = pydicom.dcmread(fp)
            keyword = next((k for k in _PIXEL_TAGS.values() if k in ds), None)
            if keyword is None:
                return _Source(ds, syntax, None, None, None, None, None)
            element = ds[keyword]
            del ds[keyword]
            return _Source(ds, syntax, keyword, element.VR, len(element.value), None, bytes(element.value))
        header = read_element_header(fp, not syntax.is_little_endian, syntax.is_implicit_VR)
        keyword = None if header is None else _PIXEL_TAGS.get(header[0][0] << 16 | header[0][1])
        if header is None or keyword is None:
            return _Source(ds, syntax, None, None, None, None, None)
        _tag, vr, length = header
        return _Source(ds, syntax, keyword, vr, None if length == _UNDEFINED_LENGTH else length, fp, None)


def _native_vr(ds: Dataset, keyword: str | None) -> str:
    """VR of a native pixel data element that was stored in implicit VR (PS3.5 §8.2)."""
    if keyword in _PIXEL_VR:
        return _PIXEL_VR[keyword]
    return "OB" if int(ds.get("BitsAllocated") or 16) <= 8 else "OW"


def _lossy(source: UID) -> bool:
    return source in LOSSY_METHODS


def _decoded_frames(source: _Source, indices: list[int] | None = None) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Yield (array, image pixel properties) per frame, converted to little endian."""
    from pydicom.pixels import get_decoder

    if source.syntax not in codecs().decoders:
        raise NotAcceptable(f"no decoder for {_name(source.syntax)} is installed")
    opts = source.options
    with _data_errors_as("the stored pixel data could not be decoded"):
        expected = int(opts.get("number_of_frames") or 1)
        frames = get_decoder(source.syntax).iter_array(
            source.pixel_source,
            indices=indices,
            as_rgb=_lossy(source.syntax),
            decoding_plugin=_decoding_plugin(source.syntax),
            **opts,
        )
        # A JPEG stream may split into more codestreams than there are frames.
        for arr, props in itertools.islice(frames, len(indices) if indices else expected):
            little = arr.dtype.newbyteorder("<")
            yield (arr if arr.dtype == little else arr.astype(little)), props


# -- encoding one frame -----------------------------------------------------------


def _encoded_photometric(props: dict, target: str) -> tuple[str, bool]:
    """(Photometric Interpretation, use the reversible colour transform) for `target`."""
    pi = str(props["photometric_interpretation"])
    if target in (JPEG_2000_LOSSLESS, HTJ2K_LOSSLESS) and pi == "RGB" and props["samples_per_pixel"] == 3:
        return "YBR_RCT", True
    return pi, False


def _encode(arr: np.ndarray, props: dict[str, Any], target: str) -> bytes:
    """One decoded frame as a `target` codestream; NotAcceptable if the codec refuses it."""
    from pydicom.pixels import get_encoder

    pi, mct = _encoded_photometric(props, target)
    bits_allocated = props["bits_allocated"]
    bits_stored = props.get("bits_stored", bits_allocated)
    if bits_allocated == 1:
        raise NotAcceptable("bit-packed pixel data (Bits Allocated 1) can only be served natively")
    try:
        imagecodecs = _imagecodecs()
        if target == HTJ2K_LOSSLESS:
            if bits_allocated > 16:
                raise NotAcceptable(f"HTJ2K encoding supports up to 16 bits allocated, not {bits_allocated}")
            return bytes(imagecodecs.htj2k_encode(arr, reversible=True, rgb=mct, resolutions=_resolutions(arr)))
        if target == JPEG_2000_LOSSLESS and imagecodecs is not None:
            return bytes(
                imagecodecs.jpeg2k_encode(
                    arr,
                    codecformat="J2K",
                    reversible=True,
                    mct=mct,
                    resolutions=_resolutions(arr),
                    bitspersample=bits_stored,
                )
            )
        opts = {
            "rows": props["rows"],
            "columns": props["columns"],
            "samples_per_pixel": props["samples_per_pixel"],
            "bits_allocated": bits_allocated,
            "bits_stored": bits_stored,
            "pixel_representation": props.get("pixel_representation", 0),
            "photometric_interpretation": pi,
            "planar_configuration": 0,
            "number_of_frames": 1,
        }
        if target == JPEG_2000_LOSSLESS:
            opts["use_mct"] = mct
        encoder = get_encoder(target)
        plugin = _plugin(encoder.available_plugins, _ENCODER_PREFERENCE[target])
        return bytes(encoder.encode(arr, encoding_plugin=plugin or "", **opts))
    except NotAcceptable:
        raise
    except Exception as exc:
        if not is_data_error(exc):
            raise
        log.warning("encoding a frame as %s failed", target, exc_info=True)  # the codec's words stay in the log
        raise NotAcceptable(
            f"pixel data with Photometric Interpretation {pi}, {props['samples_per_pixel']} sample(s) "
            f"and {bits_stored} of {bits_allocated} bits cannot be encoded as {_name(target)}"
        ) from None


def _resolutions(arr: np.ndarray) -> int:
    """Wavelet resolution levels: OpenJPEG's default 6 fails below 32 pixels a side."""
    return max(1, min(6, min(arr.shape[:2]).bit_length()))


def _native_bytes(arr: np.ndarray, props: dict[str, Any]) -> bytes:
    """One decoded frame as native little endian bytes (bit-packed when 1 bit allocated)."""
    if props["bits_allocated"] == 1:
        from pydicom.pixels import pack_bits

        return pack_bits(arr, pad=False)
    if arr.dtype.itemsize * 8 != props["bits_allocated"]:
        raise NotAcceptable(
            f"decoded samples of {arr.dtype.itemsize * 8} bits do not fit Bits Allocated "
            f"{props['bits_allocated']}"
        )
    return arr.tobytes()


# -- frames -----------------------------------------------------------------------


def transcode_frames(fp: BinaryIO, numbers: list[int], target: str) -> Iterator[bytes]:
    """Frames (1-based numbers) of the instance in fp, decoded to native or re-encoded.

    Reads the header, then only the frames asked for (pydicom seeks to them).
    """
    with _as_not_acceptable(None, target):
        source = _open(fp)
    if source.keyword is None:
        raise NotAcceptable("the instance has no pixel data")
    native = target in NATIVE_LITTLE_ENDIAN
    with _as_not_acceptable(source.syntax, target):
        for arr, props in _decoded_frames(source, [n - 1 for n in numbers]):
            yield _native_bytes(arr, props) if native else _encode(arr, props, target)


def is_data_error(exc: BaseException) -> bool:
    """Whether `exc` says that stored data cannot be parsed, decoded or encoded as asked
    (pydicom and the codecs raise many types for that); storage and I/O errors, exhausted
    memory and interruptions are not, and pass through."""
    if isinstance(exc, (BlobStoreError, MemoryError)) or not isinstance(exc, Exception):
        return False
    return not (isinstance(exc, OSError) and exc.errno is not None)


@contextlib.contextmanager
def _data_errors_as(message: str) -> Iterator[None]:
    """Turn a failure of the stored data into NotAcceptable(message). What the library said
    (a traceback and install paths, at times) goes to the log, never to the client."""
    try:
        yield
    except NotAcceptable:
        raise
    except Exception as exc:
        if not is_data_error(exc):
            raise
        log.warning("%s", message, exc_info=True)
        raise NotAcceptable(message) from None


@contextlib.contextmanager
def _as_not_acceptable(source: str | None, target: str) -> Iterator[None]:
    """Turn a refusal or a data failure into a 406 naming both syntaxes; storage errors pass through."""
    try:
        with _data_errors_as("the stored data could not be converted"):
            yield
    except NotAcceptable as exc:
        raise NotAcceptable(_cannot(source, target, exc.message)) from None


def _cannot(source: str | None, target: str, reason: str) -> str:
    origin = f"from {_name(source)} " if source else ""
    return (
        f"cannot transcode {origin}to {_name(target)}: {reason}; "
        "request transfer-syntax=* to receive the stored encoding"
    )


# -- whole instances --------------------------------------------------------------


def transcode_instance(
    fp: BinaryIO,
    target: str,
    *,
    spool_memory_bytes: int = 1 << 20,
    spool_dir: str | None = None,
) -> tempfile.SpooledTemporaryFile[bytes]:
    """The Part 10 file in fp re-written in `target`, in a spool file positioned at 0.

    The caller closes the returned file. Raises NotAcceptable (with both syntaxes in
    the message) when the conversion is not possible for this data.
    """
    out = tempfile.SpooledTemporaryFile(max_size=spool_memory_bytes, dir=spool_dir)  # noqa: SIM115 - returned open
    try:
        write_transcoded(fp, target, out)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def write_transcoded(fp: BinaryIO, target: str, out: IO[bytes]) -> None:
    """Write the Part 10 file in fp, re-written in `target`, to `out` from its position on
    (the caller may gather several instances in one file). Raises NotAcceptable as
    `transcode_instance` does; what was written by then is garbage for the caller to drop.
    """
    with _as_not_acceptable(None, target):
        source = _open(fp)
    with _as_not_acceptable(source.syntax, target):
        _write(source, UID(target), out)


def _write(source: _Source, target: UID, out: IO[bytes]) -> None:
    ds = source.ds
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.file_meta.TransferSyntaxUID = target
    if source.syntax == EXPLICIT_VR_BIG_ENDIAN:
        _swap_other_words(ds)
    if source.keyword is None:
        # No pixel data (SR, KO, PR...): only the encoding of the header changes.
        _write_header(ds, out)
        return
    if _copies_pixels(source.syntax, target):
        _write_header(ds, out)
        _copy_pixel_element(source, target, out)
        return

    frames = _decoded_frames(source)
    first = next(frames, None)
    if first is None:
        raise NotAcceptable("the pixel data holds no frame")
    props = first[1]
    _set_image_pixel(ds, props, target)
    _mark_lossy(ds, source.syntax)
    _write_header(ds, out)
    frames = itertools.chain([first], frames)
    if target in NATIVE_LITTLE_ENDIAN:
        _write_native(out, source, target, frames, props)
    else:
        _write_encapsulated(out, target, frames, int(ds.get("NumberOfFrames") or 1))


def _write_header(ds: Dataset, out: IO[bytes]) -> None:
    """Preamble, file meta and every element before Pixel Data, in the new encoding."""
    with _data_errors_as("the stored data set could not be re-encoded"):
        pydicom.dcmwrite(out, ds, enforce_file_format=True)


def _swap_other_words(ds: Dataset) -> None:
    """Byte-swap OW/OL/OF/OD/OV values read from big endian (pydicom leaves them as read)."""
    import numpy as np

    widths = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
    for element in ds.iterall():
        width = widths.get(element.VR)
        if width and element.value:
            value = bytes(element.value)
            whole = len(value) - len(value) % width
            swapped = np.frombuffer(value[:whole], dtype=f">u{width}").astype(f"<u{width}").tobytes()
            element.value = swapped + value[whole:]


def _set_image_pixel(ds: Dataset, props: dict, target: str) -> None:
    """Make the Image Pixel module describe the pixel data as it will be written."""
    if target in NATIVE_LITTLE_ENDIAN:
        ds.PhotometricInterpretation = str(props["photometric_interpretation"])
    else:
        ds.PhotometricInterpretation = _encoded_photometric(props, target)[0]
    ds.SamplesPerPixel = props["samples_per_pixel"]
    ds.BitsAllocated = props["bits_allocated"]
    if "bits_stored" in props:
        ds.BitsStored = props["bits_stored"]
        ds.HighBit = props["bits_stored"] - 1
    if "pixel_representation" in props:
        ds.PixelRepresentation = props["pixel_representation"]
    if props["samples_per_pixel"] > 1:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration


def _mark_lossy(ds: Dataset, source: UID) -> None:
    """Keep the record that lossy compression happened (PS3.3 C.7.6.1.1.5)."""
    if source not in LOSSY_METHODS:
        return
    if source in _ALWAYS_LOSSY or ds.get("LossyImageCompression") is None:
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds:
            ds.LossyImageCompressionMethod = LOSSY_METHODS[source]


def _element_header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", length)
    return head + vr.encode("ascii") + b"\x00\x00" + struct.pack("<L", length)


def _tag(keyword: str | None) -> int:
    return next(t for t, k in _PIXEL_TAGS.items() if k == keyword)


def _copy_pixel_element(source: _Source, target: str, out: IO[bytes]) -> None:
    """Native little endian pixel data moves across byte for byte."""
    if source.length is None:
        raise NotAcceptable("native pixel data with undefined length")
    vr = source.vr if source.vr and source.vr != "UN" else _native_vr(source.ds, source.keyword)
    out.write(_element_header(_tag(source.keyword), vr, source.length, target == IMPLICIT_VR_LITTLE_ENDIAN))
    if source.data is not None:
        out.write(source.data)
        return
    assert source.fp is not None  # set whenever data is not
    remaining = source.length
    while remaining:
        chunk = source.fp.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise NotAcceptable("the stored pixel data is shorter than its length")
        out.write(chunk)
        remaining -= len(chunk)


def _write_native(
    out: IO[bytes],
    source: _Source,
    target: str,
    frames: Iterator[tuple[np.ndarray, dict[str, Any]]],
    props: dict[str, Any],
) -> None:
    """Decoded frames as one native element; its length is patched in at the end."""
    keyword = source.keyword
    assert keyword is not None  # _write() only gets here with pixel data
    vr = _PIXEL_VR.get(keyword) or ("OB" if props["bits_allocated"] <= 8 else "OW")
    implicit = target == IMPLICIT_VR_LITTLE_ENDIAN
    start = out.tell()
    out.write(_element_header(_tag(keyword), vr, 0, implicit))
    length = 0
    if props["bits_allocated"] == 1:
        # Bit-packed frames need not end on a byte boundary: pack them all at once.
        import numpy as np
        from pydicom.pixels import pack_bits

        packed = pack_bits(np.concatenate([arr.ravel() for arr, _ in frames]), pad=False)
        out.write(packed)
        length = len(packed)
    else:
        for arr, frame_props in frames:
            data = _native_bytes(arr, frame_props)
            out.write(data)
            length += len(data)
    if length % 2:
        out.write(b"\x00")
        length += 1
    if length >= _UNDEFINED_LENGTH:
        raise NotAcceptable("the decoded pixel data is larger than a DICOM element can hold (4 GiB)")
    end = out.tell()
    out.seek(start)
    out.write(_element_header(_tag(keyword), vr, length, implicit))
    out.seek(end)


def _write_encapsulated(
    out: IO[bytes], target: str, frames: Iterator[tuple[np.ndarray, dict[str, Any]]], count: int
) -> None:
    """Encoded frames as items after a Basic Offset Table (PS3.5 A.4), one fragment per frame."""
    out.write(_element_header(0x7FE00010, "OB", _UNDEFINED_LENGTH, False))
    table_at = out.tell()
    out.write(_ITEM + struct.pack("<L", 4 * count) + b"\x00" * (4 * count))
    first_item = out.tell()
    offsets = []
    for arr, props in frames:
        fragment = _encode(arr, props, target)
        if len(fragment) % 2:
            fragment += b"\x00"
        offsets.append(out.tell() - first_item)
        out.write(_ITEM + struct.pack("<L", len(fragment)))
        out.write(fragment)
    out.write(_SEQUENCE_DELIMITER)
    if len(offsets) != count:
        raise NotAcceptable(f"the pixel data holds {len(offsets)} frame(s), Number of Frames says {count}")
    if offsets[-1] > 0xFFFFFFFF:
        raise NotAcceptable("the encoded frames are too large for a Basic Offset Table (4 GiB)")
    end = out.tell()
    out.seek(table_at + 8)
    out.write(struct.pack(f"<{count}L", *offsets))
    out.seek(end)
