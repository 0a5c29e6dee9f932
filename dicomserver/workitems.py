"""UPS-RS (PS3.18 §11, PS3.4 Annex CC): workitems, their state machine, search and subscriptions.

The rules follow the reference server (its WorkitemService and dataset validators): the
attributes PS3.4 Table CC.2.5-3 requires at creation, those an update may not touch, the
state transitions of Table CC.1.1-2 with their error codes, and its messages. What it lacks
is here too: subscriptions (global, filtered, per workitem; suspend; unsubscribe) and the
event reports they ask for, written in the transaction of the change (`state_changed`) and
sent over the subscriber's open event channel (ups_events.py).

Every change of a workitem's state goes through `state_changed`, inside the write
transaction that makes it: it is the one place that knows a state changed (webhooks hook on here).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .dicomjson import name_key, name_words, string_value
from .errors import BadRequest, Conflict, NotFound, UnsupportedMediaType
from .events import WORKITEM_STATE
from .events import record as record_event
from .index.workitems import DuplicateWorkitem, StoredWorkitem, WorkitemFilter
from .matching import parse_count
from .media import DICOM_JSON, parse_media_type
from .partitions import Partition
from .request_json import json_body
from .uids import normalize_uid

log = logging.getLogger(__name__)

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
#: The well-known UIDs a subscription names instead of a workitem (PS3.4 CC.2.3).
GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5.1"

SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED = "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
FINAL_STATES = (COMPLETED, CANCELED)
WORKLIST_LABEL = "worklist"

# Tags (DICOM JSON keys).
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
TRANSACTION_UID = "00081195"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_INSTANCE_UID = "0020000D"
ACCESSION_NUMBER = "00080050"
REQUESTED_PROCEDURE_ID = "00401001"
CODE_VALUE = "00080100"
REFERENCED_REQUEST_SEQUENCE = "0040A370"
SCHEDULED_START = "00404005"
MODIFICATION_DATETIME = "00404010"
STATION_NAME_CODES = "00404025"
STATION_CLASS_CODES = "00404026"
STATION_LOCATION_CODES = "00404027"
WORKITEM_CODES = "00404018"
INPUT_READINESS_STATE = "00404041"
PROCEDURE_STEP_STATE = "00741000"
PROGRESS_INFORMATION_SEQUENCE = "00741002"
CONTACT_URI = "0074100A"
CONTACT_DISPLAY_NAME = "0074100C"
DISCONTINUATION_REASONS = "0074100E"
CANCELLATION_DATETIME = "00404052"
COMMUNICATIONS_URI_SEQUENCE = "00741008"
REASON_FOR_CANCELLATION = "00741238"
REQUESTING_AE = "00741236"
PERFORMED_PROCEDURE_SEQUENCE = "00741216"
WORKLIST_LABEL_TAG = "00741202"
SCHEDULED_HUMAN_PERFORMERS = "00404034"
# Event report (PS3.7 command elements carried in the JSON message).
AFFECTED_SOP_CLASS_UID = "00000002"
AFFECTED_SOP_INSTANCE_UID = "00001000"
EVENT_TYPE_ID = "00001002"

#: PS3.4 Table CC.2.4-1 event types.
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS_CHANGE, ASSIGNED = 1, 2, 3, 4, 5

# The requirement codes of the reference's validators (Type at N-CREATE / N-SET, PS3.4 Table CC.2.5-3).
VALUE = "1"  # present with a value
PRESENT = "2"  # present, may be empty
EMPTY = "empty"  # present and empty (TransactionUID at creation)
NOT_ALLOWED = "not allowed"  # may not be present (an update's identifying attributes)

#: Top-level attributes a creation must carry (the reference's 1/1, 2/1 and 2/2 of Table CC.2.5-3).
CREATE_REQUIREMENTS: dict[str, str] = {
    SOP_CLASS_UID: VALUE, SOP_INSTANCE_UID: VALUE, TRANSACTION_UID: EMPTY,
    "00741200": VALUE,  # ScheduledProcedureStepPriority
    MODIFICATION_DATETIME: VALUE,
    "00741204": VALUE,  # ProcedureStepLabel
    WORKLIST_LABEL_TAG: PRESENT,
    "00741210": PRESENT,  # ScheduledProcessingParametersSequence
    STATION_NAME_CODES: PRESENT, STATION_CLASS_CODES: PRESENT, STATION_LOCATION_CODES: PRESENT,
    SCHEDULED_START: VALUE,
    WORKITEM_CODES: PRESENT,
    "00400400": PRESENT,  # CommentsOnTheScheduledProcedureStep
    INPUT_READINESS_STATE: VALUE,
    "00404021": PRESENT,  # InputInformationSequence
    PATIENT_NAME: PRESENT,
    "00100021": PRESENT,  # IssuerOfPatientID
    "00100024": PRESENT,  # IssuerOfPatientIDQualifiersSequence
    "00101002": PRESENT,  # OtherPatientIDsSequence
    "00100030": PRESENT,  # PatientBirthDate
    "00100040": PRESENT,  # PatientSex
    "00380010": PRESENT,  # AdmissionID
    "00380014": PRESENT,  # IssuerOfAdmissionIDSequence
    "00081080": PRESENT,  # AdmittingDiagnosesDescription
    "00081084": PRESENT,  # AdmittingDiagnosesCodeSequence
    REFERENCED_REQUEST_SEQUENCE: PRESENT,
    PROCEDURE_STEP_STATE: VALUE,
    PROGRESS_INFORMATION_SEQUENCE: PRESENT,
    PERFORMED_PROCEDURE_SEQUENCE: PRESENT,
}
#: In each ReferencedRequestSequence item at creation.
REQUEST_ITEM_REQUIREMENTS: dict[str, str] = {
    STUDY_INSTANCE_UID: VALUE, ACCESSION_NUMBER: PRESENT, "00080051": PRESENT,  # IssuerOfAccessionNumberSequence
    REQUESTED_PROCEDURE_ID: PRESENT, "00321060": PRESENT,  # RequestedProcedureDescription
    "00321064": PRESENT,  # RequestedProcedureCodeSequence
}
#: What an update may not carry (the reference's NotAllowed of N-SET), and must (set by the server).
UPDATE_REQUIREMENTS: dict[str, str] = {
    SOP_CLASS_UID: NOT_ALLOWED, SOP_INSTANCE_UID: NOT_ALLOWED, MODIFICATION_DATETIME: VALUE,
    PATIENT_NAME: NOT_ALLOWED, PATIENT_ID: NOT_ALLOWED, "00100021": NOT_ALLOWED, "00100024": NOT_ALLOWED,
    "00100030": NOT_ALLOWED, "00100040": NOT_ALLOWED, "00380010": NOT_ALLOWED, "00380014": NOT_ALLOWED,
    "00081080": NOT_ALLOWED, "00081084": NOT_ALLOWED, REFERENCED_REQUEST_SEQUENCE: NOT_ALLOWED,
    "00741220": NOT_ALLOWED,  # ReplacedProcedureStepSequence
    PROCEDURE_STEP_STATE: NOT_ALLOWED,
}
#: Final-state requirements (PS3.4 Table CC.2.5-3 "Final State" column, as the reference checks them):
#: attributes needing a value in either final state, and the sequences (with their items' members)
#: that COMPLETED (P) or CANCELED (X) needs.
FINAL_REQUIRED = (
    SOP_CLASS_UID, SOP_INSTANCE_UID, "00741200", MODIFICATION_DATETIME, SCHEDULED_START, INPUT_READINESS_STATE,
    PROCEDURE_STEP_STATE,
)
FINAL_SEQUENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    COMPLETED: (PERFORMED_PROCEDURE_SEQUENCE, ("00404028", "00404050", "00404019", "00404051", "00404033")),
    CANCELED: (PROGRESS_INFORMATION_SEQUENCE, (CANCELLATION_DATETIME, DISCONTINUATION_REASONS)),
}

# The reference's messages (DicomCoreResource).
NOT_FOUND = "The workitem instance is not found."
ALREADY_EXISTS = "The workitem instance already exists. Try creating using a different UID."
MISMATCHED_UID = "SOPInstanceUID in the payload does not match the workitem query parameter."
TRANSITION = "The workitem instance can not transition to '{0}' state: {1}."
FINAL_STATE = "The workitem instance is already in the final state '{0}'. {1}."
ALREADY_CANCELED = "The UPS is already in the requested state of CANCELED."
ALREADY_COMPLETED = "The UPS is already COMPLETED."
INVALID_TRANSACTION_UID = "Invalid TransactionUID for the specified Workitem Instance UID."
NOT_CLAIMED = "The target URI did not reference a claimed Workitem."
UPDATE_CONFLICT = "The submitted request is inconsistent with the current state of the Workitem."
CHANGED_MEANWHILE = "The workitem instance is currently being updated. Please try again later."
UNEXPECTED_VALUE = "Expected value '{0}' to be one of the following values: [{1}]"

#: The queryable attributes (the reference's WorkitemQueryTag table) → (column, how it matches).
QUERY_KEYS: dict[str, tuple[str, str]] = {
    PATIENT_NAME: ("patient_name", "name"),
    PATIENT_ID: ("patient_id", "text"),
    f"{REFERENCED_REQUEST_SEQUENCE}.{ACCESSION_NUMBER}": ("accession_number", "text"),
    f"{REFERENCED_REQUEST_SEQUENCE}.{REQUESTED_PROCEDURE_ID}": ("requested_procedure_id", "text"),
    SCHEDULED_START: ("scheduled_start", "datetime"),
    f"{STATION_NAME_CODES}.{CODE_VALUE}": ("station_name_code", "text"),
    f"{STATION_CLASS_CODES}.{CODE_VALUE}": ("station_class_code", "text"),
    f"{STATION_LOCATION_CODES}.{CODE_VALUE}": ("station_location_code", "text"),
    f"{WORKITEM_CODES}.{CODE_VALUE}": ("workitem_code", "text"),
    PROCEDURE_STEP_STATE: ("procedure_step_state", "text"),
    STUDY_INSTANCE_UID: ("study_instance_uid", "text"),
}
KEYWORDS = {
    "PatientName": PATIENT_NAME, "PatientID": PATIENT_ID, "ReferencedRequestSequence": REFERENCED_REQUEST_SEQUENCE,
    "AccessionNumber": ACCESSION_NUMBER, "RequestedProcedureID": REQUESTED_PROCEDURE_ID,
    "ScheduledProcedureStepStartDateTime": SCHEDULED_START, "ScheduledStationNameCodeSequence": STATION_NAME_CODES,
    "ScheduledStationClassCodeSequence": STATION_CLASS_CODES,
    "ScheduledStationGeographicLocationCodeSequence": STATION_LOCATION_CODES,
    "ScheduledWorkitemCodeSequence": WORKITEM_CODES, "CodeValue": CODE_VALUE,
    "ProcedureStepState": PROCEDURE_STEP_STATE, "StudyInstanceUID": STUDY_INSTANCE_UID,
}
#: What every search result carries besides the matched keys (the reference's RequiredReturnTags).
RETURN_TAGS = frozenset({
    "00080005", SOP_CLASS_UID, SOP_INSTANCE_UID, "00741200", "00741204", WORKLIST_LABEL_TAG, "00741210",
    STATION_NAME_CODES, STATION_CLASS_CODES, STATION_LOCATION_CODES, SCHEDULED_HUMAN_PERFORMERS, SCHEDULED_START,
    WORKITEM_CODES, INPUT_READINESS_STATE, "00404021", STUDY_INSTANCE_UID, PATIENT_NAME, PATIENT_ID, "00100021",
    "00100024", "00101002", "00100030", "00100040", "00380010", "00380014", "00081080", "00081084",
    REFERENCED_REQUEST_SEQUENCE, "00102000", "001021C0", "00380050", PROCEDURE_STEP_STATE,
    PROGRESS_INFORMATION_SEQUENCE,
})
DEFAULT_LIMIT, MAX_LIMIT = 100, 200
#: The most workitems a global subscription reports on (and subscribes the AE to) when it is made.
MAX_INITIAL_REPORTS = 10_000
#: An AE title (PS3.5 AE VR): 1-16 characters of the default repertoire, no backslash, not all spaces.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")

Dataset = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What a UPS-RS transaction answers: its status and, where the reference sends one, a warning."""

    status: int
    warning: str = ""


