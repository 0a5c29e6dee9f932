"""Errors of the DICOMweb services and the one table that gives each its HTTP status.

Domain code raises these (or lets a storage or index error through); nothing below
the views builds an error response. The Flask handlers that turn an exception into
a response live with the blueprints (`services/web.py`) and ask `http_status` for
the status and message. STOW is the single exception by design: its per-part
failures become FailedSOPSequence items (see `stow.py`), not HTTP errors.
"""
from __future__ import annotations

import peewee

from backends.base import BlobNotFound, BlobStoreError, InvalidKey, StorageUnavailable, StoreFull


class DicomWebError(Exception):
    """Base of errors that carry a client-facing message; its status is in STATUS."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        #: Response headers the answer must carry (e.g. WWW-Authenticate).
        self.headers = headers or {}


class BadRequest(DicomWebError):
    """The request is malformed: a path parameter, query parameter, header or body."""


class InvalidQuery(BadRequest):
    """A QIDO or change-feed query parameter is unknown or malformed."""


class Unauthenticated(DicomWebError):
    """No valid bearer token: the answer is empty but for its WWW-Authenticate header."""


class Forbidden(DicomWebError):
    """The caller's roles do not grant the data action the route needs."""


class IdentityProviderUnavailable(DicomWebError):
    """The token issuer's keys cannot be fetched, so no token can be checked."""


class NotFound(DicomWebError):
    """The study, series, instance, frame or value asked for does not exist."""


class NotAcceptable(DicomWebError):
    """No representation the client accepts can be produced (Accept, transfer syntax)."""


class Conflict(DicomWebError):
    """The request conflicts with what exists (an extended query tag already added, an operation running)."""


class PayloadTooLarge(DicomWebError):
    """An instance is larger than the configured limit."""


class UnsupportedMediaType(DicomWebError):
    """The request body's Content-Type is not one this service reads."""


class RequestTimeout(DicomWebError):
    """The client stopped sending its request body (no data within DICOMWEB_BODY_READ_TIMEOUT)."""


class ServiceBusy(DicomWebError):
    """The server is at a limit it keeps so that others are still served (e.g. uploads at once)."""


class InsufficientStorage(DicomWebError):
    """The archive has no space left to store what was sent."""


#: Exception type → (HTTP status, message for the client or None to use the exception's
#: own, which only DicomWebError subclasses carry). The nearest class in an exception's MRO
#: wins, so a subclass may have a row of its own.
STATUS: dict[type[BaseException], tuple[int, str | None]] = {
    BadRequest: (400, None),
    Unauthenticated: (401, ""),
    Forbidden: (403, "Authorization failed."),
    IdentityProviderUnavailable: (503, None),
    NotFound: (404, None),
    NotAcceptable: (406, None),
    Conflict: (409, None),
    PayloadTooLarge: (413, None),
    UnsupportedMediaType: (415, None),
    RequestTimeout: (408, None),
    InsufficientStorage: (507, None),
    ServiceBusy: (503, None),
    # The layers below the services say nothing a client should read; these say it for them.
    InvalidKey: (400, "invalid storage key"),
    StoreFull: (507, "the archive is out of storage space; nothing can be stored until space is freed"),
    StorageUnavailable: (503, "the blob store is unavailable; try again later"),
    BlobNotFound: (500, "the index references a blob that is missing from the store"),
    BlobStoreError: (503, "the blob store failed; try again later"),
    peewee.OperationalError: (503, "the index database is unavailable; try again later"),
}


def http_status(exc: BaseException) -> tuple[int, str] | None:
    """The status and client message for `exc`, or None for an unexpected error (a 500)."""
    for cls in type(exc).__mro__:
        entry = STATUS.get(cls)
        if entry is not None:
            status, message = entry
            if message is None:
                message = exc.message if isinstance(exc, DicomWebError) else str(exc)
            return status, message
    return None
