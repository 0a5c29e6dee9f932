"""`/metadata` of a study of hundreds of instances: streamed in batches, gzip from the per-series
cache, ETags and 304 per variant, the cache following every change (SQLite and PostgreSQL)."""
from __future__ import annotations

import gzip
import json
import os
import sqlite3
import zlib

import pytest
from big_study import BigStudy, store

from dicomserver import Settings, close_app, create_app
from dicomserver.dicomjson import absolute_uris, bulk_data_uri, joined_absolute_uris
from dicomserver.index.reads import METADATA_BATCH
from dicomserver.metadata_stream import crc32_combine, gzip_accepted, metadata_stream

SIZES = (150, 120, 30)  # 300 instances; series of more than one batch, of exactly one, of less
BASE = "http://localhost/v2"
JSON_ACCEPT = {"Accept": "application/dicom+json"}
GZIP = {**JSON_ACCEPT, "Accept-Encoding": "gzip, deflate"}


@pytest.fixture
def big(app) -> BigStudy:
    assert SIZES[0] > METADATA_BATCH  # what the streaming is about
    return store(app.extensions["dicomserver"].ingestor, SIZES)


def index_of(app):
    index = app.extensions["dicomserver"].index
    index.connect()
    return index


def joined_answer(app, study: str, series: str | None = None, sop: str | None = None, base: str = BASE) -> bytes:
    """The answer as it was made before streaming: every stored text read at once, joined."""
    index = index_of(app)
    p = index.db.param
    where = [f"s.study_instance_uid = {p}"] + [
        clause for clause, value in ((f"se.series_instance_uid = {p}", series), (f"i.sop_instance_uid = {p}", sop))
        if value is not None
    ]
    rows = index.db.execute_sql(
        "SELECT m.metadata FROM instance i JOIN series se ON se.id = i.series_id JOIN study s ON s.id = i.study_id "
        f"JOIN instance_metadata m ON m.instance_id = i.id WHERE {' AND '.join(where)} "
        "ORDER BY se.id, i.instance_number, i.id",
        [v for v in (study, series, sop) if v is not None],
    ).fetchall()
    return absolute_uris("[" + ",".join(row[0] for row in rows) + "]", base).encode()


def fetch(client, url: str, headers: dict | None = None):
    """GET, with the body read (the test client makes a streamed body only when it is read)."""
    response = client.get(url, headers=headers or {})
    response.get_data()
    return response


def cache_rows(app) -> list[tuple]:
    index = index_of(app)
    return index.db.execute_sql(
        "SELECT c.series_id, se.series_instance_uid, c.base_url, c.version FROM series_metadata_cache c "
        "JOIN series se ON se.id = c.series_id ORDER BY c.series_id, c.base_url"
    ).fetchall()


