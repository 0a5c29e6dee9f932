"""Shared fixtures: an app on a temporary store and index, its test client, sample files."""
from __future__ import annotations

from pathlib import Path

import pytest
from auth_fixtures import app_factory, auth_app, auth_client, auth_settings, identity_provider  # noqa: F401  (fixture)
from dicom_samples import STUDY_UID, sample
from pg_fixtures import postgres, truncate_all  # noqa: F401  (fixture)
from s3_fixtures import empty_bucket, moto_s3, new_bucket  # noqa: F401  (fixture)

from dicomserver import Settings, close_app, create_app
from dicomserver.operations import default_handlers, run_pending


@pytest.fixture(autouse=True)
def _no_operations_runner_outlives_its_test():
    """An app a test did not close keeps its operations thread, which would poll the next tests'
    PostgreSQL database and could take their operations: stop every runner after each test (an
    app used again starts its runner again with its next request)."""
    yield
    from dicomserver.background import stop_threads

    stop_threads()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Every test that uses the app runs twice: local disk + SQLite, and S3 + PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    server = request.getfixturevalue("postgres")
    url = server.url()
    truncate_all(url)
    return url


@pytest.fixture
def blobstore_url(request, tmp_path, database_url) -> str:
    """The scale-out pairing: PostgreSQL goes with S3 (moto's server mode over HTTP)."""
    if database_url.startswith("sqlite"):
        yield str(tmp_path / "blobs")
        return
    request.getfixturevalue("moto_s3")
    bucket = new_bucket("app")
    yield f"s3://{bucket}/archive"
    import boto3

    client = boto3.client("s3")
    try:
        empty_bucket(client, bucket, remove=True)
    finally:
        client.close()


@pytest.fixture
def settings(blobstore_url, database_url) -> Settings:
    return Settings(blobstore_url=blobstore_url, database_url=database_url)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def index(app):
    """The app's index, connected (tests of operations and of the index through the app)."""
    index = app.extensions["dicomserver"].index
    index.connect()
    yield index
    index.close()


@pytest.fixture
def run_ops(app, index):
    """Run the operations pending in the app's index now, in this thread (an app built with
    operations_runner=False has no thread that would take them first)."""
    def run(owner: str = "test-runner") -> int:
        return run_pending(index, app.extensions["dicomserver"].settings, default_handlers(), owner=owner)

    return run


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
