"""Bulk update (the reference server's `POST /v2/studies/$bulkUpdate`): patient and study
attribute corrections for up to 50 studies, as an operation (the `update` handler).

Each instance of each study gets a new file version: its header up to Pixel Data is read and
rewritten with the changed attributes (pydicom), and the rest of the stored file is copied
after it in chunks, untouched, so memory stays flat whatever the instance's size. A deflated
file cannot be cut at its Pixel Data (the data set is one deflate stream): it is rewritten
whole, in memory, and only up to MAX_DEFLATED_BYTES. The new file goes through STOW's own
preparation (`Ingestor.prepare`: DICOM JSON, frame map, bulk data offsets, QIDO members all
move with the header's length) into a spool of the blob store, is made durable under a fresh
key, and only then, in one index transaction per batch with the operation's checkpoint, does
the instance point at it (index/update.py). The first update keeps the version first stored as
the instance's original (`msdicom-request-original` serves it); a later one replaces the
current version, whose blob is deleted after the commit. A crash between blob and commit
leaves an orphan blob (`dicom gc` sweeps it) and the operation redoes the batch.
"""
from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from backends import open_blobstore
from backends.base import COPY_CHUNK_SIZE, BlobNotFound

from .errors import BadRequest, Conflict
from .index import Index, InstanceRecord, UpdatedInstance, UpdateTarget
from .ingest import Ingestor, InstanceRejected, blob_key, discard_blob
from .operations import Run, new_operation_id, reference
from .partitions import DEFAULT, Partition, blob_prefix
from .request_json import json_body, member
from .settings import Settings
from .stow_json import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .transfer_syntax import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN
from .uids import is_valid_uid
from .validation import invalid_attributes

#: The operation type (`/operations/{id}` shows it), as the reference names it.
UPDATE = "update"
#: Studies one request may name (the reference's UpdateTags.MaxStudyInstanceUidLimit).
MAX_STUDIES = 50
#: The attributes a bulk update may change: the reference's UpdateTags.UpdateStudyFilterTags (the
#: non-sequence attributes of the Patient Identification and Patient Demographic modules, and
#: three of the General Study module).
UPDATABLE_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "TypeOfPatientID", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "MedicalRecordLocator", "PatientAge", "Occupation",
    "ConfidentialityConstraintOnPatientDataDescription", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "QualityControlSubject", "PatientSize", "PatientWeight", "PatientAddress", "MilitaryRank", "BranchOfService",
    "CountryOfResidence", "RegionOfResidence", "PatientTelephoneNumbers", "EthnicGroup",
    "PatientReligiousPreference", "PatientComments", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientSpeciesDescription", "PatientBreedDescription", "BreedRegistrationNumber",
    "IssuerOfPatientID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)
UPDATABLE_TAGS: frozenset[int] = frozenset(int(tag_for_keyword(k)) for k in UPDATABLE_KEYWORDS)  # type: ignore[arg-type]
#: The reference's error number for a change it refuses (ErrorNumbers.ValidationFailure).
VALIDATION_FAILURE = 100
#: Largest deflated file rewritten (whole, in memory); a larger one fails its instance.
MAX_DEFLATED_BYTES = 32 << 20
#: Instance errors listed per failed study, as the reference lists them.
MAX_INSTANCE_ERRORS = 5
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
UTF8 = "ISO_IR 192"


class UpdateFailed(Exception):
    """One instance could not be updated; the message says why (it goes into the operation's errors)."""


# -- the request ----------------------------------------------------------------------------


