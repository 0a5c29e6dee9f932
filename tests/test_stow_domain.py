"""The STOW pipeline driven without Flask: a request body in, results and the response dataset out."""
from __future__ import annotations

import errno
import io
import json
import tempfile

import pytest
from dicom_factory import make_instance, multipart_body, to_bytes

from backends.base import InvalidKey, StorageUnavailable, StoreFull
from backends.memory import MemoryBlobStore
from dicomserver import stow
from dicomserver.archive import Archive
from dicomserver.errors import BadRequest, UnsupportedMediaType
from dicomserver.index import open_index
from dicomserver.ingest import INSTANCE_ALREADY_EXISTS, INVALID_DATASET, PROCESSING_FAILURE
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


# -- the archive's storage failing mid-request -----------------------------------------------


class FillingStore(MemoryBlobStore):
    """A store with room for `room` blobs; then it is full (or, with `error`, down)."""

    def __init__(self, room: int, error: Exception | None = None) -> None:
        super().__init__()
        self.room = room
        self.error = error or StoreFull("no space left on device")
        self.attempts = 0

    def put(self, key, stream, *, size=None, sha256=None):
        self.attempts += 1
        if self.attempts > self.room:
            raise self.error
        return super().put(key, stream, size=size, sha256=sha256)


def with_store(archive: Archive, store: MemoryBlobStore) -> Archive:
    return Archive(settings=archive.settings, store=store, index=archive.index)


@pytest.mark.parametrize(
    ("error", "status", "comment"),
    [
        (StoreFull("disk full"), 507, "the archive is out of storage space; nothing can be stored until space is freed"),
        (StorageUnavailable("connection reset"), 503, "the blob store is unavailable; try again later"),
    ],
)
def test_parts_after_a_storage_failure_are_reported_not_tried(archive, error, status, comment):
    datasets = [make_instance(study="1.9.2") for _ in range(5)]
    filling = with_store(archive, FillingStore(room=2, error=error))
    results = store(filling, multipart_body([to_bytes(ds) for ds in datasets]), "multipart/related; boundary=BOUNDARY-1234")
    assert [r.stored for r in results] == [True, True, False, False, False]
    assert filling.store.attempts == 3  # not tried after the failure
    assert results[2].sop_instance_uid == datasets[2].SOPInstanceUID and results[2].comments == [comment]
    assert {r.failure_reason for r in results[2:]} == {PROCESSING_FAILURE}
    assert results[3].comments == [f"not attempted after an earlier instance failed: {comment}"]
    assert {i.sop_instance_uid for i in archive.index.instances("1.9.2")} == {ds.SOPInstanceUID for ds in datasets[:2]}

    answer, dataset = stow.response(results, base_url=BASE, study_uid=None, api_version="v2")
    assert answer == 202 and len(dataset["00081199"]["Value"]) == 2 and len(dataset["00081198"]["Value"]) == 3
    answer, dataset = stow.response(results[2:], base_url=BASE, study_uid=None, api_version="v1")
    assert answer == status and "00081199" not in dataset  # nothing stored: the outage's status


def test_a_rejected_instance_is_still_409_and_bugs_are_not_outages(archive):
    (bad,) = store(archive, b"not dicom", "application/dicom")
    assert stow.response([bad], base_url=BASE, study_uid=None, api_version="v2")[0] == 409
    broken = with_store(archive, FillingStore(room=0, error=InvalidKey("a bug, not an outage")))
    with pytest.raises(InvalidKey):
        store(broken, to_bytes(make_instance()), "application/dicom")


def test_dicom_json_datasets_after_a_storage_failure_are_named(archive):
    """DICOM JSON datasets are stored at the end of the body: those after the failure are
    reported with the UIDs their metadata gives."""
    first, second = make_instance(study="1.9.3"), make_instance(study="1.9.3")
    documents = [ds.to_json_dict(bulk_data_threshold=1 << 30) for ds in (first, second)]
    body = multipart_body([json.dumps(documents).encode()], content_type="application/dicom+json")
    full = with_store(archive, FillingStore(room=0))
    results = store(full, body, 'multipart/related; type="application/dicom+json"; boundary=BOUNDARY-1234')
    assert [(r.sop_instance_uid, r.failure_reason) for r in results] == [
        (first.SOPInstanceUID, PROCESSING_FAILURE),
        (second.SOPInstanceUID, PROCESSING_FAILURE),
    ]
    assert results[1].comments[0].startswith("not attempted after an earlier instance failed")
    assert stow.response(results, base_url=BASE, study_uid=None, api_version="v2")[0] == 507


def test_a_body_with_no_room_to_spool_is_read_to_its_end_and_answered_507(archive, monkeypatch):
    real = tempfile.SpooledTemporaryFile

    class FullSpool(real):  # type: ignore[misc,valid-type]
        def rollover(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", FullSpool)
    small_spool = Archive(
        settings=Settings(blobstore_url="memory://", database_url=archive.settings.database_url, spool_memory_bytes=1024),
        store=archive.store,
        index=archive.index,
    )
    body = io.BytesIO(to_bytes(make_instance(rows=64, columns=64)) * 3)
    (result,) = stow.store(small_spool.ingestor, small_spool.settings, lambda n: body.read(min(n, 4096)),
                           "application/dicom", study_uid=None, replace=False)
    assert body.tell() == len(body.getvalue())  # the client, still sending, gets its answer
    assert result.failure_reason == PROCESSING_FAILURE
    # The memory store spools like any store that cannot rename: in the spool directory.
    assert result.comments == ["the archive is out of storage space; nothing can be stored until space is freed"]
    status, dataset = stow.response([result], base_url=BASE, study_uid=None, api_version="v2")
    assert status == 507 and len(dataset["00081198"]["Value"]) == 1
    assert list(archive.store.list()) == []