def single_gzip_member(data: bytes) -> bytes:
    """Inflate `data`, checking it is exactly one gzip member (some clients read only one)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    text = inflater.decompress(data)
    assert inflater.eof and inflater.unused_data == b"", "not exactly one gzip member"
    assert gzip.decompress(data) == text
    return text


def test_study_series_and_instance_equal_the_joined_answer(client, app, big):
    study, series = big.study_uid, big.series_uid(0)
    sop = big.sop_uid(0, 123)
    urls = {
        (study, None, None): f"/v2/studies/{study}/metadata",
        (study, series, None): f"/v2/studies/{study}/series/{series}/metadata",
        (study, series, sop): f"/v2/studies/{study}/series/{series}/instances/{sop}/metadata",
    }
    for uids, url in urls.items():
        expected = joined_answer(app, *uids)
        plain = client.get(url, headers=JSON_ACCEPT)
        assert plain.status_code == 200
        assert plain.headers["Content-Type"] == "application/dicom+json"
        assert "Content-Encoding" not in plain.headers
        # Streamed, but for the one instance (made whole before the status line).
        assert plain.headers.get("Content-Length") == (None if uids[2] is None else str(len(expected)))
        assert plain.headers["Vary"] == "Accept-Encoding"
        assert plain.data == expected
        for _ in range(2):  # built while streaming, then from the cache
            packed = client.get(url, headers=GZIP)
            assert packed.status_code == 200
            assert packed.headers["Content-Encoding"] == "gzip"
            assert packed.headers["Vary"] == "Accept-Encoding"
            assert packed.headers.get("Content-Length") == (None if uids[2] is None else str(len(packed.data)))
            assert single_gzip_member(packed.data) == expected
            assert len(packed.data) * (10 if uids[2] is None else 2) < len(expected)
    answer = json.loads(client.get(urls[(study, None, None)]).data)
    assert len(answer) == sum(SIZES)
    assert answer[0]["7FE00010"]["BulkDataURI"] == f"{BASE}/studies/{study}/series/{series}/instances/{big.sop_uid(0, 0)}/bulkdata/7FE00010"
    assert [a["00200013"]["Value"][0] for a in answer[:3]] == [1, 2, 3]


def test_gzip_is_cached_per_series_and_base_url(client, app, big):
    study = big.study_uid
    assert fetch(client, f"/v2/studies/{study}/metadata", GZIP).status_code == 200
    rows = cache_rows(app)
    # Not the series of one batch or less: it deflates in about a millisecond.
    assert SIZES[2] <= METADATA_BATCH
    assert [(uid, base) for _, uid, base, _ in rows] == [(big.series_uid(n), BASE) for n in range(2)]
    assert [version.split("-")[1] for *_, version in rows] == [str(n) for n in SIZES[:2]]
    # /v1 answers carry /v1 URIs: a cache entry of their own; plain answers and instances none.
    fetch(client, f"/v1/studies/{study}/series/{big.series_uid(1)}/metadata", GZIP)
    fetch(client, f"/v2/studies/{study}/metadata", JSON_ACCEPT)
    fetch(client, f"/v2/studies/{study}/series/{big.series_uid(0)}/instances/{big.sop_uid(0, 3)}/metadata", GZIP)
    assert [(uid, base) for _, uid, base, _ in cache_rows(app)] == [
        (big.series_uid(0), BASE), (big.series_uid(1), "http://localhost/v1"), (big.series_uid(1), BASE),
    ]
    v1 = client.get(f"/v1/studies/{study}/series/{big.series_uid(1)}/metadata", headers=GZIP)
    assert single_gzip_member(v1.data) == joined_answer(app, study, big.series_uid(1), base="http://localhost/v1")


def test_the_cache_is_what_is_served(client, app, big):
    """A cache entry of the current version is sent as it is, never rebuilt."""
    study, series = big.study_uid, big.series_uid(1)
    fetch(client, f"/v2/studies/{study}/metadata", GZIP)
    text = b'{"00100010":{"vr":"PN","Value":[{"Alphabetic":"FROM^CACHE"}]}}'
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    index = index_of(app)
    p = index.db.param
    with index.write_transaction():
        index.db.execute_sql(
            f"UPDATE series_metadata_cache SET deflate = {p}, crc32 = {p}, length = {p} "
            f"WHERE series_id = (SELECT id FROM series WHERE series_instance_uid = {p})",
            (deflater.compress(text) + deflater.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(text), len(text), series),
        )
    answer = json.loads(single_gzip_member(client.get(f"/v2/studies/{study}/metadata", headers=GZIP).data))
    assert len(answer) == SIZES[0] + 1 + SIZES[2]
    assert answer[SIZES[0]] == json.loads(text)
    assert json.loads(client.get(f"/v2/studies/{study}/metadata").data)[SIZES[0]]["00200013"]["Value"] == [1]


def test_a_change_to_the_study_changes_etags_and_the_cache(client, app, big):
    study, series = big.study_uid, big.series_uid(1)
    url = f"/v2/studies/{study}/metadata"

    def etags() -> tuple[str, str]:
        return fetch(client, url, JSON_ACCEPT).headers["ETag"], fetch(client, url, GZIP).headers["ETag"]

    before = etags()
    versions = {uid: version for _, uid, _, version in cache_rows(app)}
    assert before == etags()  # stable while nothing changes

    # Store one more instance in the middle series.
    added = big.record(1, SIZES[1])
    index = index_of(app)
    index.store_many([added])
    stored = etags()
    assert stored[0] != before[0] and stored[1] != before[1]
    packed = single_gzip_member(client.get(url, headers=GZIP).data)
    assert packed == joined_answer(app, study)
    assert f'"{added.sop_instance_uid}"' in packed.decode()
    after_store = {uid: version for _, uid, _, version in cache_rows(app)}
    assert after_store[series] != versions[series]
    assert {k: v for k, v in after_store.items() if k != series} == {k: v for k, v in versions.items() if k != series}

    # Delete another instance of it.
    gone = big.sop_uid(1, 7)
    assert client.delete(f"/v2/studies/{study}/series/{series}/instances/{gone}").status_code in (200, 204)
    deleted = etags()
    assert deleted[0] not in (before[0], stored[0]) and deleted[1] not in (before[1], stored[1])
    packed = single_gzip_member(client.get(url, headers=GZIP).data)
    assert packed == joined_answer(app, study) and f'"{gone}"' not in packed.decode()
    assert len(json.loads(packed)) == sum(SIZES)

    # Delete the whole series: its cache entries go with it.
    assert client.delete(f"/v2/studies/{study}/series/{series}").status_code in (200, 204)
    assert [uid for _, uid, _, _ in cache_rows(app)] == [big.series_uid(0)]
    packed = single_gzip_member(client.get(url, headers=GZIP).data)
    assert packed == joined_answer(app, study) and len(json.loads(packed)) == SIZES[0] + SIZES[2]


def test_etag_and_304_for_each_variant(client, big):
    url = f"/v2/studies/{big.study_uid}/series/{big.series_uid(2)}/metadata"
    plain, packed = client.get(url), client.get(url, headers=GZIP)
    assert plain.headers["ETag"].startswith('"') and packed.headers["ETag"].startswith('W/"')
    assert packed.headers["ETag"] == f'W/{plain.headers["ETag"][:-1]}-gz"'
    for headers, response in ((JSON_ACCEPT, plain), (GZIP, packed)):
        etag = response.headers["ETag"]
        for sent in (etag, etag.removeprefix("W/"), f'W/{etag.removeprefix("W/")}', f'"other", {etag}', "*"):
            cached = client.get(url, headers={**headers, "If-None-Match": sent})
            assert cached.status_code == 304, sent
            assert cached.data == b""
            assert cached.headers["ETag"] == etag and cached.headers["Vary"] == "Accept-Encoding"
            assert "Content-Encoding" not in cached.headers
    # One variant's ETag does not validate the other.
    assert client.get(url, headers={**GZIP, "If-None-Match": plain.headers["ETag"]}).status_code == 200
    assert client.get(url, headers={**JSON_ACCEPT, "If-None-Match": packed.headers["ETag"]}).status_code == 200


def test_head_reads_no_metadata(client, app, big):
    url = f"/v2/studies/{big.study_uid}/metadata"
    heads = {}
    for headers, coding in ((JSON_ACCEPT, None), (GZIP, "gzip")):
        response = client.head(url, headers=headers)
        assert response.status_code == 200 and response.data == b""
        assert response.headers.get("Content-Encoding") == coding
        heads[coding] = response.headers["ETag"]
    assert cache_rows(app) == []  # the body was never made
    assert heads == {None: client.get(url).headers["ETag"], "gzip": client.get(url, headers=GZIP).headers["ETag"]}


@pytest.mark.parametrize(
    ("accept_encoding", "coding"),
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("GZip;Q=1.0", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip, deflate, br, zstd", "gzip"),
        ("*", "gzip"),
        ("gzip;q=0", None),
        ("gzip; q=0.000", None),
        ("*;q=0", None),
        ("gzip;q=0, *", None),  # named wins over the wildcard
        ("*, gzip;q=0", None),
        ("identity;q=0, gzip", "gzip"),
        ("identity", None),
        ("deflate, br", None),
        ("gzip;q=0.5, identity", None),  # identity preferred
        ("gzip;q=0.5, identity;q=0.4", "gzip"),
        ("gzip;q=abc", None),
        ("br;q=1, gzip;q=0.001", "gzip"),
        ("*;q=0.5, gzip;q=0.1", None),
        ("*;q=0.5", "gzip"),
    ],
)
def test_accept_encoding(accept_encoding, coding):
    assert gzip_accepted(accept_encoding) is (coding == "gzip")


def test_accept_encoding_refusing_gzip_gets_identity(client, big):
    url = f"/v2/studies/{big.study_uid}/series/{big.series_uid(2)}/metadata"
    response = client.get(url, headers={**JSON_ACCEPT, "Accept-Encoding": "gzip;q=0, deflate"})
    assert "Content-Encoding" not in response.headers
    assert len(json.loads(response.data)) == SIZES[2]


def test_a_body_read_while_instances_go_is_still_json(app, big):
    """Instances deleted between the ETag and the body: left out, the array still well formed."""
    index = index_of(app)
    study = big.study_uid
    ids, _ = index.metadata_ids(index.metadata_series(study, big.series_uid(0))[0].id)
    index.delete(study, big.series_uid(0), big.sop_uid(0, 1))
    assert len(index.metadata_texts(ids[:METADATA_BATCH])) == METADATA_BATCH - 1
    for packed, gone in ((False, None), (True, None), (False, 0), (True, 1)):
        answer = metadata_stream(index, (study, None, None), BASE, gzip=packed)
        etag = answer.etag
        if gone is None:
            index.delete(study, big.series_uid(2), big.sop_uid(2, 5 + packed))
        else:  # the first series of the answer
            index.delete(study, big.series_uid(gone))
        body = b"".join(answer.chunks())
        assert (single_gzip_member(body) if packed else body) == joined_answer(app, study)
        assert etag != metadata_stream(index, (study, None, None), BASE, gzip=packed).etag


def test_uris_made_absolute_per_instance_equal_the_whole_text_replaced():
    """Each text's URIs are searched for only from its first backslash: texts with other
    backslashes before, between and after URIs, URIs in sequences, none at all."""
    def uri(n: int) -> str:
        return bulk_data_uri(f"/studies/1.2/series/3.4/instances/5.{n}", f"7FE00010/{n}")

    elements = [
        {"00100010": {"vr": "PN", "Value": [{"Alphabetic": 'Doe^"Jo\\hn"'}]}},  # escapes before
        {"00540016": {"vr": "SQ", "Value": [{"00281201": {"vr": "OW", "BulkDataURI": uri(1)}}]}},
        {"00080070": {"vr": "LO", "Value": ["caf\u00e9 \\ \u0001"]}},  # a \u0001 that is no URI
        {"7FE00010": {"vr": "OB", "BulkDataURI": uri(2)}},
        {"00080060": {"vr": "CS", "Value": ["CT"]}},
    ]
    texts = [
        json.dumps({k: v for e in chosen for k, v in e.items()}, sort_keys=True)
        for chosen in ([], elements, elements[1:2], elements[3:], elements[:1], elements[2:], elements[4:] * 2)
    ]
    texts.append(texts[1] + "")  # the same text twice in a batch
    for base in (BASE, "https://pacs.example.org/dicomweb/v1"):
        joined = joined_absolute_uris([t.encode() for t in texts], base).decode()
        assert joined == absolute_uris(",".join(texts), base)
        assert joined_absolute_uris([t.encode() for t in texts], base, leading_comma=True).decode() == "," + joined
        assert joined.count(base + "/studies/1.2/series/3.4/instances/5.") == 7
        assert "\\u0001/studies" not in joined


def test_crc32_combine():
    parts = [b"", b"[", os.urandom(1), os.urandom(1000), b"x" * 70_000, os.urandom(3)]
    for a in parts:
        for b in parts:
            assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_version_7_database_gets_the_cache_table(tmp_path):
    settings = Settings(blobstore_url=str(tmp_path / "b"), database_url=f"sqlite:///{tmp_path / 'i.db'}")
    app = create_app(settings)
    big = store(app.extensions["dicomserver"].ingestor, (METADATA_BATCH + 1,))
    close_app(app)
    with sqlite3.connect(tmp_path / "i.db") as db:
        db.execute("DROP TABLE series_metadata_cache")
        db.execute("UPDATE schema_info SET version = 7")
    app = create_app(settings)
    try:
        response = app.test_client().get(f"/v2/studies/{big.study_uid}/metadata", headers=GZIP)
        assert len(json.loads(single_gzip_member(response.data))) == METADATA_BATCH + 1
        assert len(cache_rows(app)) == 1
    finally:
        close_app(app)
