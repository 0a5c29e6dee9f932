"""`dicomserver import`: a folder tree into the archive the DICOMWEB_* variables name,
through STOW's own pipeline, in worker processes."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cli_fixtures import archive_env, make_tree
from click.testing import CliRunner
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings, close_app, create_app
from dicomserver.archive import open_archive
from dicomserver.cli import main
from dicomserver.importer import FAILED, NOT_DICOM, PRESENT, STORED, ArchiveImport, SourceFile, find_files
from dicomserver.ingest import INVALID_DATASET

DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


def run(env: dict[str, str], *args: str):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def counts(output: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(stored|already present|failed|not DICOM): (\d+)", output, re.M)}


@pytest.fixture
def local(tmp_path):
    """The tree to import and the environment of an empty archive."""
    return make_tree(tmp_path / "src"), archive_env(tmp_path / "archive"), tmp_path / "archive"


@pytest.fixture
def archive_app(local):
    """The imported archive, served by the app (opened after the import ran)."""
    _tree, env, _folder = local
    apps = []

    def open_app():
        app = create_app(Settings.from_env(env))
        apps.append(app)
        return app

    yield open_app
    for app in apps:
        close_app(app)


def test_import_stores_a_tree_and_reports_each_kind_of_file(local, archive_app):
    tree, env, _folder = local
    result = run(env, "import", str(tree.root), "--jobs", "2")

    assert result.exit_code == 1, result.output  # the cut-short instance failed
    assert counts(result.output) == {"stored": 4, "already present": 1, "failed": 1, "not DICOM": 2}
    assert f"  {tree.truncated}: 43264 (0xA900): Pixel Data (7FE0,0010) has a value length of 512 bytes" in result.output
    assert f"  {tree.not_dicom}: not a DICOM Part 10 file" in result.output
    assert f"  {tree.dicomdir}: a DICOMDIR" in result.output
    assert re.search(r"^8 files, [\d.]+ MB in [\d.]+ s: [\d.,]+ files/s, [\d.,]+ MB/s$", result.output, re.M)

    client = archive_app().test_client()
    for path, ds in tree.instances.items():
        url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        response = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert response.status_code == 200, url
        assert response.data == path.read_bytes()  # byte-identical to the file
    feed = client.get("/v2/changefeed?limit=100").json
    assert len(feed) == 4  # the duplicate stored nothing, not even a version


def test_a_file_is_refused_as_stow_refuses_it(local, archive_app):
    """The same failure reason and comment as STOW of the same bytes."""
    tree, env, _folder = local
    result = run(env, "import", str(tree.truncated))
    assert result.exit_code == 1
    answer = archive_app().test_client().post("/v2/studies", data=tree.truncated.read_bytes(), headers=DICOM)
    assert answer.status_code == 409
    (item,) = answer.json["00081198"]["Value"]
    assert item["00081197"]["Value"] == [INVALID_DATASET]
    (comment,) = [c["00000902"]["Value"][0] for c in item["00741048"]["Value"]]
    assert f"  {tree.truncated}: {INVALID_DATASET} (0xA900): {comment}\n" in result.output


def test_rerunning_skips_what_is_stored(local, archive_app):
    tree, env, folder = local
    first = run(env, "import", str(tree.root))
    assert counts(first.output)["stored"] == 4
    blobs = sorted(p for p in (folder / "blobs").rglob("*.dcm"))

    again = run(env, "import", str(tree.root), "--jobs", "1")  # threads of this process, no workers
    assert counts(again.output) == {"stored": 0, "already present": 5, "failed": 1, "not DICOM": 2}
    assert sorted(p for p in (folder / "blobs").rglob("*.dcm")) == blobs
    assert len(archive_app().test_client().get("/v2/changefeed?limit=100").json) == 4


def test_a_stored_instance_is_skipped_by_its_header_alone(local):
    """Re-running reads each stored file's first elements, not its Pixel Data: a stored
    instance whose file was cut short since is still 'already present', not refused."""
    tree, env, _folder = local
    path, ds = next(iter(tree.instances.items()))
    assert run(env, "import", str(path)).exit_code == 0
    path.write_bytes(path.read_bytes()[:-10])
    archive = open_archive(Settings.from_env(env))
    try:
        importer = ArchiveImport(archive)
        assert importer(SourceFile(str(path), path.stat().st_size)).outcome == PRESENT
        fresh = tree.root / "fresh.dcm"
        fresh.write_bytes(to_bytes(make_instance(study=ds.StudyInstanceUID))[:-10])
        refused = importer(SourceFile(str(fresh), fresh.stat().st_size))
        assert (refused.outcome, refused.reason) == (FAILED, INVALID_DATASET)
    finally:
        archive.close()


def test_import_without_failures_exits_0_and_not_dicom_is_not_fatal(local):
    tree, env, _folder = local
    tree.truncated.unlink()
    result = run(env, "import", str(tree.root / "a"), str(tree.not_dicom), str(tree.root / "b"))
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"stored": 4, "already present": 0, "failed": 0, "not DICOM": 1}


def test_outcomes_of_single_files(local):
    tree, env, _folder = local
    archive = open_archive(Settings.from_env(env))
    try:
        importer = ArchiveImport(archive)
        outcomes = {p: importer(s) for p, s in ((s.path, s) for s in find_files([str(tree.root)]))}
    finally:
        archive.close()
    assert {Path(p): r.outcome for p, r in outcomes.items()} == {
        **dict.fromkeys(tree.instances, STORED),
        tree.duplicate: PRESENT,
        tree.truncated: FAILED,
        tree.not_dicom: NOT_DICOM,
        tree.dicomdir: NOT_DICOM,
    }
    for path, ds in tree.instances.items():
        assert outcomes[str(path)].sop_instance_uid == ds.SOPInstanceUID


def test_find_files_walks_folders_in_order_and_keeps_each_file_once(tmp_path):
    tree = make_tree(tmp_path / "src")
    named = [str(tree.root / "b"), str(tree.root), str(tree.not_dicom)]
    found = [Path(s.path) for s in find_files(named)]
    assert len(found) == len(set(found)) == 8
    assert found[:3] == [tree.truncated, tree.not_dicom, tree.root / "b/deep/er/1.dcm"]  # b/ first, files first
    assert all(s.size == Path(s.path).stat().st_size for s in find_files(named))


def test_implicit_vr_instances_are_stored_with_their_warning(tmp_path):
    from pydicom.uid import ImplicitVRLittleEndian

    path = tmp_path / "implicit.dcm"
    path.write_bytes(to_bytes(make_instance(transfer_syntax=ImplicitVRLittleEndian)))
    result = run(archive_env(tmp_path / "archive"), "import", str(path))
    assert result.exit_code == 0, result.output
    assert "stored: 1 (1 with warnings)" in result.output


def test_flask_dicom_import_uses_the_apps_archive(local, tmp_path):
    tree, _env, _folder = local
    settings = Settings(blobstore_url=str(tmp_path / "app-blobs"), database_url=f"sqlite:///{tmp_path / 'app.db'}")
    app = create_app(settings)
    try:
        result = app.test_cli_runner().invoke(args=["dicom", "import", str(tree.root / "a")])
        assert result.exit_code == 0, result.output
        assert counts(result.output)["stored"] == 3
        study = next(iter(tree.instances.values())).StudyInstanceUID
        studies = app.test_client().get("/v2/studies").json
        assert [s["0020000D"]["Value"][0] for s in studies] == [study]
    finally:
        close_app(app)


def test_a_bad_variable_is_named_without_a_traceback(tmp_path):
    env = {**archive_env(tmp_path), "DICOMWEB_DATABASE_URL": "mysql://nowhere/db"}
    result = CliRunner().invoke(main, ["import", str(tmp_path)], env=env)
    assert result.exit_code == 1
    assert "DICOMWEB_DATABASE_URL='mysql://nowhere/db' is invalid" in result.output
    assert "Traceback" not in result.output


def test_token_needs_url(tmp_path):
    result = CliRunner().invoke(main, ["import", str(tmp_path), "--token", "t"], env=archive_env(tmp_path))
    assert result.exit_code == 2 and "--token is for --url" in result.output


def test_progress_bar_shows_files_and_megabytes_per_second(tmp_path):
    (tmp_path / "one.dcm").write_bytes(to_bytes(make_instance()))
    result = CliRunner().invoke(main, ["import", str(tmp_path / "one.dcm"), "--progress"], env=archive_env(tmp_path / "x"))
    assert result.exit_code == 0, result.output
    assert re.search(r"1/1 \[[^\]]* files/s, [\d.]+ MB/s\]", result.stderr)


def test_import_of_a_copied_tree_counts_every_copy_as_present(local, tmp_path):
    tree, env, _folder = local
    copy = tmp_path / "copy"
    shutil.copytree(tree.root / "a", copy)
    run(env, "import", str(tree.root / "a"))
    result = run(env, "import", str(copy), "--jobs", "3")
    assert result.exit_code == 0
    assert counts(result.output) == {"stored": 0, "already present": 3, "failed": 0, "not DICOM": 0}


def test_copies_imported_at_once_store_one_instance(tmp_path):
    """Threads racing on copies of one instance: whichever indexes it first stores it; the
    others find it at their header check or are refused by the index (45070): present."""
    data = to_bytes(make_instance(rows=64, columns=64))
    for number in range(12):
        (tmp_path / "copies" / str(number)).mkdir(parents=True)
        (tmp_path / "copies" / str(number) / "same.dcm").write_bytes(data)
    env = archive_env(tmp_path / "archive")
    result = run(env, "import", str(tmp_path / "copies"), "--jobs", "8")
    assert result.exit_code == 0, result.output
    assert counts(result.output) == {"stored": 1, "already present": 11, "failed": 0, "not DICOM": 0}
    assert len(list((tmp_path / "archive" / "blobs").rglob("*.dcm"))) == 1  # the losers' blobs are gone