# -- request bodies -----------------------------------------------------------------------------
def read_dataset(read: Callable[[int], bytes], content_type: str | None) -> Dataset:
    """The first dataset of a JSON array body of DICOM JSON (415 for another media type)."""
    media_type = parse_media_type(content_type)[0] if content_type else ""
    if media_type != DICOM_JSON:
        raise UnsupportedMediaType(f"the body must be {DICOM_JSON} (a JSON array of one DICOM JSON dataset)")
    body = json_body(read)
    if not isinstance(body, list) or not body or not isinstance(body[0], dict):
        raise BadRequest("the body must be a JSON array holding one DICOM JSON dataset")
    dataset: Dataset = body[0]
    for key, element in dataset.items():
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", key) or not isinstance(element, dict):
            raise BadRequest(f"the dataset's member {key[:20]!r} is not a DICOM JSON attribute")
    return {key.upper(): element for key, element in dataset.items()}


def _tag(key: str) -> str:
    return f"({key[:4]},{key[4:]})"


def _has_value(element: dict[str, Any] | None) -> bool:
    if not element:
        return False
    values = element.get("Value") or []
    return any(v not in (None, "") for v in values)


def _check(dataset: Dataset, requirements: dict[str, str]) -> None:
    """The reference's requirement checks, in its messages (400)."""
    for key, code in requirements.items():
        element = dataset.get(key)
        if code == NOT_ALLOWED:
            if element is not None:
                raise BadRequest(f"The attribute with tag '{_tag(key)}' cannot be present.")
            continue
        if element is None:
            raise BadRequest(f"The required tag '{_tag(key)}' is missing.")
        if code == VALUE and not _has_value(element):
            raise BadRequest(f"The value for tag '{_tag(key)}' is missing.")
        if code == EMPTY and _has_value(element):
            raise BadRequest(f"The attribute with tag '{_tag(key)}' must be empty.")


