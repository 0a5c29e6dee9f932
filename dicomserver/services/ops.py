"""Operational endpoints outside the versioned API: liveness and readiness."""
from __future__ import annotations

from flask import Blueprint, jsonify

from ..extensions import server

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers; checks no dependency."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Readiness: the index answers a query and the blob store is usable."""
    state = server()
    checks = {}
    for name, check in (("index", _check_index), ("blobstore", state.store.check)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # a probe reports, it does not raise
            checks[name] = f"failed: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if ready else "unavailable", checks=checks), (200 if ready else 503)


def _check_index() -> None:
    index = server().index
    index.connect()
    try:
        index.check()
    finally:
        index.close()
