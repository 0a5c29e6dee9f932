"""DELETE of a study, series or instance (non-standard, as the reference server).

Index rows go first, in one transaction with their 'delete' change-feed entries;
blobs are removed after the commit, so no index row ever points at a missing blob.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Response

from backends.base import BlobStoreError

from ..extensions import server
from ..uids import require_uid

bp = Blueprint("delete", __name__)
log = logging.getLogger(__name__)


@bp.delete("/studies/<study>")
@bp.delete("/studies/<study>/series/<series>")
@bp.delete("/studies/<study>/series/<series>/instances/<instance>")
def delete(study: str, series: str | None = None, instance: str | None = None) -> Response:
    state = server()
    keys = state.index.delete(
        require_uid(study, "StudyInstanceUID"),
        require_uid(series, "SeriesInstanceUID") if series is not None else None,
        require_uid(instance, "SOPInstanceUID") if instance is not None else None,
    )
    for key in keys:
        try:
            state.store.delete(key)
        except BlobStoreError:
            log.exception("could not delete blob %s; it is an orphan for `dicom gc`", key)
    return Response(status=204)
