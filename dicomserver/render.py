"""Rendered images (PS3.18 §8.3.5, §9.5): one frame of a DICOM instance as JPEG, PNG or GIF.

This module owns everything between a stored Part 10 file and the image bytes:
parsing the rendering query parameters (`quality`, `viewport`, `window`),
decoding one frame with pydicom, the grayscale display pipeline of PS3.3 C.11
(Modality LUT → VOI LUT or window → MONOCHROME1 inversion → 8 bits), colour
(YBR and palette to RGB), cropping and scaling to the viewport, and encoding
with Pillow; and the policy of which instance represents a study or series and what
may be rendered at all (`render_resource`). It knows nothing of HTTP: its errors are
the DICOMweb errors of errors.py, whose one table gives their status codes.

Memory: only the requested frame is decoded (pydicom seeks to it in native
data and to its fragments in encapsulated data); the caller bounds the size of
the instances it hands over.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    get_decoder,
    pixel_array,
)
from pydicom.uid import UID

from .archive import Archive
from .errors import BadRequest, NotAcceptable, NotFound
from .index import StoredInstance
from .media import MediaRange, refused
from .metrics import open_blob
from .partitions import DEFAULT, Partition
from .transcode import is_data_error
from .transfer_syntax import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

log = logging.getLogger(__name__)

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
#: Rendered media types offered, the default first (PS3.18 §8.7.4: JPEG is the default for single frames).
MEDIA_TYPES = (JPEG, PNG, GIF)

DEFAULT_QUALITY = 90
#: A thumbnail without a viewport fits in this square (PS3.18 lets the server choose its size).
THUMBNAIL_SIZE = 128
#: Largest viewport side; bounds the memory of an upscaled image.
MAX_VIEWPORT_SIDE = 8192

#: PS3.18 §8.3.5.1.4 window function names → PS3.3 C.11.2.1.3 VOI LUT Function values.
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}

#: Photometric interpretations that `pixel_array` returns as RGB: YBR_FULL and
#: YBR_FULL_422 are converted by pydicom (convert_color_space) and YBR_ICT/YBR_RCT
#: by the JPEG 2000 codec. Only the decoder knows whether a JPEG codec already
#: converted, so converting again here would be wrong.
RGB_AFTER_DECODE = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})

# Attributes read besides the Image Pixel module (group 0028 is always read):
# Modality, and the functional groups where enhanced multi-frame objects keep
# their rescale and window values.
_EXTRA_TAGS = [0x00080060, 0x52009229, 0x52009230]


class RenderError(Exception):
    """Base of the errors of this module; the message is for the client."""


class InvalidParameter(RenderError, BadRequest, ValueError):
    """A rendering query parameter is malformed or out of range."""


class NoPixelData(RenderError, NotFound):
    """The instance has no pixel data to render."""


class FrameNotFound(RenderError, NotFound):
    """The requested frame does not exist."""


class CannotRender(RenderError, NotAcceptable):
    """The pixel data cannot be decoded or displayed by this server."""


@dataclass(frozen=True)
class Window:
    """The `window` parameter (PS3.18 §8.3.5.1.4), `function` as a VOI LUT Function value."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """The `viewport` parameter (PS3.18 §8.3.5.1.3): `vw,vh[,sx,sy,sw,sh]`.

    `width`/`height` None: not given (derived from the other, preserving the
    aspect ratio). `sw`/`sh` None: up to the right/bottom edge; negative: flip.
    """

    width: int | None
    height: int | None
    sx: float = 0.0
    sy: float = 0.0
    sw: float | None = None
    sh: float | None = None


@dataclass(frozen=True)
class RenderParams:
    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    viewport: Viewport | None = None
    window: Window | None = None
    #: Thumbnails without a viewport are shrunk to fit THUMBNAIL_SIZE.
    thumbnail: bool = False


# -- query parameters ---------------------------------------------------------


def parse_quality(value: str | None) -> int:
    """`quality`: an integer 1..100 (PS3.18 §8.3.5.1.2); default DEFAULT_QUALITY."""
    if value is None:
        return DEFAULT_QUALITY
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise InvalidParameter(f"quality={value!r} is invalid: expected a whole number from 1 to 100")
    return int(text)


def _number(text: str, name: str, value: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InvalidParameter(f"{name}={value!r} is invalid: {text.strip()!r} is not a number")
    return number


def parse_viewport(value: str | None) -> Viewport | None:
    """`viewport=vw,vh[,sx,sy,sw,sh]`; empty items take their defaults."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",")]
    if len(items) not in (2, 6):
        raise InvalidParameter(
            f"viewport={value!r} is invalid: expected vw,vh or vw,vh,sx,sy,sw,sh"
        )
    sides: list[int | None] = []
    for name, item in zip(("vw", "vh"), items[:2], strict=False):  # "vw" alone is allowed
        if item == "":
            sides.append(None)
        elif item.isdigit() and 1 <= int(item) <= MAX_VIEWPORT_SIDE:
            sides.append(int(item))
        else:
            raise InvalidParameter(
                f"viewport={value!r} is invalid: {name} must be a whole number from 1 to {MAX_VIEWPORT_SIDE}"
            )
    if len(items) == 2:
        if None in sides:
            raise InvalidParameter(f"viewport={value!r} is invalid: vw and vh are required")
        return Viewport(sides[0], sides[1])
    sx, sy, sw, sh = (None if item == "" else _number(item, "viewport", value) for item in items[2:])
    if (sx is not None and sx < 0) or (sy is not None and sy < 0):
        raise InvalidParameter(f"viewport={value!r} is invalid: sx and sy must not be negative")
    if sw == 0 or sh == 0:
        raise InvalidParameter(f"viewport={value!r} is invalid: sw and sh must not be 0")
    return Viewport(sides[0], sides[1], sx or 0.0, sy or 0.0, sw, sh)


