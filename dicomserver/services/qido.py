"""QIDO-RS (PS3.18 §10.6): the six search resources of studies, series and instances."""
from __future__ import annotations

from flask import Blueprint, Response, request

from ..matching import INSTANCE, SERIES, STUDY
from ..media import DICOM_JSON, parse_accept, require_json
from ..search import search
from ..uids import require_uids
from .web import archive, base_url, partition, requires, warning

bp = Blueprint("qido", __name__)


@bp.get("/studies")
@requires("read")
def search_studies() -> Response:
    return _search(STUDY)


@bp.get("/series")
@bp.get("/studies/<study>/series")
@requires("read")
def search_series(study: str | None = None) -> Response:
    return _search(SERIES, study)


@bp.get("/instances")
@bp.get("/studies/<study>/instances")
@bp.get("/studies/<study>/series/<series>/instances")
@requires("read")
def search_instances(study: str | None = None, series: str | None = None) -> Response:
    return _search(INSTANCE, study, series)


def _search(level: str, study: str | None = None, series: str | None = None) -> Response:
    require_json(parse_accept(request.headers.get("Accept")))
    study_uid, series_uid, _ = require_uids(study, series) if study is not None else (None, None, None)
    args = list(request.args.items(multi=True))
    found = search(
        archive(), level, args, base_url=base_url(), study_uid=study_uid, series_uid=series_uid, partition=partition()
    )
    response = Response(found.body, content_type=DICOM_JSON)
    for text in found.warnings:
        response.headers.add("Warning", warning(text))
    if found.erroneous:
        response.headers["erroneous-dicom-attributes"] = ",".join(found.erroneous)
    return response
