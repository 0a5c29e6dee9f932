"""Tests for dicomserver.multipart: the streaming multipart/related reader and writer."""
from __future__ import annotations

import email
import email.policy
import hashlib
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from requests_toolbelt.multipart.decoder import MultipartDecoder
from urllib3.filepost import encode_multipart_formdata

from dicomserver.multipart import (
    END,
    NEED_DATA,
    PART_END,
    End,
    MultipartError,
    MultipartReader,
    MultipartWriter,
    PartData,
    PartEnd,
    PartStart,
    iter_events,
)

CT_DICOM = {"content-type": "application/dicom"}


# ----------------------------------------------------------------------- helpers


def stream_parts(parts, writer):
    """A whole multipart body for (headers, body chunks) pairs, chunk by chunk."""
    for headers, chunks in parts:
        yield writer.part_head(headers)
        for chunk in chunks:
            if chunk:
                yield chunk
    yield writer.close()


def drain(reader, out):
    """Pull events until NEED_DATA or End; append them to `out` (End only once)."""
    while not (out and out[-1] is END):
        event = reader.next_event()
        if event is NEED_DATA:
            return
        out.append(event)
        if event is END:
            return


def feed_all(body, boundary=None, sizes=None, **kwargs):
    """Feed `body` in pieces of the given sizes (cycled; whole body if None), then close."""
    reader = MultipartReader(boundary, **kwargs)
    events = []
    sizes = sizes or [len(body) or 1]
    pos, i = 0, 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        reader.feed(body[pos:pos + n])
        pos += n
        i += 1
        drain(reader, events)
    reader.close()
    drain(reader, events)
    return events


def events_with_error(body, boundary=None, sizes=None):
    """Like feed_all, but returns (events so far, error) instead of raising."""
    reader = MultipartReader(boundary)
    events = []
    sizes = sizes or [len(body) or 1]
    try:
        pos, i = 0, 0
        while pos < len(body):
            reader.feed(body[pos:pos + sizes[i % len(sizes)]])
            pos += sizes[i % len(sizes)]
            i += 1
            drain(reader, events)
        reader.close()
        drain(reader, events)
    except MultipartError as exc:
        return events, exc
    return events, None


def unread(reader):
    """The input the reader holds back, not yet handed out."""
    return bytes(reader._buffer[reader._start:])


def merged(events):
    """Join consecutive PartData events: chunking-independent form of an event list."""
    out = []
    for event in events:
        if isinstance(event, PartData) and out and isinstance(out[-1], PartData):
            out[-1] = PartData(bytes(out[-1].data) + bytes(event.data))
        else:
            out.append(event)
    return out


def parts_of(events):
    """[(headers, body bytes)] of the completed parts; asserts the event grammar."""
    parts, current = [], None
    for event in events:
        if isinstance(event, PartStart):
            assert current is None
            current = (event.headers, bytearray())
        elif isinstance(event, PartData):
            assert current is not None and event.data
            current[1].extend(event.data)
        elif isinstance(event, PartEnd):
            assert current is not None
            parts.append((current[0], bytes(current[1])))
            current = None
        else:
            assert isinstance(event, End) and current is None
    return parts


def P(headers=None, data=None):
    """Expected event sequence for one part."""
    seq = [PartStart(dict(headers or {}))]
    if data:
        seq.append(PartData(data))
    seq.append(PART_END)
    return seq


# ------------------------------------------------------------- accepted input forms

SIMPLE = (
    b"--bb\r\nContent-Type: application/dicom\r\n\r\nFIRST\r\n"
    b"--bb\r\nContent-Type: application/dicom\r\n\r\nSECOND\r\n--bb--\r\n"
)
SIMPLE_EVENTS = P(CT_DICOM, b"FIRST") + P(CT_DICOM, b"SECOND") + [END]


@pytest.mark.parametrize("boundary", ["bb", None])
def test_simple_body_exact_events(boundary):
    reader = MultipartReader(boundary)
    assert reader.next_event() is NEED_DATA
    reader.feed(SIMPLE)
    events = []
    drain(reader, events)
    assert events == SIMPLE_EVENTS
    assert reader.boundary == "bb"
    assert events[0].content_type == "application/dicom"


