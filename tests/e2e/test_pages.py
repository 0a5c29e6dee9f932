"""dicomserver's own answers opened as pages in the browser (the `page` check: open, wait,
screenshot), as a person following a link to them would."""
from __future__ import annotations

import pytest
from browser import assert_clean, run_check
from e2e_studies import STUDIES

pytestmark = [pytest.mark.live, pytest.mark.e2e]


@pytest.mark.parametrize("study", STUDIES, ids=[s.key for s in STUDIES])
def test_rendered_instance_opens_as_an_image(dicomserver, study):
    ds = study.dataset()
    url = (
        f"{dicomserver.url}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered"
    )
    report = run_check("page", url=url, name=f"rendered-{study.key}")

    assert_clean(report)
    assert report["results"]["status"] == 200
    assert report["results"]["contentType"] == "image/jpeg"
    [image] = report["results"]["images"]
    assert (image["width"], image["height"]) == (ds.Columns, ds.Rows)


def test_study_browser_lists_the_studies_with_thumbnails(dicomserver):
    """The study browser at / (server-rendered, no script) in the browser: every stored study
    by its patient name, each thumbnail decoded; then one study's page with its series."""
    report = run_check("page", url=dicomserver.url + "/", name="study-browser")

    assert_clean(report)
    assert report["results"]["status"] == 200
    text = report["results"]["text"]
    assert all(study.listed_as in text for study in STUDIES), text
    images = report["results"]["images"]
    assert len(images) >= len(STUDIES)
    assert all(image["width"] > 0 and image["height"] > 0 for image in images), images

    ds = STUDIES[0].dataset()
    study_page = run_check("page", url=f"{dicomserver.url}/browse/studies/{ds.StudyInstanceUID}", name="study-browser-study")
    assert_clean(study_page)
    assert study_page["results"]["status"] == 200
    assert STUDIES[0].listed_as in study_page["results"]["text"]
    [thumbnail] = study_page["results"]["images"]  # its one series
    assert thumbnail["width"] > 0
