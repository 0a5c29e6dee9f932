"""API keys for deployments without an identity provider: created by the CLI, printed once,
stored only as hashes, honoured by role, picked up without a restart."""
from __future__ import annotations

import json
import os

import pytest
from dicom_factory import make_instance, to_bytes

from dicomserver import Settings, close_app, create_app

STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


@pytest.fixture
def keyed_app(tmp_path):
    settings = Settings(
        blobstore_url=str(tmp_path / "blobs"),
        database_url=f"sqlite:///{tmp_path / 'index.db'}",
        auth_tokens_file=str(tmp_path / "keys.json"),
    )
    app = create_app(settings)
    yield app
    close_app(app)


def create_key(app, name: str, *roles: str) -> str:
    args = ["dicom", "create-api-key", "--name", name] + [a for r in roles for a in ("--role", r)]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_stored_as_hashes_only(keyed_app, tmp_path):
    key = create_key(keyed_app, "modality-1", "globalWriter")
    assert key.startswith("dcm_") and len(key) > 40
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and key[4:] not in text
    (entry,) = json.loads(text)["keys"]
    assert entry["name"] == "modality-1" and entry["roles"] == ["globalWriter"] and len(entry["sha256"]) == 64
    assert os.stat(tmp_path / "keys.json").st_mode & 0o077 == 0  # readable by its owner only


def test_a_key_acts_with_its_roles(keyed_app):
    client = keyed_app.test_client()
    writer = create_key(keyed_app, "modality-1", "globalWriter")  # the app is running: no restart
    ds = make_instance()
    assert client.get("/v2/studies").status_code == 401
    assert client.post("/v2/studies", data=to_bytes(ds), headers={**STOW, **bearer(writer)}).status_code == 200
    assert client.get("/v2/studies", headers=bearer(writer)).status_code == 200
    url = f"/v2/studies/{ds.StudyInstanceUID}"
    refused = client.delete(url, headers=bearer(writer))
    assert refused.status_code == 403 and refused.data.strip() == b"Authorization failed."
    deleter = create_key(keyed_app, "cleanup", "globalDeleter")
    assert client.delete(url, headers=bearer(deleter)).status_code == 204


def test_an_unknown_or_altered_key_is_401(keyed_app):
    client = keyed_app.test_client()
    key = create_key(keyed_app, "viewer", "globalReader")
    for wrong in ("dcm_" + "A" * 43, key[:-1] + ("A" if key[-1] != "A" else "B"), "not-a-key"):
        response = client.get("/v2/studies", headers=bearer(wrong))
        assert response.status_code == 401 and response.data == b""
        assert response.headers["WWW-Authenticate"].endswith('error="invalid_token"')


def test_the_cli_refuses_duplicate_names_and_roles_that_grant_nothing(keyed_app):
    create_key(keyed_app, "viewer", "globalReader")
    runner = keyed_app.test_cli_runner()
    again = runner.invoke(args=["dicom", "create-api-key", "--name", "viewer", "--role", "globalReader"])
    assert again.exit_code != 0 and "exists already" in again.output
    unknown = runner.invoke(args=["dicom", "create-api-key", "--name", "x", "--role", "noSuchRole"])
    assert unknown.exit_code != 0 and "noSuchRole" in unknown.output


def test_a_half_edited_keys_file_keeps_the_keys_read_before(keyed_app, tmp_path):
    client = keyed_app.test_client()
    key = create_key(keyed_app, "viewer", "globalReader")
    assert client.get("/v2/studies", headers=bearer(key)).status_code == 200
    (tmp_path / "keys.json").write_text('{"keys": [')  # an editor saving half a file
    assert client.get("/v2/studies", headers=bearer(key)).status_code == 200