@pytest.mark.parametrize(
    "boundary, line",
    [
        ("0123456789", b"preamble with -- dashes,\r\n--01234 and\r\n--0123456788 lines\r\n"),
        (None, b"preamble with -- dashes and --01234 in it\r\n\r\n-\n"),
    ],
)
def test_long_preamble_is_discarded_as_it_streams(boundary, line):
    reader = MultipartReader(boundary)
    for _ in range(2000):
        reader.feed(line)
        assert reader.next_event() is NEED_DATA
        assert len(unread(reader)) < len(line)
    reader.feed(b"one very long preamble line without a newline " * 1000)
    assert reader.next_event() is NEED_DATA
    assert len(unread(reader)) < 20
    reader.feed(b"\r\n--0123456789\r\n\r\nx\r\n--0123456789--")
    events = []
    drain(reader, events)
    assert events == P({}, b"x") + [END]


def test_boundary_none_is_discovered_from_first_line():
    reader = MultipartReader()
    assert reader.boundary is None
    reader.feed(b"--abc'()+_,-./:=?\r\n")
    assert reader.next_event() is NEED_DATA
    assert reader.boundary == "abc'()+_,-./:=?"


@pytest.mark.parametrize("boundary", ["bb", None])
def test_leading_crlf_and_no_crlf_after_close(boundary):
    # dicomweb-client: CRLF before the first delimiter, nothing after "--bb--".
    body = b"\r\n--bb\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--bb--"
    assert feed_all(body, boundary) == P(CT_DICOM, b"DICM") + [END]


@pytest.mark.parametrize("boundary", ["bb", None])
def test_preamble_text_lines_are_ignored(boundary):
    body = (
        b"This is a preamble.\r\n\r\nIt has -- dashes and --bb inside lines.\n"
        b"--bb\r\nContent-Type: text/plain\r\n\r\nx\r\n--bb--\r\n"
    )
    assert feed_all(body, boundary) == P({"content-type": "text/plain"}, b"x") + [END]


@pytest.mark.parametrize("boundary", ["bb", None])
def test_transport_padding_after_delimiters(boundary):
    body = (
        b"--bb \t \r\nContent-Type: a/b\r\n\r\none\r\n"
        b"--bb\t\r\nContent-Type: a/b\r\n\r\ntwo\r\n--bb--  \r\n"
    )
    ct = {"content-type": "a/b"}
    assert feed_all(body, boundary) == P(ct, b"one") + P(ct, b"two") + [END]


@pytest.mark.parametrize("boundary", ["bb", None])
def test_epilogue_is_ignored(boundary):
    body = SIMPLE + b"epilogue\r\n--bb\r\ngarbage without colon\r\n\r\n--bb--"
    assert feed_all(body, boundary) == SIMPLE_EVENTS


def test_input_after_end_is_discarded_and_end_repeats():
    reader = MultipartReader("bb")
    reader.feed(SIMPLE)
    events = []
    drain(reader, events)
    assert events[-1] is END
    reader.feed(b"x" * 100)
    assert len(reader._buffer) == 0  # not even held until the next call
    assert reader.next_event() is END
    reader.close()
    assert reader.next_event() is END


def test_form_data_parts():
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file1"; filename="a.dcm"\r\n'
        b"Content-Type: application/dicom\r\n\r\nAAA\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file2"; filename="b.dcm"\r\n\r\nBBB\r\n'
        b"--XyZ--\r\n"
    )
    assert feed_all(body, "XyZ") == (
        P(
            {
                "content-disposition": 'form-data; name="file1"; filename="a.dcm"',
                "content-type": "application/dicom",
            },
            b"AAA",
        )
        + P({"content-disposition": 'form-data; name="file2"; filename="b.dcm"'}, b"BBB")
        + [END]
    )


@pytest.mark.parametrize("boundary", ["bb", None])
def test_parts_without_headers(boundary):
    body = b"--bb\r\n\r\nno headers\r\n--bb\r\n\r\n\r\n--bb--"
    assert feed_all(body, boundary) == P({}, b"no headers") + P({}, b"") + [END]


def test_header_lines_with_bare_lf_and_odd_spacing():
    body = b"--bb\nContent-Type:  a/b  \nX-Other:v\n\nDATA\r\n--bb--"
    assert feed_all(body, "bb") == P({"content-type": "a/b", "x-other": "v"}, b"DATA") + [END]


