"""STOW-RS of DICOM JSON metadata plus bulk data parts (PS3.18 §10.5.1.2 "metadata and bulk data").

A client sends `multipart/related; type="application/dicom+json"`: one part holds a
JSON array of datasets whose binary values are BulkDataURIs; each URI names a later
part by its Content-Location. This module turns one such dataset into a proper
Part 10 file (file meta information, preamble), which then goes through the same
ingest path as any uploaded file. Pixel Data is appended from its spooled part in
chunks, so a large image never has to fit in memory; other bulk values are small
and are read whole.
"""
from __future__ import annotations

import io
import logging
import tempfile
import uuid
from dataclasses import dataclass
from typing import IO, Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from .media import OCTET_STREAM, parse_media_type
from .transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN, IMAGE_MEDIA_TYPES

#: Our implementation's identity in the file meta of files we create.
IMPLEMENTATION_CLASS_UID = UID("2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "https://dicomserver.invalid/").int))
IMPLEMENTATION_VERSION_NAME = "DICOMSERVER"

PIXEL_DATA_TAG = 0x7FE00010
_COPY_CHUNK = 1 << 20
#: Media types of compressed pixel data parts and the transfer syntax each implies.
_PIXEL_MEDIA_TYPES = {media_type: syntaxes[0] for media_type, syntaxes in IMAGE_MEDIA_TYPES.items()}


class MetadataRejected(ValueError):
    """The dataset cannot be made into a Part 10 file; the message says why."""


@dataclass
class BulkPart:
    """A spooled bulk data part, keyed by its Content-Location."""

    content_type: str
    fp: IO[bytes]
    size: int

    @property
    def transfer_syntax(self) -> str | None:
        media, params = parse_media_type(self.content_type)
        if params.get("transfer-syntax"):
            return params["transfer-syntax"]
        return _PIXEL_MEDIA_TYPES.get(media)


def find_bulk_part(uri: str, parts: dict[str, BulkPart]) -> BulkPart | None:
    """The part a BulkDataURI names: by exact Content-Location, else by path."""
    if uri in parts:
        return parts[uri]
    path = _path_of(uri)
    matches = [p for location, p in parts.items() if _path_of(location) == path]
    return matches[0] if len(matches) == 1 else None


def _path_of(uri: str) -> str:
    without_scheme = uri.split("://", 1)[-1]
    return "/" + without_scheme.split("/", 1)[-1] if "://" in uri else uri


log = logging.getLogger(__name__)


def build_part10(
    metadata: dict[str, Any], parts: dict[str, BulkPart], *, spool_dir: str | None, memory_bytes: int
) -> tuple[IO[bytes], int]:
    """Write one JSON dataset and its bulk parts as a Part 10 file (spooled); return it and its size."""
    pixel: BulkPart | None = None

    def bulk_handler(tag: str, vr: str, uri: str) -> bytes:
        nonlocal pixel
        part = find_bulk_part(uri, parts)
        if part is None:
            raise MetadataRejected(f"BulkDataURI {uri!r} of ({tag[:4]},{tag[4:]}) names no part of the request")
        if int(tag, 16) == PIXEL_DATA_TAG:
            pixel = part
            return b""  # appended after the rest of the dataset, in chunks
        part.fp.seek(0)
        return part.fp.read()

    try:
        ds = Dataset.from_json(metadata, bulk_data_uri_handler=bulk_handler)
    except MetadataRejected:
        raise
    except Exception:  # pydicom's message carries its traceback: name the element instead
        raise MetadataRejected(f"the DICOM JSON dataset could not be read: {_unreadable(metadata)}") from None

    missing = [
        f"required attribute {keyword} {tag} is missing, empty or not a UI value"
        for keyword, tag in (("SOPClassUID", "(0008,0016)"), ("SOPInstanceUID", "(0008,0018)"))
        if keyword not in ds or ds[keyword].VR != "UI" or not isinstance(ds[keyword].value, str)
        or not ds[keyword].value.strip()
    ]
    if missing:  # the file meta cannot be written without them
        raise MetadataRejected("; ".join(missing))
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN
    if pixel is not None:
        transfer_syntax = pixel.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        try:
            UID(transfer_syntax).is_encapsulated  # noqa: B018 - raises for a UID that is not a transfer syntax
        except Exception:
            raise MetadataRejected(f"unknown transfer syntax {transfer_syntax!r} for Pixel Data") from None
        if PIXEL_DATA_TAG in ds:
            del ds[PIXEL_DATA_TAG]
    ds.file_meta = _file_meta(ds, transfer_syntax)

    target = tempfile.SpooledTemporaryFile(max_size=memory_bytes, dir=spool_dir)  # noqa: SIM115 - returned open
    try:
        head = io.BytesIO()
        pydicom.dcmwrite(head, ds, enforce_file_format=True)
        target.write(head.getvalue())
        if pixel is not None:
            _append_pixel_data(target, ds, pixel, UID(transfer_syntax))
        size = target.tell()
        target.seek(0)
        return target, size
    except MetadataRejected:
        target.close()
        raise
    except Exception:
        target.close()
        log.info("a Part 10 file could not be written from a DICOM JSON dataset", exc_info=True)
        raise MetadataRejected(
            "a Part 10 file could not be written from the JSON dataset: a value does not fit its VR"
        ) from None


def _unreadable(metadata: dict[str, Any]) -> str:
    """Which element of a dataset pydicom could not read, as one sentence (found only on failure)."""
    for key, element in metadata.items():
        try:
            Dataset.from_json({key: element}, bulk_data_uri_handler=lambda *_: b"")
        except Exception:
            vr = element.get("vr") if isinstance(element, dict) else None
            where = f"({key[:4]},{key[4:]})" if isinstance(key, str) and len(key) == 8 else repr(key)[:20]
            return f"the value of {where} cannot be read as VR {str(vr)[:8]!r}"
    return "it is not a DICOM JSON object"


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = UID(transfer_syntax)  # what pydicom would make of the str anyway
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _append_pixel_data(target: IO[bytes], ds: Dataset, part: BulkPart, transfer_syntax: UID) -> None:
    """Pixel Data element (7FE0,0010) in explicit VR little endian, streamed from the part."""
    tag = b"\xe0\x7f\x10\x00"
    if transfer_syntax.is_encapsulated:
        # One fragment holding the whole part (one frame), after an empty Basic Offset Table.
        if int(ds.get("NumberOfFrames") or 1) != 1:
            raise MetadataRejected("compressed multi-frame Pixel Data must be sent as a Part 10 file")
        padded = part.size + (part.size & 1)
        target.write(tag + b"OB\x00\x00\xff\xff\xff\xff")
        target.write(b"\xfe\xff\x00\xe0\x00\x00\x00\x00")
        target.write(b"\xfe\xff\x00\xe0" + padded.to_bytes(4, "little"))
        _copy(part, target)
        if part.size & 1:
            target.write(b"\x00")
        target.write(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        return
    vr = b"OW" if int(ds.get("BitsAllocated") or 8) > 8 else b"OB"
    padded = part.size + (part.size & 1)
    target.write(tag + vr + b"\x00\x00" + padded.to_bytes(4, "little"))
    _copy(part, target)
    if part.size & 1:
        target.write(b"\x00")


def _copy(part: BulkPart, target: IO[bytes]) -> None:
    part.fp.seek(0)
    while chunk := part.fp.read(_COPY_CHUNK):
        target.write(chunk)


def is_bulk_media_type(media: str) -> bool:
    return media == OCTET_STREAM or media in _PIXEL_MEDIA_TYPES or media.startswith(("image/", "video/"))
