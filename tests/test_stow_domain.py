"""The STOW pipeline driven without Flask: a request body in, results and the response dataset out."""
from __future__ import annotations

import io

import pytest
from dicom_factory import make_instance, multipart_body, to_bytes

from backends.memory import MemoryBlobStore
from dicomserver import stow
from dicomserver.archive import Archive
from dicomserver.errors import BadRequest, UnsupportedMediaType
from dicomserver.index import open_index
from dicomserver.ingest import INSTANCE_ALREADY_EXISTS, INVALID_DATASET
from dicomserver.settings import Settings

BASE = "https://pacs.example/v2"


@pytest.fixture
def archive(tmp_path):
    settings = Settings(blobstore_url="memory://", database_url=f"sqlite:///{tmp_path / 'index.db'}")
    index = open_index(settings.database_url)
    index.connect()
    yield Archive(settings=settings, store=MemoryBlobStore(), index=index)
    index.shutdown()


def store(archive: Archive, body: bytes, content_type: str, study_uid: str | None = None) -> list[stow.PartResult]:
    return stow.store(
        archive.ingestor, archive.settings, io.BytesIO(body).read, content_type, study_uid=study_uid, replace=False
    )


def test_multipart_body_stores_each_part_and_reports_each(archive):
    first, second = make_instance(study="1.9.1"), make_instance(study="1.9.1")
    body = multipart_body([to_bytes(first), to_bytes(second), b"not dicom"])
    results = store(archive, body, 'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234')
    assert [r.stored for r in results] == [True, True, False]
    assert results[2].failure_reason == INVALID_DATASET
    assert {i.sop_instance_uid for i in archive.index.instances("1.9.1")} == {
        first.SOPInstanceUID,
        second.SOPInstanceUID,
    }
    assert len(list(archive.store.list())) == 2

    status, dataset = stow.response(results, base_url=BASE, study_uid="1.9.1", api_version="v2")
    assert status == 202  # stored, with a failure
    assert dataset["00081190"]["Value"] == [f"{BASE}/studies/1.9.1"]
    assert len(dataset["00081199"]["Value"]) == 2 and len(dataset["00081198"]["Value"]) == 1
    url = dataset["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith(f"{BASE}/studies/1.9.1/series/")


def test_single_part_duplicate_is_a_failure_not_an_exception(archive):
    data = to_bytes(make_instance())
    assert store(archive, data, "application/dicom")[0].stored
    (again,) = store(archive, data, "application/dicom")
    assert again.failure_reason == INSTANCE_ALREADY_EXISTS
    status, dataset = stow.response([again], base_url=BASE, study_uid=None, api_version="v1")
    assert status == 409 and "00081199" not in dataset


def test_what_makes_the_whole_request_unusable_raises(archive):
    with pytest.raises(UnsupportedMediaType):
        store(archive, b"x", "text/plain")
    with pytest.raises(BadRequest, match="empty"):
        store(archive, b"", "application/dicom")
    truncated = multipart_body([to_bytes(make_instance())])[:-40]
    with pytest.raises(BadRequest, match="malformed multipart"):
        store(archive, truncated, "multipart/related; boundary=BOUNDARY-1234")
    assert list(archive.store.list()) == []  # a truncated part is never stored
