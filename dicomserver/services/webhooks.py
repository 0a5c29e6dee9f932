"""Webhooks (non-standard): /webhooks subscriptions and their deliveries (docs/events.md); every
route needs the `admin` action."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from .. import webhooks
from .web import archive, base_url, request_body, requires

bp = Blueprint("webhooks", __name__)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


@bp.post("/webhooks")
@requires("admin")
def create_webhook() -> Response:
    """201 with the subscription (and its secret, once, when the server made it) and its Location."""
    created = webhooks.create(archive().index, archive().settings, request_body())
    response = _json(created, 201)
    response.headers["Location"] = f"{base_url()}/webhooks/{created['id']}"
    return response


@bp.get("/webhooks")
@requires("admin")
def list_webhooks() -> Response:
    return _json(webhooks.list_all(archive().index))


@bp.get("/webhooks/<webhook_id>")
@requires("admin")
def get_webhook(webhook_id: str) -> Response:
    return _json(webhooks.get(archive().index, webhook_id))


@bp.patch("/webhooks/<webhook_id>")
@requires("admin")
def update_webhook(webhook_id: str) -> Response:
    return _json(webhooks.update(archive().index, archive().settings, webhook_id, request_body()))


@bp.delete("/webhooks/<webhook_id>")
@requires("admin")
def delete_webhook(webhook_id: str) -> Response:
    webhooks.delete(archive().index, webhook_id)
    return Response(status=204)


@bp.get("/webhooks/<webhook_id>/deliveries")
@requires("admin")
def list_deliveries(webhook_id: str) -> Response:
    return _json(webhooks.deliveries(archive().index, webhook_id, request.args.get("limit")))


@bp.post("/webhooks/<webhook_id>/ping")
@requires("admin")
def ping_webhook(webhook_id: str) -> Response:
    """202: a `webhook.ping` event is queued for this subscription alone."""
    return _json(webhooks.ping(archive().index, webhook_id), 202)
