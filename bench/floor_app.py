"""The floor under dicomserver's WADO instance: the same files served through gunicorn with
(almost) nothing else, under the repository's gunicorn_conf.py.

* `bench.floor_app:wsgi` - a bare WSGI callable: what gunicorn itself costs per request;
* `bench.floor_app:flask_app` - one Flask route: what gunicorn plus Flask cost.

Both map the URL path to a file under $BENCH_FLOOR_ROOT and answer it with
`wsgi.file_wrapper` (sendfile), as dicomserver answers a stored instance. The benchmark
measures them beside nginx (`bench/run.py`), so the report shows how much of a WADO
request is the framework and how much is dicomserver's own work.
"""
from __future__ import annotations

import os

from flask import Flask, Response, abort, request

ROOT = os.path.realpath(os.environ.get("BENCH_FLOOR_ROOT", "."))


def _open(path: str):
    full = os.path.realpath(os.path.join(ROOT, path.lstrip("/")))
    if not full.startswith(ROOT + os.sep):
        return None
    try:
        return open(full, "rb")  # the WSGI server closes it
    except OSError:
        return None


def wsgi(environ, start_response):
    f = _open(environ.get("PATH_INFO", ""))
    if f is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/dicom"), ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](f)


flask_app = Flask(__name__)


@flask_app.get("/<path:path>")
def serve(path: str) -> Response:
    f = _open(path)
    if f is None:
        abort(404)
    response = Response(
        request.environ["wsgi.file_wrapper"](f), content_type="application/dicom", direct_passthrough=True
    )
    response.content_length = os.fstat(f.fileno()).st_size
    return response
