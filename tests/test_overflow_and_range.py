"""Numbers beyond what the index holds, and HTTP Range as RFC 9110 §14 defines it.

A query parameter or stored value of any length is answered (200, 206, 400 or 416),
never a 500: SQL's LIMIT/OFFSET and the change feed's sequences hold signed 64 bits,
the index's integer columns the range of IS (PostgreSQL's INTEGER). Both databases
run every HTTP test (the `client` fixture).
"""
from __future__ import annotations

import pydicom
import pytest
from dicom_factory import make_instance, to_bytes
from dicom_samples import RGB_DEFLATED, sample
from pydicom import config

from dicomserver.bulkdata import byte_range
from dicomserver.errors import InvalidQuery
from dicomserver.matching import INT64_MAX, parse_count, parse_query
from dicomserver.searchable import index_columns, series_columns

HUGE = "9" * 30  # beyond 64 bits
HUGER = "9" * 5000  # beyond what Python converts to int from text by default
LARGE_PRIVATE = bytes(range(256)) * 20  # 5120 bytes: served as bulk data


def _store(client, ds):
    with config.disable_value_validation():
        data = to_bytes(ds)
    response = client.post("/v2/studies", data=data, headers={"Content-Type": "application/dicom"})
    assert response.status_code in (200, 202), response.data
    return response


def _instance(**attributes):
    """make_instance, with values pydicom would refuse to set (invalid VR content)."""
    ds = make_instance()
    with config.disable_value_validation():
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return ds


def _uid_list(response, tag: str) -> list[str]:
    assert response.status_code == 200, response.data
    return [r[tag]["Value"][0] for r in response.json]


# -- QIDO: limit and offset ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/studies", "/v2/series", "/v2/instances"])
@pytest.mark.parametrize("offset", [HUGE, HUGER, str(INT64_MAX), str(INT64_MAX + 1), "0" * 40 + "1" + HUGE])
def test_qido_offset_beyond_64_bits_is_an_empty_page(client, path, offset):
    _store(client, make_instance())
    response = client.get(f"{path}?offset={offset}")
    assert response.status_code == 200, response.data
    assert response.json == []


def test_qido_offset_with_leading_zeros_is_its_value(client):
    ds = make_instance()
    _store(client, make_instance())
    _store(client, ds)
    assert _uid_list(client.get("/v2/studies?offset=" + "0" * 40 + "1"), "0020000D") == [ds.StudyInstanceUID]


@pytest.mark.parametrize("limit", [HUGE, HUGER])
def test_qido_limit_beyond_64_bits_is_the_servers_maximum(client, limit):
    _store(client, make_instance())
    _store(client, make_instance())
    response = client.get(f"/v2/studies?limit={limit}&offset=1")
    assert len(_uid_list(response, "0020000D")) == 1
    assert "Warning" not in response.headers  # no further results: nothing was cut off
    query = parse_query([("limit", limit)], "study", default_limit=100, max_limit=1000)
    assert query.limit == 1000 and query.limit_was_capped


@pytest.mark.parametrize(
    "query,named",
    [
        ("offset=-1", "offset"),
        ("offset=-" + HUGE, "offset"),
        ("offset=1_0", "offset"),  # int() would read 10
        ("offset=%D9%A1", "offset"),  # ARABIC-INDIC DIGIT ONE: int() would read 1
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
    ],
)
def test_qido_malformed_counts_are_400_naming_the_parameter(client, query, named):
    response = client.get(f"/v2/studies?{query}")
    assert response.status_code == 400
    message = response.get_data(as_text=True)
    assert message.startswith(named) and len(message) < 200, message


# -- QIDO: integer matching ------------------------------------------------------------


@pytest.mark.parametrize(
    "query,named",
    [
        (f"InstanceNumber={HUGE}", "InstanceNumber"),
        (f"InstanceNumber=-{HUGE}", "InstanceNumber"),
        (f"InstanceNumber={HUGER}", "InstanceNumber"),
        ("InstanceNumber=2147483648", "InstanceNumber"),  # one past the largest IS
        ("InstanceNumber=-2147483649", "InstanceNumber"),
        (f"SeriesNumber={HUGE}", "SeriesNumber"),
        ("SeriesNumber=1.5", "SeriesNumber"),
    ],
)
def test_integer_matching_out_of_range_is_400_naming_the_attribute(client, query, named):
    _store(client, make_instance())
    response = client.get(f"/v2/instances?{query}")
    assert response.status_code == 400
    message = response.get_data(as_text=True)
    assert message.startswith(named) and len(message) < 200, message