def test_folded_header_lines_are_joined():
    body = (
        b"--bb\r\nContent-Disposition: form-data;\r\n  name=\"f\";\r\n\tfilename=\"x.dcm\"\r\n"
        b"Content-Type: application/dicom\r\n\r\nD\r\n--bb--"
    )
    [start, *_] = feed_all(body, "bb")
    assert start.headers == {
        "content-disposition": 'form-data; name="f"; filename="x.dcm"',
        "content-type": "application/dicom",
    }


def test_header_names_lower_cased_and_duplicates_joined():
    body = b"--bb\r\nX-A: 1\r\nx-a: 2\r\nCONTENT-TYPE: a/b\r\n\r\n\r\n--bb--"
    [start, *_] = feed_all(body, "bb")
    assert start.headers == {"x-a": "1, 2", "content-type": "a/b"}
    assert start.content_type == "a/b"


def test_header_values_may_be_utf8():
    body = "--bb\r\nContent-Disposition: attachment; filename=\"ü.dcm\"\r\n\r\n\r\n--bb--"
    [start, *_] = feed_all(body.encode("utf-8"), "bb")
    assert start.headers["content-disposition"] == 'attachment; filename="ü.dcm"'


@pytest.mark.parametrize("boundary", ["bb", None])
def test_delimiter_split_at_every_position(boundary):
    body = b"\r\n" + SIMPLE.replace(b"--bb\r\n", b"--bb \r\n", 1)
    for cut in range(len(body) + 1):
        reader = MultipartReader(boundary)
        events = []
        reader.feed(body[:cut])
        drain(reader, events)
        reader.feed(body[cut:])
        reader.close()
        drain(reader, events)
        assert merged(events) == SIMPLE_EVENTS, cut
    assert merged(feed_all(body, boundary, sizes=[1])) == SIMPLE_EVENTS


def test_boundary_lookalikes_inside_data_are_data():
    data = (
        b"--bb at start, x--bb mid, \n--bb after bare LF, \r--bb after CR,"
        b" \r\n--b then \r\n--x then \r\n- then \r\n\r\n-- and --bb-- ends\r\n\r"
    )
    body = b"--bb\r\nContent-Type: a/b\r\n\r\n" + data + b"\r\n--bb--"
    expected = P({"content-type": "a/b"}, data) + [END]
    assert merged(feed_all(body, "bb")) == expected
    for size in (1, 2, 3, 5, 7):
        assert merged(feed_all(body, "bb", sizes=[size])) == expected


def test_data_held_back_only_when_it_could_start_a_delimiter():
    reader = MultipartReader("boundary")
    reader.feed(b"--boundary\r\n\r\nabc\r\n--bou")
    events = []
    drain(reader, events)
    assert events == [PartStart({}), PartData(b"abc")]
    assert unread(reader) == b"\r\n--bou"
    reader.feed(b"x")  # not a delimiter after all: released as data
    drain(reader, events)
    assert events[-1] == PartData(b"\r\n--boux")
    assert unread(reader) == b""


@pytest.mark.parametrize("boundary", ["bb", None])
def test_empty_parts(boundary):
    body = b"--bb\r\nContent-Type: a/b\r\n\r\n\r\n--bb\r\nContent-Type: a/b\r\n\r\n\r\n--bb--"
    ct = {"content-type": "a/b"}
    assert feed_all(body, boundary) == P(ct) + P(ct) + [END]


@pytest.mark.parametrize("body", [b"--bb--", b"--bb--\r\n", b"\r\n--bb--\r\n", b"pre\r\n--bb--"])
@pytest.mark.parametrize("boundary", ["bb", None])
def test_body_with_only_close_delimiter(body, boundary):
    reader = MultipartReader(boundary)
    reader.feed(body)
    reader.close()
    assert reader.next_event() is END
    assert reader.boundary == "bb"


def test_close_delimiter_without_crlf_waits_for_eof_when_discovering():
    reader = MultipartReader()
    reader.feed(b"--bb--")
    assert reader.next_event() is NEED_DATA  # "--bb--..." could still be a longer boundary
    reader.close()
    assert reader.next_event() is END


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize("boundary", ["bb", None])
def test_empty_body_is_an_error(boundary):
    with pytest.raises(MultipartError, match="no multipart boundary line found"):
        feed_all(b"", boundary)


