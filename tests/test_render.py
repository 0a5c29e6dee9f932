"""render.py without HTTP: parameter parsing, the display pipeline, geometry and every sample file."""
from __future__ import annotations

import io
import warnings

import dicom_samples as samples
import numpy as np
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import sample
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_windowing
from pydicom.sequence import Sequence

from dicomserver import render
from dicomserver.render import (
    GIF,
    JPEG,
    PNG,
    RenderParams,
    Viewport,
    Window,
    apply_window,
    parse_quality,
    parse_viewport,
    parse_window,
    render_array,
    render_file,
    to_display,
)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def render_path(path, frame: int = 1, **params) -> Image.Image:
    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about some samples' encodings
        return decode(render_file(fp, frame, RenderParams(media_type=params.pop("media_type", PNG), **params)))


def decodable(path) -> bool:
    """Whether pydicom can decode the file with the codecs installed here."""
    try:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point
    except (RuntimeError, NotImplementedError, ValueError):
        return False
    return True


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def mono(values, **attributes) -> Dataset:
    """A MONOCHROME2 header for `to_display` on a hand-made array."""
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# -- query parameters -------------------------------------------------------------


def test_quality_parsing():
    assert parse_quality(None) == render.DEFAULT_QUALITY
    assert parse_quality("1") == 1 and parse_quality("100") == 100 and parse_quality(" 75 ") == 75
    for bad in ("0", "101", "-5", "abc", "", "90.5"):
        with pytest.raises(render.InvalidParameter, match="quality"):
            parse_quality(bad)


def test_viewport_parsing():
    assert parse_viewport(None) is None
    assert parse_viewport("256,256") == Viewport(256, 256)
    assert parse_viewport("64,32,10,20,100,-50") == Viewport(64, 32, 10.0, 20.0, 100.0, -50.0)
    assert parse_viewport("64,,,,,") == Viewport(64, None, 0.0, 0.0, None, None)
    assert parse_viewport(",,1.5,2,3,4") == Viewport(None, None, 1.5, 2.0, 3.0, 4.0)
    for bad in ("256", "256,256,1", "0,10", "10,-1", "a,b", ",10", "10,10,-1,0,5,5", "10,10,0,0,0,5",
                "10,10,0,0,x,5", "99999,10", "10,10,0,0,nan,5"):
        with pytest.raises(render.InvalidParameter, match="viewport"):
            parse_viewport(bad)


def test_window_parsing():
    assert parse_window(None) is None
    assert parse_window("40,400,linear") == Window(40.0, 400.0, "LINEAR")
    assert parse_window("-600.5,1500,LINEAR-EXACT") == Window(-600.5, 1500.0, "LINEAR_EXACT")
    assert parse_window("0,0.5,sigmoid") == Window(0.0, 0.5, "SIGMOID")
    assert parse_window("40,400") == Window(40.0, 400.0, "LINEAR")
    for bad in ("40", "40,400,cubic", "x,400,linear", "40,0,linear", "40,0.5,linear", "40,-1,sigmoid",
                "1,2,3,4", "40,inf,linear"):
        with pytest.raises(render.InvalidParameter, match="window"):
            parse_window(bad)