def _set(dataset: Dataset, key: str, vr: str, value: Any) -> None:
    dataset[key] = {"vr": vr, "Value": [value]} if value is not None else {"vr": vr}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S.%f")


def _datetime_key(value: str | None) -> str | None:
    """A DT value as YYYYMMDDHHMMSS (missing parts zero), so text order is time order."""
    if not value:
        return None
    digits = re.match(r"\d*", value.strip())
    text = digits.group(0) if digits else ""
    if len(text) < 4:
        return None
    return text[:14] + "00000101000000"[len(text):]


def _first_item_value(dataset: Dataset, sequence: str, key: str) -> str | None:
    items = (dataset.get(sequence) or {}).get("Value") or []
    return string_value(items[0], key) if items and isinstance(items[0], dict) else None


def search_columns(dataset: Dataset) -> dict[str, Any]:
    """The index columns of a workitem (the first item of a sequence is the one matched)."""
    name = string_value(dataset, PATIENT_NAME)
    return {
        "procedure_step_state": string_value(dataset, PROCEDURE_STEP_STATE),
        "patient_name": name_key(name),
        "patient_name_words": name_words(name),
        "patient_id": string_value(dataset, PATIENT_ID),
        "accession_number": _first_item_value(dataset, REFERENCED_REQUEST_SEQUENCE, ACCESSION_NUMBER),
        "requested_procedure_id": _first_item_value(dataset, REFERENCED_REQUEST_SEQUENCE, REQUESTED_PROCEDURE_ID),
        "scheduled_start": _datetime_key(string_value(dataset, SCHEDULED_START)),
        "station_name_code": _first_item_value(dataset, STATION_NAME_CODES, CODE_VALUE),
        "station_class_code": _first_item_value(dataset, STATION_CLASS_CODES, CODE_VALUE),
        "station_location_code": _first_item_value(dataset, STATION_LOCATION_CODES, CODE_VALUE),
        "workitem_code": _first_item_value(dataset, WORKITEM_CODES, CODE_VALUE),
        "study_instance_uid": string_value(dataset, STUDY_INSTANCE_UID),
    }