def start(
    index: Index, read: Callable[[int], bytes], base_url: str, partition: Partition = DEFAULT
) -> tuple[dict[str, str], list[str]]:
    """Check a `$bulkUpdate` body and queue its operation: the operation's reference and the
    studies it names (in the request's data partition). 409 while another update is queued or
    running (one at a time, as the reference)."""
    body = json_body(read)
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"studyInstanceUids": [...], "changeDataset": {...}}')
    study_uids = _study_uids(member(body, "studyInstanceUids"))
    change = _change_dataset(member(body, "changeDataset"))
    operation_id = new_operation_id()
    with index.write_transaction():  # the check and the insert under one lock: never two at once
        active = index.active_operations(UPDATE)
        if active:
            raise Conflict(f"There is already an active update operation with ID '{active[0]}'.")
        ids = index.study_ids(study_uids, partition)  # the one UID lookup: the operation works on row ids
        payload = {"studies": [{"uid": uid, "id": ids.get(uid)} for uid in study_uids], "changeDataset": change}
        index.insert_operation(operation_id, UPDATE, payload)
    return reference(operation_id, base_url), study_uids


def _study_uids(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest("The required field 'StudyInstanceUids' is missing or empty.")
    if len(value) > MAX_STUDIES:
        raise BadRequest(f"StudyInstanceUids count exceeded maximum length '{MAX_STUDIES}'")
    for uid in value:
        if not isinstance(uid, str) or not is_valid_uid(uid):
            shown = repr(uid)[:80]
            raise BadRequest(f"StudyInstanceUid {shown} is not a valid UID")
    if len(set(value)) != len(value):
        raise BadRequest("StudyInstanceUids lists a study more than once")
    return list(value)


def _change_dataset(value: Any) -> dict[str, Any]:
    """The changeDataset, checked as the reference does (only UPDATABLE_TAGS, values valid for
    their VR) and more (the dictionary's VR, no binary or sequence value); one line per problem."""
    if not isinstance(value, dict) or not value:
        raise BadRequest("The required field 'ChangeDataset' is missing or empty.")
    errors: list[str] = []
    change: dict[str, Any] = {}
    for key, element in value.items():
        tag = int(key, 16) if isinstance(key, str) and len(key) == 8 and _is_hex(key) else None
        shown = f"({key[:4]},{key[4:]})".upper() if tag is not None else repr(key)[:20]
        problem = _element_problem(tag, element)
        if problem is not None:
            errors.append(f"DICOM{VALIDATION_FAILURE}: {shown} - {problem}")
        else:
            change[key.upper()] = element
    if errors:
        raise BadRequest("the changeDataset is not valid: " + "; ".join(errors))
    return change


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _element_problem(tag: int | None, element: Any) -> str | None:
    if tag is None or tag not in UPDATABLE_TAGS:
        return "Updating the tag is not supported"
    vr = dictionary_VR(tag)
    if not isinstance(element, dict) or element.get("vr") != vr:
        return f"the element must be a DICOM JSON object with vr {vr!r}"
    if set(element) - {"vr", "Value"}:
        return "only vr and Value are allowed (no binary or bulk data value)"
    values = element.get("Value", [])
    if dictionary_VM(tag) == "1" and isinstance(values, list) and len(values) > 1:
        return "the attribute takes one value (VM 1)"
    try:
        ds = Dataset.from_json({f"{tag:08X}": element})
        problems = list(invalid_attributes(ds))
    except Exception:  # pydicom raises many types for values that do not fit the VR
        return f"the value cannot be read as {vr}"
    return problems[0][1].split(": ", 1)[-1] if problems else None


# -- the operation --------------------------------------------------------------------------


def update(run: Run) -> None:
    """The update operation: each study's instances, a batch at a time, a checkpoint after each."""
    index, settings = run.index, run.settings
    studies: list[dict[str, Any]] = run.record.payload["studies"]
    change = Dataset.from_json(run.record.payload["changeDataset"])
    state: dict[str, Any] = run.record.checkpoint or {
        "study": 0, "after": 0, "studyInstances": 0, "studyErrors": [], "studyErrorCount": 0,
        "results": {"studyProcessed": 0, "studyUpdated": 0, "studyFailed": 0, "instanceUpdated": 0},
    }
    store = open_blobstore(settings.blobstore_url)
    ingestor = Ingestor(store, index, bulkdata_inline_threshold=settings.bulkdata_inline_threshold)
    try:
        while not run.stopping and state["study"] < len(studies):
            state = _batch(run, ingestor, studies, change, state)
            run.pause(settings.update_pause)
        if run.stopping:
            return
        errors = state["results"].get("errors")
        with index.write_transaction():
            if errors:  # the reference ends an update with errors as failed, its results kept
                run.checkpoint(state, 100)
                run.fail(errors)
            else:
                run.finish()
    finally:
        store.close()


def _batch(run: Run, ingestor: Ingestor, studies: list[dict[str, Any]], change: Dataset,
           state: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the next batch of the current study's instances and commit them with the
    checkpoint; the state after it."""
    index, limit = run.index, run.settings.update_batch
    study = studies[state["study"]]
    targets = [] if study["id"] is None else index.update_targets(study["id"], after=state["after"], limit=limit)
    written: list[UpdatedInstance] = []
    failures: list[str] = []
    renewed = time.monotonic()
    try:
        for target in targets:
            if time.monotonic() - renewed > run.lease.total_seconds() / 3:  # large files: keep the lease
                with index.write_transaction():
                    index.renew_lease(run.record.id, run.owner, run.lease)
                renewed = time.monotonic()
            try:
                written.append(UpdatedInstance(target, rewrite(ingestor, target, change, run.settings)))
            except UpdateFailed as exc:
                failures.append(f"Failed to update instance: {exc}. {_instance_string(target)}")
        state = _next_state(state, targets, limit, failures)
        with index.write_transaction():
            applied, superseded = index.apply_updates(written)
            state = _count_applied(state, len(applied), study_done=len(targets) < limit, studies=studies)
            run.checkpoint(state, min(99, state["results"]["studyProcessed"] * 100 // len(studies)))
    except BaseException:  # an outage, a lost lease: the batch is done again by the next runner
        for item in written:  # not committed: nothing points at them (else `dicom gc` finds them)
            discard_blob(ingestor.store, item.record.blob_key)
        raise
    kept = {target.id for target in applied}
    for item in written:
        if item.target.id not in kept:  # deleted or replaced meanwhile
            discard_blob(ingestor.store, item.record.blob_key)
    for key in superseded:
        discard_blob(ingestor.store, key)
    return state


def _next_state(state: dict[str, Any], targets: list[UpdateTarget], limit: int, failures: list[str]) -> dict[str, Any]:
    """The state with this batch's failures noted and the cursor moved past it."""
    state = copy.deepcopy(state)
    state["studyErrorCount"] += len(failures)
    state["studyErrors"] = (state["studyErrors"] + failures)[:MAX_INSTANCE_ERRORS]
    if len(targets) == limit:
        state["after"] = targets[-1].id
    return state


def _count_applied(state: dict[str, Any], applied: int, *, study_done: bool,
                   studies: list[dict[str, Any]]) -> dict[str, Any]:
    """Count the batch's instances; at a study's end, the study (updated, or failed with its
    errors as the reference words them) and the cursor on to the next one."""
    state["studyInstances"] += applied
    results = state["results"]
    results["instanceUpdated"] += applied
    if not study_done:
        return state
    results["studyProcessed"] += 1
    if state["studyErrorCount"]:
        results["studyFailed"] += 1
        errors = results.setdefault("errors", [])
        errors.append(f"Failed to update instances for study {studies[state['study']]['uid']}")
        errors.extend(state["studyErrors"])
        if state["studyErrorCount"] > MAX_INSTANCE_ERRORS:
            errors.append("There are more instances failed to update than listed above.")
    elif state["studyInstances"]:
        results["studyUpdated"] += 1
    state.update(study=state["study"] + 1, after=0, studyInstances=0, studyErrors=[], studyErrorCount=0)
    return state


def _instance_string(target: UpdateTarget) -> str:
    return (f"StudyInstanceUID: {target.study_instance_uid}, SeriesInstanceUID: {target.series_instance_uid}, "
            f"SOPInstanceUID: {target.sop_instance_uid}")


# -- one instance ---------------------------------------------------------------------------


def rewrite(ingestor: Ingestor, target: UpdateTarget, change: Dataset, settings: Settings) -> InstanceRecord:
    """Write the instance's new version (durable, under a fresh key, not yet indexed) and return
    its index record; UpdateFailed if the stored file cannot be updated."""
    store = ingestor.store
    try:
        source = store.open(target.blob_key)
    except BlobNotFound:
        raise UpdateFailed("the stored file is missing") from None
    with source, store.spool(memory_bytes=settings.spool_memory_bytes, spool_dir=settings.spool_dir) as spool:
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
        try:
            ds = pydicom.dcmread(source, stop_before_pixels=True)
        except Exception:  # pydicom raises many types on corrupt input
            raise UpdateFailed("the stored file could not be parsed") from None
        tail: int | None = source.tell()
        if str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            if size > MAX_DEFLATED_BYTES:
                raise UpdateFailed(f"a deflated file larger than {MAX_DEFLATED_BYTES} bytes cannot be updated")
            source.seek(0)
            ds, tail = pydicom.dcmread(source), None  # one deflate stream: rewritten whole
        elif tail is not None and tail < size and not _at_pixel_data(source, tail, ds):
            raise UpdateFailed("the stored file's Pixel Data could not be located")
        head = io.BytesIO()
        try:
            _apply(ds, change)
            pydicom.dcmwrite(head, ds, enforce_file_format=True)
        except Exception:  # pydicom raises many types for values it cannot decode or encode
            raise UpdateFailed("the updated header could not be written") from None
        spool.write(head.getbuffer())
        del head, ds
        if tail is not None:
            source.seek(tail)
            while chunk := source.read(COPY_CHUNK_SIZE):
                spool.write(chunk)
        try:
            prepared = ingestor.prepare(spool.reader(), spool.size, study_uid=target.study_instance_uid)
        except InstanceRejected as exc:
            raise UpdateFailed(f"the updated file is not valid ({exc})") from None
        result = prepared.result
        if (result.series_instance_uid, result.sop_instance_uid) != (
            target.series_instance_uid, target.sop_instance_uid
        ):
            raise UpdateFailed("the stored file names another instance than its index row")
        key = blob_prefix(target.partition_key) + blob_key(
            target.study_instance_uid, target.series_instance_uid, target.sop_instance_uid
        )
        info = spool.commit(key)
    return prepared.record(key, info.size, info.sha256)


def _at_pixel_data(source: Any, offset: int, ds: Dataset) -> bool:
    """Whether the element at `offset` is (Float/Double Float) Pixel Data: where the copy starts."""
    source.seek(offset)
    head = source.read(4)
    if len(head) < 4:
        return False
    big = ds.file_meta.get("TransferSyntaxUID", "") == EXPLICIT_VR_BIG_ENDIAN
    group, element = (int.from_bytes(head[i:i + 2], "big" if big else "little") for i in (0, 2))
    return (group, element) in _PIXEL_TAGS


def _apply(ds: Dataset, change: Dataset) -> None:
    """Set the changed attributes (UTF-8 when a new value needs more than ASCII and the file
    uses another character set), drop stale group lengths, and name us as the implementation
    that wrote the file (the reference names itself there too)."""
    if _needs_utf8(change) and ds.get("SpecificCharacterSet") != UTF8:
        for _ in ds.iterall():  # decode every value with the old character set first
            pass
        ds.SpecificCharacterSet = UTF8
    for element in change:
        ds[element.tag] = copy.deepcopy(element)
        ds.pop(Tag(element.tag.group, 0), None)  # a retired group length would be wrong now
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME


def _needs_utf8(change: Dataset) -> bool:
    for element in change:
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        if any(value is not None and not str(value).isascii() for value in values):
            return True
    return False
