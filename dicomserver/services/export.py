"""Export (non-standard, the reference server's): POST /export starts an export operation."""
from __future__ import annotations

import json

from flask import Blueprint, Response

from .. import export
from .web import api_root, archive, partition, request_body, requires

bp = Blueprint("export", __name__)


@bp.post("/export")
@requires("export")
def start_export() -> Response:
    """202 with the operation's {id, href} and its Location, as the reference answers."""
    started = export.start(archive().index, archive().settings, request_body(), api_root(), partition())
    response = Response(json.dumps(started), status=202, content_type="application/json")
    response.headers["Location"] = started["href"]
    return response