def parse_window(value: str | None) -> Window | None:
    """`window=center,width[,function]`; function linear (default), linear-exact or sigmoid."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",")]
    if len(items) not in (2, 3):
        raise InvalidParameter(f"window={value!r} is invalid: expected center,width,function")
    center = _number(items[0], "window", value)
    width = _number(items[1], "window", value)
    name = items[2].lower() if len(items) == 3 else "linear"
    if name not in WINDOW_FUNCTIONS:
        raise InvalidParameter(
            f"window={value!r} is invalid: the function must be one of {', '.join(WINDOW_FUNCTIONS)}"
        )
    function = WINDOW_FUNCTIONS[name]
    minimum = 1 if function == "LINEAR" else 0
    if width < minimum or width == 0:
        raise InvalidParameter(
            f"window={value!r} is invalid: the width must be "
            + ("at least 1 for linear" if function == "LINEAR" else "greater than 0")
        )
    return Window(center, width, function)


# -- decoding -----------------------------------------------------------------


def read_frame(fp: BinaryIO, frame: int) -> tuple[Dataset, np.ndarray]:
    """Decode frame `frame` (1-based) of the Part 10 file in `fp`.

    Returns the header (the Image Pixel module, Modality, functional groups) and
    the frame as `pixel_array` returns it (YBR already converted to RGB).
    """
    fp.seek(0)
    try:
        # The header without pixel data: transfer syntax, frame count, Rows.
        probe = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=[0x00280008, 0x00280010])
        transfer_syntax = UID(probe.file_meta.TransferSyntaxUID)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        log.warning("a stored file could not be parsed for rendering", exc_info=True)
        raise CannotRender("the stored file could not be parsed") from None
    if "Rows" not in probe:
        raise NoPixelData("the instance has no pixel data")
    _check_frame(probe, frame)
    _require_decoder(transfer_syntax)
    fp.seek(0)
    header: Dataset
    try:
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            # A deflated body must be inflated before its pixel data can be found.
            header = pydicom.dcmread(fp)
            array = pixel_array(header, index=frame - 1)
        else:
            header = Dataset()
            array = pixel_array(fp, ds_out=header, specific_tags=_EXTRA_TAGS, index=frame - 1)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        # What pydicom says (plugin names, at times a traceback) goes to the log only.
        log.warning("decoding frame %d for rendering failed", frame, exc_info=True)
        if isinstance(exc, AttributeError):  # pydicom's way of saying an attribute is missing
            raise NoPixelData("the instance has no pixel data that can be rendered") from None
        raise CannotRender(
            f"the pixel data (transfer syntax {transfer_syntax}, {transfer_syntax.name}) could not be decoded"
        ) from None
    _apply_functional_groups(header, frame)
    return header, array


def _require_decoder(transfer_syntax: UID) -> None:
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise CannotRender(
            f"pixel data in transfer syntax {transfer_syntax} ({transfer_syntax.name}) cannot be decoded "
            "by this server"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no decoding plugin"
        raise CannotRender(
            f"pixel data in transfer syntax {transfer_syntax} ({transfer_syntax.name}) needs a codec that "
            f"is not installed: {missing}"
        )


def _check_frame(ds: Dataset, frame: int) -> None:
    count = _frame_count(ds)
    if not 1 <= frame <= count:
        raise FrameNotFound(f"frame {frame} does not exist: the instance has {count} frame{'s' * (count != 1)}")


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _apply_functional_groups(header: Dataset, frame: int) -> None:
    """Lift the frame's rescale and window values to the top level.

    Enhanced multi-frame objects (PS3.3 C.7.6.16) keep them in the Shared and
    Per-frame Functional Groups; per-frame items override shared ones.
    """
    groups = []
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) >= frame:
        groups.append(per_frame[frame - 1])
    for group in groups:
        for keyword in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(keyword)
            if items:
                for element in items[0]:
                    header[element.tag] = element


# -- display pipeline -----------------------------------------------------------


def to_display(array: np.ndarray, ds: Dataset, window: Window | None = None) -> np.ndarray:
    """Map one decoded frame to 8-bit display values: (rows, cols) gray or (rows, cols, 3) RGB.

    `window` (the request's) overrides the file's VOI; it has no effect on colour images.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric in MONOCHROME:
        gray = _voi(apply_modality_lut(array, ds), ds, window)
        return 255 - gray if photometric == "MONOCHROME1" else gray
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)[..., :3]  # drop an alpha palette
        return _scale_to_8bit(rgb, 8 * rgb.dtype.itemsize)
    if photometric in RGB_AFTER_DECODE and array.ndim == 3 and array.shape[-1] == 3:
        return _scale_to_8bit(array, int(ds.get("BitsStored") or 8))
    raise CannotRender(f"photometric interpretation {photometric or '(none)'!r} cannot be rendered")


