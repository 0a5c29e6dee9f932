"""QIDO paging: `limit`/`offset` walk a query's matches in arrival order, each exactly once.

The page query selects only ids, over the level's table and the parent tables its
filters use (query.search); these tests page through filters on every level's own
and parent attributes, with pages of several sizes, and compare with the full answer.
"""
from __future__ import annotations

import datetime as dt

import pytest
from dicom_factory import make_instance, to_bytes

STUDIES = 24
FAMILIES = ("SMITH", "JONES", "SMYTHE")


def _spec(number: int) -> dict:
    # Dates deliberately out of arrival order, several studies per date.
    date = dt.date(2024, 1, 1) + dt.timedelta(days=(number * 7) % 10)
    return dict(
        study=f"1.7.{number + 1}",
        PatientName=f"{FAMILIES[number % 3]}^P{number}",
        PatientID=f"PID{number % 5}",
        StudyDate=date.strftime("%Y%m%d"),
        StudyTime=f"{(number * 5) % 24:02d}0000",
    )


@pytest.fixture
def archive(client):
    """24 studies; every third has a second series (MR) with two instances."""
    stored = []  # (study, series, sop, spec) in arrival order
    for number in range(STUDIES):
        spec = _spec(number)
        series = [(f"{spec['study']}.1", "CT", 1)]
        if number % 3 == 0:
            series.append((f"{spec['study']}.2", "MR", 2))
        for series_uid, modality, count in series:
            for k in range(count):
                sop = f"{series_uid}.{k + 1}"
                ds = make_instance(sop=sop, series=series_uid, Modality=modality, InstanceNumber=k + 1, **spec)
                response = client.post("/v2/studies", data=to_bytes(ds), headers={"Content-Type": "application/dicom"})
                assert response.status_code == 200, response.data
                stored.append((spec["study"], series_uid, sop, spec, modality))
    return stored


TAG = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}


def _get(client, path: str, params: dict) -> list[str]:
    response = client.get(path, query_string=params, headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.data
    tag = TAG[path.rsplit("/", 1)[-1]]
    return [item[tag]["Value"][0] for item in response.json]


def _paged(client, path: str, params: dict, limit: int) -> list[str]:
    found, offset = [], 0
    while True:
        page = _get(client, path, dict(params, limit=limit, offset=offset))
        assert len(page) <= limit
        if not page:
            return found
        found += page
        offset += limit


def _unique(values):
    return list(dict.fromkeys(values))


def _in_range(spec, lower: str, upper: str) -> bool:
    return lower <= spec["StudyDate"] <= upper


CASES = [
    # (path, params, which stored rows match, level)
    ("/v2/studies", {"StudyDate": "20240103-20240107"}, lambda s: _in_range(s[3], "20240103", "20240107"), 0),
    ("/v2/studies", {"StudyDate": "20240105-"}, lambda s: s[3]["StudyDate"] >= "20240105", 0),
    ("/v2/studies", {"PatientName": "SM*"}, lambda s: s[3]["PatientName"].startswith("SM"), 0),
    (
        "/v2/studies",
        {"StudyDate": "20240102-20240108", "StudyTime": "0800-2000"},
        lambda s: "20240102080000" <= s[3]["StudyDate"] + s[3]["StudyTime"] <= "20240108200000",
        0,
    ),
    ("/v2/series", {"StudyDate": "20240103-20240107"}, lambda s: _in_range(s[3], "20240103", "20240107"), 1),
    ("/v2/series", {"Modality": "MR"}, lambda s: s[4] == "MR", 1),
    ("/v2/instances", {}, lambda s: True, 2),
    (
        "/v2/instances",
        {"PatientName": "SMI*", "Modality": "MR"},
        lambda s: s[3]["PatientName"].startswith("SMI") and s[4] == "MR",
        2,
    ),
    ("/v2/instances", {"PatientID": "PID3"}, lambda s: s[3]["PatientID"] == "PID3", 2),
    ("/v2/studies/1.7.4/instances", {}, lambda s: s[0] == "1.7.4", 2),
    ("/v2/studies/1.7.4/series/1.7.4.2/instances", {}, lambda s: s[1] == "1.7.4.2", 2),
    ("/v2/studies/1.7.7/series", {"Modality": "CT"}, lambda s: s[0] == "1.7.7" and s[4] == "CT", 1),
]


@pytest.mark.parametrize("path,params,matches,level", CASES, ids=[f"{c[0]}?{c[1]}" for c in CASES])
def test_pages_yield_every_match_once_in_arrival_order(client, archive, path, params, matches, level):
    expected = _unique(row[level] for row in archive if matches(row))
    assert expected, "the case should match something"
    assert _get(client, path, dict(params, limit=1000)) == expected
    for limit in (1, 4, 7):
        assert _paged(client, path, params, limit) == expected


def test_pages_stay_consistent_when_studies_arrive_between_them(client, archive):
    """New studies are appended to arrival order: a later page neither repeats nor skips a match."""
    params = {"StudyDate": "20240101-20240110", "limit": 5}
    first = _get(client, "/v2/studies", dict(params, offset=0))
    new = make_instance(study="1.7.99", series="1.7.99.1", sop="1.7.99.1.1", **{
        k: v for k, v in _spec(0).items() if k != "study"
    })
    response = client.post("/v2/studies", data=to_bytes(new), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200
    rest = _paged(client, "/v2/studies", {"StudyDate": "20240101-20240110"}, 5)[5:]
    assert first + rest == [f"1.7.{n + 1}" for n in range(STUDIES)] + ["1.7.99"]


def test_postgres_indexes_serve_prefix_wildcards_and_date_ranges(postgres, tmp_path):
    """A new PostgreSQL index has the prefix/date indexes, and a version 5 one gets them by migration.

    Under the C.UTF-8 or en_US collations a default B-tree cannot serve LIKE 'SMI%';
    the text_pattern_ops index can, whatever the database's collation.
    """
    import psycopg2

    from dicomserver import Settings, close_app, create_app
    from dicomserver.index.schema import SCHEMA_VERSION

    admin = psycopg2.connect(postgres.url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("DROP DATABASE IF EXISTS scale_indexes")
        cursor.execute("CREATE DATABASE scale_indexes")
    admin.close()
    url = postgres.url("scale_indexes")

    def open_index():
        app = create_app(Settings(blobstore_url=str(tmp_path / "blobs"), database_url=url))
        close_app(app)

    def indexes(cursor) -> set[str]:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'study'")
        return {row[0] for row in cursor.fetchall()}

    wanted = {"study_patient_name_key_prefix", "study_study_date_id"}
    open_index()
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            assert wanted <= indexes(cursor)
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("EXPLAIN SELECT id FROM study WHERE patient_name_key LIKE 'SMI%' ORDER BY id LIMIT 101")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "study_patient_name_key_prefix" in plan, plan
            for name in wanted:
                cursor.execute(f'DROP INDEX "{name}"')
            cursor.execute("UPDATE schema_info SET version = 5")
        open_index()
        with connection.cursor() as cursor:
            assert wanted <= indexes(cursor)
            cursor.execute("SELECT version FROM schema_info")
            assert cursor.fetchone() == (SCHEMA_VERSION,)
    finally:
        connection.close()
