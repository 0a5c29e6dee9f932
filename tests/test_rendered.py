"""Rendered and thumbnail resources through the Flask test client (PS3.18 §9.5, §8.3.5)."""
from __future__ import annotations

import dataclasses
import io
import json
import warnings

import dicom_samples as samples
import numpy as np
import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import SERIES_BLUE, SERIES_GREEN_RED, SOP_BLUE, SOP_GREEN, SOP_RED, STUDY_UID, sample
from PIL import Image

from dicomserver import ConfigError, Settings, render

STUDY = f"/v2/studies/{STUDY_UID}"
RED = f"{STUDY}/series/{SERIES_GREEN_RED}/instances/{SOP_RED}"
GREEN = f"{STUDY}/series/{SERIES_GREEN_RED}/instances/{SOP_GREEN}"
BLUE = f"{STUDY}/series/{SERIES_BLUE}/instances/{SOP_BLUE}"
#: The tutorial images are 985 columns x 979 rows.
TUTORIAL_SIZE = (985, 979)
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


def image_of(response) -> Image.Image:
    assert response.status_code == 200, response.data[:300]
    image = Image.open(io.BytesIO(response.data))
    image.load()
    assert FORMATS[response.headers["Content-Type"]] == image.format
    return image


def decodable(path) -> bool:
    """Whether pydicom can decode the file with the codecs installed here."""
    try:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point
    except (RuntimeError, NotImplementedError, ValueError):
        return False
    return True


def rgb(response) -> np.ndarray:
    return np.asarray(image_of(response).convert("RGB")).astype(int)


def dominant(response) -> str:
    """Which of red, green, blue the non-gray pixels of a tutorial rendering are."""
    pixels = rgb(response).reshape(-1, 3)
    coloured = pixels[np.ptp(pixels, axis=1) > 60]
    assert len(coloured) > 0.05 * len(pixels), "no coloured shape in the rendering"
    return "rgb"[int(np.argmax(coloured.mean(axis=0)))]


def shape_colour(name: str) -> str:
    return {"red": "r", "green": "g", "blue": "b"}[name]


@pytest.fixture
def stored(store_file):
    """Store a file and return its instance URL (from the STOW RetrieveURL)."""

    def store(path) -> str:
        response = store_file(path)
        assert response.status_code in (200, 202), response.data[:300]
        item = json.loads(response.data)["00081199"]["Value"][0]
        url = item["00081190"]["Value"][0]
        return url[url.index("/v2/"):]

    return store


@pytest.fixture
def tutorial(store_file):
    """Blue (series 2) stored first, so storage order and SeriesNumber order differ."""
    for name in ("blue-circle.dcm", "green-square.dcm", "red-triangle.dcm"):
        assert store_file(sample(name)).status_code == 200
    return STUDY_UID


# -- levels and resources ------------------------------------------------------------


@pytest.mark.parametrize("url,colour", [(RED, "red"), (GREEN, "green"), (BLUE, "blue")])
def test_instance_rendered_is_the_image(client, tutorial, url, colour):
    response = client.get(f"{url}/rendered")
    assert response.headers["Content-Type"] == "image/jpeg"
    assert image_of(response).size == TUTORIAL_SIZE and image_of(response).mode == "RGB"
    assert dominant(response) == shape_colour(colour)
    frame = client.get(f"{url}/frames/1/rendered", headers={"Accept": "image/png"})
    assert image_of(frame).size == TUTORIAL_SIZE
    assert dominant(frame) == shape_colour(colour)


def test_red_triangle_pixels(client, tutorial):
    pixels = rgb(client.get(f"{RED}/rendered?accept=image/png"))
    assert pixels[490, 492].tolist() == [237, 28, 36]  # inside the triangle, exactly as stored (PNG)
    assert pixels[10, 10].tolist() == [195, 195, 195]  # background


def test_study_and_series_use_a_representative_instance(client, tutorial):
    # The first series by SeriesNumber is green+red (number 1); its lower-middle instance
    # by InstanceNumber is the red triangle (1), not the green square (2).
    assert dominant(client.get(f"{STUDY}/rendered")) == "r"
    assert dominant(client.get(f"{STUDY}/thumbnail")) == "r"
    assert dominant(client.get(f"{STUDY}/series/{SERIES_GREEN_RED}/rendered")) == "r"
    assert dominant(client.get(f"{STUDY}/series/{SERIES_BLUE}/rendered")) == "b"
    assert dominant(client.get(f"{STUDY}/series/{SERIES_BLUE}/thumbnail")) == "b"


