"""Extended query tags (non-standard, the reference server's): /extendedquerytags and its operations."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from .. import extended_query_tags as tags
from .web import archive, base_url, request_body, requires

bp = Blueprint("extendedquerytags", __name__)


def _arg(name: str) -> str | None:
    """Query parameters are matched case-insensitively, as ASP.NET binds them."""
    lowered = name.lower()
    return next((value for key, value in request.args.items() if key.lower() == lowered), None)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


@bp.post("/extendedquerytags")
@requires("manageExtendedQueryTags")
def add_tags() -> Response:
    started = tags.add(archive().index, request_body(), base_url())
    response = _json(started, 202)
    response.headers["Location"] = started["href"]
    return response


@bp.get("/extendedquerytags")
@requires("read")
def list_tags() -> Response:
    return _json(tags.list_tags(archive().index, _arg, base_url()))


@bp.get("/extendedquerytags/<tag_path>")
@requires("read")
def get_tag(tag_path: str) -> Response:
    return _json(tags.get(archive().index, tag_path, base_url()))


@bp.patch("/extendedquerytags/<tag_path>")
@requires("manageExtendedQueryTags")
def update_tag(tag_path: str) -> Response:
    return _json(tags.update(archive().index, tag_path, request_body(), base_url()))


@bp.delete("/extendedquerytags/<tag_path>")
@requires("manageExtendedQueryTags")
def delete_tag(tag_path: str) -> Response:
    tags.delete(archive().index, tag_path)
    return Response(status=204)


@bp.get("/extendedquerytags/<tag_path>/errors")
@requires("read")
def tag_errors(tag_path: str) -> Response:
    return _json(tags.errors(archive().index, tag_path, _arg))
