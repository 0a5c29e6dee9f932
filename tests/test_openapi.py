"""GET /openapi.json: a valid OpenAPI 3.1 document that describes every route of the app,
and whose statuses, media types and JSON schemas are what the code answers.

The route comparison reads the app's URL map, so a route added without a row in
dicomserver/openapi.py ROUTES fails here, naming it. The spot checks provoke each status
a client meets (200 … 507) on a real app and look it up in the served document.
"""
from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from dicom_factory import make_instance, multipart_body, to_bytes
from openapi_spec_validator import validate

from dicomserver import Settings, close_app, create_app, openapi

#: Flask adds these to every rule by itself: HEAD answers as GET without a body (RFC 9110
#: §9.3.2), OPTIONS is answered by Flask (and CORS preflights) before any view runs.
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
_CONVERTER = re.compile(r"<(?:(?P<converter>[a-z]+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-z_]+)>")


def openapi_paths(rule: str) -> list[str]:
    """A Flask rule as the OpenAPI path(s) it serves: /<any(v1, v2):api_version>/x/<study>
    → /v1/x/{study} and /v2/x/{study}."""
    versions = [""]
    for match in _CONVERTER.finditer(rule):
        if match["converter"] == "any":
            versions = [v.strip().strip("'\"") for v in match["args"].split(",")]
    template = _CONVERTER.sub(lambda m: "{}" if m["converter"] == "any" else f"{{{m['name']}}}", rule)
    return [template.replace("{}", version) for version in versions]


def app_operations(app) -> set[tuple[str, str]]:
    return {
        (method, path)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for path in openapi_paths(rule.rule)
        for method in rule.methods - AUTOMATIC_METHODS
    }


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


@pytest.fixture
def archive_app(tmp_path):
    """An app on SQLite + local disk (the document does not depend on the database). One
    per test: the index's peewee proxy is per process, so the last app built is the live one."""
    where = tmp_path / "archive"
    app = create_app(Settings(blobstore_url=str(where / "blobs"), database_url=f"sqlite:///{where / 'index.db'}"))
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def served(archive_app) -> dict[str, Any]:
    response = archive_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    return response.get_json()


def test_the_document_is_valid_openapi(served):
    validate(served)  # raises, naming the first error
    assert served["openapi"] == "3.1.0"


def test_schemathesis_loads_every_operation(served):
    import schemathesis

    schema = schemathesis.openapi.from_dict(served)
    loaded = {(op.method.upper(), op.path) for op in (result.ok() for result in schema.get_all_operations())}
    assert loaded == documented_operations(served)


def test_every_route_of_the_app_is_described(archive_app, served):
    """A new route needs a row in dicomserver/openapi.py ROUTES (and a gone one loses it)."""
    in_app, in_doc = app_operations(archive_app), documented_operations(served)
    missing = sorted(in_app - in_doc)
    extra = sorted(in_doc - in_app)
    assert not missing, "routes of the app with no operation in /openapi.json (add a Route to " \
        "dicomserver/openapi.py ROUTES):\n" + "\n".join(f"  {m} {p}" for m, p in missing)
    assert not extra, "operations in /openapi.json the app does not serve:\n" + "\n".join(
        f"  {m} {p}" for m, p in extra
    )
    assert len(in_app) > 100  # both versions, every level: the comparison saw the real map


def test_the_comparison_names_an_undescribed_route(archive_app):
    """The check above fails for a route added without a row: it is not vacuous."""
    served = openapi.document("http://localhost", auth_required=False)
    archive_app.add_url_rule("/metrics-like", "metrics_like", lambda: "", methods=["GET"])
    assert app_operations(archive_app) - documented_operations(served) == {("GET", "/metrics-like")}


