"""S3BlobStore: the shared contract against moto's server over real HTTP, plus S3 specifics.

Specifics: multipart uploads (parts, completion, abort on failure: no pending
uploads left), bounded memory for a 200 MB blob, the sha256 in object
metadata, the store prefix, ETag-pinned open(), error translation (stopped or
killed server, missing bucket, denied access, throttling, no credentials),
and the s3:// URL forms.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import psutil
import pytest
from blobstore_contract import (
    BlobStoreContract,
    FailingReader,
    MiB,
    NonSeekableReader,
    StreamBroke,
    read_all,
    sha256,
)
from botocore.stub import Stubber
from s3_fixtures import (  # noqa: F401
    MotoServer,
    apply_env,
    empty_bucket,
    moto_env,
    moto_s3,
    new_bucket,
)

from backends import open_blobstore
from backends.base import BlobNotFound, BlobStoreError, InvalidKey, StorageUnavailable
from backends.s3 import (
    MAX_CONCURRENCY,
    MAX_PARTS_IN_MEMORY,
    PART_SIZE,
    S3BlobStore,
    _transfer_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

_buckets: dict[str, str] = {}
_clients: dict[str, object] = {}


def shared_client(endpoint: str) -> object:
    """One boto3 client per moto server: building one per test costs more than the test."""
    if endpoint not in _clients:
        _clients[endpoint] = boto3.session.Session().client("s3")
    return _clients[endpoint]


@pytest.fixture
def bucket(moto_s3: str) -> str:  # noqa: F811
    """One bucket per moto server, shared by the tests of this module."""
    if moto_s3 not in _buckets:
        _buckets[moto_s3] = new_bucket("contract")
    return _buckets[moto_s3]


@pytest.fixture
def s3(bucket: str, moto_s3: str) -> Iterator[S3BlobStore]:  # noqa: F811
    """A store under a prefix no other test uses, emptied afterwards."""
    client = shared_client(moto_s3)
    store = S3BlobStore(bucket, f"t-{uuid.uuid4().hex[:12]}", client=client)
    yield store
    empty_bucket(client, bucket, store.prefix + "/")


@pytest.fixture
def client(moto_s3: str) -> object:  # noqa: F811
    return shared_client(moto_s3)


class TestS3BlobStoreContract(BlobStoreContract):
    @pytest.fixture
    def store(self, s3: S3BlobStore) -> S3BlobStore:
        return s3


class TestS3BlobStoreContractWithoutPrefix(BlobStoreContract):
    """The whole bucket as the store; keys are object names as they are."""

    @pytest.fixture
    def store(self, moto_s3: str) -> Iterator[S3BlobStore]:  # noqa: F811
        client = shared_client(moto_s3)
        store = S3BlobStore(new_bucket("noprefix"), client=client)
        assert store.prefix == ""
        yield store
        empty_bucket(client, store.bucket, remove=True)


# -- helpers --------------------------------------------------------------------


class WatchedReader(NonSeekableReader):
    """Calls `callback` once when `at` bytes have been read (during the put)."""

    def __init__(self, data: bytes, at: int, callback: Callable[[], None]) -> None:
        super().__init__(data, max_read=MiB)
        self._at = at
        self._callback: Callable[[], None] | None = callback

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        if self._callback is not None and self._buf.tell() >= self._at:
            callback, self._callback = self._callback, None
            callback()
        return chunk


class GeneratedReader:
    """`size` deterministic pseudo-random bytes, made 1 MiB at a time: never held whole."""

    def __init__(self, size: int, seed: int = 1234) -> None:
        self._rng = random.Random(seed)
        self._remaining = size
        self._pending = b""

    def read(self, n: int = -1) -> bytes:
        if not self._pending and self._remaining > 0:
            block = min(MiB, self._remaining)
            self._pending = self._rng.randbytes(block)
            self._remaining -= block
        n = len(self._pending) if n is None or n < 0 else n
        chunk, self._pending = self._pending[:n], self._pending[n:]
        return chunk


def generated_sha256(size: int, seed: int = 1234) -> str:
    digest = hashlib.sha256()
    reader = GeneratedReader(size, seed)
    while chunk := reader.read(MiB):
        digest.update(chunk)
    return digest.hexdigest()


def pending_uploads(client, bucket: str, prefix: str = "") -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class PeakRSS:
    """Samples this process's RSS every few milliseconds; `growth` is peak - baseline."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        gc.collect()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# -- multipart uploads ------------------------------------------------------------


