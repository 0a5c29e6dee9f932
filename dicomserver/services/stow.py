"""STOW-RS (PS3.18 §10.5): POST/PUT /studies[/{study}], multipart/related or application/dicom."""
from __future__ import annotations

import json

from flask import Blueprint, Response, request

from .. import stow
from ..media import DICOM_JSON, parse_accept, require_json
from ..uids import require_uids
from .web import api_version, archive, base_url, note_reason, note_studies, partition, request_body, requires

bp = Blueprint("stow", __name__)


@bp.route("/studies", methods=["POST", "PUT"])
@bp.route("/studies/<study>", methods=["POST", "PUT"])
@requires("write")
def store_instances(study: str | None = None) -> Response:
    require_json(parse_accept(request.headers.get("Accept")))
    study_uid = require_uids(study)[0] if study is not None else None
    state = archive()
    results = stow.store(
        state.ingestor,
        state.settings,
        request_body(),
        request.headers.get("Content-Type", ""),
        study_uid=study_uid,
        replace=request.method == "PUT",
        partition=partition(),
    )
    note_studies(r.study_instance_uid for r in results if r.stored and r.study_instance_uid)
    note_reason(stow.summary(results))
    status, dataset = stow.response(results, base_url=base_url(), study_uid=study_uid, api_version=api_version())
    return Response(json.dumps(dataset), status=status, content_type=DICOM_JSON)
