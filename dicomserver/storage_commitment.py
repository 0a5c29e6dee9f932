"""Storage Commitment Push Model (PS3.4 Annex J): what the archive commits to keep.

A modality deletes its copy of an image once the archive has committed to it, so
"committed" must mean what a later retrieve will find, not what was once received: the
instance is in the index (in the gateway's data partition, DICOMWEB_DIMSE_PARTITION) under the
referenced SOP Class UID, and its blob is in the blob store (a stat, never a read). Both are
checked when the request is evaluated, so an instance deleted since, or whose blob went
missing under its index row, is reported failed rather than committed from memory of its
C-STORE. The index is asked once per batch of UIDs, whatever the number of references.

DICOM-only and free of any network library: the request is parsed from the N-ACTION's
Action Information and the result is the N-EVENT-REPORT's Event Information; how either
travels is the DIMSE gateway's business (dimse_commitment.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from backends.base import BlobStoreError

from .archive import Archive
from .partitions import DEFAULT, Partition

log = logging.getLogger(__name__)

#: PS3.4 J.3.5: the SOP class and its one well-known SOP instance.
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
#: PS3.4 J.3.2: Action Type ID of a Storage Commitment Request.
REQUEST_STORAGE_COMMITMENT = 1
#: PS3.4 J.3.3: Event Type IDs of the result.
ALL_COMMITTED = 1
FAILURES_EXIST = 2

# N-ACTION failure statuses (PS3.7 10.1.4.1.10, Annex C).
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) values (PS3.3 C.14.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


class InvalidRequest(Exception):
    """An N-ACTION the SCP will not process: its failure status and a comment saying why."""

    def __init__(self, status: int, comment: str):
        super().__init__(comment)
        self.status = status


@dataclass(frozen=True)
class Reference:
    """One item of a Referenced SOP Sequence (0008,1199)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Request:
    """A Storage Commitment Request: its Transaction UID and the instances it references."""

    transaction_uid: str
    references: list[Reference]


@dataclass
class Result:
    """What the archive commits to of one request (PS3.4 J.3.3.1): every reference, either
    committed or failed with its Failure Reason, in the order of the request."""

    transaction_uid: str
    committed: list[Reference] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)

    @property
    def event_type(self) -> int:
        return FAILURES_EXIST if self.failed else ALL_COMMITTED

    def event_information(self, retrieve_ae_title: str) -> Dataset:
        """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2): the Transaction UID,
        the committed instances (with the AE title they are retrieved from) and the failed
        ones with their reasons."""
        info = Dataset()
        info.TransactionUID = self.transaction_uid
        if self.committed:
            info.RetrieveAETitle = retrieve_ae_title
            info.ReferencedSOPSequence = Sequence([_item(ref) for ref in self.committed])
        if self.failed:
            items = []
            for ref, reason in self.failed:
                item = _item(ref)
                item.FailureReason = reason
                items.append(item)
            info.FailedSOPSequence = Sequence(items)
        return info


def parse_request(
    action_type_id: int | None,
    requested_instance_uid: str,
    information: Callable[[], Dataset | None],
    max_references: int,
) -> Request:
    """The request an N-ACTION carries (`information` decodes its Action Information), or
    InvalidRequest with the status to refuse it with (PS3.4 J.3.2.1.3: a failure status
    means the SCP does not process the request)."""
    if action_type_id != REQUEST_STORAGE_COMMITMENT:
        raise InvalidRequest(NO_SUCH_ACTION, f"Action Type ID {action_type_id} is not 1 (request commitment)")
    if requested_instance_uid != STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE:
        raise InvalidRequest(NO_SUCH_SOP_INSTANCE, "Requested SOP Instance UID is not 1.2.840.10008.1.20.1.1")
    try:
        return _parse_information(information() or Dataset(), max_references)
    except InvalidRequest:
        raise
    except Exception:  # pydicom decodes lazily: a malformed element raises when it is read
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "the Action Information cannot be decoded") from None


def _parse_information(information: Dataset, max_references: int) -> Request:
    transaction_uid = str(information.get("TransactionUID", "") or "").strip()
    if not transaction_uid:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) is missing")
    if not UID(transaction_uid).is_valid:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) is not a valid UID")
    items = information.get("ReferencedSOPSequence")
    if not items:
        raise InvalidRequest(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) is missing or empty")
    if len(items) > max_references:
        raise InvalidRequest(RESOURCE_LIMITATION, f"more than {max_references} references in one request")
    references = []
    for number, item in enumerate(items, start=1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not (sop_class and sop_instance and UID(sop_class).is_valid and UID(sop_instance).is_valid):
            raise InvalidRequest(INVALID_ARGUMENT_VALUE, f"Referenced SOP item {number} lacks a valid UID")
        references.append(Reference(sop_class, sop_instance))
    return Request(transaction_uid, references)


def commit(archive: Archive, request: Request, partition: Partition = DEFAULT) -> Result:
    """Evaluate a request against the archive as it is now: a reference is committed when
    its instance is indexed under that SOP class and its blob is in the store. The caller
    holds the thread's index connection."""
    result = Result(request.transaction_uid)
    try:
        found = archive.index.sop_classes_and_blobs(
            list({r.sop_instance_uid for r in request.references}), partition=partition
        )
    except Exception:
        log.exception("storage commitment %s: the index could not be read", request.transaction_uid)
        result.failed = [(ref, PROCESSING_FAILURE) for ref in request.references]
        return result
    present: dict[str, bool] = {}
    for ref in request.references:
        stored = found.get(ref.sop_instance_uid)
        if stored is None:
            result.failed.append((ref, NO_SUCH_OBJECT_INSTANCE))
            continue
        sop_class_uid, blob_key = stored
        if sop_class_uid != ref.sop_class_uid:
            result.failed.append((ref, CLASS_INSTANCE_CONFLICT))
            continue
        if blob_key not in present:
            try:
                present[blob_key] = archive.store.exists(blob_key)
            except BlobStoreError as exc:
                log.warning("storage commitment %s: the blob store could not be asked: %s",
                            request.transaction_uid, exc)
                result.failed.append((ref, PROCESSING_FAILURE))
                continue
        if present[blob_key]:
            result.committed.append(ref)
        else:
            log.warning("storage commitment %s: instance %s is indexed but its blob is missing",
                        request.transaction_uid, ref.sop_instance_uid)
            result.failed.append((ref, NO_SUCH_OBJECT_INSTANCE))
    return result


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item