def test_transfer_config_bounds_memory() -> None:
    config = _transfer_config(None)
    assert config.multipart_chunksize == config.multipart_threshold == PART_SIZE == 5 * MiB
    assert config.max_concurrency == MAX_CONCURRENCY == 2
    assert config.max_in_memory_upload_chunks == MAX_PARTS_IN_MEMORY == 3
    assert config.max_io_queue == MAX_PARTS_IN_MEMORY
    # Only a blob that would need more than S3's 10,000 parts gets bigger parts.
    assert _transfer_config(2 << 30).multipart_chunksize == PART_SIZE
    huge = _transfer_config(100 << 30)
    assert huge.multipart_chunksize * 10_000 >= 100 << 30 > PART_SIZE * 10_000


def test_20_mib_put_is_a_multipart_upload_of_5_mib_parts(s3: S3BlobStore, client) -> None:
    data = os.urandom(20 * MiB)
    key = "multi/part"
    object_key = f"{s3.prefix}/{key}"
    during: dict[str, object] = {}

    def look() -> None:
        # Three parts were handed to the uploader: the upload is in progress, the key invisible.
        uploads = wait_for(lambda: pending_uploads(client, s3.bucket, object_key))
        assert len(uploads) == 1
        upload_id = uploads[0]["UploadId"]
        parts = wait_for(
            lambda: len(client.list_parts(Bucket=s3.bucket, Key=object_key, UploadId=upload_id).get("Parts", [])) >= 2
        )
        during["parts"] = client.list_parts(Bucket=s3.bucket, Key=object_key, UploadId=upload_id)["Parts"]
        during["visible"] = s3.exists(key)
        assert parts

    info = s3.put(key, WatchedReader(data, 17 * MiB, look))  # type: ignore[arg-type]
    assert (info.size, info.sha256) == (len(data), sha256(data))
    assert during["visible"] is False
    assert [p["Size"] for p in during["parts"]][:2] == [PART_SIZE, PART_SIZE]  # type: ignore[index]
    head = client.head_object(Bucket=s3.bucket, Key=object_key)
    assert head["ETag"].strip('"').endswith("-4"), "20 MiB in four parts of 5 MiB"
    assert head["ContentLength"] == len(data)
    assert pending_uploads(client, s3.bucket, object_key) == []
    assert read_all(s3, key) == data


@pytest.mark.parametrize("exc", [StreamBroke("client went away"), KeyboardInterrupt()], ids=["exception", "keyboard"])
def test_stream_failure_mid_upload_aborts_the_multipart_upload(s3: S3BlobStore, client, exc: BaseException) -> None:
    key = "aborted"
    object_key = f"{s3.prefix}/{key}"
    seen: list[int] = []

    class Reader(FailingReader):
        def read(self, n: int = -1) -> bytes:
            if self.bytes_read >= 17 * MiB and not seen:
                # Parts 1 to 3 are on their way: an upload exists to be aborted.
                seen.append(len(wait_for(lambda: pending_uploads(client, s3.bucket, object_key))))
            return super().read(n)

    reader = Reader(os.urandom(20 * MiB), fail_at=18 * MiB, exc=exc)
    with pytest.raises(type(exc)) as raised:
        s3.put(key, reader)  # type: ignore[arg-type]
    assert raised.value is exc
    assert seen == [1], "the upload was multipart when the stream failed"
    assert wait_for(lambda: pending_uploads(client, s3.bucket, object_key) == []), "no orphan parts"
    assert not s3.exists(key)
    assert list(s3.list()) == []


def test_size_mismatch_mid_upload_aborts_the_multipart_upload(s3: S3BlobStore, client) -> None:
    with pytest.raises(BlobStoreError, match="longer than its declared size"):
        s3.put("k", NonSeekableReader(os.urandom(20 * MiB)), size=17 * MiB)  # type: ignore[arg-type]
    with pytest.raises(BlobStoreError, match="ended after"):
        s3.put("k", NonSeekableReader(os.urandom(20 * MiB)), size=21 * MiB)  # type: ignore[arg-type]
    assert pending_uploads(client, s3.bucket, s3.prefix) == []
    assert not s3.exists("k")


