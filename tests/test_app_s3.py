"""The whole app on S3 (moto over real HTTP): STOW, WADO, frames, bulk data, transcoding,
rendering, readiness and DELETE, all through the Flask test client.

S3 has no local path, so every retrieve streams from ranged GETs, and every
full parse (transcode, render) goes through S3BlobStore.open().
"""

from __future__ import annotations

import hashlib
import io

import boto3
import pydicom
import pytest
from dicom_factory import make_instance, multipart_body, to_bytes
from pydicom.dataset import Dataset
from requests_toolbelt import MultipartDecoder
from s3_fixtures import moto_s3, new_bucket  # noqa: F401

from dicomserver import Settings, close_app, create_app

PREFIX = "archive"
STOW = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234'}
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"'}
PRIVATE_BLOB = bytes(range(256)) * 40  # 10 KiB: above the inline threshold, so a BulkDataURI


@pytest.fixture
def s3_app(moto_s3, tmp_path):  # noqa: F811
    bucket = new_bucket("app")
    app = create_app(
        Settings(blobstore_url=f"s3://{bucket}/{PREFIX}", database_url=f"sqlite:///{tmp_path / 'index.db'}")
    )
    app.config["TESTING"] = True
    yield app, bucket
    close_app(app)
    app.extensions["dicomserver"].store.close()


def objects(bucket: str) -> dict[str, dict]:
    client = boto3.client("s3")
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/").get("Contents", [])
    return {item["Key"]: client.head_object(Bucket=bucket, Key=item["Key"]) for item in listing}


def parts(response) -> list:
    return MultipartDecoder(response.data, response.headers["Content-Type"]).parts