def test_servers_names_the_root_the_client_reached(served, tmp_path):
    assert served["servers"] == [{"url": "http://localhost"}]
    public = create_app(Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}",
                                 public_url="https://pacs.example.org/dicom"))
    try:
        doc = public.test_client().get("/openapi.json", headers={"Host": "evil.example"}).get_json()
        assert doc["servers"] == [{"url": "https://pacs.example.org/dicom"}]
    finally:
        close_app(public)


def test_paths_have_their_parameters_and_versions(served):
    item = served["paths"]["/v2/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"]
    names = [p["$ref"].rsplit("/", 1)[1] for p in item["get"]["parameters"]]
    assert names == ["study", "series", "instance", "frames"]
    v1 = [p["$ref"] for p in served["paths"]["/v1/changefeed"]["get"]["parameters"]]
    v2 = [p["$ref"] for p in served["paths"]["/v2/changefeed"]["get"]["parameters"]]
    assert "#/components/parameters/changefeed.v2.startTime" in v2 and not any("startTime" in r for r in v1)
    qido = {p["$ref"].rsplit(".", 1)[1] for p in served["paths"]["/v2/studies"]["get"]["parameters"]}
    assert {"PatientName", "00100010", "StudyDate", "limit", "offset", "includefield", "fuzzymatching"} <= qido
    assert "SOPInstanceUID" not in qido  # an instance attribute: ignored (with a Warning) at study level
    assert "SOPInstanceUID" in {
        p["$ref"].rsplit(".", 1)[1] for p in served["paths"]["/v2/instances"]["get"]["parameters"]
    }


def test_security_is_optional_unless_authentication_is_on(served, auth_client):
    assert served["security"] == [{"bearerAuth": []}, {}]
    secured = auth_client.get("/openapi.json")  # no token: the description is public
    assert secured.status_code == 200
    doc = secured.get_json()
    assert doc["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/v2/studies"]["get"]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/v2/studies/{study}"]["delete"]["x-data-action"] == "delete"


def test_render_constants_agree():
    render = pytest.importorskip("dicomserver.render")
    assert openapi.RENDERED_MEDIA_TYPES == render.MEDIA_TYPES
    quality = openapi.document("http://x", auth_required=False)["components"]["parameters"]["rendered.quality"]
    assert quality["schema"]["default"] == render.DEFAULT_QUALITY


# -- spot checks: each status a client meets, provoked, and found in the document ----------
STUDY, SERIES, SOP, MULTIFRAME = "1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1", "1.2.3.1.1.2"
INSTANCE = f"/v2/studies/{STUDY}/series/{SERIES}/instances/{SOP}"


def _instance(sop: str, **kwargs: Any) -> bytes:
    return to_bytes(make_instance(study=STUDY, series=SERIES, sop=sop, **kwargs))


def _stow(body: bytes, content_type: str = "application/dicom") -> dict[str, Any]:
    return {"method": "POST", "data": body, "headers": {"Content-Type": content_type}}