# -- windowing --------------------------------------------------------------------


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("center,width", [(2000.0, 1000.0), (300.5, 41.0), (60000.0, 9000.0)])
def test_window_matches_pydicom(function, center, width):
    """Our 0..255 windowing equals pydicom's apply_windowing (0..65535 for 16 bits) rescaled."""
    ramp = np.arange(0, 65536, 7, dtype=np.uint16)
    ds = mono(ramp, WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    expected = np.rint(apply_windowing(ramp, ds) * 255.0 / 65535.0)
    ours = apply_window(ramp, Window(center, width, function)).astype(int)
    assert np.abs(ours - expected).max() <= 1
    assert (np.diff(ours) >= 0).all()
    if function != "SIGMOID":  # a sigmoid only approaches its ends
        assert ours.min() == 0 and ours.max() == 255


def test_linear_window_math():
    # PS3.3 C.11.2.1.2.1: c=100, w=51 maps x <= 74.5 to 0, x > 124.5 to 255, linear between.
    out = apply_window(np.array([0, 74, 75, 100, 124, 125, 4000]), Window(100, 51, "LINEAR"))
    assert out[0] == out[1] == 0 and out[5] == out[6] == 255
    assert 0 < out[2] < 10 and 125 <= out[3] <= 130 and 245 < out[4] < 255
    # width 1 is a threshold at c - 0.5
    assert list(apply_window(np.array([9, 10, 11]), Window(10, 1, "LINEAR"))) == [0, 255, 255]
    # sigmoid: the center maps to half
    assert apply_window(np.array([100]), Window(100, 10, "SIGMOID"))[0] == 128


def test_file_window_then_voi_lut_then_min_max():
    array = np.array([[0, 50], [100, 200]], dtype=np.uint16)
    windowed = to_display(array, mono(array, WindowCenter=50, WindowWidth=2, VOILUTFunction="LINEAR_EXACT"))
    assert windowed.tolist() == [[0, 128], [255, 255]]
    # the request's window overrides the file's
    overridden = to_display(array, mono(array, WindowCenter=50, WindowWidth=2), Window(100, 200, "LINEAR_EXACT"))
    assert overridden.tolist() == [[0, 64], [128, 255]]

    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]  # 4 entries, first maps 0, 8 bits
    lut.LUTData = [255, 170, 85, 0]
    with_lut = mono(array, VOILUTSequence=Sequence([lut]))
    assert to_display(np.array([[0, 1], [2, 3]], dtype=np.uint16), with_lut).tolist() == [[255, 170], [85, 0]]
    # the file's window wins over its VOI LUT
    both = mono(array, VOILUTSequence=Sequence([lut]), WindowCenter=1.5, WindowWidth=2, VOILUTFunction="LINEAR_EXACT")
    assert to_display(np.array([[0, 3]], dtype=np.uint16), both).tolist() == [[0, 255]]

    assert to_display(array, mono(array)).tolist() == [[0, 64], [128, 255]]  # min-max
    assert to_display(np.full((2, 2), 7), mono(None)).tolist() == [[0, 0], [0, 0]]  # flat


def test_unusable_file_window_falls_back_to_min_max():
    array = np.array([[0, 100]], dtype=np.uint16)
    assert to_display(array, mono(array, WindowCenter=50, WindowWidth=0)).tolist() == [[0, 255]]


def test_monochrome1_is_inverted():
    array = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    m2 = to_display(array, mono(array))
    m1 = to_display(array, mono(array, PhotometricInterpretation="MONOCHROME1"))
    assert (m1.astype(int) + m2).tolist() == [[255, 255], [255, 255]]
    assert m1[0, 0] == 255 and m1[1, 1] == 0