@pytest.mark.parametrize(
    "body, boundary",
    [
        (b"just some text\r\nno delimiter\r\n", None),
        (b"just some text\r\nno delimiter", None),
        (b"\r\n\r\n", None),
        (b"-", None),
        (b"--other\r\n\r\nx\r\n--other--\r\n", "bb"),
        (b"x--bb\r\n\r\nx\r\n", None),
        (b"x--bb\r\n\r\nx\r\n", "bb"),
    ],
)
def test_no_delimiter_line_is_an_error(body, boundary):
    with pytest.raises(MultipartError, match="no multipart boundary line found"):
        feed_all(body, boundary)


@pytest.mark.parametrize("boundary", ["bb", None])
def test_truncated_body_is_an_error(boundary):
    body = b"--bb\r\nContent-Type: a/b\r\n\r\npartial data"
    events, error = events_with_error(body, boundary)
    assert str(error) == "multipart body ended before the closing boundary"
    assert PART_END not in events and END not in events


def test_header_block_too_large():
    head = b"--bb\r\nX-Big: " + b"v" * 200 + b"\r\n\r\n"
    with pytest.raises(MultipartError, match="header block exceeds 100 bytes"):
        feed_all(head + b"\r\n--bb--", "bb", max_header_bytes=100)
    # Detected while streaming, before the header line is complete.
    reader = MultipartReader("bb", max_header_bytes=100)
    reader.feed(b"--bb\r\nX-Big: ")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"v" * 101)
    with pytest.raises(MultipartError, match="header block exceeds"):
        reader.next_event()
    # Just at the limit is fine.
    ok = b"--bb\r\nX: " + b"v" * 93 + b"\r\n\r\n\r\n--bb--"
    assert len(b"X: " + b"v" * 93 + b"\r\n\r\n") == 100
    assert feed_all(ok, "bb", max_header_bytes=100)[-1] is END


def test_discovered_boundary_line_too_long():
    with pytest.raises(MultipartError, match="boundary line too long"):
        feed_all(b"--" + b"b" * 200 + b"\r\n\r\n", None, max_header_bytes=100)
    reader = MultipartReader(max_header_bytes=100)
    reader.feed(b"--" + b"b" * 200)
    with pytest.raises(MultipartError, match="boundary line too long"):
        reader.next_event()


def test_too_many_parts():
    body = b"--bb\r\n\r\n1\r\n--bb\r\n\r\n2\r\n--bb\r\n\r\n3\r\n--bb--"
    assert len(parts_of(feed_all(body, "bb", max_parts=3))) == 3
    with pytest.raises(MultipartError, match="too many parts"):
        feed_all(body, "bb", max_parts=2)


@pytest.mark.parametrize(
    "head, message",
    [
        (b"--bb\r\nno colon here\r\n\r\n", "malformed part header line"),
        (b"--bb\r\n: no name\r\n\r\n", "malformed part header line"),
        (b"--bb\r\n continued\r\n\r\n", "continuation line without a header"),
    ],
)
def test_bad_header_lines(head, message):
    with pytest.raises(MultipartError, match=message):
        feed_all(head + b"x\r\n--bb--", "bb")


@pytest.mark.parametrize(
    "body, boundary",
    [
        (b"--bbX\r\n\r\nx\r\n--bb--", "bb"),  # first delimiter
        (b"pre\r\n--bbX\r\n\r\nx\r\n--bb--", "bb"),
        (b"--bb \tX\r\n\r\nx\r\n--bb--", "bb"),  # garbage after padding
        # (when discovering, the whole first line is the boundary, so only later ones)
        (b"--bb\r\n\r\nx\r\n--bbX\r\n\r\ny\r\n--bb--", "bb"),  # later delimiter
        (b"--bb\r\n\r\nx\r\n--bbX\r\n\r\ny\r\n--bb--", None),
        (b"--bb\r\n\r\nx\r\n--bb \tX\r\n\r\ny\r\n--bb--", None),
        (b"--bb\r\n\r\nx\r\n--bb-x", "bb"),  # half a close delimiter
        (b"--bb\r\n\r\nx\r\n--bb-x", None),
        (b"--bb\r\n\r\nx\r\n--bb\r--bb--", "bb"),  # CR not followed by LF
        (b"--bb\r\n\r\nx\r\n--bb\r--bb--", None),
    ],
)
def test_garbage_after_delimiter(body, boundary):
    events, error = events_with_error(body, boundary)
    assert isinstance(error, MultipartError)
    assert "after multipart boundary '--bb'" in str(error)
    assert END not in events and PART_END not in events


