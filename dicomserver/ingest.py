"""The STOW-RS pipeline for one instance: a spooled part → header → validate → blob → index.

Every part ends as exactly one `PartResult`: stored (ReferencedSOPSequence) or
failed with a PS3.18/PS3.4 failure reason (FailedSOPSequence). The blob is written
first under a fresh key and only then indexed, in one transaction; if indexing
fails the blob is deleted, and a replaced version's blob is deleted only after the
commit. So no index row ever points at a missing blob; a crash can at worst leave
an orphan blob, invisible to every request.
"""
from __future__ import annotations

import io
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, cast

import peewee
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial

from backends.base import BlobInfo, BlobStore, BlobStoreError, StorageUnavailable

from .dicomjson import BulkMap, DicomJson, bulk_data_uri, dataset_to_json
from .frames import PIXEL_TAGS, PixelDataError, build_frame_map, read_element_header
from .header import Converter, Unhandled, read_header, read_trailer
from .index import DuplicateInstance, Index, InstanceRecord
from .metrics import BLOBSTORE_SECONDS
from .partitions import DEFAULT, Partition, blob_prefix
from .searchable import index_columns
from .transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    is_encapsulated,
)
from .uids import normalize_uid
from .validation import UndecodableElement, check_encoding, invalid_attributes

log = logging.getLogger(__name__)

# Failure reasons (PS3.4 Annex GG / the reference server's codes).
PROCESSING_FAILURE = 0x0110  # 272
INVALID_DATASET = 0xA900  # 43264: cannot be parsed or decoded, or required attributes missing/invalid
STUDY_UID_MISMATCH = 0xA901  # 43265: StudyInstanceUID differs from the one in the URL
INSTANCE_ALREADY_EXISTS = 0xB00E  # 45070
CANNOT_UNDERSTAND = 0xC000  # 49152: here, not the instance its sender announced (a DIMSE C-STORE)
# Warning reasons (PS3.4 Annex GG).
ELEMENTS_DISCARDED = 0xB006  # 45062: invalid values kept in the file but not indexed
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007  # 45063: implicit VR, as the reference server flags it

REQUIRED_UIDS = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
)
PIXEL_DATA = "7FE00010"
#: Elements larger than this are not read into memory while parsing the header.
_DEFER_SIZE = 64 * 1024
#: The 128-byte preamble and 'DICM' of a Part 10 file (PS3.10 §7.1); the file meta follows.
_PREAMBLE_AND_PREFIX = 132
NOT_PART10 = "not a DICOM Part 10 file: there is no 'DICM' prefix after a 128-byte preamble"
#: The last of REQUIRED_UIDS in tag order: `identify` reads no element after it.
_LAST_IDENTIFYING_TAG = 0x0020000E


@dataclass
class PartResult:
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    failure_reason: int | None = None
    #: Why it failed (failure) or what was wrong with it (warning): one line each.
    comments: list[str] = field(default_factory=list)
    warning_reason: int | None = None
    replaced: bool = False

    @property
    def stored(self) -> bool:
        return self.failure_reason is None


class InstanceRejected(Exception):
    def __init__(self, reason: int, *comments: str):
        super().__init__("; ".join(comments))
        self.reason = reason
        self.comments = list(comments)
        #: The part's result, filled in as far as it got (set by Ingestor.prepare).
        self.result = PartResult(failure_reason=reason, comments=list(comments))


class NotPart10(InstanceRejected):
    """The data is no DICOM Part 10 file at all: a bulk import reports it apart from corrupt DICOM."""


@dataclass
class Prepared:
    """A validated instance, ready to be stored: its DICOM JSON, frames and bulk data map."""

    result: PartResult
    transfer_syntax: str
    frame_map: dict[str, Any] | None
    metadata: DicomJson
    bulk: BulkMap
    #: Top-level attributes with a value validation refused: stored, never indexed.
    invalid: frozenset[str] = frozenset()

    def record(
        self, blob_key: str, size: int, sha256: str | None, partition: Partition = DEFAULT
    ) -> InstanceRecord:
        r = self.result
        assert r.study_instance_uid and r.series_instance_uid and r.sop_instance_uid and r.sop_class_uid
        return InstanceRecord(
            study_instance_uid=r.study_instance_uid,
            series_instance_uid=r.series_instance_uid,
            sop_instance_uid=r.sop_instance_uid,
            sop_class_uid=r.sop_class_uid,
            transfer_syntax_uid=self.transfer_syntax,
            blob_key=blob_key,
            size=size,
            sha256=sha256,
            frames=None if self.frame_map is None else _compact_json(self.frame_map),
            metadata=self.metadata,
            columns=index_columns(self.metadata, self.invalid),
            bulkdata=_compact_json(self.bulk) if self.bulk else None,
            partition=partition,
        )