def _voi(values: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """The VOI transformation (PS3.3 C.11.2) straight to 0..255.

    Precedence: the request's window; the file's first Window Center/Width (with its
    VOI LUT Function); the file's VOI LUT Sequence; else the frame's min-max.
    """
    if window is None:
        window = _file_window(ds)
    if window is not None:
        return apply_window(values, window)
    if ds.get("VOILUTSequence"):
        lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        mapped = apply_voi(np.rint(values).astype(np.int64), ds)
        return _scale_to_8bit(mapped, lut_bits)
    return _min_max(values)


def _file_window(ds: Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        center, width = float(_first(center)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in WINDOW_FUNCTIONS.values():
        function = "LINEAR"
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0 or (function == "LINEAR" and width < 1):
        return None  # unusable in the file: fall back to the next VOI source
    return Window(center, width, function)


def _first(value: Any) -> Any:
    """Window Center/Width may hold several windows (VM 1-n); the first is the default."""
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window `values` to uint8 0..255 with the VOI LUT Functions of PS3.3 C.11.2.1.2-3."""
    x = np.asarray(values, dtype=np.float64)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR_EXACT":
        y = np.clip((x - c) / w + 0.5, 0.0, 1.0) * 255.0
    else:  # LINEAR: c - 0.5 and w - 1 so that the window spans whole stored values
        if w == 1:
            y = np.where(x <= c - 0.5, 0.0, 255.0)
        else:
            y = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0
    return np.rint(y).astype(np.uint8)


def _min_max(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros(x.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.rint(np.clip((np.nan_to_num(x, nan=low) - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _scale_to_8bit(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8 and bits <= 8:
        return array
    top = float(2 ** max(1, bits) - 1)
    return np.rint(np.clip(array.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8)


# -- geometry and encoding --------------------------------------------------------


def fit(image: Image.Image, viewport: Viewport | None, *, thumbnail: bool = False) -> Image.Image:
    """Crop to the viewport's source region, flip, and scale to fit preserving the aspect ratio.

    Without a viewport an image is returned at its own size, a thumbnail shrunk
    (never enlarged) to fit THUMBNAIL_SIZE square.
    """
    if viewport is None:
        if not thumbnail:
            return image
        viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        scale_limit = 1.0
    else:
        scale_limit = math.inf
    image = _source_region(image, viewport)
    width, height = image.size
    scales = []
    if viewport.width is not None:
        scales.append(viewport.width / width)
    if viewport.height is not None:
        scales.append(viewport.height / height)
    scale = min(min(scales, default=1.0), scale_limit)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _source_region(image: Image.Image, viewport: Viewport) -> Image.Image:
    width, height = image.size
    left, top = round(viewport.sx), round(viewport.sy)
    right = width if viewport.sw is None else min(width, round(viewport.sx + abs(viewport.sw)))
    bottom = height if viewport.sh is None else min(height, round(viewport.sy + abs(viewport.sh)))
    if left >= width or top >= height or right <= left or bottom <= top:
        raise InvalidParameter(
            f"the viewport's source region lies outside the {width}x{height} image"
        )
    if (left, top, right, bottom) != (0, 0, width, height):
        image = image.crop((left, top, right, bottom))
    if viewport.sw is not None and viewport.sw < 0:
        image = ImageOps.mirror(image)
    if viewport.sh is not None and viewport.sh < 0:
        image = ImageOps.flip(image)
    return image


def encode(image: Image.Image, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode as JPEG (with `quality`), PNG or GIF (lossless: `quality` does not apply)."""
    buffer = io.BytesIO()
    if media_type == JPEG:
        image.save(buffer, "JPEG", quality=quality)
    elif media_type == PNG:
        image.save(buffer, "PNG")
    elif media_type == GIF:
        image.save(buffer, "GIF")
    else:
        raise ValueError(f"unsupported rendered media type {media_type!r}")
    return buffer.getvalue()


def render_array(array: np.ndarray, ds: Dataset, params: RenderParams = RenderParams()) -> bytes:
    """Render one decoded frame (as `pixel_array` returns it) with its dataset's attributes."""
    try:
        display = to_display(array, ds, params.window)
    except RenderError:
        raise
    except (ValueError, NotImplementedError, KeyError, AttributeError, IndexError, TypeError):
        # e.g. a palette or LUT whose descriptor does not match its data
        log.warning("mapping a frame to display values failed", exc_info=True)
        raise CannotRender("the pixel data could not be mapped to display values") from None
    image = Image.fromarray(np.ascontiguousarray(display), "L" if display.ndim == 2 else "RGB")
    return encode(fit(image, params.viewport, thumbnail=params.thumbnail), params.media_type, params.quality)


def render_file(fp: BinaryIO, frame: int = 1, params: RenderParams = RenderParams()) -> bytes:
    """Render frame `frame` (1-based) of the Part 10 file in `fp` (seekable)."""
    header, array = read_frame(fp, frame)
    return render_array(array, header, params)


# -- which image a resource means -------------------------------------------------

#: Accept entries that mean "the default rendered type" (JPEG).
_WILDCARDS = ("*/*", "image/*")


def negotiate(ranges: Sequence[MediaRange], *, from_query: bool = False) -> str:
    """The first rendered media type the client accepts (in q order); else 406."""
    for r in ranges:
        candidates = MEDIA_TYPES if r.mimetype in _WILDCARDS else (r.mimetype,) if r.mimetype in MEDIA_TYPES else ()
        for media_type in candidates:
            if not refused(ranges, media_type):
                return media_type
    source = "the accept query parameter" if from_query else "the Accept header"
    raise NotAcceptable(
        f"{source} allows no media type this resource offers; rendered images are available as "
        + ", ".join(MEDIA_TYPES)
    )


@dataclass(frozen=True)
class RenderedResource:
    """A study, series, instance or frame resource as an image: which stored instance it
    is drawn from, and an ETag that changes when that instance (a new version of it, or
    another representative) or the rendering parameters do, so that a browser's
    revalidation is answered 304 without decoding anything."""

    instance: StoredInstance
    frame: int
    params: RenderParams
    etag: str

    def image(self, archive: Archive) -> bytes:
        row = self.instance
        try:
            with open_blob(archive.store, row.blob_key) as fp:
                return render_file(fp, self.frame, self.params)
        except (NoPixelData, FrameNotFound) as exc:
            raise type(exc)(f"instance {row.sop_instance_uid}: {exc}") from None
        except CannotRender as exc:
            raise CannotRender(f"instance {row.sop_instance_uid} cannot be rendered: {exc}") from None


def render_resource(
    archive: Archive, uids: tuple[str, str | None, str | None], frame: int, params: RenderParams, *,
    partition: Partition = DEFAULT,
) -> RenderedResource:
    """Choose the instance a resource is rendered from (a study or series: its representative
    image, see `representative`); what cannot be rendered is refused from the index alone,
    before the blob is opened."""
    rows = archive.index.instances(*uids, partition=partition)
    row = rows[0] if uids[2] is not None else representative(rows)
    _check_renderable(row, frame, archive.settings.max_render_bytes)
    # A blob key names one stored version of one instance (it carries its write time).
    etag = hashlib.sha256(repr((row.blob_key, frame, params)).encode()).hexdigest()[:32]
    return RenderedResource(row, frame, params, etag)


def representative(rows: list[StoredInstance]) -> StoredInstance:
    """The instance a study or series is rendered by.

    The first series by SeriesNumber (a series without one comes last; ties in
    stored order) that has an image, and in it the middle image by InstanceNumber
    (the lower middle for an even count). Instances without Rows (SR, PDF,
    waveforms...) are never chosen; if there is no image at all, 404.
    """
    series: dict[int, list[StoredInstance]] = {}
    for row in rows:  # the index orders rows by series, then InstanceNumber
        if row.rows is not None and row.columns is not None:
            series.setdefault(row.series_id, []).append(row)
    if not series:
        raise NoPixelData("there is no image to render: no instance here has pixel data")

    def series_order(images: list[StoredInstance]) -> tuple[bool, int]:
        number = images[0].series_number
        return (number is None, number or 0)

    images = min(series.values(), key=series_order)  # min() is stable: ties keep stored order
    return images[(len(images) - 1) // 2]


def _check_renderable(row: StoredInstance, frame: int, max_bytes: int) -> None:
    """Refuse, from the index alone, what cannot be rendered, before opening the blob."""
    if row.rows is None or row.columns is None:
        raise NoPixelData(f"instance {row.sop_instance_uid} has no pixel data")
    count = row.number_of_frames or 1
    if frame > count:
        raise FrameNotFound(
            f"frame {frame} does not exist: instance {row.sop_instance_uid} has {count} "
            f"frame{'s' * (count != 1)}"
        )
    if row.size > max_bytes:
        raise CannotRender(
            f"instance {row.sop_instance_uid} is {row.size} bytes, larger than this server renders "
            f"({max_bytes} bytes, DICOMWEB_MAX_RENDER_BYTES)"
        )

