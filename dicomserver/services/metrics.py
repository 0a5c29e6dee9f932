"""GET /metrics: Prometheus' text format, for scrapers (metrics.py says what is counted).

No patient data, so no data action and none of the DICOMweb API's tokens: like /healthz
it is open, unless DICOMWEB_METRICS_TOKEN asks scrapers for a bearer token of its own.
"""
from __future__ import annotations

from flask import Blueprint, Response, request

from .. import metrics
from .web import archive

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    state = archive()
    metrics.check_scrape_token(state.settings.metrics_token, request.headers.get("Authorization"))
    return Response(metrics.exposition(state.index.stored_counts), content_type=metrics.CONTENT_TYPE)
