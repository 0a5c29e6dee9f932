"""DELETE of a study, series or instance (non-standard, as the reference server)."""
from __future__ import annotations

from flask import Blueprint, Response

from ..uids import require_uids
from .web import archive, partition, requires

bp = Blueprint("delete", __name__)


@bp.delete("/studies/<study>")
@bp.delete("/studies/<study>/series/<series>")
@bp.delete("/studies/<study>/series/<series>/instances/<instance>")
@requires("delete")
def delete(study: str, series: str | None = None, instance: str | None = None) -> Response:
    archive().delete(*require_uids(study, series, instance), partition=partition())
    return Response(status=204)
