"""Data partitions (the reference server's, non-standard): GET /partitions lists them."""
from __future__ import annotations

import json

from flask import Blueprint, Response

from .web import archive, requires

bp = Blueprint("partitions", __name__)


@bp.get("/partitions")
@requires("read")
def list_partitions() -> Response:
    """200 with [{partitionKey, partitionName, createdDate}]; 400 when partitions are off."""
    return Response(json.dumps(archive().list_partitions()), content_type="application/json")