def test_ct_rescale_is_applied_before_the_window():
    """Stored 16-bit values with RescaleIntercept -1024: a soft tissue window is in HU."""
    hu = np.array([[-1000, 40], [-160, 1000]])
    stored = (hu + 1024).astype(np.uint16)
    ds = mono(stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    out = to_display(stored, ds)
    assert out[0, 0] == 0 and 126 <= out[0, 1] <= 129 and out[1, 0] == 0 and out[1, 1] == 255
    # signed stored values and a slope
    signed = np.array([[-2000, 20]], dtype=np.int16)
    ds = mono(signed, PixelRepresentation=1, RescaleSlope=2, RescaleIntercept=0, WindowCenter=40,
              WindowWidth=400)
    assert to_display(signed, ds).tolist()[0][0] == 0 and 126 <= to_display(signed, ds)[0, 1] <= 129


def test_enhanced_multiframe_functional_groups():
    """Rescale and window from the Shared/Per-frame Functional Groups (PS3.3 C.7.6.16)."""
    ds = make_instance(rows=2, columns=2, frames=2)
    stored = np.array([[[24, 1064], [1100, 4000]]] * 2, dtype=np.uint16)  # HU -1000, 40, 76, 2976
    ds.PixelData = stored.tobytes()
    transform = Dataset()
    transform.RescaleIntercept = -1024
    transform.RescaleSlope = 1
    transform.RescaleType = "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for center, width in ((40, 400), (2000, 10)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    data = io.BytesIO(to_bytes(ds))
    first = pixels(decode(render_file(data, 1, RenderParams(media_type=PNG))))
    second = pixels(decode(render_file(data, 2, RenderParams(media_type=PNG))))
    assert first[0, 0] == 0 and 126 <= first[0, 1] <= 129 and 149 <= first[1, 0] <= 153 and first[1, 1] == 255
    assert second.tolist() == [[0, 0], [0, 255]]  # the second frame's window is 2000±5


# -- colour -----------------------------------------------------------------------------


def test_ybr_becomes_rgb():
    ybr = render_path(sample("SC_ybr_full_422_uncompressed.dcm"))
    rgb = render_path(sample("SC_rgb_rle.dcm"))
    assert ybr.mode == "RGB" and ybr.size == (100, 100)
    assert np.abs(pixels(ybr) - pixels(rgb)).max() <= 8
    red, green, blue = pixels(ybr)[5, 50]
    assert red > 240 and green < 10 and blue < 10  # the first bar is red

    example = render_path(sample("examples_ybr_color.dcm"))
    assert example.mode == "RGB" and example.size == (320, 240)
    reference = pydicom.dcmread(sample("examples_ybr_color.dcm")).pixel_array[0]
    assert np.array_equal(pixels(example), reference)


def test_palette_color():
    path = sample("examples_palette.dcm")
    image = render_path(path)
    assert image.mode == "RGB" and image.size == (800, 350)
    ds = pydicom.dcmread(path)
    expected = apply_color_lut(ds.pixel_array, ds) >> 8  # 16-bit palette entries
    assert np.abs(pixels(image) - expected).max() <= 1
    rgb = pixels(image)
    assert (rgb[..., 0] != rgb[..., 2]).any()  # really coloured, not gray


def test_broken_palette_is_cannot_render():
    ds = mono(None, PhotometricInterpretation="PALETTE COLOR")  # no palette attributes at all
    with pytest.raises(render.CannotRender, match="display values"):
        render_array(np.zeros((2, 2), dtype=np.uint8), ds)


def test_unsupported_photometric_interpretation():
    ds = mono(None, PhotometricInterpretation="YBR_PARTIAL_420")
    with pytest.raises(render.CannotRender, match="YBR_PARTIAL_420"):
        to_display(np.zeros((2, 2, 3), dtype=np.uint8), ds)


# -- geometry and encoding ----------------------------------------------------------------


def halves() -> tuple[np.ndarray, Dataset]:
    """100 rows x 200 columns: left half 0, right half 1000 (renders black | white)."""
    array = np.zeros((100, 200), dtype=np.uint16)
    array[:, 100:] = 1000
    return array, mono(array)


def test_viewport_keeps_aspect_ratio():
    array, ds = halves()
    assert decode(render_array(array, ds, RenderParams(media_type=PNG))).size == (200, 100)
    assert decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(50, 50)))).size == (50, 25)
    assert decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(400, 400)))).size == (400, 200)
    assert decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(1000, 30)))).size == (60, 30)
    assert decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(None, 10, 0, 0, None, None)))).size == (20, 10)


def test_thumbnail_default_size_never_enlarges():
    array, ds = halves()
    assert decode(render_array(array, ds, RenderParams(media_type=PNG, thumbnail=True))).size == (128, 64)
    small = np.arange(16, dtype=np.uint16).reshape(4, 4)
    assert decode(render_array(small, mono(small), RenderParams(media_type=PNG, thumbnail=True))).size == (4, 4)
    # an explicit viewport is honoured, enlarging too
    assert decode(render_array(small, mono(small), RenderParams(media_type=PNG, thumbnail=True, viewport=Viewport(8, 8)))).size == (8, 8)