def test_integer_matching_at_the_ends_of_the_is_range(client):
    low, high = make_instance(InstanceNumber=-(2**31)), make_instance(InstanceNumber=2**31 - 1)
    _store(client, low)
    _store(client, high)
    assert _uid_list(client.get("/v2/instances?InstanceNumber=2147483647"), "00080018") == [high.SOPInstanceUID]
    assert _uid_list(client.get("/v2/instances?InstanceNumber=-2147483648"), "00080018") == [low.SOPInstanceUID]
    assert _uid_list(client.get("/v2/instances?InstanceNumber=%2B0002147483647"), "00080018") == [high.SOPInstanceUID]


def test_number_of_frames_is_not_a_matching_key_whatever_its_value(client):
    _store(client, make_instance())
    response = client.get(f"/v2/instances?NumberOfFrames={HUGE}")
    assert response.status_code == 200 and len(response.json) == 1
    assert "NumberOfFrames" in response.headers["Warning"]


# -- STOW: integers no column can hold ---------------------------------------------------


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE[:-1], "999999999999"])  # 30 digits; 12 digits beyond IS's range
def test_stow_of_an_instance_number_no_column_holds_stores_it_unindexed(client, value):
    ds = _instance(InstanceNumber=value, SeriesNumber=value)
    _store(client, ds)
    found = client.get(f"/v2/instances?SOPInstanceUID={ds.SOPInstanceUID}&includefield=SeriesNumber")
    (result,) = found.json
    # Returned with every digit the file holds, though not matched on.
    assert result["00200013"]["Value"] == [int(value)] and result["00200011"]["Value"] == [int(value)]
    (meta,) = client.get(
        f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"
    ).json
    assert meta["00200013"]["Value"] == [int(value)]
    assert client.get("/v2/instances?InstanceNumber=1").json == []  # its column is NULL, matches nothing
    assert client.get(f"/v2/series?SeriesInstanceUID={ds.SeriesInstanceUID}").status_code == 200
    frames = client.get(
        f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1",
        headers={"Accept": "application/octet-stream"},
    )
    assert frames.status_code == 200


def test_stow_reports_an_instance_number_of_30_digits_as_invalid(client):
    response = _store(client, _instance(InstanceNumber=HUGE))
    assert response.status_code == 202  # stored, with the B006 warning of validation.py
    (item,) = response.json["00081199"]["Value"]
    assert item["00081196"]["Value"] == [45062]