#: (name, method and path, request keyword arguments, status). Run in order on one archive.
SPOT_CHECKS: list[tuple[str, str, dict[str, Any], int]] = [
    ("changefeed latest of an empty archive", "GET /v2/changefeed/latest", {}, 204),
    ("STOW one instance", "POST /v2/studies", _stow(_instance(SOP)), 200),
    ("STOW multi-frame", "POST /v2/studies", _stow(_instance(MULTIFRAME, frames=3)), 200),
    ("STOW again", "POST /v2/studies", _stow(_instance(SOP)), 409),
    ("STOW new and not DICOM", "POST /v2/studies",
     _stow(multipart_body([_instance("1.2.3.1.1.3"), b"not dicom"]), 'multipart/related; type="application/dicom"; '
           "boundary=BOUNDARY-1234"), 202),
    ("STOW PUT", "PUT /v1/studies/" + STUDY, {**_stow(_instance(SOP)), "method": "PUT"}, 200),
    ("STOW empty", "POST /v2/studies", _stow(b""), 400),
    ("STOW text", "POST /v2/studies", _stow(b"hello", "text/plain"), 415),
    ("STOW accept", "POST /v2/studies", {**_stow(_instance("9.9")), "headers": {
        "Content-Type": "application/dicom", "Accept": "image/png"}}, 406),
    ("QIDO", "GET /v2/studies?PatientName=Test*&includefield=all", {}, 200),
    ("QIDO instances", f"GET /v1/studies/{STUDY}/series/{SERIES}/instances", {}, 200),
    ("QIDO bad date", "GET /v2/studies?StudyDate=2024", {}, 400),
    ("QIDO accept", "GET /v2/series", {"headers": {"Accept": "application/dicom"}}, 406),
    ("metadata", f"GET {INSTANCE}/metadata", {}, 200),
    ("retrieve instance", f"GET {INSTANCE}", {"headers": {"Accept": "application/dicom"}}, 200),
    ("retrieve study", f"GET /v2/studies/{STUDY}", {}, 200),
    ("retrieve study single part", f"GET /v2/studies/{STUDY}", {"headers": {"Accept": "application/dicom"}}, 406),
    ("retrieve bad UID", "GET /v2/studies/1.a", {}, 400),
    ("retrieve unknown", "GET /v2/studies/1.2.999", {}, 404),
    ("frames", f"GET /v2/studies/{STUDY}/series/{SERIES}/instances/{MULTIFRAME}/frames/1,3", {}, 200),
    ("frames past the end", f"GET /v2/studies/{STUDY}/series/{SERIES}/instances/{MULTIFRAME}/frames/4", {}, 404),
    ("bulk data", f"GET {INSTANCE}/bulkdata/7FE00010", {}, 200),
    ("bulk data range", f"GET {INSTANCE}/bulkdata/7FE00010",
     {"headers": {"Range": "bytes=0-3", "Accept": "application/octet-stream"}}, 206),
    ("bulk data past the end", f"GET {INSTANCE}/bulkdata/7FE00010",
     {"headers": {"Range": "bytes=100000-", "Accept": "application/octet-stream"}}, 416),
    ("bulk data bad path", f"GET {INSTANCE}/bulkdata/nothex", {}, 400),
    ("rendered", f"GET {INSTANCE}/rendered", {}, 200),
    ("thumbnail png", f"GET /v2/studies/{STUDY}/thumbnail?accept=image/png", {}, 200),
    ("rendered webp", f"GET {INSTANCE}/rendered?accept=image/webp", {}, 406),
    ("rendered frame list", f"GET /v2/studies/{STUDY}/series/{SERIES}/instances/{MULTIFRAME}/frames/1,2/rendered",
     {}, 400),
    ("changefeed v1", "GET /v1/changefeed?limit=100", {}, 200),
    ("changefeed v2", "GET /v2/changefeed?startTime=2020-01-01T00:00:00Z", {}, 200),
    ("changefeed latest", "GET /v2/changefeed/latest?includeMetadata=false", {}, 200),
    ("changefeed bad limit", "GET /v1/changefeed?limit=101", {}, 400),
    ("audit", "GET /v2/audit?_count=5", {}, 200),
    ("audit unknown", "GET /v2/audit/999999", {}, 404),
    ("audit accept", "GET /v2/audit", {"headers": {"Accept": "image/png"}}, 406),
    ("extended query tags, add", "POST /v2/extendedquerytags", {"json": [{"path": "PatientWeight", "level": "Study"}]},
     202),
    ("extended query tags, add again", "POST /v2/extendedquerytags",
     {"json": [{"path": "PatientWeight", "level": "Study"}]}, 409),
    ("extended query tags, add nothing", "POST /v2/extendedquerytags", {"json": []}, 400),
    ("extended query tags", "GET /v2/extendedquerytags?limit=10", {}, 200),
    ("extended query tags, bad limit", "GET /v2/extendedquerytags?limit=0", {}, 400),
    ("extended query tag", "GET /v1/extendedquerytags/00101030", {}, 200),
    ("extended query tag, bad path", "GET /v2/extendedquerytags/nope", {}, 400),
    ("extended query tag, unknown", "GET /v2/extendedquerytags/PatientSize", {}, 404),
    ("extended query tag, disable", "PATCH /v2/extendedquerytags/PatientWeight", {"json": {"queryStatus": "Disabled"}},
     200),
    ("extended query tag, bad patch", "PATCH /v2/extendedquerytags/PatientWeight", {"json": {"queryStatus": 1}}, 400),
    ("extended query tag errors", "GET /v2/extendedquerytags/PatientWeight/errors", {}, 200),
    ("extended query tag, delete", "DELETE /v2/extendedquerytags/PatientWeight", {}, 204),
    ("extended query tag, delete again", "DELETE /v2/extendedquerytags/PatientWeight", {}, 404),
    ("export, bad body", "POST /v2/export", {"json": {"source": {}}}, 400),
    ("export, folders not enabled", "POST /v2/export", {"json": {
        "source": {"type": "identifiers", "settings": {"values": [STUDY]}},
        "destination": {"type": "folder", "settings": {"path": "out"}}}}, 400),
    ("operation, bad id", "GET /v2/operations/123", {}, 400),
    ("operation, unknown", "GET /v2/operations/" + "0" * 32, {}, 404),
    ("delete instance", f"DELETE {INSTANCE}", {}, 204),
    ("delete again", f"DELETE {INSTANCE}", {}, 404),
    ("healthz", "GET /healthz", {}, 200),
    ("readyz", "GET /readyz", {}, 200),
    ("unversioned", "GET /studies", {}, 404),
    ("unversioned path", "DELETE /series/1.2/x", {}, 404),
]


