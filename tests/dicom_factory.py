"""DICOM instances built in code for tests, with pydicom (no fixtures on disk).

`make_instance` builds small synthetic instances; `in_transfer_syntax`, `relabelled` and
`jpeg_baseline` derive an instance from a real sample file (tests/dicom_samples.py names
them) in a form pydicom's test data lacks.
"""
from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    rows: int = 4,
    columns: int = 4,
    frames: int = 1,
    bits: int = 16,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = CT_IMAGE_STORAGE,
    pixel_data: bytes | None = None,
    with_pixel_data: bool = True,
    **attributes,
) -> Dataset:
    """A CT-like instance whose frame n is filled with the value n.

    `pixel_data` replaces those frames with the given bytes; `with_pixel_data=False` leaves
    out the Pixel Data element altogether (for a caller that appends it to the file itself).
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-1"
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if not with_pixel_data:
        return ds
    if pixel_data is None:
        dtype = np.uint16 if bits == 16 else np.uint8
        pixel_data = np.stack([np.full((rows, columns), n + 1, dtype=dtype) for n in range(frames)]).tobytes()
    ds.PixelData = pixel_data
    return ds


def write_large_instance(path, *, rows: int = 1024, columns: int = 1024, frames: int = 48,
                         **attributes) -> tuple[Dataset, bytes]:
    """A large multi-frame 16-bit instance written to `path` a frame at a time (the pixel data is
    never whole in memory); its header dataset and one frame (every frame is the same)."""
    ds = make_instance(rows=rows, columns=columns, frames=frames, with_pixel_data=False, **attributes)
    frame = np.arange(rows * columns, dtype=np.uint16).tobytes()
    with open(path, "wb") as file:
        file.write(to_bytes(ds))
        file.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (len(frame) * frames).to_bytes(4, "little"))
        for _ in range(frames):
            file.write(frame)
    return ds, frame


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart_body(parts: list[bytes], boundary: str = "BOUNDARY-1234", content_type: str | None = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        if content_type is not None:
            out += b"Content-Type: " + content_type.encode() + b"\r\n"
        out += b"\r\n" + part + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


# -- derived from real files --------------------------------------------------------


def in_transfer_syntax(ds: Dataset, transfer_syntax: str) -> bytes:
    """An uncompressed instance re-encoded by pydicom in another uncompressed syntax.

    Everything else stays as it is, UIDs included: the result is the same instance.
    """
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, "Explicit VR Little Endian sources only"
    assert transfer_syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
    ds = ds.copy()
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return to_bytes(ds)


def relabelled(ds: Dataset, transfer_syntax: str) -> bytes:
    """The same encapsulated codestreams under another transfer syntax that admits them.

    For the JPEG processes whose streams are a subset of another's: a Process 1 (baseline)
    stream is a valid Process 2/4 stream, a Process 14 Selection Value 1 stream a valid
    Process 14 stream (any selection value).
    """
    admits = {
        "1.2.840.10008.1.2.4.50": "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70": "1.2.840.10008.1.2.4.57",
    }
    source = ds.file_meta.TransferSyntaxUID
    assert admits.get(source) == transfer_syntax, (source, transfer_syntax)
    ds = ds.copy()
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return to_bytes(ds)


def mono8(ds: Dataset, *, step: int = 1) -> Dataset:
    """A greyscale image as 8-bit MONOCHROME2 (what `jpeg_baseline` takes), through the
    file's first window, with every `step`th row and column (Pixel Spacing scaled to match).

    MONOCHROME1 is inverted, so the image looks as it did.
    """
    assert ds.SamplesPerPixel == 1 and ds.get("NumberOfFrames", 1) in (1, "1")
    assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
    values = ds.pixel_array[::step, ::step].astype(np.float64)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)  # a single window assumed
    scaled = np.clip((values - (center - width / 2)) / width * 255, 0, 255).round().astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        scaled = 255 - scaled
    out = ds.copy()
    out.file_meta = FileMetaDataset(ds.file_meta)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.PhotometricInterpretation = "MONOCHROME2"
    out.Rows, out.Columns = scaled.shape
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 8, 8, 7, 0
    out.WindowCenter, out.WindowWidth = 128, 256
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in out:
            setattr(out, keyword, [float(v) * step for v in out[keyword].value])
    out.PixelData = scaled.tobytes()
    out["PixelData"].VR = "OB"
    return out


def jpeg_baseline(ds: Dataset, *, quality: int = 90, sop: str | None = None) -> bytes:
    """An 8-bit single-frame MONOCHROME2 image compressed by libjpeg (Pillow) as JPEG Baseline.

    The header is the source's, with a new SOP Instance UID (derived data) and the
    Lossy Image Compression attributes PS3.3 C.7.6.1.1.5 asks for.
    """
    from PIL import Image

    assert ds.BitsAllocated == 8 and ds.SamplesPerPixel == 1 and ds.get("NumberOfFrames", 1) in (1, "1")
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    buffer = io.BytesIO()
    Image.fromarray(ds.pixel_array.astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=quality)
    stream = buffer.getvalue()
    assert stream[:2] == b"\xff\xd8" and b"\xff\xc0" in stream  # SOF0: baseline
    out = ds.copy()
    out.file_meta = FileMetaDataset(ds.file_meta)
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.SOPInstanceUID = sop or generate_uid(entropy_srcs=[ds.SOPInstanceUID, "jpeg_baseline", str(quality)])
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.PixelData = encapsulate([stream])
    out["PixelData"].VR = "OB"
    out.LossyImageCompression = "01"
    out.LossyImageCompressionMethod = "ISO_10918_1"
    out.LossyImageCompressionRatio = f"{ds.Rows * ds.Columns / len(stream):.2f}"[:16]
    return to_bytes(out)


# -- corrupted files (byte surgery on what to_bytes wrote) ----------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def element_offsets(data: bytes) -> dict[int, tuple[int, int, int]]:
    """Tag → (offset of its header, of its length field, of its value) for every top-level
    element of an explicit VR little endian Part 10 file (file meta included), up to and
    including the first element of undefined length (encapsulated Pixel Data) or Pixel Data."""
    import struct

    offsets: dict[int, tuple[int, int, int]] = {}
    position = 132  # after the preamble and 'DICM'
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        vr = data[position + 4 : position + 6]
        length_at, value_at = (position + 8, position + 12) if vr in _LONG_VRS else (position + 6, position + 8)
        (length,) = struct.unpack_from("<L" if vr in _LONG_VRS else "<H", data, length_at)
        tag = group << 16 | element
        offsets[tag] = (position, length_at, value_at)
        if tag == 0x7FE00010 or length == 0xFFFFFFFF:
            break
        position = value_at + length
    return offsets


def with_length(data: bytes, tag: int, length: int) -> bytes:
    """`data` with the length field of top-level element `tag` saying `length` (a lie)."""
    import struct

    header, length_at, value_at = element_offsets(data)[tag]
    field = struct.pack("<L" if value_at - header == 12 else "<H", length)
    return data[:length_at] + field + data[length_at + len(field) :]


def explicit_element(tag: int, vr: str, value: bytes, *, length: int | None = None) -> bytes:
    """The bytes of one explicit VR little endian element (`length` may lie about `value`)."""
    import struct

    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr.encode("ascii") in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<L", size) + value
    return head + struct.pack("<H", size) + value


def with_element_before(data: bytes, tag: int, element: bytes) -> bytes:
    """`data` with the raw `element` bytes inserted before top-level element `tag`."""
    header = element_offsets(data)[tag][0]
    return data[:header] + element + data[header:]
