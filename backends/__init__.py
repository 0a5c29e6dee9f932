"""Pluggable blob storage for dicomserver.

This package owns where DICOM instance bytes live. `base` defines the
interface everything else codes against; each backend module implements it.
This module holds the registry of backends (imported lazily, so optional
dependencies such as boto3 are only needed when that backend is used) and
`open_blobstore`, which turns the configured URL into a store.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, cast

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    InvalidKey,
    StorageUnavailable,
    validate_key,
)

if TYPE_CHECKING:
    from .local import LocalBlobStore

__all__ = [
    "BLOBSTORES",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "InvalidKey",
    "StorageUnavailable",
    "blobstore_class",
    "open_blobstore",
    "validate_key",
]

#: URL scheme -> (module, class). Modules are imported only when used.
BLOBSTORES: dict[str, tuple[str, str]] = {
    "file": ("backends.local", "LocalBlobStore"),
    "memory": ("backends.memory", "MemoryBlobStore"),
    "s3": ("backends.s3", "S3BlobStore"),
}

#: The setup.cfg extra that installs a backend's optional dependencies.
EXTRAS: dict[str, str] = {"s3": "s3"}

#: The accepted forms, for error messages; keep in step with BLOBSTORES.
EXPECTED_FORMS = "a path, file:///abs/path, s3://bucket[/prefix] or memory://"

# 'scheme:' at the start; two characters at least so 'C:\data' stays a path.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
# 'scheme://user:password@' -> 'scheme://***@' so credentials never reach logs.
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")


def blobstore_class(scheme: str) -> type[BlobStore]:
    """Import and return the backend class registered for `scheme`.

    Raises ValueError naming the extra to install when the backend's optional
    dependency (boto3 for s3) is missing, so start-up fails with that advice.
    """
    module_name, class_name = BLOBSTORES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name == module_name or scheme not in EXTRAS:
            raise
        raise ValueError(
            f"the {scheme}:// blob store needs the Python package {exc.name!r}, which is not "
            f"installed: pip install '.[{EXTRAS[scheme]}]' (or 'dicomserver[{EXTRAS[scheme]}]')"
        ) from None
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, BlobStore)):
        raise TypeError(f"{module_name}.{class_name} is not a BlobStore")
    return cls


def open_blobstore(url: str | os.PathLike[str]) -> BlobStore:
    """Open the blob store described by `url`.

    Accepts a plain path (relative paths are resolved against the current
    directory; anything starting with 'scheme:' is read as a URL, so write
    './name:x' for such a directory), 'file:///absolute/path',
    's3://bucket[/prefix]' or 'memory://'.
    Raises ValueError with a message saying which forms are expected; the
    caller prefixes it with the name of the setting it came from.
    """
    url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f"blob store URL must be a str or path, not {type(url).__name__}")
    if not url.strip():
        raise ValueError(f"empty blob store URL: expected {EXPECTED_FORMS}")
    match = _SCHEME_RE.match(url)
    if match is None:
        return cast("type[LocalBlobStore]", blobstore_class("file"))(os.path.abspath(url))
    scheme = match.group(1).lower()
    if scheme not in BLOBSTORES:
        raise ValueError(
            f"unsupported blob store URL {_redact(url)!r}: expected {EXPECTED_FORMS}"
        )
    return blobstore_class(scheme).from_url(url)


def _redact(url: str) -> str:
    return _USERINFO_RE.sub(r"\1***@", url)
