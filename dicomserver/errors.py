"""Errors of the DICOMweb services and the one place that maps them to HTTP.

Domain code raises these (or lets a storage/index error through); views never build
error responses themselves. Bodies are plain text, as the reference server's are.
STOW is the single exception by design: its per-part failures become
FailedSOPSequence items (see `ingest.py`), not HTTP errors.
"""
from __future__ import annotations

import logging
import uuid

import peewee
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from backends.base import BlobNotFound, BlobStoreError, InvalidKey, StorageUnavailable

log = logging.getLogger(__name__)


class DicomWebError(Exception):
    """Base of errors that carry a client-facing message."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(DicomWebError):
    status = 400


class InvalidUID(BadRequest):
    pass


class InvalidFrameList(BadRequest):
    pass


class InvalidQuery(BadRequest):
    pass


class NotFound(DicomWebError):
    status = 404


class NotAcceptable(DicomWebError):
    status = 406


class Conflict(DicomWebError):
    status = 409


class PayloadTooLarge(DicomWebError):
    status = 413


class UnsupportedMediaType(DicomWebError):
    status = 415


class ServiceUnavailable(DicomWebError):
    status = 503


#: Errors raised by the layers below the services, mapped to HTTP here and only here.
_LOWER_LAYER_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (InvalidKey, 400, "invalid storage key"),
    (StorageUnavailable, 503, "the blob store is unavailable; try again later"),
    (BlobNotFound, 500, "the index references a blob that is missing from the store"),
    (BlobStoreError, 503, "the blob store failed; try again later"),
    (peewee.OperationalError, 503, "the index database is unavailable; try again later"),
)


def text_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        message + "\n", status=status, mimetype="text/plain", headers=headers or {}
    )


def register_error_handlers(app: Flask) -> None:
    """Install the single mapping from exceptions to HTTP responses."""

    @app.errorhandler(DicomWebError)
    def _dicomweb_error(exc: DicomWebError) -> Response:
        return text_response(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = text_response(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    for exc_type, status, message in _LOWER_LAYER_STATUS:
        app.register_error_handler(exc_type, _lower_layer_handler(status, message))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        log.exception("unhandled error (request id %s)", request_id)
        return text_response(500, f"internal server error (request id {request_id})")


def _lower_layer_handler(status: int, message: str):
    def handler(exc: BaseException) -> Response:
        if status >= 500:
            log.error("%s: %r", message, exc)
        return text_response(status, message)

    return handler
