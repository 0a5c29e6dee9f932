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
