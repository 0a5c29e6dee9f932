"""OHIF, the viewer most users try first, against dicomserver in a real browser.

Debian's chromium opens OHIF's prebuilt viewer (the pinned @ohif/app), whose one data
source is a dicomserver on another origin: the study list, the viewer on three kinds of
image, and the Upload dialog (STOW-RS). Every check also requires that no request failed
and nothing was logged as an error. Screenshots go to e2e/artifacts/.
"""
from __future__ import annotations

import json
import urllib.request

import pytest
from browser import assert_clean, run_check
from e2e_studies import STUDIES, UPLOAD, listed_as

pytestmark = [pytest.mark.live, pytest.mark.e2e]


def qido_studies(server, **query: str) -> list[dict]:
    url = server.url + "/v2/studies?" + "&".join(f"{k}={v}" for k, v in query.items())
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/dicom+json"})) as response:
        return json.loads(response.read() or b"[]")


def patient_name(study: dict) -> str:
    return study["00100010"]["Value"][0]["Alphabetic"]


def test_study_list_shows_every_study_with_its_patient_name(ohif, dicomserver):
    stored = sorted(listed_as(patient_name(s)) for s in qido_studies(dicomserver))
    assert set(stored) >= {s.listed_as for s in STUDIES}

    report = run_check("ohif-study-list", viewer=ohif.url, patients=stored)

    assert_clean(report)
    assert sorted(report["results"]["patients"]) == stored


@pytest.mark.parametrize("study", STUDIES, ids=[s.key for s in STUDIES])
def test_viewer_draws_the_image(ohif, study):
    uid = study.dataset().StudyInstanceUID
    report = run_check("ohif-viewer", viewer=ohif.url, study=uid, name=f"ohif-viewer-{study.key}")

    assert_clean(report)
    canvas = report["results"]["canvas"]
    pixels = canvas["width"] * canvas["height"]
    assert canvas["nonBlack"] > pixels // 10, canvas  # the image covers the viewport, not a corner
    assert canvas["distinct"] >= 32, canvas  # an image, not a flat fill
    if study.colour:
        assert canvas["coloured"] > pixels // 10, canvas
    else:
        assert canvas["coloured"] == 0, canvas  # greyscale drawn grey


def test_upload_dialog_stores_the_file(ohif, dicomserver, upload_file):
    uid = UPLOAD.dataset().StudyInstanceUID
    assert qido_studies(dicomserver, StudyInstanceUID=uid) == []

    report = run_check("ohif-upload", viewer=ohif.url, file=str(upload_file), patient=UPLOAD.listed_as)

    assert_clean(report)
    assert report["results"]["stowStatus"] == 200
    assert UPLOAD.listed_as in report["results"]["patients"]
    [found] = qido_studies(dicomserver, StudyInstanceUID=uid)
    assert patient_name(found) == UPLOAD.patient_name
