"""Schema creation and migration of the index (a database from an older release opens)."""
from __future__ import annotations

import json
import sqlite3

import pytest
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings, close_app, create_app
from dicomserver.index.schema import SCHEMA_VERSION


def _app(tmp_path):
    # No operations thread: a test runs the operations it starts itself (run_pending), and a
    # runner of its own could claim one first.
    return create_app(Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}",
                               operations_runner=False))


def undo_schema_12(db: sqlite3.Connection) -> None:
    """Make a current database what schema 11 had: no partition table and no partition keys,
    each UID unique on its own."""
    db.execute("DROP TABLE partition")
    for table, uid in (("study", "study_instance_uid"), ("series", "series_instance_uid"),
                       ("instance", "sop_instance_uid")):
        db.execute(f'DROP INDEX "{table}_{uid}_partition_key"')
        db.execute(f"ALTER TABLE {table} DROP COLUMN partition_key")
        db.execute(f'CREATE UNIQUE INDEX "{table}_{uid}" ON "{table}" ("{uid}")')
    db.execute("ALTER TABLE change DROP COLUMN partition_key")
    db.execute("ALTER TABLE audit_event DROP COLUMN partition")


def test_new_database_gets_current_version(tmp_path):
    _app(tmp_path).extensions["dicomserver"].index.close()
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]


def test_version_1_database_is_migrated_and_rederived(tmp_path):
    app = _app(tmp_path)
    ds = make_instance(PatientName="Doe^John", RequestAttributesSequence=[])
    app.test_client().post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    close_app(app)  # its audit record is stored before the tables change
    # Turn it into what release 1 created: no schema_info, no fuzzy/SOP-class/bulk data columns,
    # the DICOM JSON inside the instance rows.
    with sqlite3.connect(tmp_path / "i.db") as db:
        undo_schema_12(db)
        db.execute("DROP TABLE schema_info")
        db.execute("DROP TABLE request_attribute")
        for column in ("patient_name_words", "referring_physician_name_words", "sop_classes_in_study"):
            db.execute(f"ALTER TABLE study DROP COLUMN {column}")
        db.execute("ALTER TABLE instance DROP COLUMN bulkdata")
        db.execute("ALTER TABLE instance ADD COLUMN metadata TEXT")
        db.execute("UPDATE instance SET metadata = (SELECT metadata FROM instance_metadata WHERE instance_id = instance.id)")
        db.execute("DROP TABLE instance_metadata")
        db.execute("DROP TABLE audit_event")

    migrated = _app(tmp_path)
    client = migrated.test_client()
    response = client.get("/v2/studies?PatientName=jo&fuzzymatching=true&includefield=SOPClassesInStudy")
    assert response.status_code == 200
    (study,) = response.json
    assert study["00080062"]["Value"] == [ds.SOPClassUID]
    (meta,) = client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata").json
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    close_app(migrated)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("SELECT count(*) FROM audit_event").fetchone()[0] == 2  # created again, then written


def test_newer_schema_is_refused(tmp_path):
    import pytest

    from dicomserver import ConfigError

    _app(tmp_path).extensions["dicomserver"].index.close()
    with sqlite3.connect(tmp_path / "i.db") as db:
        db.execute("UPDATE schema_info SET version = 99")
    with pytest.raises(ConfigError, match="newer than this server"):
        _app(tmp_path)


