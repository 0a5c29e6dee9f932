"""End-to-end: STOW bodies as a real gunicorn with the project's worker reads them (a body of
known length by gunicorn_worker.LengthBody, a chunked one by gunicorn): in pieces cut
anywhere, pipelined, cut short by the client, chunked. Slow and stalled bodies:
test_slow_clients.py; 200 MB bodies in flat memory: test_memory.py.
"""
from __future__ import annotations

import socket
import time

import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import blob_files, start_server, stop_server

pytestmark = pytest.mark.live

BOUNDARY = "8d1f0c3a2b"
ACCEPT = "application/dicom+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("request-body"), workers=1, threads=4,
                        env={"DICOMWEB_AUDIT_LOG": "off"})
    yield live
    stop_server(live)


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))


def answer(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def multipart(*datasets) -> bytes:
    body = b""
    for ds in datasets:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + to_bytes(ds) + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow_head(length: int, *, close: bool = False, content_type: str | None = None) -> bytes:
    content_type = content_type or f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    return (
        f"POST /v2/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Accept: {ACCEPT}\r\nContent-Length: {length}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode()


def is_stored(server, ds) -> bool:
    found = requests.get(f"{server.url}/v2/studies/{ds.StudyInstanceUID}/instances", timeout=30)
    return found.status_code == 200 and ds.SOPInstanceUID in found.text


def test_a_body_sent_in_pieces_cut_inside_the_delimiters_is_stored(server):
    first, second = make_instance(), make_instance()
    body = multipart(first, second)
    cuts = sorted({body.find(b"\r\n--", 100) + n for n in range(1, 8)} | {len(body) - 5, len(body) - 1})
    sock = connect(server)
    sock.sendall(stow_head(len(body), close=True))
    start = 0
    for cut in cuts + [len(body)]:
        sock.sendall(body[start:cut])
        start = cut
        time.sleep(0.02)  # each piece arrives on its own
    received = answer(sock)
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    assert is_stored(server, first) and is_stored(server, second)


@pytest.mark.parametrize("size", ["small", "over 8 KiB"])
def test_pipelined_requests_are_each_answered(server, size):
    """Two requests in one send: the first body's reader must not take the second's bytes,
    and the second is answered though its bytes came with the first's (no new data to wait for)."""
    shape = {"rows": 128, "columns": 128} if size != "small" else {}
    first, second = make_instance(**shape), make_instance()
    one, two = multipart(first), multipart(second)
    sock = connect(server)
    sock.sendall(stow_head(len(one)) + one + stow_head(len(two), close=True) + two)
    received = answer(sock)
    assert received.count(b"HTTP/1.1 200 ") == 2, received[:600]
    assert is_stored(server, first) and is_stored(server, second)


@pytest.mark.parametrize("media", ["multipart", "single"])
def test_a_body_cut_short_by_the_client_is_400_and_nothing_is_stored(server, media):
    """A Content-Length longer than what the client sends before it stops sending (it half
    closes the connection to read the answer)."""
    ds = make_instance()
    if media == "multipart":
        body, head = multipart(ds), stow_head
    else:
        body = to_bytes(ds)

        def head(length: int) -> bytes:
            return stow_head(length, content_type="application/dicom")
    sock = connect(server)
    sock.sendall(head(len(body)) + body[: len(body) // 2])
    sock.shutdown(socket.SHUT_WR)
    received = answer(sock)
    assert received.startswith(b"HTTP/1.1 400 "), received[:300]
    assert received.endswith(b"the request body ended before the length its Content-Length announced\n")
    assert not is_stored(server, ds)
    assert blob_files(server, sop=ds.SOPInstanceUID) == []


def test_a_client_gone_mid_body_leaves_the_worker_serving(server):
    ds = make_instance(rows=64, columns=64)
    body = multipart(ds)
    sock = connect(server)
    sock.sendall(stow_head(len(body)) + body[: len(body) // 2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    sock.close()
    assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200
    later = make_instance()
    stored = requests.post(f"{server.url}/v2/studies", data=multipart(later), timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', "Accept": ACCEPT})
    assert stored.status_code == 200
    assert not is_stored(server, ds)


def test_a_chunked_body_is_still_read(server):
    ds = make_instance()
    body = multipart(ds)
    pieces = (body[i:i + 777] for i in range(0, len(body), 777))  # a generator: sent chunked
    response = requests.post(f"{server.url}/v2/studies", data=pieces, timeout=30, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', "Accept": ACCEPT})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200
    assert is_stored(server, ds)
