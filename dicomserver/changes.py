"""Change-feed entries (the reference server's non-standard /changefeed) as JSON.

`state` is derived when read, by comparing an entry's sequence with the watermark of
the instance's current version: equal → current, older → replaced, no instance →
deleted. Values are the documented lower-case ones.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from .errors import BadRequest
from .index.models import Change, Instance


def entry_json(change: Change, current: Instance | None, include_metadata: bool) -> dict[str, Any]:
    watermark = getattr(current, "watermark", None)
    if watermark is None:
        state = "deleted"
    elif watermark == change.sequence:
        state = "current"
    else:
        state = "replaced"
    entry: dict[str, Any] = {
        "sequence": change.sequence,
        "studyInstanceUid": change.study_instance_uid,
        "seriesInstanceUid": change.series_instance_uid,
        "sopInstanceUid": change.sop_instance_uid,
        "action": change.action,
        "timestamp": change.timestamp.replace(tzinfo=dt.timezone.utc).isoformat(),
        "state": state,
    }
    if include_metadata and state != "deleted":
        entry["metadata"] = json.loads(current.metadata)  # type: ignore[union-attr]
    return entry


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise BadRequest(f"{name}={raw!r} must be true or false")


def parse_int(name: str, raw: str | None, default: int, minimum: int, maximum: int | None = None) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise BadRequest(f"{name} must be {bounds}, got {value}")
    return value


def parse_time(name: str, raw: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time that names its time zone, as naive UTC."""
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name}={raw!r} must include a time zone (Z or an offset such as +01:00)")
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
