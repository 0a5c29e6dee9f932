"""Export (the reference server's POST /export): copy the stored files of studies, series and
instances to a local folder or an S3 bucket, as an operation (the `export` handler).

The reference writes to Azure Blob Storage; here a destination is a blob store of our own
(backends/): a folder under DICOMWEB_EXPORT_ROOT (LocalBlobStore: each file written to a
temporary file, flushed and renamed into place) or an S3 bucket the operator allowed
(S3BlobStore, credentials from the server's environment only, never from a request). Files
go to `<study>/<series>/<instance>.dcm` (the reference's layout, without its `<operation
id>/results/` folder), each streamed from the archive's blob and hashed on the way (a file
that is not the one stored is removed again); failures are one JSON line each in
`<operation id>/errors.log` there.

The operation walks its identifiers in order and each one's instances by row id, a batch at
a time, and checkpoints after each batch: killed halfway, it resumes after the last batch
it recorded, copying again (and so replacing whole) what it wrote since. The error lines
it has found so far are part of the checkpoint (at most MAX_ERROR_LINES), so the log it
rewrites after a batch with failures is always the log of what the checkpoint covers.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import time
from collections.abc import Callable
from typing import IO, Any, cast

from backends import open_blobstore
from backends.base import BlobNotFound, BlobStore, BlobStoreError, validate_key
from backends.local import LocalBlobStore

from .errors import BadRequest
from .index import ExportRow, Index
from .operations import Run, new_operation_id, reference
from .partitions import DEFAULT, DEFAULT_KEY, Partition
from .request_json import json_body, member
from .settings import Settings
from .uids import is_valid_uid

#: The operation type (`/operations/{id}` shows it).
EXPORT = "export"
#: Identifiers one request may list.
MAX_IDENTIFIERS = 10000
#: Failures errors.log lists (the counts go on past it).
MAX_ERROR_LINES = 1000
ERROR_LOG = "errors.log"

_FOLDER_MEMBERS = {"path"}
_S3_MEMBERS = {"bucket", "prefix", "endpointurl"}


# -- the request ----------------------------------------------------------------------------


def start(
    index: Index, settings: Settings, read: Callable[[int], bytes], base_url: str, partition: Partition = DEFAULT
) -> dict[str, str]:
    """Check a POST /export body and queue its operation; the operation's reference (under
    `base_url`, the API root: operations are not partitioned). The identifiers are resolved
    in `partition` (its key is in the payload)."""
    body = json_body(read)
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"source": {...}, "destination": {...}}')
    identifiers = _identifiers(member(body, "source"))
    destination = _destination(member(body, "destination"), settings)
    target = _usable(destination, settings)
    target.close()
    operation_id = new_operation_id()
    payload = {"resources": [_resource(value) for value in identifiers], "identifiers": identifiers,
               "destination": destination, "partitionKey": partition.key}
    with index.write_transaction():
        index.insert_operation(operation_id, EXPORT, payload)
    return reference(operation_id, base_url)


def _settings_of(item: Any, what: str) -> tuple[str, dict[str, Any]]:
    """`{"type": ..., "settings": {...}}`: the type (lower case) and the settings (member names lower case)."""
    if not isinstance(item, dict):
        raise BadRequest(f'the body has no {what} object {{"type": ..., "settings": {{...}}}}')
    kind, values = member(item, "type"), member(item, "settings")
    if not isinstance(kind, str) or not isinstance(values, dict):
        raise BadRequest(f"the {what} needs a type (a string) and settings (an object)")
    return kind.lower(), {key.lower(): value for key, value in values.items()}


def _identifiers(source: Any) -> list[str]:
    """The source's `values`: study[/series[/instance]] UIDs, without repeats or values a study
    or series given too already covers (each file is exported once)."""
    kind, values = _settings_of(source, "source")
    if kind != "identifiers":
        raise BadRequest('the source type must be "identifiers"')
    items = values.get("values")
    if not isinstance(items, list) or not items:
        raise BadRequest("the source needs values: a non-empty array of study[/series[/instance]] UIDs")
    if len(items) > MAX_IDENTIFIERS:
        raise BadRequest(f"at most {MAX_IDENTIFIERS} identifiers may be exported at once")
    parsed: list[tuple[str, ...]] = []
    for number, item in enumerate(items):
        parts = tuple(item.split("/")) if isinstance(item, str) else ()
        if not 1 <= len(parts) <= 3 or not all(is_valid_uid(part) for part in parts):
            raise BadRequest(f"source value {number} is not study, study/series or study/series/instance UIDs")
        parsed.append(parts)
    given = set(parsed)
    kept = [p for p in dict.fromkeys(parsed) if not any(p[:n] in given for n in range(1, len(p)))]
    return ["/".join(parts) for parts in kept]


def _resource(value: str) -> str:
    names = ("studies", "series", "instances")
    return "/".join(f"{name}/{uid}" for name, uid in zip(names, value.split("/"), strict=False))


def _destination(item: Any, settings: Settings) -> dict[str, str]:
    """The destination as the operation keeps it; a request can name no place the operator did not allow."""
    kind, values = _settings_of(item, "destination")
    if kind == "folder":
        if set(values) - _FOLDER_MEMBERS:
            raise BadRequest("a folder destination's settings are only {\"path\": ...}")
        if settings.export_root is None:
            raise BadRequest("export to a folder is not enabled on this server (DICOMWEB_EXPORT_ROOT)")
        path = values.get("path")
        if not isinstance(path, str) or not _is_relative_path(path):
            raise BadRequest("the folder path must be relative to the export root: names of A-Z a-z 0-9 . _ - "
                             "separated by '/', none starting with '.'")
        _folder(settings, path)
        return {"type": "folder", "path": path}
    if kind == "s3":
        if set(values) - _S3_MEMBERS:
            raise BadRequest("an s3 destination's settings are bucket, prefix and endpointUrl; credentials are "
                             "never taken from a request")
        bucket, prefix, endpoint = values.get("bucket"), values.get("prefix", ""), values.get("endpointurl")
        allowed = settings.export_s3_buckets
        if not isinstance(bucket, str) or not (bucket in allowed or ("*" in allowed and bucket)):
            raise BadRequest("the bucket is not one this server may export to (DICOMWEB_EXPORT_S3_BUCKETS)")
        if not isinstance(prefix, str) or (prefix.strip("/") and not _is_relative_path(prefix.strip("/"))):
            raise BadRequest("the prefix must be names of A-Z a-z 0-9 . _ - separated by '/', none starting with '.'")
        if endpoint is not None and endpoint not in settings.export_s3_endpoints:
            raise BadRequest("the endpointUrl is not one this server may export to (DICOMWEB_EXPORT_S3_ENDPOINTS)")
        destination = {"type": "s3", "bucket": bucket, "prefix": prefix.strip("/")}
        if endpoint is not None:
            destination["endpointUrl"] = endpoint
        return destination
    raise BadRequest('the destination type must be "folder" or "s3"')


def _is_relative_path(path: str) -> bool:
    try:
        validate_key(path)
    except BlobStoreError:
        return False
    return True


def _folder(settings: Settings, path: str) -> str:
    """The destination folder, which must resolve (symbolic links followed) inside the export root."""
    assert settings.export_root is not None
    root = os.path.realpath(settings.export_root)
    folder = os.path.realpath(os.path.join(root, *path.split("/")))
    if not folder.startswith(root.rstrip(os.sep) + os.sep):
        raise BadRequest("the folder path leads outside the export root")
    return folder


def _usable(destination: dict[str, str], settings: Settings) -> BlobStore:
    """The destination opened and checked, or BadRequest saying it cannot be written (not why:
    the reason would name server paths or endpoints)."""
    try:
        target = open_destination(destination, settings)
        target.check()
    except (BlobStoreError, ValueError):
        where = "folder cannot be created" if destination["type"] == "folder" else "bucket cannot be reached"
        raise BadRequest(f"the destination {where} with the server's permissions") from None
    return target


def open_destination(destination: dict[str, str], settings: Settings) -> BlobStore:
    """The blob store the files go to (the folder is checked again: a link may have changed)."""
    if destination["type"] == "folder":
        return LocalBlobStore(_folder(settings, destination["path"]))
    return _s3_store(destination)


def _s3_store(destination: dict[str, str]) -> BlobStore:
    import boto3  # only with the s3 extra installed
    from botocore.config import Config

    from backends.s3 import S3BlobStore

    client = boto3.session.Session().client(
        "s3", endpoint_url=destination.get("endpointUrl"), config=Config(user_agent_extra="dicomserver-export")
    )
    return S3BlobStore(destination["bucket"], destination["prefix"], client=client)


def _error_log_href(destination: dict[str, str], operation_id: str) -> str:
    key = f"{operation_id}/{ERROR_LOG}"
    if destination["type"] == "folder":
        return f"{destination['path']}/{key}"
    prefix = f"{destination['prefix']}/" if destination["prefix"] else ""
    return f"s3://{destination['bucket']}/{prefix}{key}"


# -- the operation --------------------------------------------------------------------------


def export(run: Run) -> None:
    """The export operation: each identifier's instances, a batch at a time, a checkpoint after each."""
    index, settings = run.index, run.settings
    identifiers: list[str] = run.record.payload["identifiers"]
    destination: dict[str, str] = run.record.payload["destination"]
    partition_key = _partition_key(run)
    state = run.record.checkpoint
    if state is None:
        upto, _ = index.instance_extent()  # instances stored from now on are not part of it
        total = sum(
            index.export_count(*_uids(value), upto=upto, partition_key=partition_key) for value in identifiers
        )
        state = {"item": 0, "after": 0, "upto": upto, "done": 0, "total": total, "errors": [],
                 "results": {"exported": 0, "skipped": 0, "failed": 0}}
        with index.write_transaction():  # the snapshot holds from now on, also for a runner that resumes it
            run.checkpoint(state, 0)
    source = open_blobstore(settings.blobstore_url)
    target = open_destination(destination, settings)
    try:
        while not run.stopping and state["item"] < len(identifiers):
            state = _batch(run, source, target, identifiers, destination, state)
            run.pause(settings.export_pause)
        if run.stopping:
            return
        with index.write_transaction():
            run.finish()
    finally:
        source.close()
        target.close()