def test_seekable_stream_that_changes_between_passes_is_refused(s3: S3BlobStore, client) -> None:
    """The sha256 stored as metadata is of the bytes uploaded, or the put fails."""

    class Shifty(io.BytesIO):
        passes = 0

        def seek(self, *args: int) -> int:  # the second pass sees other bytes
            Shifty.passes += 1
            if Shifty.passes == 1:
                self.getbuffer()[0] ^= 0xFF
            return super().seek(*args)

    with pytest.raises(BlobStoreError, match="changed while it was being stored"):
        s3.put("k", Shifty(os.urandom(10 * MiB)))
    assert not s3.exists("k")
    assert pending_uploads(client, s3.bucket, s3.prefix) == []


@pytest.mark.slow
def test_200_mb_up_and_down_in_bounded_memory(s3: S3BlobStore) -> None:
    """RSS of this process grows < 50 MB while 200 MB go up and come back (moto is another process)."""
    size = 200 * 1000 * 1000
    expected = generated_sha256(size)
    s3.put("warm-up", GeneratedReader(3 * PART_SIZE))  # type: ignore[arg-type]  # threads, pools, imports
    read_all(s3, "warm-up")

    with PeakRSS() as up:
        info = s3.put("big", GeneratedReader(size))  # type: ignore[arg-type]
    assert (info.size, info.sha256) == (size, expected)

    with PeakRSS() as down:
        digest, total = hashlib.sha256(), 0
        for chunk in s3.iter_bytes("big"):
            digest.update(chunk)
            total += len(chunk)
    assert (total, digest.hexdigest()) == (size, expected)

    with PeakRSS() as opened, s3.open("big") as f:
        digest = hashlib.sha256()
        while chunk := f.read(3 * MiB):
            digest.update(chunk)
    assert digest.hexdigest() == expected

    print(f"\nRSS growth: put {up.growth / MiB:.1f} MiB, iter_bytes {down.growth / MiB:.1f} MiB, "
          f"open {opened.growth / MiB:.1f} MiB (200 MB blob)")
    assert up.growth < 50_000_000
    assert down.growth < 50_000_000
    assert opened.growth < 50_000_000
    s3.delete("big")


# -- metadata, prefix, open ------------------------------------------------------


def test_sha256_is_stored_as_metadata_for_seekable_streams(s3: S3BlobStore, client) -> None:
    data = os.urandom(PART_SIZE + 100)
    s3.put("seekable", io.BytesIO(data))
    assert s3.stat("seekable").sha256 == sha256(data)
    head = client.head_object(Bucket=s3.bucket, Key=f"{s3.prefix}/seekable")
    assert head["Metadata"] == {"sha256": sha256(data)}
    # A one-pass (non-seekable) upload cannot set it: stat says so honestly.
    info = s3.put("one-pass", NonSeekableReader(data))  # type: ignore[arg-type]
    assert info.sha256 == sha256(data)
    assert s3.stat("one-pass").sha256 is None


def test_spooled_file_from_its_current_position(s3: S3BlobStore) -> None:
    """The server spools STOW parts to SpooledTemporaryFiles; put reads from where it stands."""
    import tempfile

    with tempfile.SpooledTemporaryFile(max_size=1024) as spool:
        spool.write(b"skip" + b"x" * 5000)
        spool.seek(4)
        info = s3.put("spooled", spool, size=5000)  # type: ignore[arg-type]
    assert info.size == 5000
    assert s3.stat("spooled").sha256 == sha256(b"x" * 5000)


def test_keys_live_under_the_prefix(bucket: str, client) -> None:
    prefix = f"p-{uuid.uuid4().hex[:8]}/nested"
    store = S3BlobStore.from_url(f"s3://{bucket}/{prefix}/")
    other = S3BlobStore.from_url(f"s3://{bucket}/{prefix}-other")
    store.put("a/b", io.BytesIO(b"1"))
    other.put("a/b", io.BytesIO(b"2"))
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/a/b")["Body"].read() == b"1"
    assert list(store.list()) == ["a/b"] and list(other.list()) == ["a/b"]
    # Objects no put of ours could have written are not listed as blobs.
    for name in ("bad name", ".hidden", "a//b", "x/"):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=b"junk")
    assert sorted(store.list()) == ["a/b"]
    assert read_all(store, "a/b") == b"1"


