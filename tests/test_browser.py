"""The study browser at / and /browse/studies/<study>, through the Flask test client.

Pages are read with html.parser (the table's cells, the links, the images), so the tests
see what a person sees, not the template's source.
"""
from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from auth_fixtures import bearer
from dicom_factory import make_instance, to_bytes

from dicomserver import ConfigError, Settings
from dicomserver.browse import PAGE_SIZE, display_date, person_name

STUDY_A, STUDY_B, STUDY_C = "1.2.3.1", "1.2.3.2", "1.2.3.3"
STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
#: What Chromium sends for an <img>.
IMAGE_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


class Page(HTMLParser):
    """The parts of a page the tests look at: body rows' cells, links, images, all text."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.images: list[dict[str, str | None]] = []
        self.items: list[str] = []  # the text of each <li>
        self.text_parts: list[str] = []
        self._cell: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None
        self._item: list[str] | None = None
        self._in_body = False
        self.feed(html)
        self.text = " ".join(" ".join(self.text_parts).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "a":
            self._link = (dict(attrs).get("href") or "", [])
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "li":
            self._item = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "a" and self._link is not None:
            self.links.append((self._link[0], " ".join("".join(self._link[1]).split())))
            self._link = None
        elif tag == "li" and self._item is not None:
            self.items.append(" ".join("".join(self._item).split()))
            self._item = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        for collector in (self._cell, self._link[1] if self._link else None, self._item):
            if collector is not None:
                collector.append(data)

    def link(self, text: str) -> str | None:
        return next((href for href, label in self.links if label == text), None)


def stow(client, **spec) -> None:
    response = client.post("/v2/studies", data=to_bytes(make_instance(**spec)), headers=STOW)
    assert response.status_code == 200, response.data


def page(client, url: str = "/", status: int = 200, **kwargs) -> Page:
    response = client.get(url, **kwargs)
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "text/html"
    return Page(response.data.decode())


def cells(found: Page) -> list[list[str]]:
    """The rows without their thumbnail cell."""
    return [row[1:] for row in found.rows]


def patient_ids(found: Page) -> list[str]:
    return [row[2] for row in found.rows]


@pytest.fixture
def archive(client):
    """Three studies with distinct patients, dates, modalities and descriptions; A has two series."""
    study_a = dict(study=STUDY_A, PatientName="Doe^John", PatientID="P1", StudyDate="20240105",
                   StudyDescription="Chest CT")
    stow(client, **study_a, series="1.2.3.1.1", Modality="CT", SeriesNumber=1, SeriesDescription="Axial")
    stow(client, **study_a, series="1.2.3.1.2", Modality="MR", SeriesNumber=2, SeriesDescription="T1")
    stow(client, **study_a, series="1.2.3.1.2", Modality="MR", SeriesNumber=2, SeriesDescription="T1", InstanceNumber=2)
    stow(client, study=STUDY_B, series="1.2.3.2.1", PatientName="Müller^Jürgen", PatientID="P2",
         StudyDate="20240210", Modality="CT", StudyDescription="Head")
    stow(client, study=STUDY_C, series="1.2.3.3.1", PatientName="Smith^Anna^Maria^Dr^PhD", PatientID="P3",
         StudyDate="20231231", Modality="US", StudyDescription="Abdomen")
    return client


def test_the_list_shows_each_study_with_its_patient_date_modalities_and_counts(archive):
    found = page(archive)
    assert cells(found) == [
        ["Doe, John", "P1", "2024-01-05", "CT, MR", "Chest CT", "2", "3"],
        ["Müller, Jürgen", "P2", "2024-02-10", "CT", "Head", "1", "1"],
        ["Smith, Dr Anna Maria, PhD", "P3", "2023-12-31", "US", "Abdomen", "1", "1"],
    ]
    thumbnails = [image["src"] for image in found.images]
    assert thumbnails == [f"/v2/studies/{uid}/thumbnail" for uid in (STUDY_A, STUDY_B, STUDY_C)]
    assert all(image["loading"] == "lazy" and image["width"] and image["height"] for image in found.images)
    assert found.link("Doe, John") == f"/browse/studies/{STUDY_A}"
    # The thumbnails the page points at are images, as a browser asks for them.
    image = archive.get(thumbnails[0], headers={"Accept": IMAGE_ACCEPT})
    assert image.status_code == 200 and image.mimetype.startswith("image/") and len(image.data) > 100


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"name": "smi"}, ["P3"]),  # the start of the family name
        ({"name": "joh"}, ["P1"]),  # the start of a given name
        ({"name": "jur"}, ["P2"]),  # case and accents folded, as QIDO does
        ({"name": "anna smith"}, ["P3"]),  # every word must match
        ({"name": "DOE*"}, ["P1"]),  # a wildcard over the whole name
        ({"name": "*a*"}, ["P3"]),
        ({"name": "nobody"}, []),
        ({"id": "P2"}, ["P2"]),  # IDs match exactly
        ({"id": "P"}, []),
        ({"id": "P*"}, ["P1", "P2", "P3"]),
        ({"from": "2024-01-01"}, ["P1", "P2"]),
        ({"to": "2023-12-31"}, ["P3"]),
        ({"from": "2024-01-01", "to": "2024-01-31"}, ["P1"]),
        ({"from": "20240105", "to": "20240105"}, ["P1"]),  # DICOM's form too
        ({"name": "doe", "from": "2024-02-01"}, []),  # the fields combine
        ({"name": "", "id": "", "from": "", "to": ""}, ["P1", "P2", "P3"]),  # the empty form
    ],
)
def test_search_by_name_id_and_date_range(archive, query, expected):
    found = page(archive, "/", query_string=query)
    assert patient_ids(found) == expected
    if not expected:
        assert "No studies match." in found.text


def test_the_form_shows_the_search_again(archive):
    response = archive.get("/", query_string={"name": "smi", "id": "P3", "from": "20231201", "to": "2023-12-31"})
    html = response.data.decode()
    for name, value in (("name", "smi"), ("id", "P3"), ("from", "2023-12-01"), ("to", "2023-12-31")):
        assert f'name="{name}" value="{value}"' in html


def test_paging_walks_every_study_once(client):
    total = PAGE_SIZE + 2
    for n in range(total):
        stow(client, PatientName=f"Paged^Patient{n}", PatientID=f"PG{n:03d}")
    stow(client, PatientName="Other^One", PatientID="OTHER")
    first = page(client, "/", query_string={"name": "paged"})
    assert len(first.rows) == PAGE_SIZE and first.link("← Previous") is None
    assert f"Studies 1–{PAGE_SIZE} (more follow)" in first.text
    following = first.link("Next →")
    assert following is not None
    assert parse_qs(urlsplit(following).query) == {"name": ["paged"], "page": ["2"]}  # the search is kept
    second = page(client, following)
    assert len(second.rows) == 2 and second.link("Next →") is None
    assert f"Studies {PAGE_SIZE + 1}–{total}" in second.text
    assert parse_qs(urlsplit(second.link("← Previous") or "").query) == {"name": ["paged"], "page": ["1"]}
    seen = patient_ids(first) + patient_ids(second)
    assert sorted(seen) == [f"PG{n:03d}" for n in range(total)]
    beyond = page(client, "/", query_string={"name": "paged", "page": "3"})
    assert beyond.rows == [] and "No studies on this page." in beyond.text and beyond.link("← Previous")


def test_the_study_page_lists_its_series_with_thumbnails(archive):
    found = page(archive, f"/browse/studies/{STUDY_A}")
    assert found.items == ["CT · series 1 Axial 1 instance", "MR · series 2 T1 2 instances"]
    assert [image["src"] for image in found.images] == [
        f"/v2/studies/{STUDY_A}/series/1.2.3.1.1/thumbnail",
        f"/v2/studies/{STUDY_A}/series/1.2.3.1.2/thumbnail",
    ]
    assert "Doe, John · Chest CT" in found.text and "2024-01-05" in found.text and STUDY_A in found.text
    assert found.link("← All studies") == "/"
    assert found.link("Open in viewer") is None  # no DICOMWEB_VIEWER_URL
    image = archive.get(found.images[1]["src"], headers={"Accept": IMAGE_ACCEPT})
    assert image.status_code == 200 and image.mimetype.startswith("image/")


def test_series_come_in_series_number_order(client):
    for number, series in ((10, "1.2.9.10"), (None, "1.2.9.0"), (2, "1.2.9.2")):
        stow(client, study="1.2.9", series=series, SeriesNumber=number, SeriesDescription=f"S{number}")
    found = page(client, "/browse/studies/1.2.9")
    assert found.items == ["CT · series 2 S2 1 instance", "CT · series 10 S10 1 instance", "CT SNone 1 instance"]


def test_the_viewer_link_appears_only_when_a_viewer_is_configured(app_factory):
    plain = app_factory().test_client()
    stow(plain, study=STUDY_A)
    assert "StudyInstanceUIDs" not in plain.get("/").data.decode()
    assert "StudyInstanceUIDs" not in plain.get(f"/browse/studies/{STUDY_A}").data.decode()

    with_viewer = app_factory(viewer_url="https://viewer.example.org/ohif/").test_client()
    stow(with_viewer, study=STUDY_A)
    expected = f"https://viewer.example.org/ohif/viewer?StudyInstanceUIDs={STUDY_A}"
    assert page(with_viewer, f"/browse/studies/{STUDY_A}").link("Open in viewer") == expected
    assert page(with_viewer).link("Open") == expected


def test_the_viewer_url_comes_from_the_environment():
    settings = Settings.from_env({"DICOMWEB_VIEWER_URL": "https://viewer.example.org/"})
    assert settings.viewer_url == "https://viewer.example.org"
    assert Settings.from_env({}).viewer_url is None
    for bad in ("viewer.example.org", "ftp://viewer.example.org", "https://", "https://v.example.org/?a=1",
                "https://v.example.org/#x"):
        with pytest.raises(ConfigError, match="DICOMWEB_VIEWER_URL"):
            Settings.from_env({"DICOMWEB_VIEWER_URL": bad})
    with pytest.raises(ConfigError, match="DICOMWEB_VIEWER_URL"):
        Settings(viewer_url="javascript:alert(1)").validate()


def test_everything_shown_is_escaped(client):
    script = "<script>alert(1)</script>"
    stow(client, study=STUDY_A, PatientName=f"{script}^Eve", PatientID='"><img src=x onerror=1>',
         StudyDescription="<b>bold</b> & more", SeriesDescription=script)
    for url in ("/", f"/browse/studies/{STUDY_A}", "/?name=<script>x"):
        response = client.get(url)
        html = response.data.decode()
        assert "<script" not in html and "<b>bold" not in html and "<img src=x" not in html
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")  # and no script may run
        assert response.headers["Cache-Control"] == "no-store"
    found = page(client)
    assert cells(found)[0][:2] == [f"{script}, Eve", '"><img src=x onerror=1>']  # shown as text
    assert cells(found)[0][4] == "<b>bold</b> & more"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"from": "2024-13-01"}, "the 'from' date '2024-13-01' is not a date: use YYYY-MM-DD"),
        ({"to": "yesterday"}, "the 'to' date 'yesterday' is not a date"),
        ({"from": "2024-02-01", "to": "2024-01-01"}, "the date range starts after it ends: from 2024-02-01 to 2024-01-01"),
        ({"page": "two"}, "page='two' is not a whole number"),
        ({"page": "0"}, "page must be at least 1"),
        ({"page": "9" * 40}, "page must be between 1 and"),
    ],
)
def test_bad_form_values_are_a_400_page_with_the_form(archive, query, message):
    response = archive.get("/", query_string=query)
    assert response.status_code == 400 and response.mimetype == "text/html"
    found = Page(response.data.decode())
    assert message in found.text
    assert 'name="name"' in response.data.decode()  # the form, to correct it
    assert "Traceback" not in found.text and "/tmp" not in found.text and "pydicom" not in found.text


def test_an_unknown_study_is_a_404_page_and_a_malformed_uid_a_400(archive):
    missing = page(archive, "/browse/studies/1.2.3.99", status=404)
    assert "the archive has no study 1.2.3.99" in missing.text and missing.link("← All studies") == "/"
    malformed = page(archive, "/browse/studies/not-a-uid", status=400)
    assert "StudyInstanceUID 'not-a-uid' is not a valid DICOM UID" in malformed.text


def test_with_authentication_on_the_pages_need_a_reader(auth_client, identity_provider):
    admin = bearer(identity_provider.token(roles=["globalAdmin"]))
    response = auth_client.post("/v2/studies", data=to_bytes(make_instance(study=STUDY_A)), headers={**STOW, **admin})
    assert response.status_code == 200
    for url in ("/", f"/browse/studies/{STUDY_A}", "/?page=x"):
        refused = auth_client.get(url)
        assert refused.status_code == 401 and refused.mimetype == "text/html"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer ")
        assert "Authorization header" in Page(refused.data.decode()).text
        assert STUDY_A not in refused.data.decode()
    reader = bearer(identity_provider.token(roles=["globalReader"]))
    assert patient_ids(page(auth_client, "/", headers=reader)) == ["PID-1"]
    assert page(auth_client, f"/browse/studies/{STUDY_A}", headers=reader).items
    assert auth_client.get("/", headers=bearer(identity_provider.token(roles=[]))).status_code == 403


def test_a_browser_page_that_declares_no_action_stops_start_up():
    """The pages are outside /v1 and /v2, yet show patient data: the start-up check covers them."""
    from flask import Blueprint, Flask

    from dicomserver.services import _check_every_route_declares_an_action

    app = Flask(__name__)
    undeclared = Blueprint("browser", __name__)
    undeclared.add_url_rule("/open-page", "open_page", lambda: "patients")
    app.register_blueprint(undeclared)
    with pytest.raises(RuntimeError, match="route /open-page"):
        _check_every_route_declares_an_action(app)


def test_browsing_is_audited_as_a_read_without_the_search_values(app_factory, tmp_path):
    trail = tmp_path / "audit.jsonl"
    client = app_factory(audit_log=str(trail)).test_client()
    stow(client, study=STUDY_A, PatientName="Secret^Name", PatientID="MRN-12345")
    page(client, "/", query_string={"name": "secret", "id": "MRN-12345"})
    page(client, f"/browse/studies/{STUDY_A}")
    _, listed, shown = [json.loads(line) for line in trail.read_text().splitlines()]
    assert (listed["route"], listed["action"], listed["status"]) == ("/", "read", 200)
    assert (shown["route"], shown["action"], shown["study"]) == ("/browse/studies/<study>", "read", STUDY_A)
    assert "Secret" not in trail.read_text() and "MRN-12345" not in trail.read_text()


def test_person_names_and_dates_as_people_write_them():
    assert person_name({"Alphabetic": "Doe^John"}) == "Doe, John"
    assert person_name({"Alphabetic": "Doe"}) == "Doe"
    assert person_name({"Alphabetic": "^John"}) == "John"
    assert person_name({"Alphabetic": "Doe^Jane^Q^Dr^Jr"}) == "Doe, Dr Jane Q, Jr"
    assert person_name({"Ideographic": "山田^太郎"}) == "山田, 太郎"
    assert person_name(None) == "" and person_name({}) == ""
    assert display_date("20240229") == "2024-02-29"
    assert display_date("20230229") == "20230229"  # not a date: as stored
    assert display_date("") == ""
