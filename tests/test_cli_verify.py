"""`dicomserver verify`: index rows against blobs (existence, size, SHA-256, UIDs) and blobs
against rows; and the maintenance commands run outside Flask, on the DICOMWEB_* variables."""
from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import pytest
from cli_fixtures import archive_env, make_tree
from click.testing import CliRunner

from dicomserver import Settings, close_app, create_app
from dicomserver.archive import open_archive
from dicomserver.cli import main
from dicomserver.ingest import blob_key


def run(env: dict[str, str], *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def imported(tmp_path):
    """An archive with the tree's four instances, and their rows (UIDs → blob file)."""
    tree = make_tree(tmp_path / "src")
    env = archive_env(tmp_path / "archive")
    assert run(env, "import", *(str(p) for p in tree.instances)).exit_code == 0
    archive = open_archive(Settings.from_env(env))
    rows = archive.index.stored_blobs()
    archive.close()
    blobs = tmp_path / "archive" / "blobs"
    return env, {row.sop_instance_uid: (row, blobs / row.blob_key) for row in rows}, blobs


def test_a_consistent_archive_passes(imported):
    env, _rows, _blobs = imported
    for args in (["verify"], ["verify", "--hashes"]):
        result = run(env, *args)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("verify: 4 index rows, 4 blobs; checked ")
        assert result.output.endswith("verify: index and blobs agree\n")


def test_verify_reports_missing_changed_and_orphan_blobs(imported):
    env, rows, blobs = imported
    (missing, missing_file), (resized, resized_file), (altered, altered_file), _ = rows.values()
    missing_file.unlink()
    resized_file.write_bytes(resized_file.read_bytes() + b"\0\0")
    data = bytearray(altered_file.read_bytes())
    data[-1] ^= 0xFF  # the same size: only the hash tells
    altered_file.write_bytes(bytes(data))
    orphan = blob_key("1.9", "1.9.1", "1.9.1.1", now=time.time() - 7200)
    (blobs / orphan).parent.mkdir(parents=True)
    (blobs / orphan).write_bytes(b"left by a crash")
    young = blob_key("1.9", "1.9.1", "1.9.1.2")
    (blobs / young).write_bytes(b"a STOW waiting for its index row")

    quick = run(env, "verify")
    assert quick.exit_code == 1
    where = f"{missing.study_instance_uid}/{missing.series_instance_uid}/{missing.sop_instance_uid} -> {missing.blob_key}"
    assert f"missing blob: {where}: the index row's blob is not in the store" in quick.output
    assert f"size mismatch: {resized.study_instance_uid}/" in quick.output
    assert f"the index recorded {resized.size} bytes, the blob has {resized.size + 2}" in quick.output
    assert f"orphan blob: {orphan}: no index row points to it" in quick.output
    assert young not in quick.output and "left alone: 1 blob(s) younger than the grace period" in quick.output
    assert altered.blob_key not in quick.output  # its size is right
    assert quick.output.endswith("verify: 3 problem(s)\n")

    full = run(env, "verify", "--hashes", "--grace", "0s")
    assert full.exit_code == 1
    assert f"hash mismatch: {altered.study_instance_uid}/{altered.series_instance_uid}/{altered.sop_instance_uid}" in full.output
    assert f"the index recorded {altered.sha256}" in full.output
    assert f"orphan blob: {young}" in full.output
    assert full.output.endswith("verify: 5 problem(s)\n")


def test_verify_finds_a_blob_swapped_for_another_instances_by_its_uids(imported, tmp_path):
    """Rows stored before the index kept hashes are checked by size and the header's UIDs."""
    env, rows, _blobs = imported
    (first, first_file), (second, second_file), *_ = rows.values()
    first_file.write_bytes(second_file.read_bytes())
    with sqlite3.connect(tmp_path / "archive" / "index.db") as db:
        db.execute('UPDATE "instance" SET "sha256" = NULL, "size" = ? WHERE "sop_instance_uid" = ?',
                   (second_file.stat().st_size, first.sop_instance_uid))
    db.close()
    result = run(env, "verify", "--hashes")
    assert result.exit_code == 1
    assert (f"UID mismatch: {first.study_instance_uid}/{first.series_instance_uid}/{first.sop_instance_uid} -> "
            f"{first.blob_key}: the blob's header names "
            f"{second.study_instance_uid}/{second.series_instance_uid}/{second.sop_instance_uid}") in result.output
    assert "1 rows have no recorded SHA-256" in result.output
    assert result.output.endswith("verify: 1 problem(s)\n")


def test_flask_dicom_verify_checks_the_apps_archive(tmp_path):
    app = create_app(Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}"))
    try:
        store = app.extensions["dicomserver"].store
        store.put(blob_key("1.9", "1.9.1", "1.9.1.1", now=time.time() - 7200), io.BytesIO(b"orphan"))
        result = app.test_cli_runner().invoke(args=["dicom", "verify"])
        assert result.exit_code == 1
        assert "verify: 0 index rows, 1 blobs" in result.output and "orphan blob: 1.9/1.9.1/1.9.1.1_" in result.output
    finally:
        close_app(app)


# -- the maintenance commands on the environment's archive --------------------------------


def test_gc_on_the_environments_archive(imported):
    env, rows, blobs = imported
    (lost, lost_file), *_ = rows.values()
    lost_file.unlink()
    orphan = blob_key("1.9", "1.9.1", "1.9.1.1", now=time.time() - 7200)
    (blobs / orphan).parent.mkdir(parents=True)
    (blobs / orphan).write_bytes(b"orphan")
    result = run(env, "gc", "--grace", "0s")
    assert result.exit_code == 0, result.output
    assert f"orphan blob: {orphan} (removing)" in result.output
    assert f"index row without blob: {lost.study_instance_uid}/" in result.output
    assert not (blobs / orphan).exists()
    assert run(env, "verify").output.endswith("verify: index and blobs agree\n")


def test_backfill_qido_on_the_environments_archive(imported, tmp_path):
    env, _rows, _blobs = imported
    with sqlite3.connect(tmp_path / "archive" / "index.db") as db:
        db.execute('UPDATE "instance_metadata" SET "qido" = NULL')
    db.close()
    result = run(env, "backfill-qido", "--batch", "3")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "3 instances done", "4 instances done", "backfill-qido: 4 instances filled; every instance has its QIDO members"
    ]