def _operation(doc: dict[str, Any], app, method: str, path: str) -> dict[str, Any]:
    """The documented operation that serves `method path` (the app's own routing finds it)."""
    path = path.split("?")[0]
    rule, _ = app.url_map.bind("localhost").match(path, method=method, return_rule=True)
    prefix = "/" + path.split("/")[1]
    templates = openapi_paths(rule.rule)
    template = next((t for t in templates if t.startswith(prefix + "/")), templates[0])
    return doc["paths"][template][method.lower()]


def _deref(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    target: Any = doc
    for key in node["$ref"].removeprefix("#/").split("/"):
        target = target[key]
    return _deref(doc, target)


def check_answer(doc: dict[str, Any], operation: dict[str, Any], response) -> None:
    """The status is documented; so is the media type; a JSON body fits its schema; required
    headers are there."""
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, f"{response.status_code} is not documented: {sorted(documented)}"
    answer = _deref(doc, documented[status])
    content = answer.get("content", {})
    if content:
        media_type = response.mimetype
        types = {m.split(";")[0] for m in content}
        assert media_type in types, f"{response.content_type} is not documented for {status}: {sorted(content)}"
        entry = next(v for k, v in content.items() if k.split(";")[0] == media_type)
        if "schema" in entry and media_type.endswith("json"):
            schema = {"$ref": entry["schema"]["$ref"], "components": doc["components"]} \
                if "$ref" in entry["schema"] else entry["schema"]
            jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
                response.get_json(force=True)
            )
    else:
        assert response.data == b"", f"{status} is documented without a body"
    for name, header in answer.get("headers", {}).items():
        if _deref(doc, header).get("required"):
            assert name in response.headers, f"{status} lacks its {name} header"


