"""Validation of path parameters (UIDs, frame lists) before they reach the index or storage.

UID syntax follows PS3.5 §9.1 as the reference server applies it: digits and dots,
at most 64 characters, ending in a digit. Trailing spaces or NULs (padding some
writers leave) are tolerated and stripped.
"""
from __future__ import annotations

import re

from .errors import BadRequest

_UID_RE = re.compile(r"[0-9.]*[0-9]")
MAX_UID_LENGTH = 64
MAX_FRAMES_PER_REQUEST = 10000


def normalize_uid(value: str | None) -> str | None:
    """Return the UID without padding, or None when it is not a valid UID."""
    if value is None:
        return None
    uid = str(value).rstrip(" \x00")
    if 0 < len(uid) <= MAX_UID_LENGTH and _UID_RE.fullmatch(uid):
        return uid
    return None


def is_valid_uid(value: str | None) -> bool:
    return normalize_uid(value) is not None


def require_uid(value: str, name: str) -> str:
    """Validate a UID taken from the URL; raise BadRequest (400) with a message."""
    uid = normalize_uid(value)
    if uid is None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise BadRequest(
            f"{name} {shown!r} is not a valid DICOM UID "
            f"(digits and dots, at most {MAX_UID_LENGTH} characters, ending with a digit)"
        )
    return uid


def require_uids(
    study: str, series: str | None = None, instance: str | None = None
) -> tuple[str, str | None, str | None]:
    """The study, series and SOP instance UIDs of a resource path, validated (400 on a bad one)."""
    return (
        require_uid(study, "StudyInstanceUID"),
        require_uid(series, "SeriesInstanceUID") if series is not None else None,
        require_uid(instance, "SOPInstanceUID") if instance is not None else None,
    )


def parse_frame_list(value: str) -> list[int]:
    """Parse '1,3,5' into 1-based frame numbers; raise BadRequest (400)."""
    frames: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()):
            raise BadRequest(
                f"invalid frame list {value[:40]!r}: expected comma-separated frame numbers like 1,3"
            )
        if len(item) > 9:  # no instance has that many frames (and int() of thousands of digits fails)
            raise BadRequest(f"invalid frame list: frame number {item[:20]}... is too large")
        number = int(item)
        if number < 1:
            raise BadRequest(
                f"invalid frame list {value!r}: frame numbers start at 1"
            )
        frames.append(number)
    if len(frames) > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(
            f"too many frames requested (at most {MAX_FRAMES_PER_REQUEST} per request)"
        )
    return frames
