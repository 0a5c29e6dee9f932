"""The study browser: server-rendered pages over QIDO for people with only a web browser.

`/` lists studies (search form, paging), `/browse/studies/<study>` shows a study's
series; the thumbnails are the API's own /v2 thumbnail resources. The pages show patient
data, so they need the `read` action as QIDO does: with authentication on, a browser
gets them only through something that adds the Authorization header (a proxy, an
extension). Errors are pages too, with the status and message errors.STATUS gives.
"""
from __future__ import annotations

from flask import Blueprint, Response, render_template, request
from werkzeug.exceptions import HTTPException

from ..browse import find_studies, parse_filter, study_detail
from ..errors import DicomWebError
from ..uids import require_uid
from .web import archive, base_url, error_status, requires

bp = Blueprint("browser", __name__)

#: No script runs, images and forms stay on this origin, no other site frames the pages;
#: the style is the page's own <style>.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@bp.get("/")
@requires("read")
def study_list() -> str:
    criteria = parse_filter(request.args)
    return render_template("browser/studies.html", found=find_studies(archive(), criteria, base_url=base_url()))


@bp.get("/browse/studies/<study>")
@requires("read")
def study_page(study: str) -> str:
    study_uid = require_uid(study, "StudyInstanceUID")
    return render_template("browser/study.html", detail=study_detail(archive(), study_uid, base_url=base_url()))


@bp.errorhandler(Exception)
def error_page(exc: Exception) -> Response:
    """An error as a page, with the search form again when the list's own fields were wrong."""
    if isinstance(exc, HTTPException):
        status, message = exc.code or 500, exc.description or exc.name
    else:
        status, message = error_status(exc)
    search = request.endpoint == "browser.study_list"
    page = render_template("browser/error.html", status=status, message=message, search=search)
    response = Response(page, status=status, mimetype="text/html")
    if isinstance(exc, DicomWebError):
        response.headers.update(exc.headers)  # WWW-Authenticate on a 401
    return response


@bp.after_request
def _page_headers(response: Response) -> Response:
    """Patient data: no caching, no referrer to the viewer's site, no script."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
