"""The per-app state (settings, blob store, index) and accessors for views."""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app, g, request

from backends.base import BlobStore

from .index import Index
from .ingest import Ingestor
from .settings import Settings


@dataclass
class Server:
    settings: Settings
    store: BlobStore
    index: Index
    ingestor: Ingestor = field(init=False)

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(
            self.store, self.index, bulkdata_inline_threshold=self.settings.bulkdata_inline_threshold
        )


def server() -> Server:
    return current_app.extensions["dicomserver"]


def api_version() -> str:
    return g.get("api_version", "v2")


def base_url() -> str:
    """Absolute URL of the versioned API root, for RetrieveURLs (PS3.18 wants them absolute)."""
    root = server().settings.public_url or request.host_url.rstrip("/")
    return f"{root}/{api_version()}"