def test_create_api_key_on_the_environments_settings(tmp_path):
    keys = tmp_path / "keys.json"
    env = {**archive_env(tmp_path), "DICOMWEB_AUTH_TOKENS_FILE": str(keys)}
    result = run(env, "create-api-key", "--name", "importer", "--role", "globalWriter")
    assert result.exit_code == 0, result.output
    key = result.output.splitlines()[-1]
    assert key.startswith("dcm_")
    (entry,) = json.loads(keys.read_text())["keys"]
    assert entry["name"] == "importer" and entry["roles"] == ["globalWriter"]
    unknown = CliRunner().invoke(main, ["create-api-key", "--name", "x", "--role", "nobody"], env=env)
    assert unknown.exit_code == 2 and "grant no action" in unknown.output
    assert not Path(tmp_path / "blobs").exists()  # a key needs no archive


def test_verify_on_each_store_and_index(app, client):
    """Local disk + SQLite, and S3 + PostgreSQL (the conftest pairs)."""
    from dicom_factory import make_instance, to_bytes

    ds = make_instance()
    headers = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
    assert client.post("/v2/studies", data=to_bytes(ds), headers=headers).status_code == 200
    runner = app.test_cli_runner()
    agreed = runner.invoke(args=["dicom", "verify", "--hashes"])
    assert agreed.exit_code == 0 and agreed.output.endswith("verify: index and blobs agree\n"), agreed.output
    state = app.extensions["dicomserver"]
    state.index.connect()
    (row,) = state.index.stored_blobs()
    state.store.delete(row.blob_key)
    missing = runner.invoke(args=["dicom", "verify", "--hashes"])
    assert missing.exit_code == 1
    assert f"missing blob: {ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}" in missing.output
