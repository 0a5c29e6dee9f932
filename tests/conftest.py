"""Shared fixtures: an app on a temporary store and index, its test client, sample files."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicomserver import Settings, create_app

from dicom_samples import STUDY_UID, sample
from pg_fixtures import postgres, truncate_all  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Every test that uses the app runs on SQLite and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    server = request.getfixturevalue("postgres")
    url = server.url()
    truncate_all(url)
    return url


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(blobstore_url=str(tmp_path / "blobs"), database_url=database_url)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["dicomserver"].index.shutdown()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store_file(client):
    """POST one file as application/dicom; return the response."""

    def post(path: Path | str, *, url: str = "/v2/studies", method: str = "POST"):
        data = Path(path).read_bytes()
        return client.open(
            url,
            method=method,
            data=data,
            headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json"},
        )

    return post


@pytest.fixture
def tutorial_study(store_file):
    """The tutorials' three instances, stored."""
    for name in ("blue-circle.dcm", "red-triangle.dcm", "green-square.dcm"):
        assert store_file(sample(name)).status_code == 200
    return STUDY_UID
