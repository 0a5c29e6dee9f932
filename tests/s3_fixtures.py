"""S3 for tests: moto's server mode over real HTTP, in a child process.

Import the fixture where it is needed::

    from s3_fixtures import moto_s3  # noqa: F401

`moto_s3` yields the endpoint URL (``http://127.0.0.1:PORT``) and, for the
test's duration, points boto3's standard variables at it (AWS_ENDPOINT_URL_S3,
dummy credentials, a region) with everything that could reach a real account
(profiles, config files, instance metadata) switched off. Test processes
started from the test (gunicorn) inherit that environment.

One server serves the whole session. It runs `ThreadedMotoServer` in a child
process rather than in pytest's: moto keeps every object in memory (a
completed multipart upload is even assembled in one buffer), which would make
the memory tests measure moto instead of our code, and its request handling
would compete with the client for the test process's GIL. The child exits when
its stdin closes, so it cannot outlive a crashed test run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

__all__ = ["MotoServer", "empty_bucket", "moto_env", "moto_s3", "new_bucket", "postgres_s3_archive", "shared_moto_server"]

# The child: start moto, print its address, serve until stdin closes.
# moto's models are not thread-safe: two PUTs of one key race (the second
# disposes of the first's buffer while its response is being built: HTTP 500),
# which real S3 never does. So requests are handled one at a time; responses
# are still sent concurrently, and clients still race each other for real.
_CHILD = """
import sys
import threading
import moto.moto_server.threaded_moto_server as threaded
from moto.server import ThreadedMotoServer

_lock = threading.Lock()

class SerializedApplication(threaded.DomainDispatcherApplication):
    def __call__(self, environ, start_response):
        with _lock:
            return list(super().__call__(environ, start_response))

threaded.DomainDispatcherApplication = SerializedApplication
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""


class MotoServer:
    """A moto S3 server in a child process; `url` is its endpoint."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"moto server did not start (it printed {line!r})")
        self.url = line

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        """Stop the server (idempotent); anything talking to it then fails to connect."""
        if self._process.poll() is None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def kill(self) -> None:
        """Kill the server at once, e.g. in the middle of a response."""
        self._process.kill()
        self._process.wait()


_shared: MotoServer | None = None
_shared_lock = threading.Lock()


def shared_moto_server() -> MotoServer:
    """The session's server, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MotoServer()
            atexit.register(_shared.stop)
        return _shared


def moto_env(endpoint_url: str) -> dict[str, str | None]:
    """boto3's standard variables for `endpoint_url`; None means "unset it"."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "AWS_ENDPOINT_URL": None,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Never read a developer's ~/.aws or ask an instance metadata service.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The endpoint URL of the session's moto server, with AWS_* pointing at it."""
    server = shared_moto_server()
    apply_env(monkeypatch, moto_env(server.url))
    yield server.url


def new_bucket(prefix: str = "test") -> str:
    """Create a bucket with a fresh name on the endpoint the environment names."""
    import boto3

    name = f"{prefix}-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3")
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


def empty_bucket(client, bucket: str, prefix: str = "", *, remove: bool = False) -> None:
    """Delete every object (and pending upload) under `prefix`; the bucket too if `remove`.

    moto keeps everything in memory for the whole session: tests that write a
    lot clean up after themselves so later tests do not pay for it.
    """
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    if remove:
        client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def postgres_s3_archive(postgres_url: str, bucket_prefix: str) -> Iterator[tuple[dict[str, str], Any, str]]:
    """A live server's environment for PostgreSQL (emptied) + a fresh bucket on the shared moto
    server, with a boto3 client of that server and the bucket's name; the bucket goes after."""
    from pg_fixtures import truncate_all

    truncate_all(postgres_url)
    moto = shared_moto_server()
    env = {k: v for k, v in moto_env(moto.url).items() if v is not None}
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"{bucket_prefix}-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    env.update(DICOMWEB_BLOBSTORE_URL=f"s3://{bucket}/archive", DICOMWEB_DATABASE_URL=postgres_url)
    try:
        yield env, s3, bucket
    finally:
        empty_bucket(s3, bucket, remove=True)
