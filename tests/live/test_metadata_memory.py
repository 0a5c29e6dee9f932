"""`/metadata` of a 5,000-instance study (about 23 MB of DICOM JSON) over HTTP against real
gunicorn: streamed (chunked), and all server processes together grow by less than 50 MB
while it goes out, plain or gzip, with the per-series gzip cache being built or served."""
from __future__ import annotations

import hashlib
import zlib

import pytest
import requests
from big_study import store
from live_servers import start_server, stop_server
from test_memory import PeakRss, assert_flat

from dicomserver import Settings, close_app, create_app

pytestmark = [pytest.mark.live, pytest.mark.slow]

SIZES = (2000, 1500, 1500)
JSON_ACCEPT = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}
GZIP = {"Accept": "application/dicom+json", "Accept-Encoding": "gzip"}


@pytest.fixture(scope="module")
def big_server(tmp_path_factory):
    """A gunicorn over an index holding one study of 5,000 CT instances (no blobs: /metadata
    reads only the index)."""
    data = tmp_path_factory.mktemp("metadata-live")
    app = create_app(Settings(blobstore_url=str(data / "blobs"), database_url=f"sqlite:///{data / 'index.db'}"))
    try:
        big = store(app.extensions["dicomserver"].ingestor, SIZES)
    finally:
        close_app(app)
    server = start_server(data)
    yield server, big
    stop_server(server)


def fetch(url: str, headers: dict[str, str]) -> tuple[requests.Response, str, int]:
    """GET read 1 MB at a time as it arrives; the SHA-256 and length of the JSON (inflated here)."""
    with requests.get(url, headers=headers, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text[:200]
        packed = response.headers.get("Content-Encoding") == "gzip"
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        digest, length = hashlib.sha256(), 0
        for chunk in response.raw.stream(1 << 20, decode_content=False):
            text = inflater.decompress(chunk) if packed else chunk
            digest.update(text)
            length += len(text)
        if packed:
            assert inflater.eof and not inflater.unused_data
        return response, digest.hexdigest(), length


def test_study_and_series_metadata_stream_in_bounded_memory(big_server):
    server, big = big_server
    study = f"{server.url}/v2/studies/{big.study_uid}/metadata"
    series = f"{server.url}/v2/studies/{big.study_uid}/series/{big.series_uid(0)}/metadata"
    instance = f"{server.url}/v2/studies/{big.study_uid}/series/{big.series_uid(0)}/instances/{big.sop_uid(0, 9)}/metadata"
    for _ in range(4):  # every code path loaded in both workers, on a small answer
        fetch(instance, JSON_ACCEPT)
        fetch(instance, GZIP)

    digests = {}
    for name, url, headers in (
        ("study, plain", study, JSON_ACCEPT),
        ("study, gzip, cache built", study, GZIP),
        ("study, gzip, from the cache", study, GZIP),
        ("series of 2,000, plain", series, JSON_ACCEPT),
        ("series of 2,000, gzip", series, GZIP),
    ):
        with PeakRss(server, interval=0.01) as rss:
            response, digest, length = fetch(url, headers)
        assert_flat(rss, f"/metadata, {name}", min_samples=2)
        assert response.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in response.headers
        assert response.headers.get("Content-Encoding") == ("gzip" if headers is GZIP else None)
        digests.setdefault(url, set()).add(digest)
        if url == study:
            assert length > 20_000_000
    assert all(len(found) == 1 for found in digests.values())  # plain and gzip: the same JSON
