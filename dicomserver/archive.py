"""The archive: settings, blob store and index, and what spans the two stores.

One `Archive` is built by `create_app` and handed to every domain function, so no
domain code reaches for Flask to find its dependencies. The operations here are the
ones that keep blob store and index consistent with each other outside STOW: DELETE
(index rows first, blobs after the commit), the orphan sweep of `dicom gc` (which also
finds the temporary files of writes a crash interrupted), and the readiness probe
(which also says when the store is nearly full).
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom

from backends import open_blobstore
from backends.base import MIN_TEMP_AGE_SECONDS, BlobStore, TempFile

from .index import Index, StoredBlob, open_index
from .ingest import Ingestor, blob_created, discard_blob
from .partitions import DEFAULT, DEFAULT_NAME, Partition, PartitionNotFound, PartitionsDisabled, check_name
from .settings import ConfigError, Settings


def open_archive(settings: Settings) -> Archive:
    """Open the blob store and the index the settings name (migrating the index's schema);
    ConfigError naming the variable when one is unusable. The server and the CLI share it."""
    settings.validate()
    # Real-world files carry values that break VR rules; read them as they are.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        store = open_blobstore(settings.blobstore_url)
    except ValueError as exc:
        raise ConfigError(f"DICOMWEB_BLOBSTORE_URL={settings.blobstore_url!r} is invalid: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"DICOMWEB_BLOBSTORE_URL={settings.blobstore_url!r} is unusable: {exc}") from None
    try:
        index = open_index(settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    except Exception as exc:
        store.close()
        raise ConfigError(f"DICOMWEB_DATABASE_URL={settings.database_url!r} is unusable: {exc}") from None
    return Archive(settings=settings, store=store, index=index)


@dataclass
class Archive:
    settings: Settings
    store: BlobStore
    index: Index
    ingestor: Ingestor = field(init=False)
    #: Partition name → partition, filled as names are first met: partitions are never renamed
    #: or deleted, so an entry never goes stale (a dict's get and set are atomic under the GIL).
    _partitions: dict[str, Partition] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(
            self.store, self.index, bulkdata_inline_threshold=self.settings.bulkdata_inline_threshold
        )
        self._partitions = {DEFAULT_NAME: DEFAULT}

    def partition(self, name: str, *, create: bool = False) -> Partition:
        """The partition of that name: from this process' dict (one lookup), else from the
        index; a name never stored is created when `create` (STOW), else 400 as the
        reference answers. An invalid name is 400 (it is checked before the index is asked,
        and only valid names ever enter the dict)."""
        found = self._partitions.get(name)
        if found is not None:
            return found
        check_name(name)
        found = self.index.add_partition(name) if create else self.index.partition_named(name)
        if found is None:
            raise PartitionNotFound()
        self._partitions[name] = found
        return found

    def list_partitions(self) -> list[dict[str, object]]:
        """`GET /partitions`: every partition, as the reference lists them (PartitionEntry);
        400 when the feature is off, as there."""
        if not self.settings.partitions:
            raise PartitionsDisabled()
        return [
            {
                "partitionKey": entry.key,
                "partitionName": entry.name,
                "createdDate": entry.created.replace(tzinfo=dt.timezone.utc).isoformat(),
            }
            for entry in self.index.partition_entries()
        ]

    def check_partitions(self) -> None:
        """With partitions off, a partition besides the default would be unreachable: refuse
        to start, as the reference does (turning them on is always allowed)."""
        if not self.settings.partitions and self.index.partition_count() > 1:
            raise ConfigError(
                "DICOMWEB_PARTITIONS is off, but the index holds data partitions besides "
                f"{DEFAULT_NAME}: the feature cannot be disabled once it has been used"
            )

    def close(self) -> None:
        """Close the index's connections and the blob store (a CLI command's end)."""
        self.index.shutdown()
        self.store.close()

    def delete(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
        partition: Partition = DEFAULT,
    ) -> int:
        """Delete a study, series or instance of a partition (404 if absent); return how many instances went.

        Index rows go first, in one transaction with their 'delete' change-feed entries;
        blobs are removed after the commit, so no index row ever points at a missing blob.
        """
        keys = self.index.delete(study_uid, series_uid, sop_uid, partition=partition)
        for key in keys:
            discard_blob(self.store, key)
        return len(keys)

    def readiness(self) -> dict[str, str]:
        """Probe the index and the blob store: 'ok' or 'failed: why' for each.

        A store with less free space than DICOMWEB_MIN_FREE_BYTES is not ready: STOW would
        soon fail on it, and a load balancer should send writes elsewhere before it does.
        """
        checks: dict[str, str] = {}
        probes: dict[str, Callable[[], None]] = {"index": self.index.check, "blobstore": self.check_store}
        for name, probe in probes.items():
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # a probe reports every failure, it does not raise
                checks[name] = f"failed: {exc}"
        return checks

    def check_store(self) -> None:
        """The store is usable and has at least min_free_bytes free (when it can tell)."""
        self.store.check()
        floor = self.settings.min_free_bytes
        free = self.store.free_bytes() if floor > 0 else None
        if free is not None and free < floor:
            raise LowOnSpace(f"{_megabytes(free)} free, below DICOMWEB_MIN_FREE_BYTES ({_megabytes(floor)})")

    def find_orphans(self, grace_seconds: int, *, now: float | None = None) -> Orphans:
        """Blobs without an index row, index rows without a blob and the store's temporary
        files, older than the grace period.

        STOW writes the blob before its index row, so a blob younger than the grace
        period may simply be waiting for its commit and is left alone; so is a row
        younger than it (its blob may be on a store that lags). A temporary file is a put
        in progress or a crash's leftover: one written to within the grace period, or
        within MIN_TEMP_AGE_SECONDS whatever the grace, may be another worker's put.
        """
        now = time.time() if now is None else now
        rows = self.index.stored_blobs()
        indexed = {row.blob_key for row in rows}
        orphans = Orphans(indexed=len(indexed))
        for key in self.store.list():
            if key in indexed:
                continue
            created = blob_created(key)
            if created is not None and now - created < grace_seconds:
                orphans.young_blobs += 1
            else:
                orphans.blobs.append(key)
        for row in rows:
            # A missing original is verify's to report: removing its row would take the
            # instance's current version with it.
            if row.original or self.store.exists(row.blob_key):
                continue
            if now - row.stored_at.replace(tzinfo=dt.timezone.utc).timestamp() < grace_seconds:
                orphans.young_rows += 1
            else:
                orphans.rows.append(row)
        temp_grace = max(grace_seconds, MIN_TEMP_AGE_SECONDS)
        for temp in self.store.temp_files():
            if now - temp.modified < temp_grace:
                orphans.young_temp_files += 1
            else:
                orphans.temp_files.append(temp)
        return orphans

    def remove_orphan_blob(self, key: str) -> None:
        self.store.delete(key)

    def remove_temp_file(self, temp: TempFile) -> None:
        self.store.remove_temp_file(temp.name)

    def remove_dangling_row(self, row: StoredBlob) -> None:
        """Remove an index row whose blob is gone, with its 'delete' change-feed entry."""
        self.index.delete(
            row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid,
            partition=Partition(row.partition_key, ""),  # by key: the index never reads the name
        )


@dataclass
class Orphans:
    """What `Archive.find_orphans` found."""

    indexed: int
    blobs: list[str] = field(default_factory=list)
    rows: list[StoredBlob] = field(default_factory=list)
    temp_files: list[TempFile] = field(default_factory=list)
    young_blobs: int = 0
    young_rows: int = 0
    young_temp_files: int = 0


class LowOnSpace(Exception):
    """The blob store has less free space than DICOMWEB_MIN_FREE_BYTES (readiness only)."""


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB" if size >= 2**20 else f"{size:,} bytes"