def test_errors_are_sticky():
    reader = MultipartReader("bb")
    reader.feed(b"--bbX")
    with pytest.raises(MultipartError) as first:
        reader.next_event()
    with pytest.raises(MultipartError) as second:
        reader.next_event()
    assert second.value is first.value


@pytest.mark.parametrize("boundary", ["", "a\r\nb"])
def test_invalid_given_boundary(boundary):
    with pytest.raises(MultipartError, match="boundary"):
        MultipartReader(boundary)


def test_feed_after_close_is_a_programming_error():
    reader = MultipartReader("bb")
    reader.close()
    with pytest.raises(RuntimeError):
        reader.feed(b"x")


# ------------------------------------------------------------ truncation property

TWO_PARTS = (
    b"\r\n--bb\r\nContent-Type: application/dicom\r\n\r\nFIRST\r\n--b\r\n"
    b"--bb \r\nContent-Type: application/dicom\r\n\r\nSECOND\r\r\n--bb--\r\n"
)
FIRST_PART_COMPLETE_AT = TWO_PARTS.index(b"--bb \r\n") + len(b"--bb \r\n")
CLOSE_DELIMITER_END = TWO_PARTS.index(b"--bb--") + len(b"--bb--")


def test_two_part_fixture_is_valid():
    events = feed_all(TWO_PARTS, "bb")
    assert parts_of(events) == [(CT_DICOM, b"FIRST\r\n--b"), (CT_DICOM, b"SECOND\r")]


@pytest.mark.parametrize("boundary", ["bb", None])
@pytest.mark.parametrize("sizes", [None, [1], [3]])
def test_truncation_at_every_position_is_an_error(boundary, sizes):
    for cut in range(CLOSE_DELIMITER_END):
        events, error = events_with_error(TWO_PARTS[:cut], boundary, sizes)
        assert isinstance(error, MultipartError), cut
        assert END not in events, cut
        ends = events.count(PART_END)
        # Only a part whose following delimiter line was read in full is complete.
        assert ends == (1 if cut >= FIRST_PART_COMPLETE_AT else 0), cut
        if ends:
            assert parts_of(events[: events.index(PART_END) + 1]) == [
                (CT_DICOM, b"FIRST\r\n--b")
            ]
        # Whatever was delivered of the cut part is a prefix of it.
        tail = events[events.index(PART_END) + 1:] if ends else events
        delivered = b"".join(e.data for e in tail if isinstance(e, PartData))
        expected_part = b"SECOND\r" if ends else b"FIRST\r\n--b"
        assert expected_part.startswith(delivered), cut
    # And the cut exactly after the close delimiter is a complete body.
    assert len(parts_of(feed_all(TWO_PARTS[:CLOSE_DELIMITER_END], boundary))) == 2


# ------------------------------------------------------------- real client bodies


@pytest.mark.parametrize("reader_boundary", ["given", None])
@pytest.mark.parametrize("nfiles", [1, 2])
def test_urllib3_encode_multipart_formdata_round_trip(nfiles, reader_boundary):
    rng = random.Random(nfiles)
    files = {
        f"file{i}": (f"f{i}.dcm", rng.randbytes(5000) + b"\r\n--\r\n", "application/dicom")
        for i in range(nfiles)
    }
    body, content_type = encode_multipart_formdata(files)
    boundary = content_type.split("boundary=")[1]
    events = feed_all(body, boundary if reader_boundary else None, sizes=[777])
    parts = parts_of(events)
    assert [data for _, data in parts] == [f[1] for f in files.values()]
    for (headers, _), (name, (filename, _, ctype)) in zip(parts, files.items(), strict=True):
        assert headers == {
            "content-disposition": f'form-data; name="{name}"; filename="{filename}"',
            "content-type": ctype,
        }
    assert events[-1] is END
    # Same through the stream driver.
    stream = _Stream(body)
    driven = list(iter_events(stream.read, None, chunk_size=1000))
    assert parts_of(driven) == parts