def test_list_pages_through_the_listing(s3: S3BlobStore, client) -> None:
    requests: list[dict] = []

    def spy(params: dict, **_: object) -> None:
        requests.append(dict(params))

    client.meta.events.register("provide-client-params.s3.ListObjectsV2", spy)
    try:
        for i in range(7):
            s3.put(f"many/{i}", io.BytesIO(b""))
        s3.put("other", io.BytesIO(b""))
        s3.list_page_size = 3
        assert sorted(s3.list("many/")) == [f"many/{i}" for i in range(7)]
    finally:
        client.meta.events.unregister("provide-client-params.s3.ListObjectsV2", spy)
    assert len(requests) == 3, "7 keys in pages of 3"
    assert all(r["Prefix"] == f"{s3.prefix}/many/" and r["MaxKeys"] == 3 for r in requests)


def test_open_is_seekable_and_reads_ranges(s3: S3BlobStore) -> None:
    data = os.urandom(3 * MiB + 17)
    s3.put("k", io.BytesIO(data))
    with s3.open("k") as f:
        assert f.seekable() and f.readable()
        assert f.read(10) == data[:10]
        f.seek(2 * MiB + 5)
        assert f.read(100) == data[2 * MiB + 5 : 2 * MiB + 105]
        f.seek(-7, io.SEEK_END)
        assert f.read() == data[-7:]
        assert f.read(5) == b""
        f.seek(100_000)
        assert f.tell() == 100_000
        assert f.read() == data[100_000:]


def test_open_reads_pydicom_files(s3: S3BlobStore) -> None:
    import pydicom
    from dicom_samples import sample

    raw = Path(sample("red-triangle.dcm")).read_bytes()
    s3.put("red.dcm", io.BytesIO(raw))
    with s3.open("red.dcm") as f:
        ds = pydicom.dcmread(f)
    assert ds.SOPInstanceUID == pydicom.dcmread(sample("red-triangle.dcm")).SOPInstanceUID
    assert len(ds.PixelData) > 0


def test_open_fails_if_the_blob_is_replaced_while_open(s3: S3BlobStore) -> None:
    s3.put("k", io.BytesIO(os.urandom(4 * MiB)))
    with s3.open("k") as f:
        f.read(10)
        s3.put("k", io.BytesIO(os.urandom(4 * MiB)))
        f.seek(3 * MiB)  # outside the read-ahead buffer: a new GET, pinned to the old ETag
        with pytest.raises(BlobStoreError, match="replaced while it was being read") as raised:
            f.read(10)
    assert not isinstance(raised.value, StorageUnavailable)


def test_iter_bytes_close_releases_the_response(s3: S3BlobStore) -> None:
    s3.put("k", io.BytesIO(os.urandom(2 * MiB)))
    it = s3.iter_bytes("k")
    assert len(next(it)) == MiB
    it.close()  # type: ignore[attr-defined]  # WSGI servers call close()
    assert list(it) == []


def test_local_path_is_none_but_validates(s3: S3BlobStore) -> None:
    s3.put("k", io.BytesIO(b"x"))
    assert s3.local_path("k") is None
    with pytest.raises(InvalidKey):
        s3.local_path("../k")


def test_check_passes_on_a_usable_bucket(s3: S3BlobStore) -> None:
    s3.check()


# -- error translation ------------------------------------------------------------


