"""Small synthetic DICOM instances for tests, built with pydicom (no fixtures on disk)."""
from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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
