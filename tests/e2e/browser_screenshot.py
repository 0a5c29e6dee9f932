"""The study browser in a real browser: sample studies in a real gunicorn, screenshots by
headless Chromium of the study list and of one study's page.

    .venv/bin/python tests/e2e/browser_screenshot.py [--out /tmp/browser.png] [--viewer-url URL]

Stores a few real images (pydicom's test files and the tutorials' study, relabelled as
distinct patients), starts the server on a free loopback port, checks that every
thumbnail a page points at is an image, saves the two screenshots (the study page's
next to the list's, `-study` added to the name) and stops the server. Exits non-zero
if anything fails. Needs Chromium (Debian: apt-get install chromium). Not a pytest test
(its name does not start with test_): `make e2e` may run it.
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import pydicom  # noqa: E402
from dicom_samples import STUDY_UID, TUTORIAL_FILES, sample  # noqa: E402
from live_servers import start_server, stop_server  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

#: (file, patient name, patient ID, study date, study description, series description)
STUDIES = [
    ("CT_small.dcm", "Doe^John", "PAT-0001", "20240105", "CT chest with contrast", "Axial 5 mm"),
    ("MR_small.dcm", "Müller^Jürgen", "PAT-0002", "20240210", "MR brain", "T1 sagittal"),
    ("US1_UNCR.dcm", "Smith^Anna^Maria^Dr", "PAT-0003", "20231231", "Abdominal ultrasound", "Liver"),
    ("SC_rgb.dcm", "García^Lucía", "PAT-0004", "20240312", "Secondary capture", "Colour bars"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "Okafor^Chidi", "PAT-0005", "20240401", "Follow-up", "Single frame"),
]


def relabelled(name: str, patient: str, patient_id: str, date: str, study: str, series: str) -> bytes:
    """A sample file as an instance of a study of its own, for another patient."""
    ds = pydicom.dcmread(sample(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.StudyDate = patient, patient_id, date
    ds.StudyDescription, ds.SeriesDescription = study, series
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url + "/v2/studies", data=body, method="POST",
        headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200, response.status


def check_thumbnails(url: str, path: str) -> int:
    """Every <img> of the page is an image, as a browser would ask for it; how many there are."""
    with urllib.request.urlopen(url + path, timeout=30) as response:
        html = response.read().decode()
    sources = re.findall(r'<img class="thumb" src="([^"]+)"', html)
    for source in sources:
        request = urllib.request.Request(url + source.replace("&amp;", "&"), headers={"Accept": "image/*,*/*;q=0.8"})
        with urllib.request.urlopen(request, timeout=30) as response:
            kind = response.headers.get_content_type()
            if response.status != 200 or not kind.startswith("image/"):
                raise SystemExit(f"thumbnail {source}: {response.status} {kind}")
    return len(sources)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("Chromium is not installed (Debian: apt-get install chromium)")


def screenshot(browser: str, url: str, out: Path, profile: Path) -> None:
    subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1280,900",
            f"--screenshot={out}", url,
        ],
        check=True, capture_output=True, timeout=120,
    )
    if not out.is_file() or out.stat().st_size < 10_000:
        raise SystemExit(f"Chromium wrote no screenshot of {url} to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/browser.png"), help="the list's screenshot")
    parser.add_argument("--viewer-url", help="DICOMWEB_VIEWER_URL for the server (the pages then link to it)")
    args = parser.parse_args()
    env = {"DICOMWEB_AUDIT_LOG": "off", **({"DICOMWEB_VIEWER_URL": args.viewer_url} if args.viewer_url else {})}
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="browser-screenshot-") as work:
        server = start_server(Path(work) / "data", workers=1, threads=8, env=env)
        try:
            for spec in STUDIES:
                store(server.url, relabelled(*spec))
            for name in TUTORIAL_FILES:  # one study, two series
                store(server.url, Path(sample(name)).read_bytes())
            study_path = f"/browse/studies/{STUDY_UID}"
            listed, series = check_thumbnails(server.url, "/"), check_thumbnails(server.url, study_path)
            if listed != len(STUDIES) + 1 or series != 2:
                raise SystemExit(f"expected {len(STUDIES) + 1} studies and 2 series, the pages show {listed} and {series}")
            study_out = args.out.with_name(args.out.stem + "-study" + args.out.suffix)
            screenshot(browser, server.url + "/", args.out, Path(work) / "profile")
            screenshot(browser, server.url + study_path, study_out, Path(work) / "profile")
        finally:
            stop_server(server)
    print(f"study list: {args.out}\nstudy page: {study_out}")


if __name__ == "__main__":
    main()