def test_viewport_source_region_and_flip():
    array, ds = halves()
    array[:50, :] += 500  # top half brighter: rows 0..49 are 500 | 1500, rows 50..99 are 0 | 1000
    left = pixels(decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(None, None, 0, 0, 100, None)))))
    assert left.shape == (100, 100) and left[:, :].max() <= 128  # only the darker left half
    right = pixels(decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(None, None, 100, 0, None, None)))))
    assert right.shape == (100, 100) and right.min() >= 170
    mirrored = pixels(decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(None, None, 0, 0, -200, None)))))
    plain = pixels(decode(render_array(array, ds, RenderParams(media_type=PNG))))
    assert np.array_equal(mirrored, plain[:, ::-1])
    flipped = pixels(decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(None, None, 0, 0, None, -100)))))
    assert np.array_equal(flipped, plain[::-1, :])
    # a region past the edge is clipped; one entirely outside is an error
    clipped = decode(render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(None, None, 150, 90, 500, 500))))
    assert clipped.size == (50, 10)
    with pytest.raises(render.InvalidParameter, match="outside"):
        render_array(array, ds, RenderParams(media_type=PNG, viewport=Viewport(10, 10, 200, 0, 10, 10)))


def test_encodings_and_quality():
    path = sample("red-triangle.dcm")
    jpeg = render_path(path, media_type=JPEG)
    png = render_path(path, media_type=PNG)
    gif = render_path(path, media_type=GIF)
    assert (jpeg.format, png.format, gif.format) == ("JPEG", "PNG", "GIF")
    reference = pixels(png)
    assert np.abs(pixels(jpeg) - reference).mean() < 3
    assert np.abs(pixels(gif.convert("RGB")) - reference).mean() < 3
    with open(path, "rb") as fp:
        low = render_file(fp, 1, RenderParams(media_type=JPEG, quality=5))
        high = render_file(fp, 1, RenderParams(media_type=JPEG, quality=95))
    assert len(low) < len(high) * 0.75
    assert np.abs(pixels(decode(low)) - reference).mean() > np.abs(pixels(decode(high)) - reference).mean() + 1


# -- files ----------------------------------------------------------------------------


ALL_SAMPLES = list(samples.EVERY_SAMPLE)
#: Genuinely blank content (a whole-slide tile of bare glass, almost uniformly light gray).
FLAT_SAMPLES = {"SC_jpeg_no_color_transform.dcm"}


