"""Rendered and thumbnail resources (PS3.18 §9.5, §8.3.5; thumbnails from Supplement 203).

`…/rendered` and `…/thumbnail` at study, series, instance and frame level answer
one consumer-format image (JPEG, PNG or GIF) rendered by `dicomserver.render`.
This module owns the HTTP side: which instance and frame a URL means, media
type negotiation (the `accept` query parameter wins over the header, as OHIF
sends either), the size limit, and the mapping of render errors to 400/404/406.

Study and series resources render one representative image (see
`representative`), as viewers use them for thumbnails.
"""
from __future__ import annotations

from typing import Sequence

from flask import Blueprint, Response, request

from ..errors import BadRequest, NotAcceptable, NotFound
from ..extensions import server
from ..index.models import Instance
from ..media import MediaRange, parse_accept
from ..uids import parse_frame_list, require_uid

try:
    from .. import render
except ImportError as exc:  # numpy or Pillow absent: the optional `render` extra is not installed
    render = None  # type: ignore[assignment]
    _RENDER_MISSING = str(exc)

bp = Blueprint("rendered", __name__)


#: Accept entries that mean "the default rendered type" (JPEG).
_WILDCARDS = ("*/*", "image/*")


def _routes(view):
    """Register `view` for /rendered and /thumbnail at the four levels."""
    levels = {
        "study": "/studies/<study>",
        "series": "/studies/<study>/series/<series>",
        "instance": "/studies/<study>/series/<series>/instances/<instance>",
        "frame": "/studies/<study>/series/<series>/instances/<instance>/frames/<frames>",
    }
    for level, path in levels.items():
        for resource in ("rendered", "thumbnail"):
            bp.add_url_rule(
                f"{path}/{resource}",
                f"{level}_{resource}",
                view,
                methods=["GET"],
                defaults={"resource": resource},
            )
    return view


@_routes
def rendered(
    resource: str,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
) -> Response:
    if render is None:
        raise NotAcceptable(
            f"this server cannot render images ({_RENDER_MISSING}); install it with the render "
            "extra: pip install 'dicomserver[render]'"
        )
    study = require_uid(study, "StudyInstanceUID")
    series = require_uid(series, "SeriesInstanceUID") if series is not None else None
    instance = require_uid(instance, "SOPInstanceUID") if instance is not None else None
    frame = _single_frame(frames) if frames is not None else 1
    params = _params(thumbnail=resource == "thumbnail")

    state = server()
    rows = state.index.instances(study, series, instance)
    row = rows[0] if instance is not None else representative(rows)
    _check_renderable(row, frame, state.settings.max_render_bytes)
    try:
        with state.store.open(row.blob_key) as fp:
            body = render.render_file(fp, frame, params)
    except render.InvalidParameter as exc:
        raise BadRequest(str(exc)) from None
    except (render.NoPixelData, render.FrameNotFound) as exc:
        raise NotFound(f"instance {row.sop_instance_uid}: {exc}") from None
    except render.CannotRender as exc:
        raise NotAcceptable(f"instance {row.sop_instance_uid} cannot be rendered: {exc}") from None

    response = Response(body, content_type=params.media_type)
    if "accept" not in request.args:
        response.vary.add("Accept")
    if "annotation" in request.args:
        # PS3.18 §8.3.5.1.1 lets the origin server ignore annotation if it says so.
        response.headers.add(
            "Warning", f'299 {request.host} "annotation is not supported; the image has no annotations"'
        )
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
    try:
        quality = render.parse_quality(args.get("quality"))
        viewport = render.parse_viewport(args.get("viewport"))
        window = render.parse_window(args.get("window"))
    except render.InvalidParameter as exc:
        raise BadRequest(str(exc)) from None
    accept = args.get("accept")
    ranges = parse_accept(accept if accept is not None else request.headers.get("Accept"))
    return render.RenderParams(
        media_type=negotiate(ranges, from_query=accept is not None),
        quality=quality,
        viewport=viewport,
        window=window,
        thumbnail=thumbnail,
    )


def negotiate(ranges: Sequence[MediaRange], *, from_query: bool = False) -> str:
    """The first rendered media type the client accepts (in q order); else 406."""
    for r in ranges:
        if r.mimetype in render.MEDIA_TYPES:
            return r.mimetype
        if r.mimetype in _WILDCARDS:
            return render.JPEG
    source = "the accept query parameter" if from_query else "the Accept header"
    raise NotAcceptable(
        f"{source} allows no media type this resource offers; rendered images are available as "
        + ", ".join(render.MEDIA_TYPES)
    )


def representative(rows: list[Instance]) -> Instance:
    """The instance a study or series is rendered by.

    The first series by SeriesNumber (a series without one comes last; ties in
    stored order) that has an image, and in it the middle image by InstanceNumber
    (the lower middle for an even count). Instances without Rows (SR, PDF,
    waveforms...) are never chosen; if there is no image at all, 404.
    """
    series: dict[int, list[Instance]] = {}
    for row in rows:  # the index orders rows by series, then InstanceNumber
        if row.rows is not None and row.columns is not None:
            series.setdefault(row.series_id, []).append(row)
    if not series:
        raise NotFound("there is no image to render: no instance here has pixel data")

    def series_order(images: list[Instance]) -> tuple[bool, int]:
        number = _series_number(images[0])
        return (number is None, number or 0)

    images = min(series.values(), key=series_order)  # min() is stable: ties keep stored order
    return images[(len(images) - 1) // 2]


def _series_number(row: Instance) -> int | None:
    return row.series.series_number  # the index reads it with the instance rows


def _check_renderable(row: Instance, frame: int, max_bytes: int) -> None:
    """Refuse, from the index alone, what cannot be rendered, before opening the blob."""
    if row.rows is None or row.columns is None:
        raise NotFound(f"instance {row.sop_instance_uid} has no pixel data")
    count = row.number_of_frames or 1
    if frame > count:
        raise NotFound(
            f"frame {frame} does not exist: instance {row.sop_instance_uid} has {count} "
            f"frame{'s' * (count != 1)}"
        )
    if row.size > max_bytes:
        raise NotAcceptable(
            f"instance {row.sop_instance_uid} is {row.size} bytes, larger than this server renders "
            f"({max_bytes} bytes, DICOMWEB_MAX_RENDER_BYTES)"
        )
