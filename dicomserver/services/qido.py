"""QIDO-RS (PS3.18 §10.6): the six search resources of studies, series and instances."""
from __future__ import annotations

from flask import Blueprint, Response, request

from ..dicomjson import absolute_uris
from ..extensions import base_url, server
from ..index.query import search
from ..matching import INSTANCE, SERIES, STUDY, parse_query
from ..media import DICOM_JSON, parse_accept, require_json
from ..uids import require_uid

bp = Blueprint("qido", __name__)


@bp.get("/studies")
def search_studies() -> Response:
    return _search(STUDY)


@bp.get("/series")
@bp.get("/studies/<study>/series")
def search_series(study: str | None = None) -> Response:
    return _search(SERIES, study)


@bp.get("/instances")
@bp.get("/studies/<study>/instances")
@bp.get("/studies/<study>/series/<series>/instances")
def search_instances(study: str | None = None, series: str | None = None) -> Response:
    return _search(INSTANCE, study, series)


def _search(level: str, study: str | None = None, series: str | None = None) -> Response:
    require_json(parse_accept(request.headers.get("Accept")))
    study_uid = require_uid(study, "StudyInstanceUID") if study is not None else None
    series_uid = require_uid(series, "SeriesInstanceUID") if series is not None else None
    settings = server().settings
    query = parse_query(
        list(request.args.items(multi=True)),
        level,
        default_limit=settings.qido_default_limit,
        max_limit=settings.qido_max_limit,
    )
    root = base_url()
    results, more = search(query, base_url=root, study_uid=study_uid, series_uid=series_uid)
    warnings = []
    host = request.host
    if query.ignored:
        warnings.append(
            f'299 {host} "The following attributes are not supported for matching at this '
            f'level and were ignored: {", ".join(query.ignored)}"'
        )
    for text in query.warnings:
        warnings.append(f'299 {host} "{text}"')
    if more and query.limit_was_capped:
        warnings.append(
            f'299 {host} "The number of results exceeded the maximum supported by the server. '
            f'Additional results can be requested with offset={query.offset + query.limit}."'
        )
    response = Response(absolute_uris("[" + ",".join(results) + "]", root), content_type=DICOM_JSON)
    for warning in warnings:
        response.headers.add("Warning", warning)
    return response
