"""dicomserver: a DICOMweb archive (STOW-RS, WADO-RS, QIDO-RS, delete, change feed).

`create_app` is the only entry point: it reads the settings, opens the blob store and
the index, and mounts one blueprint per DICOMweb service. Nothing happens at import.
"""
from __future__ import annotations

import logging
import re
import threading

from flask import Flask

from .settings import ConfigError, Settings

__all__ = ["create_app", "close_app", "ConfigError", "Settings"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app; raise ConfigError (naming the variable) on bad configuration."""
    from .archive import open_archive
    from .audit import AuditLog, AuditStore, AuditTrail
    from .auth import Authenticator
    from .changefeed_stream import ChangeFeedHub
    from .delivery import DeliveryRunner
    from .operations import OperationRunner
    from .request_log import configure as configure_logging
    from .services import register_services
    from .services.observe import RequestObserver

    settings = settings if settings is not None else Settings.from_env()
    settings.validate()
    configure_logging(settings.log_format)
    archive = open_archive(settings)
    index = archive.index
    try:
        with index.db.connection_context():
            archive.check_partitions()
    except ConfigError:
        archive.close()
        raise
    authenticator = Authenticator(settings)  # reads the roles file: ConfigError if unusable
    app = Flask(__name__)
    app.extensions["dicomserver"] = archive
    app.extensions["dicomserver-auth"] = authenticator
    app.extensions["dicomserver-uploads"] = threading.BoundedSemaphore(settings.max_uploads)
    app.extensions["dicomserver-changefeed"] = ChangeFeedHub(index, settings)  # SSE streams' poller
    audit_store = AuditStore(index, settings.audit_retention_days) if settings.audit_store else None
    app.extensions["dicomserver-audit"] = AuditTrail(AuditLog(settings.audit_log), audit_store)
    from .ups_events import EventHub

    app.extensions["dicomserver-ups-events"] = EventHub(
        index, max_channels=settings.max_event_channels, poll_seconds=settings.event_poll_seconds
    )
    register_services(app)
    if settings.operations_runner:
        # Re-indexes of extended query tags run in a thread of each server process, started by
        # the process's first request: a gunicorn worker forked from a preloaded app gets its
        # own, and `flask dicom ...` commands (an app, no requests) never take an operation.
        runner = app.extensions["dicomserver-operations"] = OperationRunner(index, settings)
        app.before_request(runner.start)
    index.outbox.ttl = settings.webhooks_cache_seconds
    if settings.webhooks_delivery:
        # Webhook deliveries: a thread per server process too, started the same way (delivery.py).
        deliverer = app.extensions["dicomserver-webhooks"] = DeliveryRunner(index, settings)
        app.before_request(deliverer.start)
    app.wsgi_app = RequestObserver(app.wsgi_app, log_requests=settings.log_format == "json")  # type: ignore[method-assign]
    from .cli import dicom

    app.cli.add_command(dicom)
    log = logging.getLogger(__name__)
    log.info(
        "dicomserver ready: blobs at %s, index at %s", _redact(settings.blobstore_url), _redact(settings.database_url)
    )
    if not authenticator.enabled:
        log.warning(
            "the DICOMweb API is open to anyone who can reach it: set DICOMWEB_AUTH_AUTHORITY and "
            "DICOMWEB_AUTH_AUDIENCE to require bearer tokens (docs/security.md)"
        )
    return app


def _redact(url: str) -> str:
    """A URL for the log: 'postgresql://user:secret@host' as 'postgresql://user:***@host'."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", url)


def close_app(app: Flask) -> None:
    """Stop the operations and webhook threads, store the audit records still queued, then close the
    index's connections.

    For whoever builds apps in a long-lived process (tests, embedding); a gunicorn
    worker does the same at exit on its own.
    """
    for name in ("dicomserver-operations", "dicomserver-webhooks"):
        runner = app.extensions.get(name)
        if runner is not None:
            runner.stop()
    app.extensions["dicomserver-changefeed"].close()
    app.extensions["dicomserver-ups-events"].stop()
    app.extensions["dicomserver-audit"].close()
    app.extensions["dicomserver"].index.shutdown()