# -- the transactions ----------------------------------------------------------------------------
def create(index: Any, partition: Partition, dataset: Dataset, uid_parameter: str | None) -> str:
    """Create Workitem (PS3.18 §11.4, the reference's rules): the UID from the first query
    parameter's name or the dataset; SCHEDULED; the new workitem's UID."""
    _set(dataset, SOP_CLASS_UID, "UI", UPS_PUSH_SOP_CLASS)
    if uid_parameter:
        in_dataset = string_value(dataset, SOP_INSTANCE_UID)
        if in_dataset is not None and in_dataset != uid_parameter:
            raise BadRequest(MISMATCHED_UID)
        _set(dataset, SOP_INSTANCE_UID, "UI", uid_parameter)
    _set(dataset, MODIFICATION_DATETIME, "DT", _now())
    _set(dataset, WORKLIST_LABEL_TAG, "LO", WORKLIST_LABEL)
    _set(dataset, PROCEDURE_STEP_STATE, "CS", SCHEDULED)
    _check(dataset, CREATE_REQUIREMENTS)
    for item in (dataset.get(REFERENCED_REQUEST_SEQUENCE) or {}).get("Value") or []:
        if isinstance(item, dict):
            _check(item, REQUEST_ITEM_REQUIREMENTS)
    uid = string_value(dataset, SOP_INSTANCE_UID) or ""
    if normalize_uid(uid) is None:
        raise BadRequest(f"SOPInstanceUID {uid[:80]!r} is not a valid DICOM UID")
    dataset.pop(TRANSACTION_UID, None)
    with index.write_transaction():
        try:
            row_id = index.insert_workitem(partition.key, uid, search_columns(dataset), dataset)
        except DuplicateWorkitem:
            raise Conflict(ALREADY_EXISTS) from None
        _subscribe_globals_to(index, partition, uid, row_id)
        state_changed(index, partition, uid, None, dataset, [(STATE_REPORT, _state_report(dataset))])
    return uid


def retrieve(index: Any, partition: Partition, uid: str) -> Dataset:
    """Retrieve Workitem (§11.5): its dataset without the TransactionUID (404 if none)."""
    stored = index.workitem(partition.key, uid)
    if stored is None:
        raise NotFound(NOT_FOUND)
    dataset: Dataset = stored.dataset
    dataset.pop(TRANSACTION_UID, None)
    return dataset


