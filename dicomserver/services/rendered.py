"""Rendered and thumbnail resources (PS3.18 §9.5, §8.3.5; thumbnails from Supplement 203).

`…/rendered` and `…/thumbnail` at study, series, instance and frame level answer one
consumer-format image (JPEG, PNG or GIF) rendered by `dicomserver.render`. The media
type comes from the `accept` query parameter, else the Accept header (OHIF sends either).
"""
from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, request

from ..errors import BadRequest, NotAcceptable
from ..media import parse_accept
from ..uids import parse_frame_list, require_uids
from .web import archive, partition, requires, warning

try:
    from .. import render
except ImportError as exc:  # numpy or Pillow absent: the optional `render` extra is not installed
    render = None  # type: ignore[assignment]
    _RENDER_MISSING = str(exc)

bp = Blueprint("rendered", __name__)

_LEVELS = {
    "study": "/studies/<study>",
    "series": "/studies/<study>/series/<series>",
    "instance": "/studies/<study>/series/<series>/instances/<instance>",
    "frame": "/studies/<study>/series/<series>/instances/<instance>/frames/<frames>",
}


def _routes(view: Callable[..., Response]) -> Callable[..., Response]:
    """Register `view` for /rendered and /thumbnail at the four levels."""
    for level, path in _LEVELS.items():
        for resource in ("rendered", "thumbnail"):
            bp.add_url_rule(
                f"{path}/{resource}", f"{level}_{resource}", view, methods=["GET"], defaults={"resource": resource}
            )
    return view


@_routes
@requires("read")
def rendered(
    resource: str, study: str, series: str | None = None, instance: str | None = None, frames: str | None = None
) -> Response:
    if render is None:
        raise NotAcceptable(
            f"this server cannot render images ({_RENDER_MISSING}); install it with the render "
            "extra: pip install 'dicomserver[render]'"
        )
    uids = require_uids(study, series, instance)
    frame = _single_frame(frames) if frames is not None else 1
    params = _params(thumbnail=resource == "thumbnail")
    found = render.render_resource(archive(), uids, frame, params, partition=partition())
    if found.etag in request.if_none_match:
        response = Response(status=304)
    else:
        response = Response(found.image(archive()), content_type=params.media_type)
    response.set_etag(found.etag)
    response.headers["Cache-Control"] = "private, no-cache"  # patient data: revalidate, a 304 is cheap
    if "accept" not in request.args:
        response.vary.add("Accept")
    if "annotation" in request.args:
        # PS3.18 §8.3.5.1.1 lets the origin server ignore annotation if it says so.
        response.headers.add("Warning", warning("annotation is not supported; the image has no annotations"))
    return response


def _single_frame(frames: str) -> int:
    numbers = parse_frame_list(frames)
    if len(numbers) != 1:
        raise BadRequest(
            f"frame list {frames!r} names {len(numbers)} frames: a rendered frame resource renders "
            "one frame, e.g. .../frames/1/rendered"
        )
    return numbers[0]


def _params(*, thumbnail: bool) -> render.RenderParams:
    """Read `accept`, `quality`, `viewport` and `window`; `iccprofile` is ignored (sRGB output)."""
    args = request.args
    quality = render.parse_quality(args.get("quality"))
    viewport = render.parse_viewport(args.get("viewport"))
    window = render.parse_window(args.get("window"))
    accept = args.get("accept")
    ranges = parse_accept(accept if accept is not None else request.headers.get("Accept"))
    media_type = render.negotiate(ranges, from_query=accept is not None)
    return render.RenderParams(media_type, quality, viewport, window, thumbnail)
