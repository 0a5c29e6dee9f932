"""Long-running operations (non-standard, the reference server's): GET /operations/{id}."""
from __future__ import annotations

import json

from flask import Blueprint, Response

from .. import operations
from .web import api_version, archive, base_url, requires

bp = Blueprint("operations", __name__)


@bp.get("/operations/<operation_id>")
@requires("read")
def operation_status(operation_id: str) -> Response:
    """202 (with Location) while it runs, 200 once it has ended, as the reference answers."""
    document, running = operations.status(archive().index, operation_id, base_url(), api_version())
    response = Response(json.dumps(document), status=202 if running else 200, content_type="application/json")
    if running:
        response.headers["Location"] = f"{base_url()}/operations/{document['operationId']}"
    return response