def test_each_status_is_produced_and_documented(archive_app, served):
    client = archive_app.test_client()
    for name, request, kwargs, status in SPOT_CHECKS:
        method, path = request.split(" ", 1)
        options = {"method": method, **kwargs}
        response = client.open(path, **options)
        assert response.status_code == status, f"{name}: {response.status_code} {response.data[:200]!r}"
        try:
            check_answer(served, _operation(served, archive_app, method, path), response)
        except AssertionError as exc:
            raise AssertionError(f"{name} ({request}): {exc}") from None
    metadata = f"/v2/studies/{STUDY}/metadata"
    etag = client.get(metadata).headers["ETag"]
    unchanged = client.get(metadata, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    check_answer(served, served["paths"]["/v2/studies/{study}/metadata"]["get"], unchanged)


def test_operation_answers_are_documented(app_factory):
    """/operations/{id} while an operation waits (202) and once it has ended (200)."""
    from dicomserver.operations import default_handlers, run_pending

    app = app_factory(operations_runner=False)
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    started = client.post("/v2/extendedquerytags", json=[{"path": "PatientWeight", "level": "Study"}])
    check_answer(doc, doc["paths"]["/v2/extendedquerytags"]["post"], started)
    operation = doc["paths"]["/v2/operations/{operation_id}"]["get"]
    waiting = client.get(started.get_json()["href"])
    assert waiting.status_code == 202
    check_answer(doc, operation, waiting)
    archive = app.extensions["dicomserver"]
    archive.index.connect()
    run_pending(archive.index, archive.settings, default_handlers())
    ended = client.get(started.get_json()["href"])
    assert ended.status_code == 200
    check_answer(doc, operation, ended)
    check_answer(doc, doc["paths"]["/v2/extendedquerytags/{tag_path}"]["get"],
                 client.get("/v2/extendedquerytags/PatientWeight"))


def test_limits_and_outages_are_documented(app_factory, tmp_path):
    """413 and /readyz's 503 come from settings: a small instance limit, an impossible free-space floor."""
    small = app_factory(max_instance_bytes=1000, min_free_bytes=2**62)
    doc = small.test_client().get("/openapi.json").get_json()
    client = small.test_client()
    too_large = client.post("/v2/studies", data=_instance("1.5", rows=64, columns=64),
                            headers={"Content-Type": "application/dicom"})
    assert too_large.status_code == 413
    check_answer(doc, doc["paths"]["/v2/studies"]["post"], too_large)
    not_ready = client.get("/readyz")  # the disk has less than 2**62 bytes free
    assert not_ready.status_code == 503
    check_answer(doc, doc["paths"]["/readyz"]["get"], not_ready)


def test_authentication_answers_are_documented(auth_client, identity_provider):
    doc = auth_client.get("/openapi.json").get_json()
    no_token = auth_client.get("/v2/studies")
    assert no_token.status_code == 401
    check_answer(doc, doc["paths"]["/v2/studies"]["get"], no_token)
    reader = identity_provider.token(roles=["globalReader"])
    forbidden = auth_client.delete("/v2/studies/1.2.3", headers={"Authorization": f"Bearer {reader}"})
    assert forbidden.status_code == 403
    check_answer(doc, doc["paths"]["/v2/studies/{study}"]["delete"], forbidden)


def test_document_lists_only_statuses_the_code_has(served):
    """Every status in the document is one this server's code or HTTP server produces."""
    producible = {101, 200, 201, 202, 204, 206, 304, 400, 401, 403, 404, 406, 408, 409, 413, 414, 415, 416, 417, 431, 500,
                  501, 503, 507}
    listed = {int(s) for item in served["paths"].values() for op in item.values() for s in op["responses"]}
    assert listed <= producible
    stow = served["paths"]["/v2/studies"]["post"]["responses"]
    assert {"200", "202", "409", "413", "415", "503", "507"} <= set(stow)
    bulkdata = "/v2/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path}"
    assert {"206", "416"} <= set(served["paths"][bulkdata]["get"]["responses"])
    assert "413" not in served["paths"]["/v2/studies"]["get"]["responses"]
    assert "401" not in served["paths"]["/healthz"]["get"]["responses"]


def test_the_document_names_no_library_or_path(served):
    text = str(served).lower()
    for word in ("gunicorn", "flask", "werkzeug", "pydicom", "peewee", "/tmp", "/work/", "/home"):  # /work/: not /workitems
        assert word not in text, word