def test_series_rederived_from_an_instance_with_a_huge_series_number(client):
    """Deleting a series' latest instance re-reads the previous one's columns from its JSON."""
    first = _instance(SeriesNumber=HUGE)
    second = make_instance(study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
    _store(client, first)
    _store(client, second)
    series_url = f"/v2/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    assert client.delete(f"{series_url}/instances/{second.SOPInstanceUID}").status_code in (200, 204)
    assert _uid_list(client.get(f"/v2/series?SeriesInstanceUID={first.SeriesInstanceUID}"), "0020000E") == [
        first.SeriesInstanceUID
    ]
    assert client.get("/v2/series?SeriesNumber=1").json == []


def test_index_columns_leave_what_no_column_holds_null():
    meta = {
        "00200013": {"vr": "IS", "Value": [int(HUGE)]},
        "00200011": {"vr": "IS", "Value": [2**31]},
        "00280008": {"vr": "IS", "Value": [-(2**31) - 1]},
        "00280010": {"vr": "US", "Value": [65535]},
    }
    columns = index_columns(meta, invalid=())
    assert columns.instance["instance_number"] is None
    assert columns.instance["number_of_frames"] is None
    assert columns.instance["rows"] == 65535
    assert columns.series["series_number"] is None
    # Re-read from stored JSON (invalid not known): validity is checked here.
    assert series_columns({"00200011": {"vr": "IS", "Value": [int(HUGE)]}})["series_number"] is None
    assert series_columns({"00200011": {"vr": "IS", "Value": [7]}})["series_number"] == 7
    # Refused by validation (STOW passes the set): not indexed, like a text column.
    assert index_columns({"00200013": {"vr": "IS", "Value": [7]}}, invalid={"00200013"}).instance["instance_number"] is None


def test_parse_count_never_converts_a_number_beyond_64_bits():
    assert parse_count("offset", HUGER, minimum=0, clamp=True) == INT64_MAX
    assert parse_count("offset", " 12 ", minimum=0) == 12
    with pytest.raises(InvalidQuery, match=r"^limit must be between 1 and 100"):
        parse_count("limit", HUGER, minimum=1, maximum=100)


# -- change feed ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("offset", [HUGE, HUGER, str(INT64_MAX)])
def test_changefeed_offset_beyond_64_bits_is_an_empty_page(client, version, offset):
    _store(client, make_instance())
    response = client.get(f"/{version}/changefeed?offset={offset}")
    assert response.status_code == 200, response.data
    assert response.json == []


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("query", [f"limit={HUGE}", f"limit={HUGER}", "limit=0", "offset=-1", "offset=1_0"])
def test_changefeed_malformed_counts_are_400_naming_the_parameter(client, version, query):
    response = client.get(f"/{version}/changefeed?{query}")
    assert response.status_code == 400
    message = response.get_data(as_text=True)
    assert message.startswith(query.split("=")[0]) and len(message) < 200, message


@pytest.mark.parametrize(
    "query,entries",
    [
        ("startTime=0001-01-01T00:00:00%2B01:00", 1),  # before year 1 in UTC: from the beginning
        ("endTime=9999-12-31T23:59:59-01:00", 1),  # after year 9999 in UTC: to the end
        ("startTime=9999-12-31T23:59:59-01:00", 0),
        ("endTime=0001-01-01T00:00:00%2B01:00", 0),
        ("startTime=0001-01-01T00:00:00%2B01:00&endTime=9999-12-31T23:59:59-01:00", 1),
    ],
)
def test_changefeed_times_at_the_ends_of_the_calendar(client, query, entries):
    _store(client, make_instance())
    response = client.get(f"/v2/changefeed?{query}")
    assert response.status_code == 200, response.data
    assert len(response.json) == entries


@pytest.mark.parametrize("query", ["startTime=10000-01-01T00:00:00Z", f"endTime={HUGER}", "startTime=2024-01-01T00:00:00"])
def test_changefeed_malformed_times_are_400(client, query):
    response = client.get(f"/v2/changefeed?{query}")
    assert response.status_code == 400
    message = response.get_data(as_text=True)
    assert message.startswith(query.split("=")[0]) and len(message) < 200, message


# -- the Range parser (RFC 9110 §14) ----------------------------------------------------


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, None),
        ("bytes=0-4", range(5)),
        ("bytes=2-", range(2, 10)),
        ("bytes=9-9", range(9, 10)),
        ("bytes=-3", range(7, 10)),
        # §14.1.1: a suffix-length of 0 is not satisfiable.
        ("bytes=-0", range(0)),
        ("bytes=-000", range(0)),
        # §14.1.2: a suffix longer than the representation is all of it ...
        ("bytes=-11", range(10)),
        (f"bytes=-{HUGE}", range(10)),
        (f"bytes=-{HUGER}", range(10)),
        # ... and a last-pos past the end is the end.
        ("bytes=5-99", range(5, 10)),
        (f"bytes=5-{HUGE}", range(5, 10)),
        # A first-pos at or past the end: not satisfiable (416).
        ("bytes=10-", range(0)),
        ("bytes=10-20", range(0)),
        (f"bytes={HUGE}-", range(0)),
        (f"bytes={HUGER}-{HUGER}", range(0)),
        # Leading zeros are the same number.
        ("bytes=" + "0" * 30 + "1-2", range(1, 3)),
        # §14.1.1: a last-pos before its first-pos is invalid: ignored.
        ("bytes=5-2", None),
        (f"bytes={HUGE}-5", None),
        # More than one range: ignored (no multipart/byteranges).
        ("bytes=0-1,3-4", None),
        ("bytes=0-1,-0", None),
        ("bytes=0-1, 0-1", None),
        # Empty list elements are no ranges (§5.6.1.2).
        ("bytes=0-1,", range(2)),
        ("bytes=, 0-1 ,,", range(2)),
        ("bytes=,", None),
        ("bytes=", None),
        # Units: case-insensitive; any other is ignored (§14.2).
        ("BYTES=0-1", range(2)),
        ("items=0-1", None),
        ("bytes", None),
        ("0-1", None),
        # Blanks around the unit, "=" and list elements are tolerated; inside a range they are a syntax error.
        ("  bytes=0-1  ", range(2)),
        ("bytes = 0-1", range(2)),
        ("bytes=0 - 1", None),
        ("bytes=0- 1", None),
        ("bytes=- 1", None),
        # Anything but ASCII digits is a syntax error.
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("bytes=+1-2", None),
        ("bytes=1_0-20", None),
        ("bytes=\u0661-\u0662", None),  # ARABIC-INDIC DIGITS: int() would read 1 and 2
        ("bytes=1-2-3", None),
        ("bytes=0x1-2", None),
    ],
)
def test_byte_range(header, expected):
    assert byte_range(header, 10) == expected