def blob_operations(store: S3BlobStore, key: str) -> dict[str, Callable[[], object]]:
    return {
        "put": lambda: store.put(key, io.BytesIO(b"data")),
        "put-multipart": lambda: store.put(key, NonSeekableReader(os.urandom(PART_SIZE + 1))),  # type: ignore[arg-type]
        "iter_bytes": lambda: list(store.iter_bytes(key)),
        "open": lambda: store.open(key).read(),
        "stat": lambda: store.stat(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "list": lambda: list(store.list()),
        "check": store.check,
    }


def test_stopped_server_is_storage_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    server = MotoServer()
    try:
        apply_env(monkeypatch, moto_env(server.url))
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries: fail fast
        bucket = new_bucket("stopped")
        store = S3BlobStore(bucket, "p")
        store.put("k", io.BytesIO(b"x"))
    finally:
        server.stop()
    for name, operation in blob_operations(store, "k").items():
        with pytest.raises(StorageUnavailable, match=r"cannot reach S3 at http://127\.0\.0\.1") as raised:
            operation()
        assert raised.value.__cause__ is not None, name


def test_missing_bucket_is_storage_unavailable_not_blob_not_found(moto_s3: str) -> None:  # noqa: F811
    store = S3BlobStore(f"missing-{uuid.uuid4().hex[:12]}", "p")
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.check()
    for operation in blob_operations(store, "k").values():
        with pytest.raises(StorageUnavailable, match="does not exist"):
            operation()


def test_server_killed_mid_read_is_storage_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    server = MotoServer()
    try:
        apply_env(monkeypatch, moto_env(server.url))
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        store = S3BlobStore(new_bucket("killed"))
        store.put("big", GeneratedReader(64 * MiB))  # type: ignore[arg-type]
        chunks = store.iter_bytes("big", chunk_size=64 * 1024)
        reader = store.open("big")
        assert next(chunks) and reader.read(10)
    finally:
        server.kill()
    with pytest.raises(StorageUnavailable, match="cannot read blob 'big'"):
        for _ in chunks:
            pass
    with pytest.raises(StorageUnavailable):
        while reader.read(MiB):
            pass


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("AccessDenied", 403, "access to s3://bucket/p/ denied"),
        ("InvalidAccessKeyId", 403, "check the AWS credentials"),
        ("SlowDown", 503, "S3 is throttling requests"),
        ("InternalError", 500, "S3 failed with HTTP 500"),
        ("NoSuchBucket", 404, "S3 bucket 'bucket' does not exist"),
    ],
)
def test_client_errors_are_translated(moto_s3: str, code: str, status: int, message: str) -> None:  # noqa: F811
    client = boto3.client("s3")
    store = S3BlobStore("bucket", "p", client=client)
    with Stubber(client) as stub:
        for operation in ("get_object", "head_object", "delete_object", "head_bucket", "list_objects_v2"):
            stub.add_client_error(operation, service_error_code=code, http_status_code=status)
        for call in (
            lambda: store.iter_bytes("k"),
            lambda: store.stat("k"),
            lambda: store.delete("k"),
            store.check,
            lambda: list(store.list()),
        ):
            with pytest.raises(StorageUnavailable, match=message) as raised:
                call()
            assert not isinstance(raised.value, BlobNotFound)


def test_no_such_key_is_blob_not_found(moto_s3: str) -> None:  # noqa: F811
    client = boto3.client("s3")
    store = S3BlobStore("bucket", "p", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        with pytest.raises(BlobNotFound) as raised:
            store.iter_bytes("k")
    assert raised.value.key == "k" and raised.value.__cause__ is None


def test_no_credentials_is_storage_unavailable(moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3BlobStore("bucket")
    with pytest.raises(StorageUnavailable, match=r"no usable AWS credentials.*AWS_ACCESS_KEY_ID"):
        store.check()
    with pytest.raises(StorageUnavailable, match="no usable AWS credentials"):
        store.put("k", io.BytesIO(b"x"))


def test_programming_errors_are_not_translated(s3: S3BlobStore) -> None:
    with pytest.raises(ValueError, match="size must be >= 0"):
        s3.put("k", io.BytesIO(b"x"), size=-1)
    with pytest.raises(ValueError):
        list(s3.iter_bytes("k", start=-1))


# -- URLs, registry, configuration ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my-bucket/dicom", "my-bucket", "dicom"),
        ("S3://my.bucket/dicom/archive-1/", "my.bucket", "dicom/archive-1"),
    ],
)
def test_from_url(url: str, bucket: str, prefix: str) -> None:
    store = open_blobstore(url)  # builds a client, sends nothing
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == (bucket, prefix)
    store.close()


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3:bucket", "no bucket"),
        ("s3://b", "not a bucket name"),
        ("s3://bad!bucket/x", "not a bucket name"),
        ("s3://bucket:9000/x", "AWS_ENDPOINT_URL_S3"),
        ("s3://bucket/a//b", "the prefix must be"),
        ("s3://bucket/.tmp", "the prefix must be"),
        ("s3://bucket/with space", "the prefix must be"),
        ("s3://bucket/x?versioning=1", "no query"),
    ],
)
def test_from_url_rejects_bad_forms(url: str, detail: str) -> None:
    with pytest.raises(ValueError, match="expected s3://bucket or s3://bucket/prefix") as raised:
        open_blobstore(url)
    assert detail in str(raised.value)


