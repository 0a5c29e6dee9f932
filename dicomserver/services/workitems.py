"""UPS-RS (PS3.18 §11): the worklist's transactions, its subscriptions, and the event channel.

`/workitems...` is study data (partitioned, as the reference); the event channel
`/subscribers/{AETitle}` is per AE title, whatever partition its subscriptions are in.
The reference's Warning: 299 headers are added here to the errors of the transactions
that send them (update, change state, request cancellation).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, request

from .. import ups_events, workitems
from ..errors import BadRequest, DicomWebError
from ..media import DICOM_JSON, parse_accept, require_json
from ..uids import require_uid
from .web import (
    api_root,
    archive,
    base_url,
    event_hub,
    hijacked,
    partition,
    request_body,
    requires,
    take_over_socket,
    warning,
)

bp = Blueprint("workitems", __name__)
events_bp = Blueprint("ups_events", __name__)

View = TypeVar("View", bound=Callable[..., Any])


def _warns(view: View) -> View:
    """Errors answered with their message in a Warning header too, as the reference does."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except DicomWebError as exc:
            exc.headers.setdefault("Warning", _warning(exc.message))
            raise

    return wrapped  # type: ignore[return-value]


def _warning(text: str) -> str:
    """A Warning header of a message that may quote the request (a header must be printable ASCII)."""
    return warning(text.encode("unicode_escape").decode("ascii").replace('"', "'"))


def _dataset() -> dict[str, Any]:
    return workitems.read_dataset(request_body(), request.headers.get("Content-Type"))


def _first_parameter() -> str | None:
    """The name of the first query parameter (where the reference takes a workitem or transaction UID)."""
    return next(iter(request.args), None) or None


def _answer(outcome: workitems.Outcome, uid: str | None = None) -> Response:
    response = Response(outcome.warning, status=outcome.status, mimetype="text/plain")
    if outcome.warning:
        response.headers["Warning"] = _warning(outcome.warning)
    if uid is not None:
        response.headers["Content-Location"] = f"{base_url()}/workitems/{uid}"
    return response


@bp.post("/workitems")
@requires("write")
def create_workitem() -> Response:
    """201 with Location and Content-Location; 400, 409 (exists), 415."""
    uid = workitems.create(archive().index, partition(), _dataset(), _first_parameter())
    response = Response("", status=201, mimetype="text/plain")
    response.headers["Location"] = response.headers["Content-Location"] = f"{base_url()}/workitems/{uid}"
    return response


@bp.get("/workitems")
@requires("read")
def search_workitems() -> Response:
    """200 with the matches, 204 with none."""
    require_json(parse_accept(request.headers.get("Accept")))
    found = workitems.search(archive().index, partition(), list(request.args.items(multi=True)))
    return Response(json.dumps(found), content_type=DICOM_JSON) if found else Response(status=204)


@bp.get("/workitems/<uid>")
@requires("read")
def retrieve_workitem(uid: str) -> Response:
    require_json(parse_accept(request.headers.get("Accept")))
    """200 with the dataset as one JSON object (as the reference answers; not a one-item array)."""
    dataset = workitems.retrieve(archive().index, partition(), require_uid(uid, "workitem UID"))
    return Response(json.dumps(dataset), content_type=DICOM_JSON)


@bp.post("/workitems/<uid>")
@requires("write")
@_warns
def update_workitem(uid: str) -> Response:
    """200 with Content-Location; 400 (rules), 404, 409 (changed meanwhile)."""
    uid = require_uid(uid, "workitem UID")
    outcome = workitems.update(archive().index, partition(), uid, _dataset(), _first_parameter())
    return _answer(outcome, uid)


@bp.put("/workitems/<uid>/state")
@requires("write")
@_warns
def change_workitem_state(uid: str) -> Response:
    outcome = workitems.change_state(archive().index, partition(), require_uid(uid, "workitem UID"), _dataset())
    return _answer(outcome)


@bp.post("/workitems/<uid>/cancelrequest")
@requires("write")
@_warns
def request_cancellation(uid: str) -> Response:
    uid = require_uid(uid, "workitem UID")
    requester = request.headers.get("X-Requesting-AE")  # not in PS3.18: who asks, for the event report
    return _answer(workitems.request_cancellation(archive().index, partition(), uid, _dataset(), requester))


@bp.post("/workitems/<uid>/subscribers/<ae_title>")
@requires("write")
def subscribe(uid: str, ae_title: str) -> Response:
    """201; 400 (AE title, filter), 404 (no such workitem)."""
    args = list(request.args.items(multi=True))
    uid = require_uid(uid, "workitem UID")
    response = _answer(workitems.subscribe(archive().index, partition(), uid, ae_title, args))
    if response.status_code == 201:  # where to open the event channel (PS3.18 §11.11: Content-Location)
        response.headers["Content-Location"] = _event_channel_url(ae_title)
    return response


@bp.delete("/workitems/<uid>/subscribers/<ae_title>")
@requires("write")
def unsubscribe(uid: str, ae_title: str) -> Response:
    uid = require_uid(uid, "workitem UID")
    return _answer(workitems.unsubscribe(archive().index, partition(), uid, ae_title))


@bp.post("/workitems/<uid>/subscribers/<ae_title>/suspend")
@requires("write")
def suspend_subscription(uid: str, ae_title: str) -> Response:
    uid = require_uid(uid, "workitem UID")
    return _answer(workitems.suspend(archive().index, partition(), uid, ae_title))


def _event_channel_url(ae_title: str) -> str:
    """ws[s]:// URL of the AE's event channel (not partitioned: it carries every partition's reports)."""
    root = api_root()
    return ("wss" + root[5:] if root.startswith("https") else "ws" + root[4:]) + f"/subscribers/{ae_title}"


@events_bp.get("/subscribers/<ae_title>", websocket=True)  # werkzeug matches upgrades only to websocket rules
@events_bp.get("/subscribers/<ae_title>")  # anything else: our 400
@requires("read")
def open_event_channel(ae_title: str) -> Response:
    """The AE's event channel (PS3.18 §11.13): a WebSocket that receives its event reports."""
    ae_title = workitems.require_ae_title(ae_title)
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise BadRequest("the event channel is a WebSocket: send Connection: Upgrade and Upgrade: websocket")
    hub = event_hub()
    channel = hub.open(ae_title)
    try:
        ws = take_over_socket()
    except BaseException:
        hub.close(channel)
        raise
    archive().index.close()  # a channel lives long: its index connection goes back now
    ups_events.serve(ws, hub, channel)
    return hijacked()
