"""The audit trail as FHIR R4 AuditEvents (not DICOMweb): GET /audit and /audit/{id}."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from .. import fhir_audit
from .web import archive, audit_trail, base_url, requires

bp = Blueprint("audit", __name__)


def _fhir(resource: dict[str, Any]) -> Response:
    return Response(json.dumps(resource), content_type=fhir_audit.FHIR_JSON)


@bp.get("/audit")
@requires("audit")
def search() -> Response:
    fhir_audit.require_fhir_json(request.headers.get("Accept"))
    audit_trail().flush()  # this worker's latest records (others' reach the index within a second)
    return _fhir(fhir_audit.search(archive().index, list(request.args.items(multi=True)), base_url()))


@bp.get("/audit/<record_id>")
@requires("audit")
def read(record_id: str) -> Response:
    fhir_audit.require_fhir_json(request.headers.get("Accept"))
    audit_trail().flush()
    return _fhir(fhir_audit.read(archive().index, record_id, base_url()))
