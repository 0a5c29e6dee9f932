"""GET /openapi.json: the API's OpenAPI description (dicomserver/openapi.py builds it).

Public like /healthz: it describes routes, never data, and a client needs it before it
has a token. `servers` names the root URL the client reached (urls.request_root, from
trusted facts only), so tools can call the API from the document alone.
"""
from __future__ import annotations

from flask import Blueprint, Response, request

from .. import openapi
from ..urls import request_root
from .web import archive, authenticator

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    root = request_root(archive().settings, request.environ)
    text = openapi.document_text(root, auth_required=authenticator().enabled)
    return Response(text, content_type="application/json")
