"""Change feed (non-standard, the reference server's): /changefeed and /changefeed/latest."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from .. import changes
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
    return Response(json.dumps(value), content_type="application/json")


@bp.get("/changefeed")
@requires("read")
def changefeed() -> Response:
    state = archive()
    return _json(changes.feed(state.index, api_version(), _arg, base_url(), partitioned=state.settings.partitions))


@bp.get("/changefeed/latest")
@requires("read")
def latest() -> Response:
    state = archive()
    entry = changes.latest(state.index, _arg, base_url(), partitioned=state.settings.partitions)
    return Response(status=204) if entry is None else _json(entry)