def test_byte_range_of_an_empty_representation():
    assert byte_range("bytes=0-", 0) == range(0)
    assert byte_range("bytes=-0", 0) == range(0)
    assert byte_range("bytes=-5", 0) is None  # satisfiable, but no Content-Range describes it: sent whole


def test_byte_range_with_if_range_is_ignored():
    """§13.1.5: Range is honoured only if If-Range names the current validator; bulk data has none."""
    assert byte_range("bytes=0-4", 10, if_range='"abc"') is None
    assert byte_range("bytes=0-4", 10, if_range="Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert byte_range("bytes=-0", 10, if_range="") is None


# -- Range through HTTP -----------------------------------------------------------------


@pytest.fixture
def value_url(client):
    """The URL of a 5120-byte bulk data value."""
    ds = make_instance()
    ds.add_new(0x00090010, "LO", "DICOMSERVER TEST")
    ds.add_new(0x00091010, "OB", LARGE_PRIVATE)
    _store(client, ds)
    return f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulkdata/00091010"


def _get(client, url, range_header, **headers):
    return client.get(url, headers={"Accept": "application/octet-stream", "Range": range_header, **headers})


@pytest.mark.parametrize(
    "header,first,last",
    [
        ("bytes=0-9", 0, 9),
        ("bytes=-10", 5110, 5119),
        ("bytes=-99999", 0, 5119),  # suffix longer than the value: all of it
        (f"bytes=-{HUGE}", 0, 5119),
        (f"bytes=100-{HUGE}", 100, 5119),
        ("  bytes=5-6 ,", 5, 6),
    ],
)
def test_range_served_as_206(client, value_url, header, first, last):
    response = _get(client, value_url, header)
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/5120"
    assert response.data == LARGE_PRIVATE[first : last + 1]


@pytest.mark.parametrize("header", ["bytes=-0", "bytes=5120-", "bytes=5120-6000", f"bytes={HUGE}-", f"bytes={HUGER}-"])
def test_unsatisfiable_range_is_416(client, value_url, header):
    response = _get(client, value_url, header)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */5120"
    assert response.data == b"the requested range is not satisfiable: the value is 5120 bytes long\n"
    assert response.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "header", ["bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=0 - 1", "bytes=a-", "bytes=", f"bytes={HUGE}-1"]
)
def test_range_that_is_ignored_answers_200_with_the_whole_value(client, value_url, header):
    response = _get(client, value_url, header)
    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert response.data == LARGE_PRIVATE


def test_ignored_range_leaves_the_default_framing_multipart(client, value_url):
    response = client.get(value_url, headers={"Range": "bytes=5-2"})  # Accept */*: as without a Range
    assert response.status_code == 200
    assert response.mimetype == "multipart/related"
    ranged = client.get(value_url, headers={"Range": "bytes=0-1"})  # a Range implies one part
    assert ranged.status_code == 206 and ranged.data == LARGE_PRIVATE[:2]


def test_if_range_makes_the_range_ignored(client, value_url):
    response = _get(client, value_url, "bytes=0-9", **{"If-Range": '"some-etag"'})
    assert response.status_code == 200 and response.data == LARGE_PRIVATE


def test_head_ignores_range(client, value_url):
    """RFC 9110 §14.2: range handling is defined for GET only."""
    for header in ("bytes=0-9", "bytes=-0"):
        response = client.head(value_url, headers={"Accept": "application/octet-stream", "Range": header})
        assert response.status_code == 200
        assert "Content-Range" not in response.headers and response.content_length == 5120


def test_range_on_pixel_data_found_by_parsing_the_file(client):
    """A deflated file's Pixel Data has no recorded offsets; the same Range rules apply."""
    path = sample(RGB_DEFLATED)
    ds = pydicom.dcmread(path)
    response = client.post("/v2/studies", data=path.read_bytes(), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.data
    url = f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    value = ds.PixelData
    ranged = _get(client, url, "bytes=10-19")
    assert ranged.status_code == 206 and ranged.data == value[10:20]
    assert ranged.headers["Content-Range"] == f"bytes 10-19/{len(value)}"
    assert _get(client, url, "bytes=-0").status_code == 416
    whole = _get(client, url, "bytes=5-2")
    assert whole.status_code == 200 and whole.data == value
