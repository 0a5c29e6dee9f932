"""How stored bytes reach the socket: multipart answers of local files as segments (framing
bytes and file ranges) that gunicorn's worker sends by sendfile, and the nginx
X-Accel-Redirect mode. Real servers: tests/live/test_sendfile_nginx.py.
"""
from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from dicom_factory import make_instance, to_bytes
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper
from werkzeug.test import EnvironBuilder

from dicomserver.gunicorn_worker import ClientSocket, FileWrapper
from dicomserver.multipart import MultipartWriter
from dicomserver.retrieve import Part, multipart_body, segments_body
from dicomserver.segments import FileRange, SegmentedFile
from dicomserver.settings import ConfigError, Settings

MULTIPART = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
AS_STORED = {"Accept": "application/dicom; transfer-syntax=*"}
STOW = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}


def stored(app_factory, **settings):
    app = app_factory(**settings)
    client = app.test_client()
    study = make_instance().StudyInstanceUID
    instances = [make_instance(study=study, rows=64, columns=64, frames=3), make_instance(study=study)]
    for ds in instances:
        assert client.post("/v2/studies", data=to_bytes(ds), headers=STOW).status_code == 200
    return app, client, instances


def path_of(ds) -> str:
    return f"/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def served_by_worker(app, path: str, headers: dict[str, str]) -> tuple[object, bytes]:
    """The answer object the app hands gunicorn's worker (its file wrapper in the environ), and its bytes."""
    environ = EnvironBuilder(path=path, headers=headers).get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    answer = app(environ, lambda status, headers, exc_info=None: None)
    try:
        return answer, b"".join(answer)
    finally:
        answer.close()


@pytest.mark.parametrize("what", ["instance", "study", "frames"])
def test_multipart_of_local_files_is_a_file_the_worker_sends(app_factory, what):
    app, client, (multiframe, _) = stored(app_factory)
    path, headers = {
        "instance": (path_of(multiframe), MULTIPART),
        "study": (f"/v2/studies/{multiframe.StudyInstanceUID}", MULTIPART),
        "frames": (path_of(multiframe) + "/frames/3,1", FRAMES),
    }[what]
    answer, body = served_by_worker(app, path, headers)
    assert isinstance(answer, FileWrapper)
    assert isinstance(answer.filelike, SegmentedFile) and answer.filelike.sent_by_server
    # The same bytes as any other server reads from it (the test client: werkzeug's wrapper).
    expected = client.get(path, headers=headers)
    boundary = expected.headers["Content-Type"].rsplit("boundary=", 1)[1].encode()
    assert body.replace(body[2:34], boundary) == expected.data
    assert len(body) == int(expected.headers["Content-Length"])


