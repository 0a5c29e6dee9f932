"""Data partitions (the reference server's): isolated sets of studies on one server.

With DICOMWEB_PARTITIONS on, every study-data route is served at
`/v{n}/partitions/{name}/...` and the same UIDs may be stored in two partitions. A
partition is a key (what the index and blob keys carry, never the client's name) and a
name. `Microsoft.Default` (key 1) always exists: everything stored with the feature off
is in it. Partitions are created by STOW and never renamed or deleted, so a process may
keep name → key for good (archive.py). The 400s say what the reference's say.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadRequest

DEFAULT_NAME = "Microsoft.Default"
DEFAULT_KEY = 1
#: The reference's rule: up to 64 of A-Z a-z 0-9 . _ - (DICOM UIDs, GUIDs and readable names).
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class Partition:
    key: int
    name: str


DEFAULT = Partition(DEFAULT_KEY, DEFAULT_NAME)


class PartitionsDisabled(BadRequest):
    def __init__(self) -> None:
        super().__init__("Data partitions feature is disabled.")


class MissingPartition(BadRequest):
    def __init__(self) -> None:
        super().__init__("PartitionName value is missing in the route segment.")


class InvalidPartitionName(BadRequest):
    def __init__(self) -> None:
        super().__init__("The specified PartitionName is invalid.")


class PartitionNotFound(BadRequest):
    """The reference answers an unknown partition with 400, not 404."""

    def __init__(self) -> None:
        super().__init__("Specified PartitionName does not exist.")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidPartitionName()
    return name


def blob_prefix(partition_key: int) -> str:
    """What a partition's blob keys start with: '' for the default partition (the layout
    of a server that never had partitions), else 'partitions/<key>/' — the key, so that no
    client-chosen name ever becomes part of a path."""
    return "" if partition_key == DEFAULT_KEY else f"partitions/{partition_key}/"
