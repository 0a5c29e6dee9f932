"""Configuration from the environment: defaults, parsing, and start-up errors naming the variable."""
from __future__ import annotations

import pytest

from dicomserver import ConfigError, Settings, create_app


def test_defaults():
    settings = Settings.from_env({})
    assert settings.blobstore_url == "./data/blobs"
    assert settings.database_url == "sqlite:///./data/index.db"
    assert settings.public_url is None


def test_values_are_read():
    settings = Settings.from_env(
        {
            "DICOMWEB_BLOBSTORE_URL": "file:///srv/blobs",
            "DICOMWEB_DATABASE_URL": "sqlite:////srv/index.db",
            "DICOMWEB_PUBLIC_URL": "https://pacs.example.org/dicomweb/",
            "DICOMWEB_QIDO_MAX_LIMIT": "500",
        }
    )
    assert settings.blobstore_url == "file:///srv/blobs"
    assert settings.public_url == "https://pacs.example.org/dicomweb"
    assert settings.qido_max_limit == 500


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"DICOMWEB_DATABASE_URL": "mysql://x"}, "DICOMWEB_DATABASE_URL"),
        ({"DICOMWEB_DATABASE_URL": "sqlite://relative.db"}, "DICOMWEB_DATABASE_URL"),
        ({"DICOMWEB_PUBLIC_URL": "pacs.example.org"}, "DICOMWEB_PUBLIC_URL"),
        ({"DICOMWEB_QIDO_MAX_LIMIT": "lots"}, "DICOMWEB_QIDO_MAX_LIMIT"),
        ({"DICOMWEB_MAX_INSTANCE_BYTES": "-1"}, "DICOMWEB_MAX_INSTANCE_BYTES"),
        ({"DICOMWEB_QIDO_DEFAULT_LIMIT": "50", "DICOMWEB_QIDO_MAX_LIMIT": "10"}, "DICOMWEB_QIDO_DEFAULT_LIMIT"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


@pytest.mark.parametrize("url", ["s3:///no-bucket", "ftp://host/x", "file://relative/path"])
def test_bad_blobstore_url_stops_startup(tmp_path, url):
    with pytest.raises(ConfigError, match="DICOMWEB_BLOBSTORE_URL"):
        create_app(Settings(blobstore_url=url, database_url=f"sqlite:///{tmp_path / 'i.db'}"))


def test_unusable_database_stops_startup(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="DICOMWEB_DATABASE_URL"):
        create_app(Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'file' / 'i.db'}"))


def test_public_url_used_for_retrieve_urls(tmp_path):
    from dicom_factory import make_instance, to_bytes

    app = create_app(
        Settings(
            blobstore_url=f"file://{tmp_path / 'b'}",
            database_url=f"sqlite:///{tmp_path / 'i.db'}",
            public_url="https://pacs.example.org/dicomweb",
        )
    )
    ds = make_instance()
    response = app.test_client().post("/v1/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    url = response.json["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith("https://pacs.example.org/dicomweb/v1/studies/")


def test_health_endpoints(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"index": "ok", "blobstore": "ok"}


def test_the_index_runs_on_the_configured_database(app, client, database_url):
    """Guards the fixture: the postgresql variant really writes to PostgreSQL (and S3)."""
    from dicom_factory import make_instance, to_bytes

    index = app.extensions["dicomserver"].index
    assert index.is_sqlite == database_url.startswith("sqlite")
    # ... and the scale-out variant keeps its blobs in S3 (moto), the other on local disk
    assert app.extensions["dicomserver"].store.scheme == ("file" if index.is_sqlite else "s3")
    ds = make_instance()
    assert client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"}).status_code == 200
    if database_url.startswith("postgresql"):
        import psycopg2

        with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT sop_instance_uid FROM instance")
            assert cursor.fetchall() == [(ds.SOPInstanceUID,)]