def test_sample_list_is_complete():
    assert len(ALL_SAMPLES) >= 25
    syntaxes = {pydicom.dcmread(sample(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
                for name in ALL_SAMPLES}
    assert len(syntaxes) >= 10, syntaxes


@pytest.mark.parametrize("name", ALL_SAMPLES, ids=lambda name: name.rsplit("/", 1)[-1])
def test_every_sample_renders(name):
    path = sample(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        decoded = ds.pixel_array
    image = render_path(path)
    assert image.size == (ds.Columns, ds.Rows)
    assert image.mode == ("RGB" if ds.SamplesPerPixel == 3 else "L")
    rendered = pixels(image)
    if name in FLAT_SAMPLES:
        assert rendered.std() < 2 and rendered.mean() > 200
    else:
        assert rendered.std() > 10, "the rendering is (nearly) a single flat colour"
    first = decoded[0] if int(ds.get("NumberOfFrames", 1)) > 1 else decoded  # what frame 1 is
    if ds.SamplesPerPixel == 3:
        assert np.array_equal(rendered, first), "8-bit colour must come out exactly as decoded"
    else:
        # grayscale keeps the image's structure: strongly correlated with the stored values
        assert np.corrcoef(rendered.ravel(), first.astype(float).ravel())[0, 1] > 0.8


def test_red_triangle_is_red_where_the_triangle_is():
    rgb = pixels(render_path(sample("red-triangle.dcm"), media_type=JPEG, quality=95))
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 70) & (rgb[..., 2] < 70)
    assert red[490, 492] and red[700, 300]  # centre and lower left inside the triangle
    assert not red[10, 10] and not red[200, 100]  # background (gray) above-left of the apex
    assert abs(rgb[10, 10] - 195).max() < 8
    assert 0.15 < red.mean() < 0.5


def test_compressed_and_native_encodings_render_alike():
    native = pixels(render_path(sample(samples.RGB_NATIVE)))
    for name in (samples.RGB_DEFLATED, samples.RGB_BIG_ENDIAN, samples.RGB_IMPLICIT, samples.RGB_RLE,
                 samples.RGB_JPEG_LOSSLESS_SV1):
        assert np.array_equal(pixels(render_path(sample(name))), native), name
    jpeg = pixels(render_path(sample(samples.RGB_JPEG_BASELINE)))
    assert np.abs(jpeg - native).max() <= samples.RGB_JPEG_BASELINE_MAX_DIFF
    mr = pixels(render_path(sample("MR_small.dcm")))
    for name in ("MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm"):
        assert np.array_equal(pixels(render_path(sample(name))), mr), name


@pytest.mark.parametrize(
    "name",
    [
        samples.MR_IMPLICIT_WINDOWED,  # Implicit VR, 16-bit signed, window 600/1600
        "MR2_UNCR.dcm",  # NEMA's 1024x1024 MR: Rescale Slope 3.774114 under a 1000/2000 window
    ],
)
def test_mr_uses_the_file_window(name):
    path = sample(name)
    ds = pydicom.dcmread(path)
    rendered = pixels(render_path(path))
    values = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    expected = apply_window(values, Window(float(ds.WindowCenter), float(ds.WindowWidth)))
    assert np.array_equal(rendered, expected)
    # and a request window changes it
    narrow = pixels(render_path(path, window=Window(500, 100, "LINEAR")))
    assert (narrow == 255).mean() > (rendered == 255).mean() + 0.05


@pytest.mark.parametrize("name,frames", [("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2), ("examples_ybr_color.dcm", 30)])
def test_multiframe_frames_differ(name, frames):
    path = sample(name)
    first, second = pixels(render_path(path, 1)), pixels(render_path(path, 2))
    assert first.shape == second.shape and not np.array_equal(first, second)
    last = render_path(path, frames)
    assert last.size == render_path(path, 1).size
    with pytest.raises(render.FrameNotFound, match=f"has {frames} frames"):
        render_path(path, frames + 1)
    reference = pydicom.dcmread(path).pixel_array[1]
    if reference.ndim == 3:
        assert np.array_equal(second, reference)


def test_no_pixel_data():
    for name in ("reportsi.dcm", "waveform_ecg.dcm"):
        with pytest.raises(render.NoPixelData, match="no pixel data"):
            render_path(sample(name))


def test_undecodable_pixel_data_names_the_transfer_syntax():
    path = sample("JPEG-lossy.dcm")  # 12-bit JPEG Extended: no installed plugin decodes it
    if decodable(path):
        pytest.skip("a codec for 12-bit JPEG Extended is installed here")
    with pytest.raises(render.CannotRender, match=r"1\.2\.840\.10008\.1\.2\.4\.51"):
        render_path(path)


def test_missing_codec_names_the_transfer_syntax(monkeypatch):
    class Unavailable:
        is_available = False
        missing_dependencies = ("pylibjpeg-openjpeg",)

    monkeypatch.setattr(render, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(render.CannotRender, match=r"1\.2\.840\.10008\.1\.2\.4\.90.*not installed: pylibjpeg-openjpeg"):
        render_path(sample(samples.J2K_LOSSLESS))


def test_synthetic_8bit_instance_in_a_buffer():
    ds = make_instance(rows=3, columns=5, bits=8)
    ds.PixelData = np.arange(15, dtype=np.uint8).reshape(3, 5).tobytes()
    image = decode(render_file(io.BytesIO(to_bytes(ds)), 1, RenderParams(media_type=PNG)))
    assert image.size == (5, 3) and image.mode == "L"
    assert pixels(image)[0, 0] == 0 and pixels(image)[2, 4] == 255
