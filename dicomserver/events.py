"""Events that webhooks deliver (docs/events.md): their types, their JSON envelope, and `record`,
the one call another part of the server makes to emit one.

The envelope is `{id, type, time, partitionName, data}`: `id` is a UUID the receiver
de-duplicates by (a retried delivery carries the same id), `time` when it happened (UTC),
`data` the UIDs (and counts) of what it is about, plus `retrieveUrl` when the server knows its
public address (DICOMWEB_PUBLIC_URL; a delivery has no request to take it from).
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .index import Index
from .index.outbox import (
    INSTANCE_DELETED,
    INSTANCE_STORED,
    PING,
    SERIES_STABLE,
    STUDY_STABLE,
    TYPES,
    WORKITEM_STATE,
)
from .partitions import DEFAULT, DEFAULT_NAME, Partition

__all__ = [
    "INSTANCE_DELETED", "INSTANCE_STORED", "PING", "SERIES_STABLE", "STUDY_STABLE", "TYPES", "WORKITEM_STATE",
    "envelope", "record",
]


def record(index: Index, event_type: str, data: Mapping[str, Any], partition: Partition = DEFAULT) -> str | None:
    """Emit an event in the caller's write transaction (`index.write_transaction()`), so that it is
    delivered if and only if the change commits; its id, or None when no subscription wants it.

    For UPS-RS: `record(index, WORKITEM_STATE, {"workitemInstanceUid": ..., "procedureStepState":
    "IN PROGRESS", "previousState": "SCHEDULED"}, partition)` where a workitem changes state."""
    if event_type not in TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    return index.outbox.record(event_type, partition.name, dict(data))


def envelope(event_id: str, event_type: str, time: dt.datetime, partition: str, data: Mapping[str, Any],
             public_url: str | None) -> bytes:
    """The body a delivery POSTs (the same bytes on every attempt)."""
    body = dict(data)
    url = retrieve_url(event_type, partition, body, public_url)
    if url is not None:
        body["retrieveUrl"] = url
    document = {
        "id": event_id,
        "type": event_type,
        "time": time.replace(tzinfo=dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "partitionName": partition,
        "data": body,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def retrieve_url(event_type: str, partition: str, data: Mapping[str, Any], public_url: str | None) -> str | None:
    """Where a client retrieves what a stored/stable event names (/v2, under its partition when not
    the default); None without a public URL or for events about nothing retrievable."""
    if public_url is None or event_type not in (INSTANCE_STORED, SERIES_STABLE, STUDY_STABLE):
        return None
    root = f"{public_url.rstrip('/')}/v2"
    if partition != DEFAULT_NAME:
        root += f"/partitions/{quote(partition, safe='')}"
    path = f"{root}/studies/{data['studyInstanceUid']}"
    if event_type in (INSTANCE_STORED, SERIES_STABLE):
        path += f"/series/{data['seriesInstanceUid']}"
    if event_type == INSTANCE_STORED:
        path += f"/instances/{data['sopInstanceUid']}"
    return path