def test_version_4_database_is_answered_then_backfilled(tmp_path):
    app = _app(tmp_path)
    client = app.test_client()
    for number in range(3):
        ds = make_instance(PatientName="Doe^Jane", PatientID="P-4", InstanceNumber=number + 1)
        client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    expected = client.get("/v2/instances?PatientID=P-4").json
    assert len(expected) == 3
    app.extensions["dicomserver"].index.close()
    with sqlite3.connect(tmp_path / "i.db") as db:
        undo_schema_12(db)
        db.execute("ALTER TABLE instance_metadata DROP COLUMN qido")
        db.execute("UPDATE schema_info SET version = 4")

    app = _app(tmp_path)  # migrates: the column only, no start-up backfill
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT COUNT(*) FROM instance_metadata WHERE qido IS NULL").fetchone() == (3,)
    assert app.test_client().get("/v2/instances?PatientID=P-4").json == expected  # from the full JSON

    result = app.test_cli_runner().invoke(args=["dicom", "backfill-qido", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "2 instances done" in result.output and "3 instances filled" in result.output
    with sqlite3.connect(tmp_path / "i.db") as db:
        members = [row[0] for row in db.execute("SELECT qido FROM instance_metadata")]
    assert all('"00100020":{"vr":"LO","Value":["P-4"]}' in m.split("\n") for m in members)
    assert app.test_client().get("/v2/instances?PatientID=P-4").json == expected


def test_qido_members_fingerprint_matches_the_schema():
    """Stored `qido` members were built from QIDO_TAGS: changing the set needs a migration."""
    import hashlib

    from dicomserver.index.query import QIDO_TAGS
    from dicomserver.index.schema import QIDO_TAGS_FINGERPRINT

    fingerprint = hashlib.sha256(",".join(sorted(QIDO_TAGS)).encode()).hexdigest()[:16]
    assert fingerprint == QIDO_TAGS_FINGERPRINT, (
        "query.QIDO_TAGS changed: add a schema migration that sets instance_metadata.qido to NULL "
        "(backfill-qido rebuilds it) and set schema.QIDO_TAGS_FINGERPRINT to " + fingerprint
    )


def test_rows_without_qido_members_are_answered_from_the_full_json(tmp_path):
    app = _app(tmp_path)
    client = app.test_client()
    ds = make_instance(PatientID="P-5")
    client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    expected = client.get("/v2/series?PatientID=P-5").json
    app.extensions["dicomserver"].index.close()
    with sqlite3.connect(tmp_path / "i.db") as db:
        db.execute("UPDATE instance_metadata SET qido = NULL")
    assert _app(tmp_path).test_client().get("/v2/series?PatientID=P-5").json == expected


def test_version_8_database_gains_operations_and_extended_query_tags(tmp_path):
    app = _app(tmp_path)
    ds = make_instance(PatientWeight="61")
    app.test_client().post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    close_app(app)
    with sqlite3.connect(tmp_path / "i.db") as db:
        undo_schema_12(db)
        for table in ("extended_query_tag_error", "extended_query_tag_value", "extended_query_tag", "operation"):
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE schema_info SET version = 8")

    from dicomserver.operations import default_handlers, run_pending

    migrated = _app(tmp_path)
    client = migrated.test_client()
    added = client.post("/v2/extendedquerytags", json=[{"path": "PatientWeight", "level": "Study"}])
    assert added.status_code == 202
    archive = migrated.extensions["dicomserver"]
    archive.index.connect()
    run_pending(archive.index, archive.settings, default_handlers())
    assert client.get(added.json["href"]).json["status"] == "succeeded"
    assert len(client.get("/v2/studies?PatientWeight=61").json) == 1
    close_app(migrated)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]


def test_version_9_database_loses_the_indexes_no_query_uses(tmp_path):
    """Schema 10 drops change.sop_instance_uid's and instance.watermark's indexes (each STOW
    wrote to them, no query read them); what was stored is served as before."""
    from dicomserver.index.schema import UNUSED_INDEXES

    app = _app(tmp_path)
    ds = make_instance()
    app.test_client().post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    close_app(app)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert not {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")} & set(
            UNUSED_INDEXES
        )  # a new database never has them
        db.execute('CREATE INDEX "change_sop_instance_uid" ON "change" ("sop_instance_uid")')
        db.execute('CREATE INDEX "instance_watermark" ON "instance" ("watermark")')
        undo_schema_12(db)
        db.execute("UPDATE schema_info SET version = 9")
    migrated = _app(tmp_path)
    client = migrated.test_client()
    assert client.get(f"/v2/studies/{ds.StudyInstanceUID}/metadata").status_code == 200
    assert client.get("/v2/changefeed").status_code == 200
    close_app(migrated)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
        names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert not names & set(UNUSED_INDEXES)


def test_version_10_database_gains_the_original_version_columns_of_bulk_update(tmp_path):
    """Schema 11 adds where an updated instance keeps its original version (blob, size, SHA-256,
    DICOM JSON); instances stored before were never updated, so every one is NULL and what was
    stored is served as before, its original being itself."""
    app = _app(tmp_path)
    ds = make_instance()
    app.test_client().post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    close_app(app)
    with sqlite3.connect(tmp_path / "i.db") as db:
        for table, column in (("instance", "original_blob_key"), ("instance", "original_size"),
                              ("instance", "original_sha256"), ("instance_metadata", "original_metadata")):
            db.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
        undo_schema_12(db)
        db.execute("UPDATE schema_info SET version = 10")
    migrated = _app(tmp_path)
    client = migrated.test_client()
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    original = {"Accept": "application/dicom; transfer-syntax=*", "msdicom-request-original": "true"}
    assert client.get(url, headers=original).data == to_bytes(ds)
    assert client.get(f"{url}/metadata", headers={"msdicom-request-original": "true"}).status_code == 200
    close_app(migrated)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute('SELECT "original_blob_key", "original_size", "original_sha256" FROM "instance"').fetchall() \
            == [(None, None, None)]
        assert db.execute('SELECT "original_metadata" FROM "instance_metadata"').fetchall() == [(None,)]


@pytest.fixture
def index_connection(settings):
    """connect() → a DB-API connection to the settings' index (SQLite or PostgreSQL), committed on exit."""
    import contextlib

    @contextlib.contextmanager
    def connect():
        if settings.database_url.startswith("sqlite"):
            db = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"))
        else:
            import psycopg2

            db = psycopg2.connect(settings.database_url)
        try:
            yield db, db.cursor()
            db.commit()
        finally:
            db.close()

    return connect


def test_version_11_database_keeps_its_data_in_the_default_partition(settings, index_connection):
    """Schema 12 (data partitions): what a version-11 database holds is in Microsoft.Default, served
    there with partitions on; the same UIDs may then be stored in another partition. On SQLite and
    PostgreSQL (the unique UID indexes are replaced on both)."""
    import dataclasses

    app = create_app(dataclasses.replace(settings, operations_runner=False))
    ds = make_instance(PatientName="Old^Data")
    app.test_client().post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
    close_app(app)
    with index_connection() as (_db, cursor):
        for statement in SCHEMA_11_STATEMENTS:
            cursor.execute(statement)
    migrated = create_app(dataclasses.replace(settings, operations_runner=False, partitions=True))
    client = migrated.test_client()
    try:
        meta = client.get(f"/v2/partitions/Microsoft.Default/studies/{ds.StudyInstanceUID}/metadata")
        assert meta.status_code == 200 and meta.json[0]["00100010"]["Value"] == [{"Alphabetic": "Old^Data"}]
        assert client.get("/v2/changefeed").json[0]["partitionName"] == "Microsoft.Default"
        assert [p["partitionName"] for p in client.get("/v2/partitions").json] == ["Microsoft.Default"]
        again = client.post("/v2/partitions/other/studies", data=to_bytes(ds),
                            headers={"Content-Type": "application/dicom"})
        assert again.status_code == 200, again.data
    finally:
        close_app(migrated)
    with index_connection() as (_db, cursor):
        cursor.execute("SELECT version FROM schema_info")
        assert cursor.fetchall() == [(SCHEMA_VERSION,)]
        cursor.execute('SELECT COUNT(*) FROM "instance" GROUP BY "partition_key" ORDER BY "partition_key"')
        assert cursor.fetchall() == [(1,), (1,)]


#: A current database made what schema 11 had (undo_schema_12, portable SQL for both databases).
SCHEMA_11_STATEMENTS = (
    'DROP TABLE "partition"',
    *(
        statement
        for table, uid in (("study", "study_instance_uid"), ("series", "series_instance_uid"),
                           ("instance", "sop_instance_uid"))
        for statement in (
            f'DROP INDEX "{table}_{uid}_partition_key"',
            f'ALTER TABLE "{table}" DROP COLUMN "partition_key"',
            f'CREATE UNIQUE INDEX "{table}_{uid}" ON "{table}" ("{uid}")',
        )
    ),
    'ALTER TABLE "change" DROP COLUMN "partition_key"',
    'ALTER TABLE "audit_event" DROP COLUMN "partition"',
    "UPDATE schema_info SET version = 11",
)


def test_version_13_database_gets_the_worklist_tables(tmp_path):
    """Schema 14 (UPS-RS): workitems, their subscriptions and event reports, all empty."""
    from test_workitems import HEADERS, UID, workitem

    close_app(_app(tmp_path))
    with sqlite3.connect(tmp_path / "i.db") as db:
        for table in ("workitem", "ups_subscription", "ups_event"):
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE schema_info SET version = 13")
    migrated = _app(tmp_path)
    client = migrated.test_client()
    assert client.post("/v2/workitems", data=json.dumps([workitem()]), headers=HEADERS).status_code == 201
    assert client.post(f"/v2/workitems/{UID}/subscribers/WATCHER").status_code == 201
    close_app(migrated)
    with sqlite3.connect(tmp_path / "i.db") as db:
        assert db.execute("SELECT version FROM schema_info").fetchall() == [(SCHEMA_VERSION,)]
        assert db.execute("SELECT count(*) FROM ups_event").fetchone()[0] == 1