class Ingestor:
    """Stores instances into a blob store and an index."""

    def __init__(self, store: BlobStore, index: Index, *, bulkdata_inline_threshold: int = 1024):
        self.store = store
        self.index = index
        self.bulkdata_inline_threshold = bulkdata_inline_threshold

    def ingest(
        self, fp: IO[bytes], size: int, *, study_uid: str | None, replace: bool, partition: Partition = DEFAULT
    ) -> PartResult:
        """Store one Part 10 file (copied into the store); never raises for bad input, only
        for outages."""
        try:
            prepared = self.prepare(fp, size, study_uid=study_uid)
        except InstanceRejected as rejection:
            return rejection.result

        def put(key: str) -> BlobInfo:
            fp.seek(0)
            return self.store.put(key, fp, size=size)

        return self.store_prepared(prepared, put, replace=replace, partition=partition)

    def store_prepared(
        self, prepared: Prepared, write: Callable[[str], BlobInfo], *, replace: bool, partition: Partition = DEFAULT
    ) -> PartResult:
        """Write the blob (`write(key)` stores it durably: `BlobStore.put`, or
        `BlobSpool.commit` for a part STOW received into a spool of the store) and index
        it; the result, with a failure reason when the index refuses it. Raises for
        outages only."""
        try:
            self._store(write, prepared, replace, partition)
        except InstanceRejected as rejection:
            prepared.result.failure_reason = rejection.reason
            prepared.result.warning_reason = None
            prepared.result.comments = rejection.comments
        return prepared.result

    def prepare(self, fp: IO[bytes], size: int, *, study_uid: str | None) -> Prepared:
        """Everything STOW learns from a file before storing it; raise InstanceRejected.

        The common case is read from the raw element stream (`header.py`); a file that
        reader declines (it decides before producing anything) goes through pydicom.
        Both give the same result (tests/test_header.py)."""
        result = PartResult()
        try:
            if size == 0:
                raise InstanceRejected(INVALID_DATASET, "the part is empty")
            try:
                return self._prepare_fast(fp, size, study_uid, result)
            except Unhandled:
                result = PartResult()
            return self._prepare_pydicom(fp, size, study_uid, result)
        except InstanceRejected as rejection:
            result.failure_reason = rejection.reason
            result.warning_reason = None
            result.comments = rejection.comments
            rejection.result = result
            raise

    def _prepare_fast(self, fp: IO[bytes], size: int, study_uid: str | None, result: PartResult) -> Prepared:
        """`prepare` from the raw bytes: raises Unhandled before any outcome when the file is
        not one `header.py` reads exactly as pydicom would."""
        parsed = read_header(fp, size)
        converter = Converter(parsed, fp)
        uids = converter.identifying_uids()
        pixel_module = converter.pixel_module()
        ds = cast(Dataset, pixel_module)  # build_frame_map reads only the Image Pixel attributes
        fp.seek(parsed.pixel_offset)
        try:
            frame_map = build_frame_map(fp, ds, parsed.transfer_syntax, size)
        except PixelDataError as exc:
            _identify_texts(uids, result)
            raise InstanceRejected(INVALID_DATASET, str(exc)) from None
        if fp.tell() < size:
            read_trailer(fp, fp.tell(), size, parsed.implicit)
        problems = _identify_texts(uids, result)
        if problems:
            raise InstanceRejected(INVALID_DATASET, *problems)
        _check_study(result, study_uid)
        metadata, bulk = converter.to_json(_instance_path(result), self.bulkdata_inline_threshold)
        _warn_implicit_vr(parsed.transfer_syntax, result)
        if frame_map is not None:
            metadata[PIXEL_DATA] = {
                "vr": _pixel_data_vr(ds, parsed.transfer_syntax),
                "BulkDataURI": bulk_data_uri(_instance_path(result), PIXEL_DATA),
            }
            metadata = dict(sorted(metadata.items()))
        return Prepared(result, parsed.transfer_syntax, frame_map, metadata, bulk, frozenset())

    def _prepare_pydicom(self, fp: IO[bytes], size: int, study_uid: str | None, result: PartResult) -> Prepared:
        """`prepare` through pydicom: every file, whatever its encoding or flaws."""
        ds, transfer_syntax = _read_header(fp)
        try:
            frame_map = _check_encoding(fp, size, ds, transfer_syntax)
        except InstanceRejected:
            _identify(ds, result)  # as far as the UIDs can be read: say which instance was refused
            raise
        _validate(ds, result, study_uid)
        invalid = _check_values(ds, transfer_syntax, result)
        instance_path = _instance_path(result)
        metadata, skipped, bulk = dataset_to_json(
            ds,
            # Offsets into a deflated file's inflated data mean nothing in the file.
            fp=None if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN else fp,
            instance_path=instance_path,
            inline_threshold=self.bulkdata_inline_threshold,
        )
        if skipped:
            log.info("instance %s: attributes left out of metadata: %s", result.sop_instance_uid, skipped)
        # Deflated files have no offsets, but their Pixel Data is still served (by parsing).
        has_pixels = frame_map is not None or (
            transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN and "Rows" in ds
        )
        if has_pixels:
            metadata[PIXEL_DATA] = {
                "vr": _pixel_data_vr(ds, transfer_syntax),
                "BulkDataURI": bulk_data_uri(instance_path, PIXEL_DATA),
            }
            metadata = dict(sorted(metadata.items()))
        return Prepared(result, transfer_syntax, frame_map, metadata, bulk, invalid)

    def _store(
        self, write: Callable[[str], BlobInfo], prepared: Prepared, replace: bool, partition: Partition
    ) -> None:
        result = prepared.result
        assert result.study_instance_uid and result.series_instance_uid and result.sop_instance_uid
        key = blob_prefix(partition.key) + blob_key(
            result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
        )
        with BLOBSTORE_SECONDS.labels("put").time():
            info = write(key)
        record = prepared.record(key, info.size, info.sha256, partition)
        try:
            outcome = self.index.store_instance(record, replace=replace)
        except DuplicateInstance:
            discard_blob(self.store, key)
            raise InstanceRejected(
                INSTANCE_ALREADY_EXISTS,
                f"instance {result.sop_instance_uid} already exists; use PUT to replace it",
            ) from None
        except BaseException as exc:
            discard_blob(self.store, key)
            if isinstance(exc, (peewee.OperationalError, StorageUnavailable)) or not isinstance(exc, Exception):
                raise
            log.exception("indexing instance %s failed", result.sop_instance_uid)
            raise InstanceRejected(PROCESSING_FAILURE, "the instance could not be indexed") from None
        result.replaced = outcome.replaced
        for obsolete in (outcome.obsolete_blob_key, outcome.obsolete_original_key):
            if obsolete:
                discard_blob(self.store, obsolete)


