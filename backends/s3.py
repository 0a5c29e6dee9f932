"""Amazon S3 (and S3-compatible: MinIO, moto, Ceph RGW...) blob store on boto3.

This module owns how blobs live in a bucket: key 'a/b' is the object
'<prefix>/a/b'. Selected by ``DICOMWEB_BLOBSTORE_URL=s3://bucket[/prefix]``.
Credentials, region, endpoint, retries and timeouts come only from boto3's
usual chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``
(or ``AWS_ENDPOINT_URL``) for MinIO and the like, ``AWS_MAX_ATTEMPTS``/
``AWS_RETRY_MODE``, ``~/.aws/config``, instance roles. We add no variables.

Why it looks the way it does:

* Puts are S3 managed uploads (`upload_fileobj`) with an explicit, small
  TransferConfig: 5 MiB parts, 2 parts in flight, 3 (+1 being read) in
  memory at most, so a 2 GB instance costs the memory of a 20 MB one. A put is atomic
  by S3's nature (an object appears only when PutObject or
  CompleteMultipartUpload succeeds), and on any failure s3transfer aborts the
  multipart upload, so no orphan parts are left to be billed (the defect of
  docker-registry's S3 driver).
* The caller's stream is wrapped, not buffered: the wrapper hashes and counts
  as s3transfer reads it, enforces ``size=``, and remembers what the stream
  itself raised so that error propagates unchanged. S3 wants metadata at the
  start of an upload, before the hash is known; so a *seekable* stream (the
  server's spooled STOW parts) is hashed in a first pass and the sha256 is
  stored as object metadata, where `stat` finds it. A non-seekable stream is
  uploaded in one pass and its `stat` has sha256=None (the contract allows it).
* Reads are ranged GETs streamed off the socket (`iter_bytes`);
  `open` returns a buffered file object over ranged GETs pinned to the
  object's ETag, so pydicom can seek without the blob being downloaded or
  spooled, and a blob replaced mid-read fails instead of mixing versions.
* Every botocore/boto3/s3transfer/urllib3 error is translated in one place
  (`S3BlobStore._translate`); callers only see BlobStoreError subclasses.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO, NoReturn
from urllib.parse import urlsplit

import boto3
import boto3.exceptions
import botocore.exceptions
import s3transfer.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.manager import TransferManager

from .base import (
    COPY_CHUNK_SIZE,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    StorageUnavailable,
    _shorten,
    check_range,
    copy_stream,
    is_valid_key,
    validate_key,
    validate_prefix,
)

__all__ = ["MAX_CONCURRENCY", "MAX_PARTS_IN_MEMORY", "PART_SIZE", "S3BlobStore"]

MiB = 1 << 20

#: Size of each part of a multipart upload, and the size from which a put is
#: multipart: S3's minimum part. Bigger parts save requests (a 2 GB instance
#: is 410 PUTs instead of 256: $0.002 instead of $0.0013 at S3's prices) but
#: cost memory: every part is a bytes object while it is read and sent, and
#: with 8 MiB parts a 200 MB put grew RSS by up to 51 MB, with 5 MiB by 31 MB.
#: 5 MiB x 10,000 parts allows 48 GiB; puts that declare a larger size get
#: larger parts (see _transfer_config).
PART_SIZE = 5 * MiB
#: S3's limit on the number of parts of one upload.
MAX_PARTS = 10_000
#: Parts uploaded at the same time by one put.
MAX_CONCURRENCY = 2
#: Parts one put may hold in memory (read ahead + in flight): memory per put is
#: about MAX_PARTS_IN_MEMORY * PART_SIZE whatever the blob's size.
MAX_PARTS_IN_MEMORY = MAX_CONCURRENCY + 1
#: HTTP connections the client keeps: enough for gunicorn's threads plus the
#: parts in flight of their puts, so connections are reused, not discarded.
MAX_POOL_CONNECTIONS = 32
#: Read-ahead buffer of the file objects open() returns.
OPEN_BUFFER_SIZE = MiB
#: A seek forward by at most this much reads on in the open GET instead of
#: starting a new one (a request costs more than reading 256 KiB).
OPEN_SKIP_LIMIT = 256 * 1024

# s3transfer takes a caller's SHA-256 checksum for a PutObject since 0.11 (boto3 1.36).
_SHA256_CHECKSUM = "ChecksumSHA256" in TransferManager.ALLOWED_UPLOAD_ARGS

# The object metadata key (x-amz-meta-sha256) holding the blob's sha256.
_SHA256_METADATA = "sha256"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# botocore's own rule for bucket names (legacy names included).
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_EXPECTED_FORM = "expected s3://bucket or s3://bucket/prefix"

# Error codes, from S3's documentation of error responses.
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_ACCESS_CODES = {
    "AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
    "AccountProblem", "InvalidObjectState",
}
_THROTTLING_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "ServiceUnavailable", "503",
}
# Transport failures: the network, the TLS layer or a body cut short.
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class _RangeNotSatisfiable(BlobStoreError):
    """S3 answered 416: the range starts at or past the end of the object."""


class S3BlobStore(BlobStore):
    """Blobs as objects in `bucket` under `prefix` (``""`` or ``"some/path"``).

    The store never creates the bucket: that is the operator's job (with its
    lifecycle and encryption settings); check() reports a missing one.
    Pass `client` to use a ready boto3 S3 client instead of building one
    from the environment.
    """

    scheme = "s3"
    #: Keys per ListObjectsV2 request (S3's maximum; tests lower it to see paging).
    list_page_size = 1000

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except BlobStoreError as exc:
                raise ValueError(f"invalid S3 key prefix {prefix!r}: {exc}") from None
        self.bucket = bucket
        self.prefix = prefix
        self._object_prefix = f"{prefix}/" if prefix else ""
        self._client = client if client is not None else _make_client()

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """Open 's3://bucket' or 's3://bucket/prefix' (a trailing '/' is ignored)."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "s3":
            raise ValueError(f"not an S3 URL: {_EXPECTED_FORM}")
        if not parts.netloc:
            raise ValueError(f"no bucket in the S3 URL: {_EXPECTED_FORM}")
        if "@" in parts.netloc:
            # Never echo credentials; boto3 reads them from AWS_* variables.
            raise ValueError(
                f"credentials do not belong in the S3 URL (set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY instead): {_EXPECTED_FORM}"
            )
        if ":" in parts.netloc:
            raise ValueError(
                f"invalid S3 URL {url!r}: a port is not a bucket; set the endpoint with "
                f"AWS_ENDPOINT_URL_S3 instead; {_EXPECTED_FORM}"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"invalid S3 URL {url!r}: no query or fragment allowed; {_EXPECTED_FORM}")
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not _BUCKET_RE.fullmatch(bucket):
            raise ValueError(f"invalid S3 URL {url!r}: {bucket!r} is not a bucket name; {_EXPECTED_FORM}")
        if "//" in parts.path.rstrip("/") or (prefix and not is_valid_key(prefix)):
            raise ValueError(
                f"invalid S3 URL {url!r}: the prefix must be '/'-separated names of "
                f"A-Z a-z 0-9 . _ - (not starting with '.'); {_EXPECTED_FORM}"
            )
        return cls(bucket, prefix)

    def __repr__(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{type(self).__name__}('s3://{where}')"

    def _object_key(self, key: str) -> str:
        return self._object_prefix + validate_key(key)

    def _where(self, key: str | None = None) -> str:
        """s3://bucket/object for messages (keys are validated, so safe to show)."""
        return f"s3://{self.bucket}/{self._object_prefix}{key or ''}"

    # -- errors: the one place botocore's exceptions become ours ------------

    def _translate(self, exc: BaseException, what: str, key: str | None = None) -> BaseException:
        """Map a boto3/botocore/s3transfer/transport exception to a BlobStoreError.

        `what` says what was being done ("cannot read blob 'k'"); `key` is
        given for operations on one blob, where a 404 means the blob is
        missing. A HEAD answers a bare 404 both for a missing key and for a
        missing bucket, so that case asks the bucket before saying BlobNotFound.
        Anything that is not an Exception (KeyboardInterrupt...) is returned as is.
        """
        if isinstance(exc, BlobStoreError) or not isinstance(exc, Exception):
            return exc
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message") or ""
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{code}: {message}" if message else code
            if code == "InvalidRange":
                return _RangeNotSatisfiable(what)
            if code == "PreconditionFailed":
                return BlobStoreError(f"{what}: the blob was replaced while it was being read")
            if code == "NoSuchBucket" or (key is None and code in _NOT_FOUND_CODES):
                return StorageUnavailable(f"{what}: S3 bucket {self.bucket!r} does not exist")
            if key is not None and code in _NOT_FOUND_CODES:
                if code != "NoSuchKey":
                    self._check_bucket(what)  # raises StorageUnavailable if the bucket is gone
                return BlobNotFound(key)
            if code in _ACCESS_CODES or status == 403:
                return StorageUnavailable(
                    f"{what}: access to {self._where()} denied ({detail}); check the AWS "
                    f"credentials and the bucket policy"
                )
            if code in _THROTTLING_CODES or status in (429, 503):
                return StorageUnavailable(f"{what}: S3 is throttling requests ({detail}); try again later")
            if isinstance(status, int) and status >= 500:
                return StorageUnavailable(f"{what}: S3 failed with HTTP {status} ({detail})")
            return StorageUnavailable(f"{what}: S3 refused the request (HTTP {status}, {detail})")
        if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return StorageUnavailable(
                f"{what}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance role"
            )
        if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
            return BlobStoreError(f"{what}: the data read does not match its S3 checksum ({exc})")
        if isinstance(
            exc,
            (
                botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectionError,
                botocore.exceptions.HTTPClientError,
                *_TRANSPORT_ERRORS,
            ),
        ):
            return StorageUnavailable(f"{what}: cannot reach S3 at {self._endpoint()} ({exc})")
        if isinstance(
            exc,
            (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error, s3transfer.exceptions.CancelledError,
             s3transfer.exceptions.FatalError, s3transfer.exceptions.RetriesExceededError),
        ):
            return StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}")
        return exc  # a bug of ours or of a library: let it show as itself

    def _call(self, operation: str, what: str, key: str | None = None, **kwargs: Any) -> Any:
        """Call client.<operation>(Bucket=..., **kwargs), translating its errors."""
        try:
            return getattr(self._client, operation)(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            translated = self._translate(exc, what, key)
            if translated is exc:
                raise
            raise translated from (None if isinstance(translated, BlobNotFound) else exc)

    def _endpoint(self) -> str:
        return str(getattr(self._client.meta, "endpoint_url", "?"))

    def _check_bucket(self, what: str) -> None:
        """Raise StorageUnavailable unless the bucket exists and we may use it."""
        self._call("head_bucket", what)

    # -- writing -----------------------------------------------------------

    def put(
        self, key: str, stream: IO[bytes], *, size: int | None = None, sha256: str | None = None
    ) -> BlobInfo:
        object_key = self._object_key(key)
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        expected: tuple[int, str] | None = None
        if sha256 is not None and size is not None:
            # A spool hashed it as it arrived: no pass over the data to hash it again.
            expected = (size, sha256)
        elif _is_seekable(stream):
            # First pass: the sha256 must be known before the upload starts to go
            # into the object's metadata. Also fails a wrong `size` before any request.
            start = stream.tell()
            expected = copy_stream(stream, lambda chunk: None, key=key, size=size)
            stream.seek(start)
            size = expected[0]
        # The upload hashes what it reads only to check it against a first pass of its own.
        reader = _HashingReader(stream, key, size, None if expected is None else expected[1], check=sha256 is None)
        extra_args: dict[str, Any] = {}
        config = _transfer_config(size)
        if expected is not None:
            extra_args["Metadata"] = {_SHA256_METADATA: expected[1]}
            if _SHA256_CHECKSUM and size is not None and size < config.multipart_threshold:
                # One PutObject: S3 checks the bytes it got against our digest, and
                # botocore computes no checksum of its own (a multipart upload's
                # SHA-256 checksums are per part: left to botocore there).
                extra_args["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(expected[1])).decode("ascii")
        failure: BaseException | None = None
        try:
            self._client.upload_fileobj(
                reader, self.bucket, object_key, ExtraArgs=extra_args, Config=config
            )
        except BaseException as exc:  # re-raised below, translated or as is
            failure = exc
        if failure is not None:
            if reader.stream_error is not None:
                # The caller's own failure (client went away...), unchanged; raised
                # outside the except block so its __context__ is left alone.
                raise reader.stream_error
            translated = self._translate(failure, f"cannot store blob {key!r} at {self._where(key)}")
            if translated is failure:
                raise failure
            raise translated from failure
        if not reader.finished:
            # Cannot happen with s3transfer, which reads to EOF; refuse to guess.
            raise BlobStoreError(f"blob {key!r} was stored before its stream was read to the end")
        return BlobInfo(key=key, size=reader.bytes_read, sha256=expected[1] if expected else reader.hexdigest())

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too, which makes this idempotent.
        self._call("delete_object", f"cannot delete blob {key!r}", Key=self._object_key(key))

    # -- reading -----------------------------------------------------------

    def iter_bytes(
        self,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        chunk_size: int = COPY_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        check_range(start, end, chunk_size)
        object_key = self._object_key(key)
        if end == start:
            self.stat(key)  # an empty range of a missing blob is still BlobNotFound
            return iter(())
        kwargs: dict[str, Any] = {"Key": object_key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        # The GET is sent now, so BlobNotFound comes from this call (the server
        # can still answer 404 before it starts a response); the body is read lazily.
        try:
            response = self._call("get_object", f"cannot read blob {key!r}", key, **kwargs)
        except _RangeNotSatisfiable:
            return iter(())  # the range starts at or past the end: nothing, like slicing
        return _BodyChunks(response["Body"], chunk_size, lambda exc: self._read_error(exc, key))

    def _read_error(self, exc: Exception, key: str) -> BaseException:
        return self._translate(exc, f"cannot read blob {key!r}")

    def open(self, key: str) -> BinaryIO:
        head = self._head(key)
        raw = _RangedReader(self, key, self._object_key(key), head["ContentLength"], head.get("ETag"))
        return _S3File(io.BufferedReader(raw, buffer_size=OPEN_BUFFER_SIZE))  # type: ignore[return-value]

    def _head(self, key: str) -> dict[str, Any]:
        return self._call("head_object", f"cannot stat blob {key!r}", key, Key=self._object_key(key))

    def stat(self, key: str) -> BlobInfo:
        head = self._head(key)
        sha256 = (head.get("Metadata") or {}).get(_SHA256_METADATA)
        if not (isinstance(sha256, str) and _SHA256_RE.fullmatch(sha256)):
            sha256 = None  # uploaded in one pass, or by something else
        return BlobInfo(key=key, size=int(head["ContentLength"]), sha256=sha256)

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[str]:
        what = f"cannot list blobs under {self._where(prefix)}"
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=self._object_prefix + prefix,
            PaginationConfig={"PageSize": self.list_page_size},
        )
        iterator = iter(pages)
        while True:
            try:
                page = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                translated = self._translate(exc, what)
                if translated is exc:
                    raise
                raise translated from exc
            for item in page.get("Contents", ()):
                key = item["Key"][len(self._object_prefix):]
                if is_valid_key(key):  # skip objects that no put of ours could have made
                    yield key

    # -- health ------------------------------------------------------------

    def check(self) -> None:
        """HEAD the bucket: proves endpoint, credentials and bucket, and costs no PUT.

        A write probe (as the local store does) would bill a PUT and a DELETE
        per readiness probe; permission to write is proven by the first STOW.
        """
        self._check_bucket(f"S3 store {self._where()} at {self._endpoint()} is unusable")

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


# -- helpers --------------------------------------------------------------------


def _make_client() -> Any:
    """An S3 client configured from the environment only (see the module docstring)."""
    try:
        return boto3.session.Session().client(
            "s3",
            config=Config(max_pool_connections=MAX_POOL_CONNECTIONS, user_agent_extra="dicomserver"),
        )
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ValueError(f"cannot configure an S3 client from the AWS_* settings: {exc}") from None


def _transfer_config(size: int | None) -> TransferConfig:
    """Managed-upload settings that bound memory; parts grow only if 10,000 would not do."""
    part_size = PART_SIZE
    if size is not None and size > PART_SIZE * MAX_PARTS:
        part_size = -(-size // MAX_PARTS)
    config = TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=MAX_CONCURRENCY,
        max_io_queue=MAX_PARTS_IN_MEMORY,
        use_threads=True,
        preferred_transfer_client="classic",
    )
    # Not a boto3 argument, but the s3transfer setting that bounds the parts a
    # non-seekable upload reads ahead (its default, 10, would be 80 MiB).
    config.max_in_memory_upload_chunks = MAX_PARTS_IN_MEMORY
    return config


def _is_seekable(stream: IO[bytes]) -> bool:
    try:
        return bool(stream.seekable()) and stream.tell() >= 0
    except (AttributeError, OSError, ValueError):
        return False


class _StreamFailed(Exception):
    """Stands in, inside s3transfer, for whatever the caller's stream raised."""


class _HashingReader:
    """The caller's stream as s3transfer sees it: read() only, so uploads take the
    bounded non-seekable path; counts and hashes; enforces the declared size.

    read(n) returns exactly n bytes until EOF (s3transfer takes a short read for
    a part's end). What the caller's stream raises is kept in `stream_error`
    for put() to re-raise unchanged, and s3transfer is handed a plain
    `_StreamFailed` instead: s3transfer re-raises a failed transfer's exception
    in the threads still sending parts and only catches Exception there, so a
    BaseException (KeyboardInterrupt, SystemExit from a worker being stopped)
    would kill those threads before the upload is aborted and put() would
    wait forever.
    """

    def __init__(
        self, stream: IO[bytes], key: str, size: int | None, expected_sha256: str | None, *, check: bool = True
    ) -> None:
        self._stream = stream
        self._key = key
        self._size = size
        # Hashes only to find the sha256 (a non-seekable stream) or to check a first pass's.
        self._expected_sha256 = expected_sha256 if check else None
        self._digest = hashlib.sha256() if check or expected_sha256 is None else None
        self.bytes_read = 0
        self.finished = False
        self.stream_error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        pieces: list[bytes] = []
        wanted = n
        while wanted > 0 and not self.finished:
            try:
                piece = self._stream.read(min(wanted, 1 << 30))
            except BaseException as exc:  # kept for put() to re-raise unchanged
                self.stream_error = exc
                raise _StreamFailed(f"the input stream of blob {_shorten(self._key)} failed") from None
            if not piece:
                self._at_eof()
                break
            self._count(piece)
            pieces.append(piece)
            wanted -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _count(self, piece: bytes) -> None:
        self.bytes_read += len(piece)
        if self._size is not None and self.bytes_read > self._size:
            raise BlobStoreError(
                f"stream for blob {_shorten(self._key)} is longer than its declared size of {self._size} bytes"
            )
        if self._digest is not None:
            self._digest.update(piece)

    def _at_eof(self) -> None:
        if self._size is not None and self.bytes_read != self._size:
            raise BlobStoreError(
                f"stream for blob {_shorten(self._key)} ended after {self.bytes_read} bytes; "
                f"its declared size is {self._size} bytes"
            )
        if self._expected_sha256 is not None and self._digest is not None and (
            self._digest.hexdigest() != self._expected_sha256
        ):
            raise BlobStoreError(f"stream for blob {_shorten(self._key)} changed while it was being stored")
        self.finished = True

    def hexdigest(self) -> str:
        assert self._digest is not None, "a reader that was given the digest computes none"
        return self._digest.hexdigest()


class _BodyChunks(Iterator[bytes]):
    """Chunks of a GET's streaming body; closes the connection when done or on close().

    A class so close() works before iteration starts (WSGI servers call it on
    response bodies) and errors mid-body are translated like every other.
    """

    def __init__(self, body: Any, chunk_size: int, translate: Callable[[Exception], BaseException]) -> None:
        self._body = body
        self._chunk_size = chunk_size
        self._translate = translate

    def __iter__(self) -> _BodyChunks:
        return self

    def __next__(self) -> bytes:
        if self._body is None:
            raise StopIteration
        try:
            data = self._body.read(self._chunk_size)
        except Exception as exc:
            self.close()
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        if not data:
            self.close()
            raise StopIteration
        return data

    def close(self) -> None:
        body, self._body = getattr(self, "_body", None), None
        if body is not None:
            body.close()

    def __del__(self) -> None:
        self.close()


class _S3File(io.BufferedIOBase):
    """A buffered reader that is not an io.BufferedReader instance.

    pydicom takes any io.BufferedReader for a file on disk (it reads `.name`
    as a path, to reopen it later); this one is a plain readable buffer.
    """

    def __init__(self, inner: io.BufferedReader) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._inner.read(size)

    def read1(self, size: int = -1) -> bytes:
        return self._inner.read1(size)

    def readinto(self, buffer: Any) -> int:
        return self._inner.readinto(buffer)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        self._inner.close()
        super().close()


class _RangedReader(io.RawIOBase):
    """A seekable, read-only file over ranged GETs of one version of an object.

    Sequential reads share one streaming GET; a seek elsewhere starts a new
    GET from there. Every GET carries If-Match with the ETag seen by open(),
    so a blob replaced meanwhile fails with BlobStoreError rather than mixing
    two versions. Wrapped in a BufferedReader and an _S3File by S3BlobStore.open().
    """

    def __init__(self, store: S3BlobStore, key: str, object_key: str, size: int, etag: str | None) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._object_key = object_key
        self._size = int(size)
        self._etag = etag
        self._pos = 0
        self._body: Any = None
        self._body_pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        want = min(len(buffer), self._size - self._pos, PART_SIZE)
        if want <= 0:
            return 0
        self._position_body()
        try:
            data = self._body.read(want)
        except Exception as exc:  # translated or re-raised
            self._drop_body()
            self._raise(exc)
        if not data:
            self._drop_body()
            raise StorageUnavailable(
                f"cannot read blob {self._key!r}: S3 ended the response at byte {self._pos} of {self._size}"
            )
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        self._pos += n
        self._body_pos += n
        return n

    def _position_body(self) -> None:
        """Have a GET whose next byte is self._pos: keep, skip ahead in, or replace the current one."""
        if self._body is not None and 0 < self._pos - self._body_pos <= OPEN_SKIP_LIMIT:
            try:
                while self._body_pos < self._pos:
                    skipped = self._body.read(self._pos - self._body_pos)
                    if not skipped:
                        break
                    self._body_pos += len(skipped)
            except Exception:  # a broken GET is replaced by a new one
                self._drop_body()
        if self._body is not None and self._body_pos == self._pos:
            return
        self._drop_body()
        kwargs: dict[str, Any] = {"Key": self._object_key, "Range": f"bytes={self._pos}-"}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            response = self._store._client.get_object(Bucket=self._store.bucket, **kwargs)
        except Exception as exc:  # translated or re-raised
            self._raise(exc)
        self._body, self._body_pos = response["Body"], self._pos

    def _raise(self, exc: Exception) -> NoReturn:
        translated = self._store._translate(exc, f"cannot read blob {self._key!r}", self._key)
        if isinstance(translated, (BlobNotFound, _RangeNotSatisfiable)):
            # It existed (and was this long) when opened: it was deleted or replaced.
            raise BlobStoreError(f"cannot read blob {self._key!r}: it was deleted or replaced while open") from exc
        if translated is exc:
            raise exc
        raise translated from exc

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # closing a dropped response cannot fail usefully
                pass

    def close(self) -> None:
        self._drop_body()
        super().close()
