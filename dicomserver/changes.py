"""Change-feed entries (the reference server's non-standard /changefeed) as JSON.

`state` is derived when read, by comparing an entry's sequence with the watermark of
the instance's current version: equal → current, older → replaced, no instance →
deleted. Values are the documented lower-case ones. v1 pages by sequence (`offset` =
last sequence seen); v2 by time window (`startTime` inclusive, `endTime` exclusive,
`offset` = entries to skip).
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from .errors import BadRequest
from .index import FeedEntry, Index

#: A query parameter's value by name (None when absent).
Arg = Callable[[str], "str | None"]


def feed(index: Index, api_version: str, arg: Arg) -> list[dict[str, Any]]:
    """One page of the change feed, as the query parameters ask."""
    include_metadata = parse_bool("includeMetadata", arg("includeMetadata"), True)
    if api_version == "v1":
        entries = index.changes(
            after_sequence=parse_int("offset", arg("offset"), 0, 0),
            limit=parse_int("limit", arg("limit"), 10, 1, 100),
        )
    else:
        start = parse_time("startTime", arg("startTime"))
        end = parse_time("endTime", arg("endTime"))
        if start is not None and end is not None and end <= start:
            raise BadRequest("endTime must be later than startTime")
        entries = index.changes(
            start=start,
            end=end,
            offset=parse_int("offset", arg("offset"), 0, 0),
            limit=parse_int("limit", arg("limit"), 100, 1, 200),
        )
    return [entry_json(entry, include_metadata) for entry in entries]


def latest(index: Index, arg: Arg) -> dict[str, Any] | None:
    """The newest entry, or None when the feed is empty."""
    include_metadata = parse_bool("includeMetadata", arg("includeMetadata"), True)
    entries = index.changes(limit=1, newest_first=True)
    return entry_json(entries[0], include_metadata) if entries else None


def entry_json(entry: FeedEntry, include_metadata: bool) -> dict[str, Any]:
    if entry.current_watermark is None:
        state = "deleted"
    elif entry.current_watermark == entry.sequence:
        state = "current"
    else:
        state = "replaced"
    out: dict[str, Any] = {
        "sequence": entry.sequence,
        "studyInstanceUid": entry.study_instance_uid,
        "seriesInstanceUid": entry.series_instance_uid,
        "sopInstanceUid": entry.sop_instance_uid,
        "action": entry.action,
        "timestamp": entry.timestamp.replace(tzinfo=dt.timezone.utc).isoformat(),
        "state": state,
    }
    if include_metadata and entry.current_metadata is not None:
        out["metadata"] = json.loads(entry.current_metadata)
    return out


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