def test_curl_form_body():
    # What `curl --form "file1=@x.dcm;type=application/dicom"` sends.
    boundary = "------------------------d74496d66958873e"
    data = b"\x00" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00\r\n--\n"
    body = (
        b"--" + boundary.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="file1"; filename="x.dcm"\r\n'
        b"Content-Type: application/dicom\r\n\r\n" + data + b"\r\n"
        b"--" + boundary.encode() + b"--\r\n"
    )
    expected = P(
        {
            "content-disposition": 'form-data; name="file1"; filename="x.dcm"',
            "content-type": "application/dicom",
        },
        data,
    ) + [END]
    assert feed_all(body, boundary) == expected
    reader = MultipartReader()
    assert feed_all(body, None) == expected
    reader.feed(body)
    reader.next_event()
    assert reader.boundary == boundary


# ---------------------------------------------------------- chunking property test

BOUNDARIES = ["bb", "-", "a-b-", "0123456789abcdef0123456789abcdef", "x'()+_,-./:=? y"]


@st.composite
def multipart_bodies(draw):
    boundary = draw(st.sampled_from(BOUNDARIES))
    dash = b"--" + boundary.encode()
    tricky = st.sampled_from(
        [b"\r\n--", b"\r\n", b"\r", b"\n", b"--", dash, b"\r\n-", b"\n" + dash, b"\r\r\n"]
        + [b"\r\n" + dash[:k] for k in range(len(dash))]
    )
    payload = st.lists(st.one_of(st.binary(max_size=30), tricky), max_size=8).map(b"".join)
    header_sets = st.sampled_from(
        [
            {},
            {"Content-Type": "application/dicom"},
            {
                "Content-Disposition": 'form-data; name="file"; filename="x.dcm"',
                "Content-Type": "application/dicom",
            },
        ]
    )
    parts = draw(st.lists(st.tuples(header_sets, payload), max_size=4))
    for _, data in parts:
        # A body may not contain its own delimiter (RFC 2046); the CRLF before the
        # data belongs to the header block, so a body starting with it counts too.
        assume(b"\r\n" + dash not in b"\r\n" + data)
    padding = st.sampled_from([b"", b" ", b"\t ", b"  \t"])
    out = [draw(st.sampled_from([b"", b"\r\n", b"preamble\r\n", b"one\r\ntwo\n\r\n"]))]
    for i, (headers, data) in enumerate(parts):
        out.append((b"\r\n" if i else b"") + dash + draw(padding) + b"\r\n")
        out.extend(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        out.append(b"\r\n" + data)
    out.append((b"\r\n" if parts else b"") + dash + b"--")
    out.append(draw(st.sampled_from([b"", b"\r\n", b"  \r\nepilogue " + dash + b"\r\n"])))
    expected = [({k.lower(): v for k, v in h.items()}, d) for h, d in parts]
    return boundary, b"".join(out), expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=multipart_bodies(),
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10),
    give_boundary=st.booleans(),
)
def test_any_chunking_gives_the_same_parts(case, sizes, give_boundary):
    boundary, body, expected = case
    reader_boundary = boundary if give_boundary else None
    whole = feed_all(body, reader_boundary)
    assert parts_of(whole) == expected
    assert whole[-1] is END
    chunked = feed_all(body, reader_boundary, sizes=sizes)
    assert merged(chunked) == merged(whole)
    assert all(not isinstance(e, PartData) or e.data for e in chunked)


# ------------------------------------------------------------------------- writer


def _write(parts, boundary=None):
    writer = MultipartWriter(boundary)
    body = b"".join(stream_parts(((h, [d]) for h, d in parts), writer))
    return writer, body