def update(index: Any, partition: Partition, uid: str, changes: Dataset, transaction_uid: str | None) -> Outcome:
    """Update Workitem (§11.6): SCHEDULED takes no TransactionUID, IN PROGRESS the owner's;
    a final state cannot be updated (400); a concurrent change is 409."""
    stored = index.workitem(partition.key, uid)
    if stored is None:
        raise NotFound(NOT_FOUND)
    _set(changes, MODIFICATION_DATETIME, "DT", _now())
    if stored.state == SCHEDULED and transaction_uid:
        raise BadRequest(INVALID_TRANSACTION_UID)
    if stored.state == IN_PROGRESS and (not transaction_uid or transaction_uid != stored.transaction_uid):
        raise BadRequest(NOT_CLAIMED)
    if stored.state == COMPLETED:
        raise BadRequest(f"{UPDATE_CONFLICT} {ALREADY_COMPLETED}")
    if stored.state == CANCELED:
        raise BadRequest(f"{UPDATE_CONFLICT} {ALREADY_CANCELED}")
    _check(changes, UPDATE_REQUIREMENTS)
    changes.pop(TRANSACTION_UID, None)
    merged = {**stored.dataset, **changes}
    _write(index, partition, stored, merged, stored.transaction_uid, [])
    return Outcome(200)


def change_state(index: Any, partition: Partition, uid: str, request: Dataset) -> Outcome:
    """Change Workitem State (§11.7): IN PROGRESS with a new TransactionUID (the claim),
    COMPLETED or CANCELED with the owner's; the reference's transition table and messages."""
    _check(request, {TRANSACTION_UID: VALUE, PROCEDURE_STEP_STATE: VALUE})
    target = string_value(request, PROCEDURE_STEP_STATE) or ""
    allowed = (IN_PROGRESS, CANCELED, COMPLETED)
    if target not in allowed:
        raise BadRequest(UNEXPECTED_VALUE.format(_tag(PROCEDURE_STEP_STATE), ",".join(allowed)))
    transaction_uid = string_value(request, TRANSACTION_UID) or ""
    if normalize_uid(transaction_uid) is None:
        raise BadRequest(f"TransactionUID {transaction_uid[:80]!r} is not a valid DICOM UID")
    stored = index.workitem(partition.key, uid)
    if stored is None:
        raise NotFound(NOT_FOUND)
    matching = transaction_uid == stored.transaction_uid or (target == IN_PROGRESS and not stored.transaction_uid)
    next_state, code = transition(stored.state, target, matching)
    if next_state is None and code.startswith("B"):  # already in that final state: a warning
        return Outcome(200, FINAL_STATE.format(stored.state, code))
    if next_state is None:
        raise BadRequest(TRANSITION.format(target, code))
    dataset = {**stored.dataset}
    _set(dataset, TRANSACTION_UID, "UI", transaction_uid)
    _set(dataset, PROCEDURE_STEP_STATE, "CS", next_state)
    _check_final_state(dataset, next_state)
    _write(index, partition, stored, dataset, transaction_uid, [(STATE_REPORT, _state_report(dataset))])
    return Outcome(200)


def request_cancellation(
    index: Any, partition: Partition, uid: str, request: Dataset, requester: str | None
) -> Outcome:
    """Request Cancellation (§11.8): a SCHEDULED workitem is canceled at once (202); for an IN
    PROGRESS one the performer is told (a UPS Cancel Requested event, PS3.4 CC.2.4) and
    decides (202); an already canceled one is 409 with a Warning, a completed one 409."""
    stored = index.workitem(partition.key, uid)
    if stored is None:
        raise NotFound(NOT_FOUND)
    if stored.state == CANCELED:
        raise Conflict(ALREADY_CANCELED)
    if stored.state == COMPLETED:
        raise Conflict(TRANSITION.format(CANCELED, "C311"))
    reason = string_value(request, REASON_FOR_CANCELLATION) or ""
    if stored.state == IN_PROGRESS:
        event = _cancel_requested(stored, request, requester)
        with index.write_transaction():
            state_changed(index, partition, uid, stored.state, stored.dataset, [(CANCEL_REQUESTED, event)])
        return Outcome(202)
    dataset = {**stored.dataset}
    now = _now()
    _set(dataset, CANCELLATION_DATETIME, "DT", now)
    _set(dataset, PROCEDURE_STEP_STATE, "CS", CANCELED)
    reasons = {"vr": "SQ", "Value": [{REASON_FOR_CANCELLATION: {"vr": "LT", "Value": [reason]}}]}
    dataset[DISCONTINUATION_REASONS] = reasons
    contact = {
        CONTACT_URI: {"vr": "UR", "Value": [string_value(request, CONTACT_URI) or ""]},
        CONTACT_DISPLAY_NAME: {"vr": "LO", "Value": [string_value(request, CONTACT_DISPLAY_NAME) or ""]},
    }
    dataset[PROGRESS_INFORMATION_SEQUENCE] = {"vr": "SQ", "Value": [{
        CANCELLATION_DATETIME: {"vr": "DT", "Value": [now]},
        DISCONTINUATION_REASONS: reasons,
        COMMUNICATIONS_URI_SEQUENCE: {"vr": "SQ", "Value": [contact]},
    }]}
    if PERFORMED_PROCEDURE_SEQUENCE in request:
        dataset[PERFORMED_PROCEDURE_SEQUENCE] = request[PERFORMED_PROCEDURE_SEQUENCE]
    _check_final_state(dataset, CANCELED)
    _write(index, partition, stored, dataset, stored.transaction_uid, [(STATE_REPORT, _state_report(dataset))])
    return Outcome(202)


