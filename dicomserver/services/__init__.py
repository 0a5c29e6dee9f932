"""Mounts every DICOMweb service under /v1 and /v2 (the reference server's URL layout).

Each service is one blueprint registered with the prefix `/<any(v1, v2):api_version>`;
the study-data services (PARTITIONED) a second time under
`/<version>/partitions/<partition_name>` (data partitions, as the reference: the change
feed, extended query tags, operations, `/partitions`, `/webhooks` and our admin routes are not
partitioned). The version and partition name are moved into `g` before views run. Before
a view runs, the caller must hold the data action it declared (`web.requires`); then the
partition is resolved (400s as the reference's) and put in `g` for `web.partition()`.
CORS answers preflights before that, and adds its headers to every answer. The study
browser's pages (browser.py) are mounted at / and /browse, and need an action as the API does.
"""
from __future__ import annotations

from typing import Any, NoReturn

from flask import Flask, Response, g, request
from flask_cors import CORS

from ..errors import NotFound
from ..partitions import MissingPartition, PartitionsDisabled
from ..retrieve import ORIGINAL_VERSION_HEADER
from ..settings import Settings
from .web import (
    API_PREFIX,
    PARTITION_PREFIX,
    archive,
    audit,
    audit_trail,
    authenticator,
    describe_request,
    register_error_handlers,
    release_upload_slot,
    request_id,
    required_action,
    take_upload_slot,
)

_DICOMWEB_ROOTS = (
    "studies", "series", "instances", "changefeed", "audit", "extendedquerytags", "operations", "export",
    "partitions", "webhooks", "workitems", "subscribers",
)
#: The blueprints of study data: also mounted under a partition, and only there when partitions are on.
PARTITIONED = ("stow", "wado", "bulkdata", "qido", "delete", "rendered", "export", "bulk_update", "workitems")
#: Where a request may create the partition its path names (STOW and workitem creation, as the reference).
_CREATES_PARTITION = "stow"
_CREATES_PARTITION_ENDPOINT = "create_workitem"


def register_services(app: Flask) -> None:
    """Mount the blueprints, the error handlers and the per-request index connection."""
    from . import (
        audit_events,
        browser,
        bulk_update,
        bulkdata,
        changefeed,
        delete,
        export,
        extended_query_tags,
        metrics,
        openapi,
        operations,
        ops,
        partitions,
        qido,
        rendered,
        stow,
        wado,
        webhooks,
        workitems,
    )

    register_error_handlers(app)

    for module in (
        stow, wado, bulkdata, qido, delete, changefeed, rendered, audit_events, extended_query_tags, operations,
        export, bulk_update, partitions, webhooks, workitems,
    ):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
        if module.bp.name in PARTITIONED:
            app.register_blueprint(module.bp, url_prefix=PARTITION_PREFIX, name=partitioned_name(module.bp.name))
    app.register_blueprint(workitems.events_bp, url_prefix=API_PREFIX)
    app.register_blueprint(ops.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(browser.bp)

    _check_every_route_declares_an_action(app)
    _enable_cors(app)

    settings: Settings = app.extensions["dicomserver"].settings
    partitioned = settings.partitions
    # Blueprint names → whether the request may create its partition; only data blueprints are keys.
    data_blueprints = {name: name == _CREATES_PARTITION for name in PARTITIONED}
    data_blueprints.update({partitioned_name(name): name == _CREATES_PARTITION for name in PARTITIONED})

    @app.url_value_preprocessor
    def _pop_version(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "api_version" in values:
            g.api_version = values.pop("api_version")
            name = values.pop("partition_name", None)
            if name is not None:
                g.partition_name = name

    @app.before_request
    def _authorize() -> None:
        # The request and g are looked up once: each use of Flask's proxies costs a lookup.
        req = request._get_current_object()  # type: ignore[attr-defined]
        ctx = g._get_current_object()
        ctx.action = action = required_action(app.view_functions.get(req.endpoint or ""))
        if req.method == "OPTIONS":
            return  # CORS preflights and OPTIONS carry no credentials
        if action is not None:
            auth = authenticator()
            ctx.principal = auth.authenticate(req.headers.get("Authorization"))  # kept for the audit trail
            auth.check(ctx.principal, action)
        name = ctx.get("partition_name")
        if name is not None and not partitioned:
            raise PartitionsDisabled()
        if req.method in ("POST", "PUT"):
            take_upload_slot()
        if action is not None or req.path.startswith(("/v1/", "/v2/")):
            archive().index.connect()
        if partitioned:
            creates = data_blueprints.get(req.blueprint)  # None: not a study-data route
            if creates is not None:
                if name is None:
                    raise MissingPartition()
                creates = creates or (req.endpoint or "").endswith("." + _CREATES_PARTITION_ENDPOINT)
                ctx.partition = archive().partition(name, create=creates)

    @app.after_request
    def _audit(response: Response) -> Response:
        route = describe_request()
        response.headers["X-Request-Id"] = request_id()
        if audit_trail().enabled:
            audit(response, route)
        return response

    @app.teardown_request
    def _close_index(_exc: BaseException | None) -> None:
        release_upload_slot()
        archive().index.close()

    def unversioned(path: str = "") -> NoReturn:
        raise NotFound(
            f"{request.path} is not served: DICOMweb routes need a version prefix, "
            f"e.g. /v2{request.path} (or /v1{request.path})"
        )

    for root in _DICOMWEB_ROOTS:
        app.add_url_rule(f"/{root}", f"unversioned_{root}", unversioned, methods=["GET", "POST", "PUT", "DELETE"])
        app.add_url_rule(
            f"/{root}/<path:path>", f"unversioned_{root}_path", unversioned, methods=["GET", "POST", "PUT", "DELETE"]
        )


def partitioned_name(blueprint: str) -> str:
    """The name of a data blueprint's registration under the partition prefix."""
    return f"partitioned_{blueprint}"


#: Blueprints outside the versioned API whose pages show patient data: their routes need an action too.
_DATA_BLUEPRINTS = ("browser",)


def _check_every_route_declares_an_action(app: Flask) -> None:
    """A data route that declares no data action would be open to anyone: refuse to start."""
    for rule in app.url_map.iter_rules():
        serves_data = rule.rule.startswith(API_PREFIX) or rule.endpoint.partition(".")[0] in _DATA_BLUEPRINTS
        if serves_data and required_action(app.view_functions[rule.endpoint]) is None:
            raise RuntimeError(f"route {rule.rule} ({rule.endpoint}) declares no data action (services.web.requires)")


#: What browsers may send and read (PS3.18 clients: OHIF, dicomweb-client in a page).
CORS_ALLOW_HEADERS = [
    "Authorization", "Accept", "Content-Type", "If-None-Match", "Range", "X-Request-ID", ORIGINAL_VERSION_HEADER,
    "Last-Event-ID",  # a reconnecting EventSource (the streaming change feed) sends it
]
CORS_EXPOSE_HEADERS = [
    "Content-Type", "Content-Location", "Location", "Warning", "Content-Range", "ETag", "X-Request-Id",
    "erroneous-dicom-attributes",
]
CORS_MAX_AGE = 600


def _enable_cors(app: Flask) -> None:
    settings: Settings = app.extensions["dicomserver"].settings
    origins = list(settings.cors_origins)
    if not origins:
        return
    CORS(
        app,
        origins="*" if origins == ["*"] else origins,
        send_wildcard=origins == ["*"],
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        max_age=CORS_MAX_AGE,
        vary_header=True,
    )
