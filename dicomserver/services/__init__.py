"""Mounts every DICOMweb service under /v1 and /v2 (the reference server's URL layout).

Each service is one blueprint registered once with the prefix
`/<any(v1, v2):api_version>`; the version is moved into `g` before views run.
"""
from __future__ import annotations

from typing import Any, NoReturn

from flask import Flask, g, request

from ..errors import NotFound
from .web import archive, register_error_handlers

API_PREFIX = "/<any(v1, v2):api_version>"
_DICOMWEB_ROOTS = ("studies", "series", "instances", "changefeed")


def register_services(app: Flask) -> None:
    """Mount the blueprints, the error handlers and the per-request index connection."""
    from . import bulkdata, changefeed, delete, ops, qido, rendered, stow, wado

    register_error_handlers(app)

    for module in (stow, wado, bulkdata, qido, delete, changefeed, rendered):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
    app.register_blueprint(ops.bp)

    @app.url_value_preprocessor
    def _pop_version(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "api_version" in values:
            g.api_version = values.pop("api_version")

    @app.before_request
    def _open_index() -> None:
        if request.path.startswith(("/v1/", "/v2/")):
            archive().index.connect()

    @app.teardown_request
    def _close_index(_exc: BaseException | None) -> None:
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