def test_segments_are_the_bytes_multipart_body_frames(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(bytes(range(256)) * 5000)
    second.write_bytes(b"xyz" * 7)
    ranges = [[FileRange(str(first), 0, 1_280_000)], [FileRange(str(first), 10, 20), FileRange(str(second), 3, 9)]]
    headers = [{"Content-Type": "application/dicom"}, {"Content-Type": "application/octet-stream"}]

    body = segments_body(MultipartWriter("b0undary"), "application/dicom", list(zip(headers, ranges, strict=True)))
    segmented = SegmentedFile(body.segments or ())
    got = b"".join(iter(lambda: segmented.read(8192), b""))
    segmented.close()

    def read(parts: list[FileRange]):
        return lambda: [open(r.path, "rb").read()[r.offset: r.offset + r.length] for r in parts]

    parts = [Part(h, sum(r.length for r in p), read(p)) for h, p in zip(headers, ranges, strict=True)]
    framed = multipart_body(MultipartWriter("b0undary"), "application/dicom", parts)
    assert got == b"".join(framed.chunks)
    assert body.length == framed.length == len(got)
    assert body.content_type == framed.content_type


def test_only_the_worker_may_sendfile_a_segmented_body(tmp_path):
    """A server that sends a file wrapper's fileno as one whole file (gunicorn's own workers)
    must read the segments instead: no fileno until the worker's wrapper claims it."""
    (tmp_path / "f").write_bytes(b"data")
    segmented = SegmentedFile((b"head", FileRange(str(tmp_path / "f"), 0, 4)))
    segmented.open_first()
    GunicornFileWrapper(segmented)
    with pytest.raises(io.UnsupportedOperation):
        segmented.fileno()
    FileWrapper(segmented)
    assert segmented.fileno() > 0
    segmented.close()


def connected_pair(sndbuf: int | None = None) -> tuple[ClientSocket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    if sndbuf:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock = ClientSocket.adopt(server, io_timeout=10)
    sock.setblocking(True)
    return sock, client


def receive(client: socket.socket, into: bytearray, *, slowly: bool = False) -> threading.Thread:
    def run() -> None:
        while chunk := client.recv(4096 if slowly else 1 << 20):
            into.extend(chunk)
            if slowly:
                time.sleep(0.0005)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("slowly", [False, True], ids=["fast reader", "slow reader"])
def test_the_worker_socket_sends_segments(tmp_path, slowly):
    data = bytes(range(251)) * 12_000  # 3 MB: more than a small send buffer holds
    (tmp_path / "blob").write_bytes(data)
    path = str(tmp_path / "blob")
    segments = (b"--head\r\n\r\n", FileRange(path, 0, len(data)), b"\r\n--mid\r\n\r\n", FileRange(path, 7, 1000), b"--end--")
    segmented = SegmentedFile(segments)
    segmented.open_first()
    sock, client = connected_pair(sndbuf=16384 if slowly else None)
    got = bytearray()
    reader = receive(client, got, slowly=slowly)
    try:
        assert sock.sendfile(segmented, 0, segmented.length) == segmented.length
    finally:
        sock.close()
        reader.join()
        client.close()
        segmented.close()
    assert bytes(got) == b"--head\r\n\r\n" + data + b"\r\n--mid\r\n\r\n" + data[7:1007] + b"--end--"


def test_a_stored_file_shorter_than_its_range_aborts_the_answer(tmp_path):
    (tmp_path / "blob").write_bytes(b"short")
    segmented = SegmentedFile((b"head", FileRange(str(tmp_path / "blob"), 0, 100)))
    segmented.open_first()
    sock, client = connected_pair()
    try:
        with pytest.raises(ConnectionAbortedError):
            sock.sendfile(segmented, 0, segmented.length)
        with pytest.raises(ConnectionAbortedError):  # not what gunicorn's Content-Length announced
            sock.sendfile(segmented, 0, segmented.length + 1)
    finally:
        sock.close()
        client.close()
        segmented.close()


# -- nginx X-Accel-Redirect mode ----------------------------------------------------


def test_accel_redirect_names_the_stored_file(app_factory):
    app, client, (multiframe, single) = stored(app_factory, accel_redirect="/_blobs/")
    root = app.extensions["dicomserver"].store.root
    response = client.get(path_of(single), headers=AS_STORED)
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    location = response.headers["X-Accel-Redirect"]
    assert location.startswith("/_blobs/")
    with open(f"{root}/{location.removeprefix('/_blobs/')}", "rb") as stored_file:
        assert stored_file.read() == to_bytes(single)

    # Everything else is still answered by dicomserver itself.
    not_stored = {
        "multipart": client.get(path_of(single), headers=MULTIPART),
        "transcoded": client.get(path_of(single), headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2"}),
        "frame": client.get(path_of(multiframe) + "/frames/1", headers={"Accept": "application/octet-stream; transfer-syntax=*"}),
        "missing": client.get(path_of(single).rsplit("/", 1)[0] + "/1.2.3", headers=AS_STORED),
        "refused": client.get(path_of(single), headers={"Accept": "image/gif"}),
    }
    assert {name: r.status_code for name, r in not_stored.items()} == {
        "multipart": 200, "transcoded": 200, "frame": 200, "missing": 404, "refused": 406,
    }
    for response in not_stored.values():
        assert "X-Accel-Redirect" not in response.headers and response.data


def test_accel_redirect_off_by_default(app_factory):
    _, client, (_, single) = stored(app_factory)
    response = client.get(path_of(single), headers=AS_STORED)
    assert "X-Accel-Redirect" not in response.headers and response.data == to_bytes(single)


@pytest.mark.parametrize("prefix", ["/_dicomserver_blobs/", "/internal/blobs/"])
def test_accel_redirect_setting(prefix):
    assert Settings.from_env({"DICOMWEB_ACCEL_REDIRECT": prefix}).accel_redirect == prefix


@pytest.mark.parametrize("prefix", ["/", "/blobs", "blobs/", "/../blobs/", "/a/./", "/a b/", "/a\r\nX: y/", "//blobs/"])
def test_accel_redirect_setting_refuses_what_is_no_internal_location(prefix):
    with pytest.raises(ConfigError, match="DICOMWEB_ACCEL_REDIRECT"):
        Settings.from_env({"DICOMWEB_ACCEL_REDIRECT": prefix})


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_at_most_two_stored_files_are_open_at_a_time(tmp_path):
    """A study of thousands of instances must not hold a descriptor per instance."""
    paths = []
    for number in range(200):
        (tmp_path / str(number)).write_bytes(number.to_bytes(2, "little") * 10)
        paths.append(str(tmp_path / str(number)))
    segments = tuple(piece for path in paths for piece in (b"--part\r\n", FileRange(path, 0, 20)))
    expected = b"".join(b"--part\r\n" + n.to_bytes(2, "little") * 10 for n in range(200))

    read = SegmentedFile(segments)
    before = open_descriptors()
    got = b"".join(iter(lambda: read.read(8192), b""))
    assert got == expected and open_descriptors() <= before + 1
    read.close()

    sent = SegmentedFile(segments)
    sent.open_first()
    sock, client = connected_pair()
    received = bytearray()
    reader = receive(client, received)
    try:
        sock.sendfile(sent, 0, sent.length)
        assert open_descriptors() <= before + 4  # the two sockets, the first file (gunicorn seeks it) and the last
    finally:
        sock.close()
        reader.join()
        client.close()
        sent.close()
    assert bytes(received) == expected


def test_the_descriptor_gunicorn_holds_stays_open_across_the_send(tmp_path):
    """gunicorn takes the body's fileno before the send and seeks it after: the first file
    must still be that descriptor then, though later files were opened and closed (it was
    closed once: EBADF after every multipart study, the connection dropped)."""
    paths = []
    for name in ("first", "second", "third"):
        (tmp_path / name).write_bytes(name.encode() * 100)
        paths.append(str(tmp_path / name))
    segments = tuple(piece for path in paths for piece in (b"--part\r\n", FileRange(path, 0, 100)))
    sent = SegmentedFile(segments)
    sent.open_first()
    sent.sent_by_server = True
    fileno = sent.fileno()
    sock, client = connected_pair()
    received = bytearray()
    reader = receive(client, received)
    try:
        sock.sendfile(sent, 0, sent.length)
        os.lseek(fileno, 0, os.SEEK_SET)  # what gunicorn's Response.sendfile does last
        assert os.readlink(f"/proc/self/fd/{fileno}") == paths[0]
    finally:
        sock.close()
        reader.join()
        client.close()
        sent.close()
    assert bytes(received) == b"".join(b"--part\r\n" + Path(p).read_bytes()[:100] for p in paths)