def transition(state: str, target: str, matching: bool) -> tuple[str | None, str]:
    """PS3.4 Table CC.1.1-2 as the reference applies it: (next state or None, error/warning code)."""
    if target == IN_PROGRESS:
        if state == SCHEDULED:
            return (IN_PROGRESS, "") if matching else (None, "C301")
        return (None, "C301") if not matching else (None, "C302" if state == IN_PROGRESS else "C300")
    if not matching:
        return None, "C301"
    if state == SCHEDULED:
        return None, "C310"
    if state == IN_PROGRESS:
        return target, ""
    if state == target:
        return None, "B306" if target == COMPLETED else "B304"
    return None, "C300"


def _check_final_state(dataset: Dataset, state: str) -> None:
    """What a workitem must carry to be COMPLETED or CANCELED (the reference's final-state rules)."""
    if state not in FINAL_STATES:
        return
    for key in FINAL_REQUIRED:
        if not _has_value(dataset.get(key)):
            raise BadRequest(f"The required tag '{_tag(key)}' is missing.")
    sequence, members = FINAL_SEQUENCES[state]
    items = (dataset.get(sequence) or {}).get("Value") or []
    if not items:
        raise BadRequest(f"The required tag '{_tag(sequence)}' is missing.")
    for item in items:
        for key in members:
            if not isinstance(item, dict) or key not in item:
                raise BadRequest(f"The required tag '{_tag(key)}' is missing.")


def _write(
    index: Any, partition: Partition, stored: StoredWorkitem, dataset: Dataset, transaction_uid: str | None,
    events: list[tuple[int, Dataset]],
) -> None:
    """Write the workitem if nobody changed it since it was read (else 409), with its events."""
    dataset = {k: v for k, v in dataset.items() if k != TRANSACTION_UID}
    with index.write_transaction():
        if not index.update_workitem(stored, search_columns(dataset), dataset, transaction_uid):
            raise Conflict(CHANGED_MEANWHILE)
        if events:
            state_changed(index, partition, stored.uid, stored.state, dataset, events)


def state_changed(
    index: Any, partition: Partition, uid: str, previous: str | None, dataset: Dataset,
    events: Sequence[tuple[int, Dataset]],
) -> None:
    """The one place a workitem's change is reported, inside its write transaction: an event
    report per subscribed AE title for each event (UPS State Report on creation and every
    state change, UPS Cancel Requested), and a `workitem.state` webhook event when its state is
    new (creation included: `previousState` null). `previous` is None on creation."""
    subscribers = index.subscribers(partition.key, uid)
    for _event_type, payload in events:
        index.add_events(subscribers, json.dumps(payload))
    state = string_value(dataset, PROCEDURE_STEP_STATE)
    if state != previous:
        record_event(index, WORKITEM_STATE, {
            "workitemInstanceUid": uid, "procedureStepState": state, "previousState": previous,
        }, partition)


# -- event reports --------------------------------------------------------------------------------
def _report(uid: str, event_type: int, info: Dataset) -> Dataset:
    return {
        AFFECTED_SOP_CLASS_UID: {"vr": "UI", "Value": [UPS_PUSH_SOP_CLASS]},
        AFFECTED_SOP_INSTANCE_UID: {"vr": "UI", "Value": [uid]},
        EVENT_TYPE_ID: {"vr": "US", "Value": [event_type]},
        **info,
    }


def _state_report(dataset: Dataset) -> Dataset:
    """UPS State Report (event type 1): the state and input readiness, and why it was canceled."""
    info = {key: dataset[key] for key in (PROCEDURE_STEP_STATE, INPUT_READINESS_STATE) if key in dataset}
    if string_value(dataset, PROCEDURE_STEP_STATE) == CANCELED:
        items = (dataset.get(PROGRESS_INFORMATION_SEQUENCE) or {}).get("Value") or [{}]
        reasons = items[0].get(DISCONTINUATION_REASONS) if isinstance(items[0], dict) else None
        if reasons is not None:
            info[DISCONTINUATION_REASONS] = reasons
    return _report(string_value(dataset, SOP_INSTANCE_UID) or "", STATE_REPORT, info)


def _cancel_requested(stored: StoredWorkitem, request: Dataset, requester: str | None) -> Dataset:
    """UPS Cancel Requested (event type 2): who asks, why, and how to reach them."""
    info: Dataset = {}
    if requester:
        info[REQUESTING_AE] = {"vr": "AE", "Value": [requester]}
    for key in (REASON_FOR_CANCELLATION, DISCONTINUATION_REASONS, CONTACT_URI, CONTACT_DISPLAY_NAME):
        if key in request:
            info[key] = request[key]
    return _report(stored.uid, CANCEL_REQUESTED, info)


