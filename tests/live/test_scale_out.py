"""Scale-out: two gunicorn instances (several workers each) on one PostgreSQL and one S3.

Stateless hosts behind a load balancer must behave as one archive: racing STOWs of one
instance store it once, different instances all land, an upsert racing a delete leaves
the new instance or nothing, and the change feed stays unique and gap-free in commit
order. At the end the blob store and the index must agree one to one.
"""
from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import psycopg2
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import start_server, stop_server
from pg_fixtures import start_postgres, stop_postgres
from pydicom.uid import generate_uid
from s3_fixtures import moto_env, shared_moto_server

pytestmark = pytest.mark.live

CLIENTS = 60
PREFIX = "archive"
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two dicomserver instances sharing PostgreSQL and an S3 bucket (moto server mode)."""
    moto = shared_moto_server()
    env = {k: v for k, v in moto_env(moto.url).items() if v is not None}
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"scale-out-{generate_uid()[-12:].replace('.', '')}"
    s3.create_bucket(Bucket=bucket)
    postgres = start_postgres()
    env.update(
        DICOMWEB_BLOBSTORE_URL=f"s3://{bucket}/{PREFIX}",
        DICOMWEB_DATABASE_URL=postgres.url(),
        # All 60 racing uploads may land on one worker: this test is about the race, not the
        # upload limit (tests/live/test_slow_clients.py), so none is refused.
        DICOMWEB_MAX_UPLOADS=str(CLIENTS),
    )
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(tmp_path_factory.mktemp(f"host-{name}"), workers=2, threads=4, env=env))
        yield servers, s3, bucket, postgres
    finally:
        for server in servers:
            stop_server(server)
        stop_postgres(postgres)


def _post(url: str, body: bytes, method: str = "POST") -> requests.Response:
    return requests.request(method, f"{url}/v2/studies", data=body, headers=DICOM, timeout=120)


def _race(calls):
    """Run the calls at the same moment from CLIENTS threads."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _blob_keys(s3, bucket) -> set[str]:
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX + "/"):
        keys.update(item["Key"][len(PREFIX) + 1:] for item in page.get("Contents", []))
    return keys


def _index_keys(postgres) -> set[str]:
    with psycopg2.connect(postgres.url()) as connection, connection.cursor() as cursor:
        cursor.execute('SELECT blob_key FROM "instance"')
        return {row[0] for row in cursor.fetchall()}


def test_same_instance_from_both_hosts_is_stored_once(cluster):
    servers, _s3, _bucket, _ = cluster
    body = to_bytes(make_instance())
    responses = _race([lambda url=servers[i % 2].url: _post(url, body) for i in range(CLIENTS)])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * (CLIENTS - 1), statuses
    for response in responses:
        if response.status_code == 409:
            assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [45070]


def test_different_instances_from_both_hosts_all_land(cluster):
    servers, *_ = cluster
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]
    bodies = [to_bytes(make_instance(study=study, series=series[i % 3], InstanceNumber=i)) for i in range(CLIENTS)]
    responses = _race([lambda i=i: _post(servers[i % 2].url, bodies[i]) for i in range(CLIENTS)])
    assert [r.status_code for r in responses] == [200] * CLIENTS
    for server in servers:  # both hosts see the whole study
        (result,) = requests.get(f"{server.url}/v2/studies?StudyInstanceUID={study}", timeout=30).json()
        assert result["00201208"]["Value"] == [CLIENTS]
        assert result["00201206"]["Value"] == [3]


def test_upsert_racing_delete_leaves_new_instance_or_nothing(cluster):
    servers, s3, bucket, postgres = cluster
    for round_number in range(8):
        ds = make_instance(PatientName=f"Round^{round_number}")
        first = _post(servers[0].url, to_bytes(ds))
        assert first.status_code == 200
        ds.PatientName = f"Replaced^{round_number}"
        replacement = to_bytes(ds)
        url = f"{servers[1].url}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        put, delete = _race(
            [
                lambda replacement=replacement: _post(servers[0].url, replacement, method="PUT"),
                lambda url=url: requests.delete(url, timeout=60),
            ]
        )
        assert put.status_code == 200 and delete.status_code in (204, 404)
        retrieved = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=60)
        if retrieved.status_code == 200:
            assert retrieved.content == replacement
        else:
            assert retrieved.status_code == 404
    assert _blob_keys(s3, bucket) == _index_keys(postgres)


def test_change_feed_is_unique_and_gap_free_in_commit_order(cluster):
    servers, *_ = cluster
    bodies = [to_bytes(make_instance()) for _ in range(CLIENTS)]
    _race([lambda i=i: _post(servers[i % 2].url, bodies[i]) for i in range(CLIENTS)])
    entries, offset = [], 0
    while True:
        page = requests.get(f"{servers[0].url}/v1/changefeed?offset={offset}&limit=100", timeout=30).json()
        if not page:
            break
        entries += page
        offset = page[-1]["sequence"]
    sequences = [e["sequence"] for e in entries]
    assert sequences == list(range(1, len(sequences) + 1))  # unique, no gaps
    timestamps = [e["timestamp"] for e in entries]
    assert timestamps == sorted(timestamps)  # sequence order is commit order
    latest = requests.get(f"{servers[1].url}/v1/changefeed/latest", timeout=30).json()
    assert latest["sequence"] == sequences[-1]


def test_blob_store_and_index_agree_one_to_one(cluster):
    servers, s3, bucket, postgres = cluster
    blobs, rows = _blob_keys(s3, bucket), _index_keys(postgres)
    assert blobs == rows
    assert len(rows) > CLIENTS  # the earlier tests stored plenty
    # and every row's blob is served, through either host
    with psycopg2.connect(postgres.url()) as connection, connection.cursor() as cursor:
        cursor.execute(
            'SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid, i.blob_key FROM "instance" i '
            'JOIN "series" se ON se.id = i.series_id JOIN "study" st ON st.id = i.study_id LIMIT 5'
        )
        instances = cursor.fetchall()
    for study, series, sop, key in instances:
        response = requests.get(
            f"{servers[1].url}/v2/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
            timeout=30,
        )
        assert response.status_code == 200
        body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{key}")["Body"].read()
        assert response.content == body
        assert io.BytesIO(body).read(132)[128:] == b"DICM"
