"""Bulk update (non-standard, the reference server's): POST /v2/studies/$bulkUpdate starts an
`update` operation. /v1 answers 404, as the reference does (bulk update came with its v2)."""
from __future__ import annotations

import json

from flask import Blueprint, Response

from .. import bulk_update
from ..errors import NotFound
from .web import api_root, api_version, archive, note_studies, partition, request_body, requires

bp = Blueprint("bulk_update", __name__)


@bp.post("/studies/$bulkUpdate")
@bp.post("/studies/$bulkupdate")  # the reference's client library spells it so (its routes ignore case)
@requires("write")
def start_update() -> Response:
    """202 with the operation's {id, href} and its Location, as the reference answers."""
    if api_version() == "v1":
        raise NotFound("bulk update is served under /v2 only, as the reference server serves it")
    started, studies = bulk_update.start(archive().index, request_body(), api_root(), partition())
    note_studies(studies)
    response = Response(json.dumps(started), status=202, content_type="application/json")
    response.headers["Location"] = started["href"]
    return response