WRITER_PARTS = [
    ({"Content-Type": "application/dicom"}, bytes(range(256)) * 40),
    ({"Content-Type": "application/dicom", "Content-Location": "/studies/1.2"}, b""),
    ({"Content-Type": 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"'},
     b"\r\n--\r\n\n\r" * 50),
]


def test_writer_framing_bytes():
    writer = MultipartWriter("b0und")
    assert writer.content_type("application/dicom") == (
        'multipart/related; type="application/dicom"; boundary=b0und'
    )
    assert writer.content_type() == "multipart/related; boundary=b0und"
    assert writer.part_head({"Content-Type": "x/y"}) == b"--b0und\r\nContent-Type: x/y\r\n\r\n"
    assert writer.part_head({"Content-Type": "x/y", "A": "b"}) == (
        b"\r\n--b0und\r\nContent-Type: x/y\r\nA: b\r\n\r\n"
    )
    assert writer.close() == b"\r\n--b0und--\r\n"
    assert MultipartWriter("b0und").close() == b"--b0und--\r\n"


def test_writer_default_boundary_is_random_hex():
    a, b = MultipartWriter(), MultipartWriter()
    assert a.boundary != b.boundary
    assert len(a.boundary) == 32 and int(a.boundary, 16) >= 0


def test_writer_quotes_boundary_when_needed():
    writer = MultipartWriter("a b:c")
    assert writer.content_type() == 'multipart/related; boundary="a b:c"'


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends with space ", "a\r\nb", "bad;"])
def test_writer_rejects_invalid_boundaries(boundary):
    with pytest.raises(ValueError):
        MultipartWriter(boundary)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Location": "x"},
        {"Content-Type": "a/b\r\nX-Injected: 1"},
        {"Content-Type": "a/b", "": "v"},
        {"Content-Type": "a/b", "X:Y": "v"},
    ],
)
def test_writer_rejects_bad_part_headers(headers):
    with pytest.raises(ValueError):
        MultipartWriter().part_head(headers)


def test_writer_state_errors():
    writer = MultipartWriter()
    writer.close()
    with pytest.raises(RuntimeError):
        writer.part_head({"Content-Type": "a/b"})
    with pytest.raises(RuntimeError):
        writer.close()


@pytest.mark.parametrize("nparts", [0, 1, 3])
def test_writer_reader_round_trip(nparts):
    parts = WRITER_PARTS[:nparts]
    writer, body = _write(parts)
    expected = [({k.lower(): v for k, v in h.items()}, d) for h, d in parts]
    for boundary in (writer.boundary, None):
        assert parts_of(feed_all(body, boundary, sizes=[100])) == expected


@pytest.mark.parametrize("nparts", [0, 1, 3])
def test_framing_size_is_exact_and_stateless(nparts):
    parts = WRITER_PARTS[:nparts]
    writer = MultipartWriter()
    headers = [h for h, _ in parts]
    size = writer.framing_size(headers)
    assert writer.framing_size(headers) == size  # no state change
    body = b"".join(stream_parts(((h, [d]) for h, d in parts), writer))
    assert len(body) == size + sum(len(d) for _, d in parts)
    # After the first part, it counts what is still to be written.
    if nparts > 1:
        w2 = MultipartWriter()
        first = w2.part_head(headers[0])
        assert len(first) + w2.framing_size(headers[1:]) == size


def test_writer_output_parsed_by_requests_toolbelt():
    writer, body = _write(WRITER_PARTS)
    decoder = MultipartDecoder(body, writer.content_type("application/dicom"))
    assert [p.content for p in decoder.parts] == [d for _, d in WRITER_PARTS]
    assert [p.headers[b"Content-Type"].decode() for p in decoder.parts] == [
        h["Content-Type"] for h, _ in WRITER_PARTS
    ]
    assert decoder.parts[1].headers[b"Content-Location"] == b"/studies/1.2"