def discard_blob(store: BlobStore, key: str) -> None:
    """Delete a blob no index row points to; a failure leaves an orphan for `dicom gc`."""
    try:
        with BLOBSTORE_SECONDS.labels("delete").time():
            store.delete(key)
    except BlobStoreError:
        log.exception("could not delete blob %s; it is an orphan for `dicom gc`", key)


def blob_key(study_uid: str, series_uid: str, sop_uid: str, *, now: float | None = None) -> str:
    """A fresh key per stored version: '<study>/<series>/<sop>_<unix time>-<random>.dcm'.

    A new version never overwrites a visible blob, and the time in the name lets the
    orphan sweep (`flask dicom gc`) tell an in-flight upload from a leftover one
    without asking the store for timestamps. Instances share their series' directory
    on disk: a new instance creates no directory, so STOW fsyncs one directory, not two.
    """
    created = int(time.time() if now is None else now)
    return f"{study_uid}/{series_uid}/{sop_uid}_{created}-{uuid.uuid4().hex}.dcm"


def blob_created(key: str) -> int | None:
    """The creation time written into a key by `blob_key` (this or the earlier
    '<sop>/<time>-<random>.dcm' layout), or None for other keys."""
    name = key.rsplit("/", 1)[-1].rpartition("_")[2]  # UIDs never contain '_'
    stamp, dash, _rest = name.partition("-")
    return int(stamp) if dash and stamp.isdigit() else None


def identify(fp: IO[bytes]) -> PartResult | None:
    """The identifying UIDs of a Part 10 file, read from its start up to (0020,000E) only.

    For a bulk import to skip what is stored without reading the whole file. Raises
    NotPart10 as `Ingestor.prepare` would; None when the start does not parse (prepare
    then says why) or a UID is missing or invalid.
    """
    try:
        return _identify_fast(fp)
    except Unhandled:
        return _identify_pydicom(fp)


def _identify_fast(fp: IO[bytes]) -> PartResult | None:
    """`identify` from the raw bytes (`header.py`); Unhandled for a file it leaves to pydicom."""
    size = fp.seek(0, io.SEEK_END)
    converter = Converter(read_header(fp, size, stop_after=_LAST_IDENTIFYING_TAG), fp)
    result = PartResult()
    return None if _identify_texts(converter.identifying_uids(), result) else result