# -- search ---------------------------------------------------------------------------------------
def search(index: Any, partition: Partition, args: Sequence[tuple[str, str]]) -> list[Dataset]:
    """Search for Workitems (§11.9) with the reference's matching keys and limit/offset."""
    filters, includes, limit, offset = parse_query(args)
    found = index.search_workitems(partition.key, filters, limit, offset)
    keep = None if includes is None else RETURN_TAGS | includes
    results = []
    for dataset in found:
        dataset.pop(TRANSACTION_UID, None)
        results.append(dataset if keep is None else {k: v for k, v in dataset.items() if k in keep})
    return results


def parse_query(args: Sequence[tuple[str, str]]) -> tuple[list[WorkitemFilter], frozenset[str] | None, int, int]:
    """Filters, the attributes to return (None: all), limit and offset (400 for what it cannot read)."""
    filters: list[WorkitemFilter] = []
    includes: set[str] = set()
    include_all = False
    limit, offset, fuzzy = DEFAULT_LIMIT, 0, False
    seen: set[str] = set()
    for name, value in args:
        lowered = name.lower()
        if lowered == "limit":
            limit = parse_count("limit", value, minimum=1, maximum=MAX_LIMIT, clamp=True)
        elif lowered == "offset":
            offset = parse_count("offset", value, minimum=0)
        elif lowered == "fuzzymatching":
            fuzzy = value.strip().lower() == "true"
        elif lowered == "includefield":
            for item in value.split(","):
                if item.strip().lower() == "all":
                    include_all = True
                else:
                    includes.add(_attribute_path(item.strip(), "IncludeField").split(".")[0])
    for name, value in args:
        if name.lower() in ("limit", "offset", "fuzzymatching", "includefield"):
            continue
        path = _attribute_path(name, "query")
        if path not in QUERY_KEYS:
            raise BadRequest(f"Invalid query: AttributeId {name} is not queryable.  If the parameter is an attribute "
                             "keyword, check the casing as they are case-sensitive. The conformance statement has a "
                             "list of supported query parameters, attributes and the levels.")
        if path in seen:
            raise BadRequest(f"Invalid query: attribute '{name}' has been specified more than once using different "
                             "ID formats. Each attribute is only allowed to be specified once.")
        seen.add(path)
        if not value.strip():
            raise BadRequest(f"Invalid query: AttributeId '{name}' has empty string value that is not supported.")
        includes.add(path.split(".")[0])
        filters.append(_filter(path, value, fuzzy))
    return filters, None if include_all else frozenset(includes), limit, offset


def _attribute_path(name: str, where: str) -> str:
    """A key or tag, or a dotted path of them, as 8-hex tags joined by '.'."""
    parts = []
    for part in name.split("."):
        tag = KEYWORDS.get(part) or (part.upper() if re.fullmatch(r"[0-9A-Fa-f]{8}", part) else None)
        if tag is None:
            if where == "IncludeField":
                raise BadRequest(f"Invalid query: IncludeField has unknown attribute '{name}'.")
            raise BadRequest(f"Invalid query: unknown query parameter '{name}'. If the parameter is an attribute "
                             "keyword, check the casing as they are case-sensitive. The conformance statement has a "
                             "list of supported query parameters, attributes and the levels.")
        parts.append(tag)
    return ".".join(parts)


def _filter(path: str, value: str, fuzzy: bool) -> WorkitemFilter:
    column, kind = QUERY_KEYS[path]
    if kind == "datetime":
        if "-" in value:
            low, _, high = value.partition("-")
            low_key = _datetime_key(low)
            high_key = _upper_bound(high.strip()) if _datetime_key(high) is not None else None
            if (low.strip() and low_key is None) or (high.strip() and high_key is None):
                raise BadRequest(f"Invalid query: specified date range '{value}' is invalid.")
            if low_key and high_key and low_key > high_key:
                raise BadRequest(f"Invalid query: specified date range '{value}' is invalid.")
            return WorkitemFilter(column, "range", (low_key, high_key))
        key = _datetime_key(value)
        if key is None:
            raise BadRequest(f"Invalid query: the value '{value}' of ScheduledProcedureStepStartDateTime is not a DT")
        return WorkitemFilter(column, "range", (key, _upper_bound(value.strip())))
    if kind == "name":
        folded = name_key(value) or ""
        if fuzzy:
            return WorkitemFilter("patient_name_words", "words", folded.replace("*", "").replace("?", ""))
        if "*" in folded or "?" in folded:
            return WorkitemFilter(column, "wildcard", folded.replace("*", "%").replace("?", "_"))
        return WorkitemFilter(column, "exact", folded)
    if "*" in value or "?" in value:
        return WorkitemFilter(column, "wildcard", value.replace("*", "%").replace("?", "_"))
    return WorkitemFilter(column, "exact", value)


