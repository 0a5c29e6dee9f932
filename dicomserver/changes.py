"""Change-feed entries (the reference server's non-standard /changefeed) as JSON.

`state` is derived when read, by comparing an entry's sequence with the watermark of
the instance's current version: equal → current, older → replaced, no instance →
deleted. Values are the documented lower-case ones. v1 pages by sequence (`offset` =
last sequence seen); v2 by time window (`startTime` inclusive, `endTime` exclusive,
`offset` = entries to skip). An offset beyond 64 bits is read as the largest one the
database holds: past every entry either way, so the page is the same empty one.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from .dicomjson import absolute_uris
from .errors import BadRequest
from .index import FeedEntry, Index
from .matching import parse_count, shown

#: A query parameter's value by name (None when absent).
Arg = Callable[[str], "str | None"]
#: `limit` per API version: (default, maximum), as the reference server pages.
PAGE_SIZES = {"v1": (10, 100), "v2": (100, 200)}


def feed(index: Index, api_version: str, arg: Arg, base_url: str, *, partitioned: bool = False) -> list[dict[str, Any]]:
    """One page of the change feed, as the query parameters ask; the metadata's BulkDataURIs
    under `base_url` (and, with partitions on, the entry's partition segment)."""
    include_metadata = parse_bool("includeMetadata", arg("includeMetadata"), True)
    if api_version == "v1":
        entries = index.changes(
            after_sequence=parse_offset(arg("offset")),
            limit=parse_int("limit", arg("limit"), *PAGE_SIZES["v1"]),
        )
    else:
        start = parse_time("startTime", arg("startTime"))
        end = parse_time("endTime", arg("endTime"))
        if start is not None and end is not None and end <= start:
            raise BadRequest("endTime must be later than startTime")
        entries = index.changes(
            start=start,
            end=end,
            offset=parse_offset(arg("offset")),
            limit=parse_int("limit", arg("limit"), *PAGE_SIZES["v2"]),
        )
    return [entry_json(entry, include_metadata, base_url, partitioned) for entry in entries]


def latest(index: Index, arg: Arg, base_url: str, *, partitioned: bool = False) -> dict[str, Any] | None:
    """The newest entry, or None when the feed is empty."""
    include_metadata = parse_bool("includeMetadata", arg("includeMetadata"), True)
    entries = index.changes(limit=1, newest_first=True)
    return entry_json(entries[0], include_metadata, base_url, partitioned) if entries else None


def entry_json(entry: FeedEntry, include_metadata: bool, base_url: str, partitioned: bool = False) -> dict[str, Any]:
    """An entry as the reference serialises it (`partitionName` always, as its store reads it)."""
    if entry.current_watermark is None:
        state = "deleted"
    elif entry.current_watermark == entry.sequence:
        state = "current"
    else:
        state = "replaced"
    out: dict[str, Any] = {
        "sequence": entry.sequence,
        "partitionName": entry.partition_name,
        "studyInstanceUid": entry.study_instance_uid,
        "seriesInstanceUid": entry.series_instance_uid,
        "sopInstanceUid": entry.sop_instance_uid,
        "action": entry.action,
        "timestamp": entry.timestamp.replace(tzinfo=dt.timezone.utc).isoformat(),
        "state": state,
    }
    if include_metadata and entry.current_metadata is not None:
        base = f"{base_url}/partitions/{entry.partition_name}" if partitioned else base_url
        out["metadata"] = json.loads(absolute_uris(entry.current_metadata, base))
    return out


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise BadRequest(f"{name}={shown(raw)} must be true or false")


def parse_int(name: str, raw: str | None, default: int, maximum: int) -> int:
    """A count from 1 to `maximum`, `default` when absent."""
    return default if raw is None else parse_count(name, raw, minimum=1, maximum=maximum)


def parse_offset(raw: str | None) -> int:
    return 0 if raw is None else parse_count("offset", raw, minimum=0, clamp=True)


def parse_time(name: str, raw: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time that names its time zone, as naive UTC.

    A time within a day of the calendar's ends (year 1, year 9999) may have no UTC
    equivalent; it is before or after every entry, as the calendar's first or last instant."""
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"{name}={shown(raw)} is not an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise BadRequest(f"{name}={shown(raw)} must include a time zone (Z or an offset such as +01:00)")
    try:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    except OverflowError:
        return dt.datetime.min if value.year == 1 else dt.datetime.max