def test_representative_skips_instances_without_pixel_data(client, stored):
    sr = pydicom.dcmread(sample("reportsi.dcm"))
    study = sr.StudyInstanceUID
    image = make_instance(study=study, rows=8, columns=8, SeriesNumber=2)
    sr.SeriesNumber = 1  # the first series by number holds only a report
    buffer = io.BytesIO()
    sr.save_as(buffer)
    for data in (buffer.getvalue(), to_bytes(image)):
        response = client.post(
            "/v2/studies", data=data, headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
        )
        assert response.status_code in (200, 202), response.data[:300]
    assert image_of(client.get(f"/v2/studies/{study}/rendered")).size == (8, 8)
    sr_url = f"/v2/studies/{study}/series/{sr.SeriesInstanceUID}"
    response = client.get(f"{sr_url}/rendered")
    assert response.status_code == 404 and b"pixel data" in response.data
    response = client.get(f"{sr_url}/instances/{sr.SOPInstanceUID}/thumbnail")
    assert response.status_code == 404 and b"has no pixel data" in response.data


def test_v1_and_v2(client, tutorial):
    assert image_of(client.get(f"/v1/studies/{STUDY_UID}/series/{SERIES_BLUE}/instances/{SOP_BLUE}/rendered"))
    assert image_of(client.get(f"/v2/studies/{STUDY_UID}/thumbnail"))


# -- media types ------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", list(FORMATS))
@pytest.mark.parametrize("resource", ["rendered", "thumbnail"])
def test_media_type_by_header_and_by_query(client, tutorial, media_type, resource):
    by_header = client.get(f"{RED}/{resource}", headers={"Accept": media_type})
    by_query = client.get(f"{RED}/{resource}?accept={media_type}")
    for response in (by_header, by_query):
        assert response.headers["Content-Type"] == media_type
        assert image_of(response).format == FORMATS[media_type]
        assert dominant(response) == "r"
    assert "Accept" in by_header.headers.get("Vary", "")


def test_accept_query_parameter_wins_over_the_header(client, tutorial):
    # OHIF's bulk-data strategy sends ?accept=image/jpeg whatever its Accept header says.
    response = client.get(f"{RED}/thumbnail?accept=image/gif", headers={"Accept": "image/png"})
    assert response.headers["Content-Type"] == "image/gif"
    response = client.get(f"{RED}/thumbnail?accept=image/jpeg", headers={"Accept": "application/dicom"})
    assert response.headers["Content-Type"] == "image/jpeg"