def test_credentials_in_the_url_are_refused_and_never_echoed() -> None:
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID") as raised:
        open_blobstore("s3://AKIAEXAMPLE:s3cr3t@bucket/prefix")
    assert "s3cr3t" not in str(raised.value) and "AKIAEXAMPLE" not in str(raised.value)


def test_endpoint_comes_from_the_standard_variable(moto_s3: str) -> None:  # noqa: F811
    store = open_blobstore("s3://some-bucket/p")
    assert store._client.meta.endpoint_url == moto_s3  # type: ignore[attr-defined]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )


def test_missing_boto3_says_which_extra_to_install() -> None:
    result = _run(
        "import sys\n"
        "sys.modules['boto3'] = None  # as if not installed\n"
        "from backends import open_blobstore\n"
        "try:\n"
        "    open_blobstore('s3://bucket/prefix')\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "needs the Python package 'boto3'" in result.stdout
    assert "pip install '.[s3]'" in result.stdout


def test_missing_boto3_stops_startup_naming_the_variable(tmp_path: Path) -> None:
    result = _run(
        "import sys\n"
        "sys.modules['boto3'] = None\n"
        "from dicomserver import ConfigError, Settings, create_app\n"
        "try:\n"
        f"    create_app(Settings(blobstore_url='s3://bucket/p', database_url='sqlite:///{tmp_path}/i.db'))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "DICOMWEB_BLOBSTORE_URL" in result.stdout and "pip install '.[s3]'" in result.stdout


def test_boto3_is_imported_only_for_s3() -> None:
    result = _run(
        "import sys, backends\n"
        "backends.open_blobstore('memory://')\n"
        "assert 'boto3' not in sys.modules and 'backends.s3' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


class _CountingHashlib:
    """Stands in for a module's `hashlib`: counts the bytes its sha256 objects hash."""

    def __init__(self) -> None:
        self.hashed = 0

    def sha256(self, *args: bytes):
        counter = self
        real = hashlib.sha256(*args)
        counter.hashed += sum(len(a) for a in args)

        class Counted:
            def update(self, data: bytes) -> None:
                counter.hashed += len(data)
                real.update(data)

            def hexdigest(self) -> str:
                return real.hexdigest()

            def digest(self) -> bytes:
                return real.digest()

        return Counted()


@pytest.mark.parametrize("size", [1000, PART_SIZE + 100])
def test_a_spooled_blob_is_hashed_once(s3: S3BlobStore, client, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """The spool hashes what it receives; its put hashes nothing again (once was three
    passes: the spool, the put's first pass, the upload's check), and a one-request upload
    hands S3 that digest as its checksum, for S3 to verify."""
    import backends.base
    import backends.s3

    counting = _CountingHashlib()
    monkeypatch.setattr(backends.base, "hashlib", counting)
    monkeypatch.setattr(backends.s3, "hashlib", counting)
    data = os.urandom(size)
    sent: dict[str, str] = {}

    def record(request, **kwargs) -> None:
        sent.update({k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
                     if k.lower().startswith("x-amz-checksum")})

    client.meta.events.register("before-send.s3.PutObject", record)
    try:
        with s3.spool(memory_bytes=4096) as spool:
            spool.write(data)
            info = spool.commit("spooled/once")
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", record)
    assert counting.hashed == size
    assert info.sha256 == sha256(data) == s3.stat("spooled/once").sha256
    assert read_all(s3, "spooled/once") == data
    if size < PART_SIZE:
        assert sent == {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()}

