"""Change feed (non-standard, the reference server's): /changefeed and /changefeed/latest;
/changefeed also as Server-Sent Events to `Accept: text/event-stream` (changefeed_stream.py)."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, request

from .. import changes
from ..archive import Archive
from ..changefeed_stream import HEADERS, open_stream
from ..media import EVENT_STREAM, parse_accept, prefers_event_stream
from ..settings import SERVER_STOPPING
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
    if prefers_event_stream(parse_accept(request.headers.get("Accept"))):
        return _event_stream(state)
    return _json(changes.feed(state.index, api_version(), _arg, base_url(), partitioned=state.settings.partitions))


def _event_stream(state: Archive) -> Response:
    """The feed as Server-Sent Events, until the client leaves or the server ends the stream."""
    if request.method == "HEAD":  # the server would iterate the stream to drop its bytes
        return Response(status=200, content_type=EVENT_STREAM, headers=HEADERS)
    stream = open_stream(
        current_app.extensions["dicomserver-changefeed"], state.settings, api_version(), _arg,
        request.headers.get("Last-Event-ID"), base_url(), partitioned=state.settings.partitions,
        stop_signal=request.environ.get(SERVER_STOPPING),
    )
    return Response(stream, content_type=f"{EVENT_STREAM}; charset=utf-8", headers=HEADERS, direct_passthrough=True)


@bp.get("/changefeed/latest")
@requires("read")
def latest() -> Response:
    state = archive()
    entry = changes.latest(state.index, _arg, base_url(), partitioned=state.settings.partitions)
    return Response(status=204) if entry is None else _json(entry)