def _upper_bound(value: str) -> str:
    """The last YYYYMMDDHHMMSS a partial DT value covers."""
    digits = re.match(r"\d*", value).group(0)  # type: ignore[union-attr]
    return digits[:14] + "99991231235959"[len(digits):]


# -- subscriptions (PS3.18 §11.10-11.12, PS3.4 CC.2.3) -------------------------------------------------
def require_ae_title(value: str) -> str:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise BadRequest(f"{value[:20]!r} is not an AE title (1 to 16 characters, no backslash, not all spaces)")
    return value.strip()


def subscribe(
    index: Any, partition: Partition, uid: str, ae_title: str, args: Sequence[tuple[str, str]],
) -> Outcome:
    """Subscribe (§11.10): to one workitem (an initial UPS State Report), globally (a report for
    every workitem not yet final, and each new one), or filtered globally (those matching
    `filter`). 201; 404 for an unknown workitem; 400 for a bad AE title or filter."""
    ae_title = require_ae_title(ae_title)
    deletion_lock = any(n.lower() == "deletionlock" and v.strip().lower() == "true" for n, v in args)
    filter_args = [(n, v) for n, v in args if n.lower() == "filter"]
    if uid in (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION):
        query = _filter_query(filter_args) if uid == FILTERED_GLOBAL_SUBSCRIPTION else []
        if uid == FILTERED_GLOBAL_SUBSCRIPTION and not query:
            raise BadRequest("a filtered global subscription needs a filter parameter (attribute=value,...)")
        filters = parse_query(query)[0]
        with index.write_transaction():
            index.subscribe(partition.key, ae_title, None, dict(query) or None, deletion_lock)
            open_workitems = index.search_workitems(
                partition.key, filters, MAX_INITIAL_REPORTS, 0, states=(SCHEDULED, IN_PROGRESS)
            )
            for dataset in open_workitems:
                workitem_uid = string_value(dataset, SOP_INSTANCE_UID) or ""
                index.subscribe(partition.key, ae_title, workitem_uid, None, deletion_lock)
                index.add_events([ae_title], json.dumps(_state_report(dataset)))
        return Outcome(201)
    if filter_args:
        raise BadRequest("a filter is only taken by a filtered global subscription (1.2.840.10008.5.1.4.34.5.1)")
    with index.write_transaction():
        stored = index.workitem(partition.key, uid)
        if stored is None:
            raise NotFound(NOT_FOUND)
        index.subscribe(partition.key, ae_title, uid, None, deletion_lock)
        index.add_events([ae_title], json.dumps(_state_report(stored.dataset)))
    return Outcome(201)


def unsubscribe(index: Any, partition: Partition, uid: str, ae_title: str) -> Outcome:
    """Unsubscribe (§11.11): from one workitem, or (a well-known UID) from everything. 200."""
    ae_title = require_ae_title(ae_title)
    with index.write_transaction():
        if uid in (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION):
            index.unsubscribe(partition.key, ae_title, None)
        else:
            if index.workitem(partition.key, uid) is None:
                raise NotFound(NOT_FOUND)
            index.unsubscribe(partition.key, ae_title, uid)
    return Outcome(200)


def suspend(index: Any, partition: Partition, uid: str, ae_title: str) -> Outcome:
    """Suspend Global Subscription (§11.12): no new workitems; those subscribed stay. 200."""
    ae_title = require_ae_title(ae_title)
    if uid not in (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION):
        raise BadRequest(f"only a global subscription ({GLOBAL_SUBSCRIPTION}) can be suspended")
    with index.write_transaction():
        index.suspend_global(partition.key, ae_title)
    return Outcome(200)


def _filter_query(filter_args: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """`filter=PatientID=1,ProcedureStepState=SCHEDULED` (PS3.18 §11.10: attribute=value pairs)."""
    query = []
    for _, raw in filter_args:
        for pair in raw.split(","):
            if not pair.strip():
                continue
            name, sep, value = pair.partition("=")
            if not sep:
                raise BadRequest(f"the filter {pair[:40]!r} is not attribute=value")
            query.append((name.strip(), value.strip()))
    parse_query(query)  # 400 now for what a search would refuse
    return query


def _subscribe_globals_to(index: Any, partition: Partition, uid: str, row_id: int) -> None:
    """A new workitem gets the AE titles whose global subscription it matches (PS3.4 CC.2.3.1)."""
    for subscription in index.global_subscriptions(partition.key):
        if subscription.filter:
            filters = parse_query(list(subscription.filter.items()))[0]
            if not index.search_workitems(partition.key, filters, 1, 0, only_id=row_id):
                continue
        index.subscribe(partition.key, subscription.ae_title, uid, None, False)


def new_transaction_uid() -> str:
    """A fresh UID (2.25 + a UUID), for clients and tests that claim a workitem."""
    return f"2.25.{uuid.uuid4().int}"