def _partition_key(run: Run) -> int:
    """The partition the identifiers name instances of (operations queued before partitions: the default)."""
    return int(run.record.payload.get("partitionKey", DEFAULT_KEY))


def _uids(value: str) -> tuple[str, str | None, str | None]:
    parts = value.split("/")
    return parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None


def _batch(run: Run, source: BlobStore, target: BlobStore, identifiers: list[str],
           destination: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
    """Copy the next batch of the current identifier; the state after it, checkpointed."""
    value, batch = identifiers[state["item"]], run.settings.export_batch
    rows = run.index.export_page(
        *_uids(value), after=state["after"], upto=state["upto"], limit=batch, partition_key=_partition_key(run)
    )
    results, failures = dict(state["results"]), []
    if not rows and state["after"] == 0:
        results["skipped"] += 1
        failures.append(_error_line(value, "no stored instance matches the identifier"))
    renewed = time.monotonic()
    for row in rows:
        if time.monotonic() - renewed > run.lease.total_seconds() / 3:  # big files: keep the lease
            with run.index.write_transaction():
                run.index.renew_lease(run.record.id, run.owner, run.lease)
            renewed = time.monotonic()
        try:
            copied = _copy(source, target, row)
        except BlobNotFound:
            copied = False
            failures.append(_error_line(_identifier(row), "the instance was deleted or replaced during the export"))
        else:
            if not copied:
                failures.append(_error_line(_identifier(row), "the stored file differs from the one the archive "
                                                              "received (size or SHA-256): it was not exported"))
        results["exported" if copied else "failed"] += 1
    done = state["done"] + len(rows)
    following = len(rows) == batch  # a full page: the identifier may have more
    state = {**state, "done": done, "results": results,
             "item": state["item"] if following else state["item"] + 1,
             "after": rows[-1].id if following else 0}
    if failures:
        state["errors"] = (state["errors"] + failures)[:MAX_ERROR_LINES]
        state["results"]["errorHref"] = _error_log_href(destination, run.record.id)
        _write_error_log(target, run.record.id, state)
    with run.index.write_transaction():
        run.checkpoint(state, min(99, done * 100 // max(state["total"], 1)))
    return state


def _identifier(row: ExportRow) -> str:
    return f"{row.study_instance_uid}/{row.series_instance_uid}/{row.sop_instance_uid}"


def _copy(source: BlobStore, target: BlobStore, row: ExportRow) -> bool:
    """Copy one instance's file, streamed (a put replaces a file a killed run left whole, never a
    part); whether it is the file the archive stored (its size and SHA-256, hashed on the way:
    one that is not is removed again)."""
    key = f"{row.study_instance_uid}/{row.series_instance_uid}/{row.sop_instance_uid}.dcm"
    with source.open(row.blob_key) as stream:
        # Read once: a seekable stream would be read twice by an S3 put (a hashing pass first).
        written = target.put(key, cast("IO[bytes]", _ReadOnce(stream)))
    if written.size == row.size and (row.sha256 is None or written.sha256 in (None, row.sha256)):
        return True
    target.delete(key)
    return False


class _ReadOnce:
    """A stream's read(), and nothing else (not seekable)."""

    def __init__(self, stream: IO[bytes]):
        self.read = stream.read

    @staticmethod
    def seekable() -> bool:
        return False


def _error_line(identifier: str, error: str) -> str:
    moment = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"timestamp": moment, "identifier": identifier, "error": error})


def _write_error_log(target: BlobStore, operation_id: str, state: dict[str, Any]) -> None:
    lines = list(state["errors"])
    results = state["results"]
    unlisted = results["skipped"] + results["failed"] - len(lines)
    if unlisted > 0:
        lines.append(json.dumps({"error": f"{unlisted} more failures are not listed (at most {MAX_ERROR_LINES})"}))
    target.put(f"{operation_id}/{ERROR_LOG}", io.BytesIO("".join(f"{line}\n" for line in lines).encode()))