def _identify_pydicom(fp: IO[bytes]) -> PartResult | None:
    fp.seek(0)
    try:
        ds = read_partial(
            cast(BinaryIO, fp), stop_when=_after_identifying_uids, defer_size=_DEFER_SIZE
        )
    except InvalidDicomError:
        raise NotPart10(INVALID_DATASET, NOT_PART10) from None
    except Exception:  # pydicom raises many types on corrupt input; prepare reports it
        return None
    result = PartResult()
    return None if _identify(ds, result) else result


def name_from_head(head: bytes) -> tuple[str | None, str | None]:
    """(SOPClassUID, SOPInstanceUID) as far as the start of a Part 10 file gives them:
    STOW names a part the store had no room to receive from the bytes that came first."""
    try:
        ds = read_partial(cast(BinaryIO, io.BytesIO(head)), stop_when=_after_sop_instance_uid, defer_size=_DEFER_SIZE)
        result = PartResult()
        _identify(ds, result)
    except Exception:  # anything short of a readable start names nothing
        return None, None
    return result.sop_class_uid, result.sop_instance_uid


def _after_sop_instance_uid(tag: int, vr: str | None, length: int) -> bool:
    return tag > 0x00080018


def _after_identifying_uids(tag: int, vr: str | None, length: int) -> bool:
    return tag > _LAST_IDENTIFYING_TAG


def _instance_path(result: PartResult) -> str:
    return (
        f"/studies/{result.study_instance_uid}/series/{result.series_instance_uid}"
        f"/instances/{result.sop_instance_uid}"
    )


def _pixel_data_vr(ds: Dataset, transfer_syntax: str) -> str:
    """PS3.5 §8.2: encapsulated or up to 8 bits allocated is OB, otherwise OW."""
    encapsulated = is_encapsulated(transfer_syntax)
    return "OB" if encapsulated or int(ds.get("BitsAllocated") or 8) <= 8 else "OW"


def _compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _read_header(fp: IO[bytes]) -> tuple[Dataset, str]:
    """Parse everything before Pixel Data (fp is left there); reject what is not DICOM."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=_DEFER_SIZE)
    except InvalidDicomError:
        raise NotPart10(INVALID_DATASET, NOT_PART10) from None
    except Exception as exc:  # pydicom raises many types on corrupt input; its words are not for clients
        log.info("a STOW part could not be parsed: %s", exc)
        raise InstanceRejected(
            INVALID_DATASET, "the data set could not be parsed: an element or sequence item is malformed or cut short"
        ) from None
    transfer_syntax = normalize_uid(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if transfer_syntax is None:
        raise InstanceRejected(
            INVALID_DATASET, "the file meta information has no valid TransferSyntaxUID (0002,0010)"
        )
    return ds, transfer_syntax


def _check_encoding(fp: IO[bytes], size: int, ds: Dataset, transfer_syntax: str) -> dict[str, Any] | None:
    """Check that every element, Pixel Data and what follows it included, can be decoded as
    its length and VR say, and locate the frames (fp must be where `_read_header` left it).

    Lengths are compared with the file size and only item and element headers are read,
    besides the rare elements after Pixel Data: next to nothing beside the parse itself.
    """
    try:
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            _check_deflated(fp)
            return None  # offsets into the inflated data are no offsets into the file
        check_encoding(ds, size)
        frame_map = build_frame_map(fp, ds, transfer_syntax, size)
        _check_after_pixel_data(fp, size, transfer_syntax)
    except (UndecodableElement, PixelDataError) as exc:
        raise InstanceRejected(INVALID_DATASET, str(exc)) from None
    return frame_map


def _check_after_pixel_data(fp: IO[bytes], size: int, transfer_syntax: str) -> None:
    """Elements after Pixel Data (Data Set Trailing Padding, Digital Signatures) must fit the file too."""
    if fp.tell() >= size:
        return
    try:
        trailing = read_dataset(
            cast(BinaryIO, fp),
            is_implicit_VR=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
            is_little_endian=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
            defer_size=_DEFER_SIZE,
        )
    except Exception:  # pydicom raises many types on corrupt input
        raise UndecodableElement("the elements after the Pixel Data cannot be parsed") from None
    check_encoding(trailing, size)


def _check_deflated(fp: IO[bytes]) -> None:
    """The checks of a plain file, on the inflated data set of a deflated one (PS3.5 A.5).

    A deflate stream cannot be entered in the middle, so this inflates the data set once
    more (pydicom did it to read the header): deflated files are rare and small.
    """
    start = _PREAMBLE_AND_PREFIX
    fp.seek(start)
    # The file meta information (group 0002) is never deflated, and always explicit VR little endian.
    while (header := read_element_header(fp, big_endian=False, implicit=False)) is not None and header[0][0] == 2:
        start = fp.tell() + header[2]
        fp.seek(start)
    fp.seek(start)
    try:
        data = io.BytesIO(zlib.decompress(fp.read(), -zlib.MAX_WBITS))
        inflated = read_dataset(data, False, True, stop_when=_at_pixel_data, defer_size=_DEFER_SIZE)
    except Exception:  # zlib and pydicom raise many types on corrupt input
        raise UndecodableElement("the deflated data set could not be inflated and parsed") from None
    size = len(data.getbuffer())
    check_encoding(inflated, size)
    build_frame_map(data, inflated, EXPLICIT_VR_LITTLE_ENDIAN, size)
    _check_after_pixel_data(data, size, EXPLICIT_VR_LITTLE_ENDIAN)


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    """Where pydicom's stop_before_pixels stops: Pixel Data, Float and Double Float Pixel Data."""
    return (tag >> 16, tag & 0xFFFF) in PIXEL_TAGS


