"""DIMSE statuses (PS3.7 Annex C; PS3.4 Annexes B.2.3 and C.4) as the gateway answers them:
the codes, a status with its Error Comment, and the class the metrics count it in. Shared by
the gateway's services (dimse.py) and storage commitment (dimse_commitment.py)."""
from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
UNKNOWN_DESTINATION = 0xA801
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
COERCED = 0xB000
SUB_OPERATIONS_FAILED = 0xA702
SUB_OPERATIONS_WARNING = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DOES_NOT_MATCH_SOP_CLASS = 0xB007

#: PS3.5: Error Comment is LO, 64 characters at most.
_COMMENT_CHARS = 64


def status_dataset(code: int, comment: str | None = None) -> Dataset:
    """A status with its Error Comment (cut to what an LO holds)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:_COMMENT_CHARS]
    return ds


def status_class(code: int) -> str:
    """A DIMSE status as the metrics count it (PS3.7 C: success, warning, cancel, failure)."""
    if code == SUCCESS:
        return "success"
    if code == CANCEL:
        return "cancel"
    if code == NOT_AUTHORIZED:
        return "refused"
    if code == 0x0001 or 0xB000 <= code <= 0xBFFF:
        return "warning"
    if code in (PENDING, 0xFF01):
        return "pending"
    return "failure"
