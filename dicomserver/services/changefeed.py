"""Change feed (non-standard, the reference server's): /changefeed and /changefeed/latest."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from .. import changes
from ..dicomjson import absolute_uris
from .web import api_version, archive, base_url, requires

bp = Blueprint("changefeed", __name__)


def _arg(name: str) -> str | None:
    """Query parameters are matched case-insensitively, as ASP.NET binds them."""
    lowered = name.lower()
    for key, value in request.args.items():
        if key.lower() == lowered:
            return value
    return None


def _json(value: Any) -> Response:
    return Response(absolute_uris(json.dumps(value), base_url()), content_type="application/json")


@bp.get("/changefeed")
@requires("read")
def changefeed() -> Response:
    return _json(changes.feed(archive().index, api_version(), _arg))


@bp.get("/changefeed/latest")
@requires("read")
def latest() -> Response:
    entry = changes.latest(archive().index, _arg)
    return Response(status=204) if entry is None else _json(entry)