def _check_values(ds: Dataset, transfer_syntax: str, result: PartResult) -> frozenset[str]:
    """Lenient checks: the instance is stored, with a WarningReason and comments.

    Returns the top-level attributes that had an invalid value (never indexed).
    """
    try:
        problems = list(invalid_attributes(ds))
    except UndecodableElement as exc:
        raise InstanceRejected(INVALID_DATASET, str(exc)) from None
    if problems:
        result.warning_reason = ELEMENTS_DISCARDED
        result.comments.extend(f"{comment} (stored, not searchable)" for _tag, comment in problems)
    _warn_implicit_vr(transfer_syntax, result)
    return frozenset(tag for tag, _comment in problems)


def _warn_implicit_vr(transfer_syntax: str, result: PartResult) -> None:
    """The warning every implicit VR file gets (the rest of `_check_values` for a file
    `header.py` read: it has no invalid value, or it would have gone through pydicom)."""
    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        result.warning_reason = DATASET_DOES_NOT_MATCH_SOP_CLASS
        result.comments.append(
            "the file is encoded in Implicit VR Little Endian; "
            "value representations were taken from the data dictionary"
        )


def _validate(ds: Dataset, result: PartResult, study_uid: str | None) -> None:
    """The four identifying UIDs must be present and well-formed (fills `result`)."""
    problems = _identify(ds, result)
    if problems:
        raise InstanceRejected(INVALID_DATASET, *problems)
    _check_study(result, study_uid)


def _check_study(result: PartResult, study_uid: str | None) -> None:
    """The StudyInstanceUID must be the one in the URL, if there is one."""
    if study_uid is not None and result.study_instance_uid != study_uid:
        raise InstanceRejected(
            STUDY_UID_MISMATCH,
            f"StudyInstanceUID {result.study_instance_uid} does not match the study in the URL ({study_uid})",
        )


def _identify(ds: Dataset, result: PartResult) -> list[str]:
    """Fill `result` with the identifying UIDs that are valid; one problem per other one."""
    texts: dict[int, str | None] = {}
    for keyword, tag in REQUIRED_UIDS:
        try:
            raw = ds.get(keyword)
        except Exception:
            raw = None
        texts[_tag_number(tag)] = None if raw is None else str(raw)
    return _identify_texts(texts, result)


def _tag_number(tag: str) -> int:
    """'(0008,0016)' as 0x00080016."""
    return int(tag[1:5] + tag[6:10], 16)


def _identify_texts(texts: dict[int, str | None], result: PartResult) -> list[str]:
    """`_identify` from the UIDs' text by tag (None when absent)."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for keyword, tag in REQUIRED_UIDS:
        raw = texts.get(_tag_number(tag))
        text = "" if raw is None else raw
        uid = normalize_uid(text)
        if uid is None:
            problems.append(
                f"required attribute {keyword} {tag} is missing or empty"
                if not text.strip(" \x00")
                else f"{keyword} {tag} value {text[:70]!r} is not a valid UID"
            )
        else:
            values[keyword] = uid
    result.sop_class_uid = values.get("SOPClassUID")
    result.sop_instance_uid = values.get("SOPInstanceUID")
    result.study_instance_uid = values.get("StudyInstanceUID")
    result.series_instance_uid = values.get("SeriesInstanceUID")
    return problems