def instance_url(ds: Dataset) -> str:
    return f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def test_stow_wado_frames_bulkdata_delete_on_s3(s3_app) -> None:
    app, bucket = s3_app
    client = app.test_client()
    study = pydicom.uid.generate_uid()
    # Several frames, and a private binary value served as bulk data.
    small = make_instance(study=study, rows=3, columns=5, frames=4)
    small.add_new(0x00090010, "LO", "DICOMSERVER TEST")
    small.add_new(0x00091010, "OB", PRIVATE_BLOB)
    # 6 MiB of pixels: stored by a multipart upload.
    large = make_instance(study=study, rows=1024, columns=1024, frames=3)
    files = {ds.SOPInstanceUID: to_bytes(ds) for ds in (small, large)}
    assert len(files[large.SOPInstanceUID]) > 6 << 20

    # STOW: both stored, as objects under the prefix with their sha256 as metadata.
    response = client.post("/v2/studies", data=multipart_body(list(files.values())), headers=STOW)
    assert response.status_code == 200, response.data
    stored = objects(bucket)
    assert len(stored) == 2
    assert all(key.startswith(f"{PREFIX}/{study}/") for key in stored)
    assert sorted(head["Metadata"]["sha256"] for head in stored.values()) == sorted(
        hashlib.sha256(data).hexdigest() for data in files.values()
    )
    assert sorted(head["ContentLength"] for head in stored.values()) == sorted(len(d) for d in files.values())
    assert any(head["ETag"].strip('"').endswith("-2") for head in stored.values()), "the large one is multipart"

    # WADO: the bytes as stored, multipart and single part, study and instance level.
    for ds in (small, large):
        response = client.get(instance_url(ds), headers=AS_STORED)
        assert response.status_code == 200, response.data
        (part,) = parts(response)
        assert part.content == files[ds.SOPInstanceUID]
        single = client.get(instance_url(ds), headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert single.status_code == 200 and single.data == files[ds.SOPInstanceUID]
        assert int(single.headers["Content-Length"]) == len(files[ds.SOPInstanceUID])
    whole_study = client.get(f"/v2/studies/{study}", headers=AS_STORED)
    assert sorted(p.content for p in parts(whole_study)) == sorted(files.values())

    # Frames: ranged GETs at the offsets recorded at STOW.
    response = client.get(instance_url(small) + "/frames/1,3,4", headers=FRAMES)
    assert response.status_code == 200, response.data
    assert [p.content for p in parts(response)] == [bytes([n, 0]) * 15 for n in (1, 3, 4)]
    last = client.get(instance_url(large) + "/frames/3", headers={"Accept": "application/octet-stream"})
    assert last.status_code == 200 and last.data == bytes([3, 0]) * 1024 * 1024

    # Bulk data: the URI from metadata, whole and by HTTP Range.
    (meta,) = client.get(instance_url(small) + "/metadata").json
    uri = meta["00091010"]["BulkDataURI"]
    path = uri[len("http://localhost"):]
    whole = client.get(path, headers={"Accept": "application/octet-stream"})
    assert whole.status_code == 200 and whole.data == PRIVATE_BLOB
    ranged = client.get(path, headers={"Accept": "application/octet-stream", "Range": "bytes=300-599"})
    assert ranged.status_code == 206 and ranged.data == PRIVATE_BLOB[300:600]

    # A full parse (transcoding to Implicit VR) reads through S3BlobStore.open().
    implicit = client.get(
        instance_url(small), headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2"}
    )
    assert implicit.status_code == 200, implicit.data
    ds = pydicom.dcmread(io.BytesIO(implicit.data))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert ds.PixelData == small.PixelData

    # DELETE: index rows, then the objects.
    assert client.delete(instance_url(small)).status_code == 204
    assert len(objects(bucket)) == 1
    assert client.get(instance_url(small), headers=AS_STORED).status_code == 404
    assert client.delete(f"/v2/studies/{study}").status_code == 204
    assert objects(bucket) == {}
    assert client.get(f"/v2/studies/{study}", headers=AS_STORED).status_code == 404


def test_rendered_reads_through_open(s3_app) -> None:
    pytest.importorskip("PIL")
    app, _ = s3_app
    client = app.test_client()
    ds = make_instance(rows=16, columns=16, bits=8)
    assert client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"}).status_code == 200
    response = client.get(instance_url(ds) + "/rendered", headers={"Accept": "image/png"})
    assert response.status_code == 200, response.data
    assert response.data.startswith(b"\x89PNG")


def test_put_replaces_the_object_and_removes_the_old_one(s3_app) -> None:
    app, bucket = s3_app
    client = app.test_client()
    ds = make_instance()
    first = to_bytes(ds)
    assert client.post("/v2/studies", data=first, headers={"Content-Type": "application/dicom"}).status_code == 200
    (old_key,) = objects(bucket)
    ds.PatientID = "PID-2"
    second = to_bytes(ds)
    assert client.put("/v2/studies", data=second, headers={"Content-Type": "application/dicom"}).status_code == 200
    (new_key,) = objects(bucket)
    assert new_key != old_key
    response = client.get(instance_url(ds), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert response.data == second


def test_readiness_reports_the_bucket(s3_app, moto_s3, tmp_path) -> None:  # noqa: F811
    app, _ = s3_app
    assert app.test_client().get("/readyz").status_code == 200
    missing = create_app(
        Settings(blobstore_url="s3://no-such-bucket-here/x", database_url=f"sqlite:///{tmp_path / 'other.db'}")
    )
    response = missing.test_client().get("/readyz")
    assert response.status_code == 503
    assert "does not exist" in response.json["checks"]["blobstore"]
    close_app(missing)


def test_storage_outage_is_503_not_500(s3_app) -> None:
    """S3 gone mid-life: STOW and single-part WADO answer 503, not 500.

    (Multipart WADO and frames have sent their 200 before they read the first
    blob, on any store; there the failure can only cut the body short.)
    """
    app, bucket = s3_app
    client = app.test_client()
    ds = make_instance()
    assert client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"}).status_code == 200
    s3_client = boto3.client("s3")
    for key in objects(bucket):
        s3_client.delete_object(Bucket=bucket, Key=key)
    s3_client.delete_bucket(Bucket=bucket)
    single = client.get(instance_url(ds), headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.status_code == 503
    other = make_instance()
    response = client.post("/v2/studies", data=to_bytes(other), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 503
