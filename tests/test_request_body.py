"""The worker's reader of request bodies of known length (gunicorn_worker.LengthBody): what
it hands out, where it stops, and what a client that stops or leaves gets. Under a real
gunicorn: tests/live/test_request_body_live.py.
"""
from __future__ import annotations

import socket
import threading

import pytest
from gunicorn.config import Config
from gunicorn.http.body import Body
from gunicorn.http.errors import NoMoreData
from gunicorn.http.parser import RequestParser

from dicomserver.gunicorn_worker import ClientSocket, LengthBody
from dicomserver.multipart import END, PartData, PartEnd, PartStart, iter_events

BOUNDARY = "b0undary"
PART = bytes(range(256)) * 3 + b"\r\n--b0und" + b"\r\n-" + bytes(range(40))
BODY = (
    b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + PART
    + b"\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--b0undary--\r\n"
)


class PieceSocket:
    """A socket whose receives return the pieces it was given, never across two of them."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [p for p in pieces if p]
        self.receives = 0

    def recv(self, size: int) -> bytes:
        self.receives += 1
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        data, rest = piece[:size], piece[size:]
        if rest:
            self.pieces[0] = rest
        else:
            self.pieces.pop(0)
        return data


class NoReadAhead:
    """gunicorn's unreader after a head that ended where the body starts."""

    def __init__(self, buffered: bytes = b"") -> None:
        self.buffered = buffered
        self.unread_bytes = b""

    def take_buffered(self) -> bytes:
        data, self.buffered = self.buffered, b""
        return data

    def unread(self, data: bytes) -> None:
        self.unread_bytes = data + self.unread_bytes


def parts(read, chunk_size: int = 1 << 20) -> list[bytes]:
    found, current = [], []
    for event in iter_events(read, BOUNDARY, chunk_size=chunk_size):
        if isinstance(event, PartStart):
            current = []
        elif isinstance(event, PartData):
            current.append(bytes(event.data))
        elif isinstance(event, PartEnd):
            found.append(b"".join(current))
        elif event is END:
            break
    return found


@pytest.mark.parametrize("method", ["read", "read1"])
def test_a_body_cut_anywhere_reads_as_sent(method):
    for cut in range(len(BODY) + 1):
        for ahead in (0, min(cut, 7)):  # some of it already read by gunicorn's parser with the head
            sock = PieceSocket([BODY[ahead:cut], BODY[cut:]])
            body = LengthBody(sock, NoReadAhead(BODY[:ahead]), len(BODY))  # type: ignore[arg-type]
            assert parts(getattr(body, method)) == [PART, b"second"], (cut, ahead)
            assert not body.failed
            epilogue = BODY[len(BODY) - body.left:]  # iter_events leaves what follows the close delimiter
            assert body.read() == epilogue and body.left == 0


def test_a_body_in_many_pieces_is_read_whole_when_asked_for_whole():
    pieces = [BODY[i:i + 10] for i in range(0, len(BODY), 10)]
    body = LengthBody(PieceSocket(pieces), NoReadAhead(), len(BODY))  # type: ignore[arg-type]
    assert body.read(len(BODY) + 100) == BODY  # a read stops at the end of the body
    assert body.read(10) == b"" and body.read() == b""


def test_read1_hands_out_what_one_receive_brought_without_copying():
    first = BODY[:100]
    body = LengthBody(PieceSocket([first, BODY[100:]]), NoReadAhead(), len(BODY))  # type: ignore[arg-type]
    assert body.read1(1 << 20) is first
    assert body.read1(1 << 20) == BODY[100:]
    assert body.read1(1 << 20) == b""


def test_read_ahead_past_the_body_goes_back_to_gunicorn():
    """A Content-Length shorter than what the client sent: the rest is the next request's."""
    unreader = NoReadAhead(BODY + b"GET /next HTTP/1.1\r\n")
    sock = PieceSocket([b"Host: x\r\n\r\n"])
    body = LengthBody(sock, unreader, len(BODY))  # type: ignore[arg-type]
    assert body.read() == BODY
    assert unreader.unread_bytes == b"GET /next HTTP/1.1\r\n"
    assert sock.receives == 0  # nothing taken from the socket past the body


def test_a_client_that_leaves_early_is_an_error_not_a_short_body():
    """A Content-Length longer than what the client sent before closing the connection."""
    body = LengthBody(PieceSocket([BODY[:50]]), NoReadAhead(), len(BODY))  # type: ignore[arg-type]
    with pytest.raises(NoMoreData):
        body.read(len(BODY))
    assert body.failed  # gunicorn's parser then closes the connection instead of reading on


def test_a_read_that_times_out_raises_and_marks_the_body_failed():
    class Stalled:
        def recv(self, size: int) -> bytes:
            raise TimeoutError("timed out")

    body = LengthBody(Stalled(), NoReadAhead(b"--b0"), len(BODY))  # type: ignore[arg-type]
    assert body.read(4) == b"--b0"
    with pytest.raises(TimeoutError):
        body.read(10)
    assert body.failed


def test_lines_and_iteration():
    text = b"one\ntwo\n\nthree"
    body = LengthBody(PieceSocket([text[:5], text[5:]]), NoReadAhead(), len(text))  # type: ignore[arg-type]
    assert body.readline() == b"one\n"
    assert body.readline(2) == b"tw"
    assert list(body) == [b"o\n", b"\n", b"three"]
    body = LengthBody(PieceSocket([text]), NoReadAhead(), len(text))  # type: ignore[arg-type]
    assert body.readlines() == [b"one\n", b"two\n", b"\n", b"three"]


def test_pipelined_requests_through_gunicorns_parser():
    """Two requests sent at once on a real socket: the first body is read by LengthBody, and
    gunicorn's parser then finds the second request, body and all."""
    ours, theirs = socket.socketpair()
    first = b"x" * 300_000
    raw = (
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(first) + first
        + b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    )
    sender = threading.Thread(target=theirs.sendall, args=(raw,))
    sender.start()
    sock = ClientSocket.adopt(ours, 5.0)
    sock.setblocking(True)
    sock.in_app = True
    try:
        parser = RequestParser(Config(), sock, ("127.0.0.1", 1))
        request = next(parser)
        assert request.path == "/a" and isinstance(request.body, Body)
        request.body = LengthBody(sock, parser.unreader, request.body.reader.length)
        assert request.body.read() == first
        second = next(parser)
        assert second.path == "/b"
        assert second.body.read() == b"hello"
    finally:
        sender.join()
        sock.close()
        theirs.close()