@pytest.mark.parametrize(
    "accept,expected",
    [
        (None, "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "image/jpeg"),  # a browser's <img>
        ("image/webp, image/png;q=0.5, image/jpeg;q=0.4", "image/png"),
        ('image/gif; q="0.9", image/png; q=0.2', "image/gif"),
        ("application/dicom, image/png", "image/png"),
        ("image/jpeg; q=0, */*", "image/png"),  # a refusal is not ignored beside a wildcard
        ("image/jpeg; q=0, image/png; q=0, image/*", "image/gif"),
    ],
)
def test_accept_negotiation(client, tutorial, accept, expected):
    headers = {} if accept is None else {"Accept": accept}
    assert client.get(f"{RED}/rendered", headers=headers).headers["Content-Type"] == expected


@pytest.mark.parametrize("accept", ["application/dicom", "image/jp2", "video/mpeg", 'multipart/related; type="image/jpeg"', "image/png;q=0", "image/*; q=0, */*"])
def test_unacceptable_media_type_is_406(client, tutorial, accept):
    for response in (
        client.get(f"{RED}/rendered", headers={"Accept": accept}),
        client.get(f"{STUDY}/thumbnail", query_string={"accept": accept}),
    ):
        assert response.status_code == 406
        assert b"image/jpeg, image/png, image/gif" in response.data


# -- parameters ------------------------------------------------------------------------------


def test_thumbnail_size(client, tutorial):
    default = image_of(client.get(f"{RED}/thumbnail"))
    assert default.size == (128, round(979 * 128 / 985))
    ohif = image_of(client.get(f"{STUDY}/thumbnail?viewport=256,256", headers={"Accept": "image/jpeg"}))
    assert ohif.size == (256, round(979 * 256 / 985))
    assert image_of(client.get(f"{RED}/rendered")).size == TUTORIAL_SIZE  # rendered: full size


def test_viewport(client, tutorial):
    assert image_of(client.get(f"{RED}/rendered?viewport=100,100")).size == (100, round(979 * 100 / 985))
    assert image_of(client.get(f"{RED}/rendered?viewport=2000,50")).size == (round(985 * 50 / 979), 50)
    # source region: a 100x50 crop of the triangle's middle, scaled to 200 wide: all red
    crop = rgb(client.get(f"{RED}/rendered?accept=image/png&viewport=200,,442,450,100,50"))
    assert crop.shape == (100, 200, 3)
    assert (crop[..., 0] > 200).all() and (crop[..., 1] < 60).all()
    # flipped vertically: the apex (top) of the triangle ends up at the bottom
    plain = rgb(client.get(f"{RED}/rendered?accept=image/png"))
    flipped = rgb(client.get(f"{RED}/rendered?accept=image/png&viewport=,,0,0,,-979"))
    assert np.array_equal(flipped, plain[::-1])


@pytest.mark.parametrize(
    "query,word",
    [
        ("quality=0", b"quality"),
        ("quality=101", b"quality"),
        ("quality=high", b"quality"),
        ("viewport=100", b"viewport"),
        ("viewport=0,100", b"viewport"),
        ("viewport=a,b", b"viewport"),
        ("viewport=10,10,5000,0,10,10", b"outside"),
        ("window=40", b"window"),
        ("window=40,400,cubic", b"window"),
        ("window=40,0,linear", b"window"),
    ],
)
def test_malformed_parameters_are_400(client, tutorial, query, word):
    for url in (f"{RED}/rendered?{query}", f"{STUDY}/thumbnail?{query}"):
        response = client.get(url)
        assert response.status_code == 400, url
        assert word in response.data and response.headers["Content-Type"].startswith("text/plain")


def test_quality_changes_the_jpeg(client, tutorial):
    low = client.get(f"{RED}/rendered?quality=5")
    high = client.get(f"{RED}/rendered?quality=95")
    default = client.get(f"{RED}/rendered")
    assert len(low.data) < len(default.data) < len(high.data)
    exact = rgb(client.get(f"{RED}/rendered?accept=image/png"))
    assert np.abs(rgb(low) - exact).mean() > np.abs(rgb(high) - exact).mean()
    # quality does not apply to lossless PNG
    assert client.get(f"{RED}/rendered?accept=image/png&quality=5").data == client.get(f"{RED}/rendered?accept=image/png").data


def test_window_changes_a_grayscale_rendering(client, stored):
    url = stored(sample(samples.MR_IMPLICIT_WINDOWED))  # 16-bit MR with a window in the file
    default = image_of(client.get(f"{url}/rendered?accept=image/png"))
    assert default.mode == "L" and default.size == (64, 64)
    narrow = np.asarray(image_of(client.get(f"{url}/rendered?accept=image/png&window=500,100,linear")))
    wide = np.asarray(image_of(client.get(f"{url}/rendered?accept=image/png&window=1000,20000,linear-exact")))
    base = np.asarray(default)
    assert (narrow == 255).mean() > (base == 255).mean() + 0.05  # narrower and lower: more white
    assert wide.max() < 160 and wide.std() < base.std()  # very wide: flat and dim
    sigmoid = np.asarray(image_of(client.get(f"{url}/rendered?accept=image/png&window=500,100,sigmoid")))
    assert not np.array_equal(sigmoid, narrow)


def test_annotation_is_ignored_with_a_warning_and_iccprofile_silently(client, tutorial):
    response = client.get(f"{RED}/rendered?annotation=patient,technique")
    assert response.status_code == 200 and "annotation" in response.headers["Warning"]
    assert response.headers["Warning"].startswith("299 ")
    response = client.get(f"{RED}/rendered?iccprofile=srgb")
    assert response.status_code == 200 and "Warning" not in response.headers


# -- frames and multi-frame --------------------------------------------------------------------


@pytest.mark.parametrize("name,frames", [("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2)])
def test_multiframe(client, stored, name, frames):
    url = stored(sample(name))
    first = np.asarray(image_of(client.get(f"{url}/frames/1/rendered?accept=image/png")))
    second = np.asarray(image_of(client.get(f"{url}/frames/2/rendered?accept=image/png")))
    assert first.shape == second.shape and not np.array_equal(first, second)
    # the instance-level rendering (and thumbnail) is frame 1
    assert np.array_equal(np.asarray(image_of(client.get(f"{url}/rendered?accept=image/png"))), first)
    assert np.array_equal(np.asarray(image_of(client.get(f"{url}/thumbnail?accept=image/png"))), first)
    assert image_of(client.get(f"{url}/frames/{frames}/rendered")).size == (first.shape[1], first.shape[0])
    response = client.get(f"{url}/frames/{frames + 1}/rendered")
    assert response.status_code == 404 and f"has {frames} frames".encode() in response.data


def test_ybr_multiframe_comes_out_rgb(client, stored):
    path = sample("examples_ybr_color.dcm")  # YBR_FULL_422 JPEG baseline, 30 frames
    url = stored(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoded = pydicom.dcmread(path).pixel_array
    for frame in (1, 2):
        image = image_of(client.get(f"{url}/frames/{frame}/rendered?accept=image/png"))
        assert image.mode == "RGB" and image.size == (320, 240)
        assert np.array_equal(np.asarray(image), decoded[frame - 1])


@pytest.mark.parametrize("frames,status", [("2", 404), ("0", 400), ("1,2", 400), ("x", 400)])
def test_bad_frame_numbers(client, tutorial, frames, status):
    response = client.get(f"{RED}/frames/{frames}/rendered")
    assert response.status_code == status
    assert response.data.strip()


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_and_malformed_uids(client, tutorial):
    assert client.get("/v2/studies/1.2.3/rendered").status_code == 404
    assert client.get(f"{STUDY}/series/1.2.3/thumbnail").status_code == 404
    assert client.get(f"{STUDY}/series/{SERIES_BLUE}/instances/1.2.3/rendered").status_code == 404
    response = client.get("/v2/studies/not-a-uid/rendered")
    assert response.status_code == 400 and b"StudyInstanceUID" in response.data
    assert client.get("/studies/1.2.3/rendered").status_code == 404  # unversioned


def test_undecodable_instance_is_406_naming_the_transfer_syntax(client, stored):
    path = sample("JPEG-lossy.dcm")  # 12-bit JPEG Extended: no installed plugin decodes it
    if decodable(path):
        pytest.skip("a codec for 12-bit JPEG Extended is installed here")
    url = stored(path)
    response = client.get(f"{url}/rendered")
    assert response.status_code == 406
    assert b"1.2.840.10008.1.2.4.51" in response.data


def test_missing_codec_is_406(client, stored, monkeypatch):
    url = stored(sample(samples.J2K_LOSSLESS))

    class Unavailable:
        is_available = False
        missing_dependencies = ("pylibjpeg-openjpeg",)

    monkeypatch.setattr(render, "get_decoder", lambda uid: Unavailable())
    response = client.get(f"{url}/thumbnail")
    assert response.status_code == 406
    assert b"1.2.840.10008.1.2.4.90" in response.data and b"pylibjpeg-openjpeg" in response.data


def test_instances_above_the_size_limit_are_406(app, client, tutorial):
    state = app.extensions["dicomserver"]
    state.settings = dataclasses.replace(state.settings, max_render_bytes=1_000_000)
    response = client.get(f"{RED}/rendered")
    assert response.status_code == 406 and b"DICOMWEB_MAX_RENDER_BYTES" in response.data
    state.settings = dataclasses.replace(state.settings, max_render_bytes=3_000_000)
    assert client.get(f"{RED}/rendered").status_code == 200


def test_without_the_render_extra_is_406(client, tutorial, monkeypatch):
    from dicomserver.services import rendered

    monkeypatch.setattr(rendered, "render", None)
    monkeypatch.setattr(rendered, "_RENDER_MISSING", "No module named 'PIL'", raising=False)
    response = client.get(f"{RED}/rendered")
    assert response.status_code == 406 and b"dicomserver[render]" in response.data


def test_max_render_bytes_setting():
    assert Settings().max_render_bytes == 512 * 1024**2
    assert Settings.from_env({"DICOMWEB_MAX_RENDER_BYTES": "1048576"}).max_render_bytes == 1048576
    with pytest.raises(ConfigError, match="DICOMWEB_MAX_RENDER_BYTES"):
        Settings.from_env({"DICOMWEB_MAX_RENDER_BYTES": "0"})


def test_a_revalidation_is_answered_304_until_the_image_would_change(client, tutorial):
    """Browsers (the study browser, OHIF's thumbnails) ask again with If-None-Match: 304,
    nothing decoded; another parameter, or a new version of the instance, is a new ETag."""
    first = client.get(f"{STUDY}/thumbnail")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and first.headers["Cache-Control"] == "private, no-cache"
    again = client.get(f"{STUDY}/thumbnail", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag
    assert client.get(f"{STUDY}/thumbnail?viewport=64,64").headers["ETag"] != etag
    assert client.get(f"{STUDY}/thumbnail", headers={"Accept": "image/png"}).headers["ETag"] != etag
    assert client.get(f"{RED}/rendered").headers["ETag"] != client.get(f"{GREEN}/rendered").headers["ETag"]
    red = client.get(f"{RED}/rendered")
    replaced = client.put(
        "/v2/studies", data=sample("red-triangle.dcm").read_bytes(), headers={"Content-Type": "application/dicom"}
    )
    assert replaced.status_code == 200, replaced.data
    after = client.get(f"{RED}/rendered", headers={"If-None-Match": red.headers["ETag"]})
    assert after.status_code == 200 and after.headers["ETag"] != red.headers["ETag"]
    assert after.data == red.data  # the same pixels, stored anew
