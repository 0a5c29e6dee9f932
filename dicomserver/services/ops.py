"""Operational endpoints outside the versioned API: liveness and readiness."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .web import archive

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers; checks no dependency."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the index answers a query and the blob store is usable."""
    checks = archive().readiness()
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if ready else "unavailable", checks=checks), (200 if ready else 503)