def test_writer_output_parsed_by_email_package():
    writer, body = _write(WRITER_PARTS)
    raw = (
        b"MIME-Version: 1.0\r\nContent-Type: "
        + writer.content_type("application/dicom").encode()
        + b"\r\n\r\n"
        + body
    )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.is_multipart() and not msg.defects
    assert msg.get_content_type() == "multipart/related"
    parts = list(msg.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == [d for _, d in WRITER_PARTS]
    assert [p["Content-Type"] for p in parts] == [h["Content-Type"] for h, _ in WRITER_PARTS]
    assert all(not p.defects for p in parts)


# ------------------------------------------------------------- driver and scale


class _Stream:
    """File-like input that records how much was read."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.reads = data, 0, 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_iter_events_stops_reading_after_end():
    stream = _Stream(SIMPLE + b"epilogue" * 10000)
    assert list(iter_events(stream.read, "bb", chunk_size=len(SIMPLE))) == SIMPLE_EVENTS
    assert stream.pos == len(SIMPLE)


def test_iter_events_raises_on_truncated_stream():
    stream = _Stream(SIMPLE[:-8])
    seen = []
    with pytest.raises(MultipartError, match="ended before the closing boundary"):
        for event in iter_events(stream.read, "bb", chunk_size=7):
            seen.append(event)
    assert seen.count(PART_END) == 1  # the first part was complete, the second not


def test_iter_events_passes_reader_limits():
    with pytest.raises(MultipartError, match="too many parts"):
        list(iter_events(_Stream(SIMPLE).read, "bb", max_parts=1))


class _BigPartStream:
    """A 50 MB single-part body generated on the fly, with delimiter look-alikes."""

    def __init__(self, boundary: bytes, size: int):
        rng = random.Random(0)
        noise = bytearray(rng.randbytes(100_003))
        for i in range(0, len(noise) - 200, 997):  # near-delimiters everywhere
            lookalike = b"\r\n--" + boundary[: i % len(boundary)]
            noise[i:i + len(lookalike)] = lookalike
        self.pattern = bytes(noise) * 2
        self.head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
        self.tail = b"\r\n--" + boundary + b"--\r\n"
        self.size, self.sent = size, 0
        self.sha = hashlib.sha256()
        self.pending = bytearray(self.head)

    def read(self, n: int) -> bytes:
        while len(self.pending) < n and self.sent < self.size:
            offset = self.sent % (len(self.pattern) // 2)
            piece = self.pattern[offset:offset + min(n, self.size - self.sent)]
            self.sha.update(piece)
            self.sent += len(piece)
            self.pending += piece
            if self.sent == self.size:
                self.pending += self.tail
        chunk = bytes(self.pending[:n])
        del self.pending[:n]
        return chunk


def test_large_part_streams_with_bounded_buffer():
    boundary = b"0123456789abcdef0123456789abcdef"
    chunk_size = 65536
    stream = _BigPartStream(boundary, 50 * 1024 * 1024)
    bound = 2 * chunk_size + len(boundary)
    events = iter_events(stream.read, None, chunk_size=chunk_size)
    received = hashlib.sha256()
    delimiter = b"\r\n--" + boundary
    total = count = 0
    kinds = []
    for event in events:
        reader = events.gi_frame.f_locals["reader"] if events.gi_frame else None
        if reader is not None:
            assert len(reader._buffer) < bound  # the last read, which views of part data share
        if isinstance(event, PartData):
            # After releasing data only a possible delimiter start is kept back
            # (or the delimiter itself, once found).
            kept = unread(reader)
            assert len(kept) < len(delimiter) or kept.startswith(delimiter)
            assert len(event.data) <= chunk_size + len(boundary)
            received.update(event.data)
            total += len(event.data)
            count += 1
        elif not kinds or kinds[-1] != type(event).__name__:
            kinds.append(type(event).__name__)
    assert kinds == ["PartStart", "PartEnd", "End"]
    assert total == stream.size
    assert received.digest() == stream.sha.digest()
    assert count >= stream.size // chunk_size  # data was released chunk by chunk


def test_part_data_is_a_view_of_the_input_not_a_copy():
    """A megabyte read costs one search, no copy: STOW writes the views it gets as they are."""
    payload = bytes(range(256)) * 4000
    first = b"--bb\r\nContent-Type: application/dicom\r\n\r\n" + payload[:600_000]
    second = payload[600_000:] + b"\r\n--bb--\r\n"
    reader = MultipartReader("bb")
    events = []
    reader.feed(first)
    drain(reader, events)
    reader.feed(second)
    drain(reader, events)
    data = [event.data for event in events if isinstance(event, PartData)]
    assert [view.obj for view in data] == [first, second]  # type: ignore[union-attr]
    assert b"".join(data) == payload


def test_reading_a_body_fed_whole_copies_none_of_it():
    """Part data are views of the input, and nothing copies what follows a delimiter: a body
    of ten 2 MB parts fed at once is parsed in far less memory than one part."""
    import tracemalloc

    part = bytes(range(256)) * 8192
    body = b"".join(b"--B\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for _ in range(10)) + b"--B--"
    reader = MultipartReader("B")
    tracemalloc.start()
    try:
        reader.feed(body)
        reader.close()
        received = 0
        while (event := reader.next_event()) is not END:
            if isinstance(event, PartData):
                received += len(event.data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == 10 * len(part)
    assert peak < len(part) // 4
