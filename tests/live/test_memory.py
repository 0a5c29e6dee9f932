"""Memory use with a ~200 MB instance going in and out, over HTTP against real gunicorn.

The standard: a request or response body is never held whole in memory; all server
processes together grow by less than 50 MB while a 200 MB instance goes in or out.

RSS is measured across ALL server processes (the gunicorn master plus every worker,
summed), so it does not matter which worker picks up a request. The baseline is
taken right before each transfer (after warm-up requests have loaded every code
path), and a background thread samples the sum every ~50 ms and keeps the peak.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
import requests
from dicom_factory import make_instance, multipart_body, to_bytes
from live_servers import blob_files, start_server, stop_server
from pydicom.uid import ExplicitVRLittleEndian

pytestmark = [pytest.mark.live, pytest.mark.slow]

MiB = 1024 * 1024
LIMIT = 50 * MiB  # the standard: all server processes together grow by less than this
TIMEOUT = 300  # seconds; one 200 MB transfer takes a few seconds on loopback
ROWS = COLUMNS = 512
FRAMES = 400
FRAME_BYTES = ROWS * COLUMNS * 2  # 16 bits allocated, 1 sample per pixel
PIXEL_BYTES = FRAME_BYTES * FRAMES  # 209,715,200
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
EXPLICIT_VR_LE = str(ExplicitVRLittleEndian)

DICOM_JSON = "application/dicom+json"
ACCEPT_INSTANCE = "application/dicom; transfer-syntax=*"
ACCEPT_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


# ----------------------------------------------------------------------------- the big file


def frame_bytes(number: int) -> bytes:
    """Frame `number` (1-based): pseudo-random words seeded by the frame number.

    Every frame differs from every other, so a wrong offset, a swapped frame or a
    corrupted byte anywhere is detected.
    """
    rng = np.random.default_rng(number)
    return rng.integers(0, 1 << 16, size=ROWS * COLUMNS, dtype=np.uint16).astype("<u2").tobytes()


@dataclass(frozen=True)
class BigInstance:
    path: Path
    size: int
    sha256: str
    study: str
    series: str
    sop: str

    @property
    def url(self) -> str:
        return f"/v2/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    def chunks(self, chunk_size: int = MiB, limit: int | None = None) -> Iterator[bytes]:
        """The file's bytes, `chunk_size` at a time (the first `limit` bytes only if given)."""
        remaining = self.size if limit is None else limit
        with open(self.path, "rb") as f:
            while remaining > 0:
                chunk = f.read(min(chunk_size, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk


def build_big_instance(path: Path) -> BigInstance:
    """Write a ~200 MB multi-frame Part 10 file to disk without holding it in memory."""
    ds = make_instance(
        rows=ROWS,
        columns=COLUMNS,
        frames=FRAMES,
        sop_class=MULTIFRAME_GRAYSCALE_WORD_SC,
        with_pixel_data=False,  # appended below, frame by frame
        PatientName="Memory^Large",
        PatientID="MEM-200MB",
        StudyDate="20240101",
        StudyTime="120000",
        AccessionNumber="MEM200",
        StudyID="1",
        Modality="OT",
    )
    ds.save_as(path, enforce_file_format=True)

    digest = hashlib.sha256(path.read_bytes())  # the header: a few hundred bytes
    with open(path, "ab") as f:
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
        element_header = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW" + b"\x00\x00" + struct.pack("<I", PIXEL_BYTES)
        f.write(element_header)
        digest.update(element_header)
        for number in range(1, FRAMES + 1):
            data = frame_bytes(number)
            f.write(data)
            digest.update(data)
    size = path.stat().st_size
    assert size > 200 * 1000 * 1000
    return BigInstance(path, size, digest.hexdigest(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


# ----------------------------------------------------------------------------- memory sampling


def server_rss(server) -> dict[int, int]:
    """RSS of every gunicorn process (master and workers) by pid."""
    result = {}
    for pid in server.pids():
        try:
            result[pid] = psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return result


class PeakRss:
    """Samples the summed RSS of all server processes every ~50 ms; keeps the peak."""

    def __init__(self, server, interval: float = 0.05):
        self.server = server
        self.interval = interval
        self.baseline = 0
        self.baseline_by_pid: dict[int, int] = {}
        self.peak = 0
        self.peak_by_pid: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        by_pid = server_rss(self.server)
        total = sum(by_pid.values())
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_by_pid = total, by_pid

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.baseline_by_pid = server_rss(self.server)
        self.baseline = sum(self.baseline_by_pid.values())
        self.peak, self.peak_by_pid = self.baseline, self.baseline_by_pid
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def report(self) -> str:
        def mb(n: int) -> str:
            return f"{n / MiB:.1f} MB"

        per_pid = ", ".join(
            f"pid {pid}: {mb(self.baseline_by_pid.get(pid, 0))} -> {mb(rss)}"
            for pid, rss in sorted(self.peak_by_pid.items())
        )
        return (
            f"all server processes grew by {mb(self.growth)} "
            f"(baseline {mb(self.baseline)}, peak {mb(self.peak)}, {self.samples} samples; {per_pid})"
        )


def assert_flat(rss: PeakRss, what: str, *, min_samples: int = 3) -> None:
    print(f"{what}: {rss.report()}")  # shown with -s / -rP
    assert rss.samples >= min_samples, f"{what}: too few RSS samples ({rss.samples}) to judge memory use"
    assert rss.growth < LIMIT, f"{what}: {rss.report()}; the limit is {LIMIT // MiB} MB"


# ----------------------------------------------------------------------------- multipart reading


@dataclass
class ReceivedPart:
    headers: dict[str, str]
    size: int
    sha256: str
    data: bytes | None  # kept only when asked for (small parts)


def read_multipart(chunks: Iterable[bytes], boundary: str, *, keep_data: bool = False) -> list[ReceivedPart]:
    """Parse a multipart body chunk by chunk: never more than one chunk plus a delimiter held.

    Strict about the framing the server must produce: the body starts with the first
    delimiter, ends with the close delimiter (optionally followed by CRLF).
    """
    dash = b"--" + boundary.encode("ascii")
    delimiter = b"\r\n" + dash
    buf = bytearray(b"\r\n")  # so the first delimiter looks like every other one
    parts: list[ReceivedPart] = []
    state = "start"
    digest = None
    size = 0
    data = bytearray()
    headers: dict[str, str] = {}

    def finish_part() -> None:
        parts.append(ReceivedPart(headers, size, digest.hexdigest(), bytes(data) if keep_data else None))

    source = iter(chunks)
    exhausted = False
    while True:
        progressed = True
        while progressed:
            progressed = False
            if state == "start":
                if len(buf) >= len(delimiter):
                    assert bytes(buf[: len(delimiter)]) == delimiter, (
                        f"multipart body does not start with its delimiter: {bytes(buf[:80])!r}"
                    )
                    del buf[: len(delimiter)]
                    state, progressed = "after_delimiter", True
            elif state == "after_delimiter":
                if len(buf) >= 2:
                    if buf[:2] == b"--":
                        del buf[:2]
                        state, progressed = "epilogue", True
                    else:
                        assert buf[:2] == b"\r\n", f"garbage after a delimiter: {bytes(buf[:80])!r}"
                        state, progressed = "headers", True
            elif state == "headers":
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    lines = bytes(buf[2:end]).decode("latin-1").split("\r\n") if end > 0 else []
                    headers = {}
                    for line in lines:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    del buf[: end + 4]
                    digest, size, data = hashlib.sha256(), 0, bytearray()
                    state, progressed = "body", True
                else:
                    assert len(buf) < 65536, "multipart part headers longer than 64 KiB"
            elif state == "body":
                found = buf.find(delimiter)
                if found >= 0:
                    piece = bytes(buf[:found])
                    del buf[: found + len(delimiter)]
                    digest.update(piece)
                    size += len(piece)
                    if keep_data:
                        data.extend(piece)
                    finish_part()
                    state, progressed = "after_delimiter", True
                else:
                    safe = len(buf) - (len(delimiter) - 1)
                    if safe > 0:
                        piece = bytes(buf[:safe])
                        del buf[:safe]
                        digest.update(piece)
                        size += len(piece)
                        if keep_data:
                            data.extend(piece)
            elif state == "epilogue":
                assert bytes(buf) in (b"", b"\r", b"\r\n"), f"data after the close delimiter: {bytes(buf[:80])!r}"
        if exhausted:
            break
        chunk = next(source, None)
        if chunk is None:
            exhausted = True
        else:
            buf.extend(chunk)
    assert state == "epilogue", f"multipart body ended in state {state!r}, before its close delimiter"
    assert bytes(buf) in (b"", b"\r\n"), f"data after the close delimiter: {bytes(buf[:80])!r}"
    return parts


def boundary_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    raise AssertionError(f"no boundary in Content-Type {content_type!r}")


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Iterator[BigInstance]:
    directory = tmp_path_factory.mktemp("big-instance")
    instance = build_big_instance(directory / "big.dcm")
    yield instance
    shutil.rmtree(directory, ignore_errors=True)


def small_instance_bytes() -> bytes:
    """A 16x16 image with fresh UIDs, to warm up every code path of the server."""
    ds = make_instance(
        rows=16,
        columns=16,
        frames=2,
        sop_class=MULTIFRAME_GRAYSCALE_WORD_SC,
        pixel_data=bytes(range(256)) * 4,
        PatientName="Memory^Warmup",
        Modality="OT",
    )
    return to_bytes(ds)


def warm_up(url: str) -> None:
    """Exercise STOW (single part and multipart), WADO, frames, QIDO and DELETE.

    Several rounds on fresh connections, so that every worker has most likely run
    each code path once (lazy imports, first allocations) before a baseline is taken.
    """
    for _ in range(6):
        body = small_instance_bytes()
        ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        r = requests.post(
            f"{url}/v2/studies", data=body, headers={"Content-Type": "application/dicom"}, timeout=60
        )
        assert r.status_code == 200, r.text
        instance = f"{url}/v2/studies/{study}/series/{series}/instances/{sop}"
        assert requests.get(instance, headers={"Accept": ACCEPT_INSTANCE}, timeout=60).content == body
        assert requests.get(f"{url}/v2/studies/{study}", headers={"Accept": ACCEPT_STUDY}, timeout=60).ok
        assert requests.get(f"{instance}/frames/1,2", headers={"Accept": ACCEPT_FRAMES}, timeout=60).ok
        assert requests.get(f"{url}/v2/studies/{study}/instances", timeout=60).ok
        assert requests.delete(instance, timeout=60).status_code == 204
        boundary = uuid.uuid4().hex
        multipart = multipart_body([body], boundary)
        r = requests.post(
            f"{url}/v2/studies",
            data=iter([multipart]),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert requests.delete(instance, timeout=60).status_code == 204


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("memory-server")
    spool = data_dir / "spool"
    spool.mkdir()
    srv = start_server(data_dir, workers=2, threads=4, env={"DICOMWEB_SPOOL_DIR": str(spool)})
    try:
        warm_up(srv.url)
        yield srv
    finally:
        stop_server(srv)
        # Keep the log and the (small) index for post-mortems; drop the big files.
        shutil.rmtree(data_dir / "blobs", ignore_errors=True)
        shutil.rmtree(spool, ignore_errors=True)


def tmp_files(server) -> list[Path]:
    tmp = Path(server.data_dir) / "blobs" / ".tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def qido_instance(server, big: BigInstance) -> list:
    r = requests.get(
        f"{server.url}/v2/studies/{big.study}/instances",
        params={"SOPInstanceUID": big.sop},
        headers={"Accept": DICOM_JSON},
        timeout=60,
    )
    assert r.status_code == 200, f"QIDO answered {r.status_code}: {r.text[:500]}"
    return r.json()


def ensure_absent(server, big: BigInstance) -> None:
    r = requests.delete(server.url + big.url, timeout=TIMEOUT)
    assert r.status_code in (204, 404), f"DELETE answered {r.status_code}: {r.text[:500]}"
    assert qido_instance(server, big) == []
    assert blob_files(server, sop=big.sop) == []


def ensure_stored(server, big: BigInstance) -> None:
    if qido_instance(server, big):
        return
    with open(big.path, "rb") as f:
        r = requests.post(
            f"{server.url}/v2/studies", data=f, headers={"Content-Type": "application/dicom"}, timeout=TIMEOUT
        )
    assert r.status_code == 200, f"upload answered {r.status_code}: {r.text[:500]}"


def assert_stored(server, big: BigInstance, response: requests.Response) -> None:
    """200, the instance referenced, indexed once and its one blob byte-identical to the file."""
    assert response.status_code == 200, (
        f"upload answered {response.status_code}: {response.text[:1000]}\n{server.log()[-3000:]}"
    )
    body = response.json()
    assert "00081198" not in body, body
    referenced = [item["00081155"]["Value"][0] for item in body["00081199"]["Value"]]
    assert referenced == [big.sop]
    assert len(qido_instance(server, big)) == 1
    blobs = blob_files(server, sop=big.sop)
    assert len(blobs) == 1, blobs
    assert blobs[0].stat().st_size == big.size
    assert sha256_of_file(blobs[0]) == big.sha256, "the stored blob differs from the uploaded file"


def multipart_upload(big: BigInstance, boundary: str, *, stop_short: int = 0) -> Iterator[bytes]:
    """multipart/related framing around the file, 1 MiB at a time; `stop_short` bytes of
    the file (and the close delimiter) are never sent when it is set."""
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    yield from big.chunks(MiB, limit=big.size - stop_short)
    if not stop_short:
        yield f"\r\n--{boundary}--\r\n".encode()


# ----------------------------------------------------------------------------- uploads


def test_upload_chunked_application_dicom_stays_flat(server, big):
    ensure_absent(server, big)
    with PeakRss(server) as rss:
        # A generator body: requests sends it with Transfer-Encoding: chunked.
        r = requests.post(
            f"{server.url}/v2/studies",
            data=big.chunks(MiB),
            headers={"Content-Type": "application/dicom", "Accept": DICOM_JSON},
            timeout=TIMEOUT,
        )
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_stored(server, big, r)
    assert_flat(rss, "chunked application/dicom upload of 200 MB")


def test_upload_with_content_length_stays_flat(server, big):
    ensure_absent(server, big)
    with open(big.path, "rb") as f, PeakRss(server) as rss:
        r = requests.post(
            f"{server.url}/v2/studies/{big.study}",
            data=f,
            headers={"Content-Type": "application/dicom", "Accept": DICOM_JSON},
            timeout=TIMEOUT,
        )
    assert r.request.headers.get("Content-Length") == str(big.size)
    assert_stored(server, big, r)
    assert_flat(rss, "application/dicom upload of 200 MB with Content-Length")


def test_upload_multipart_chunked_stays_flat(server, big):
    ensure_absent(server, big)
    boundary = uuid.uuid4().hex
    with PeakRss(server) as rss:
        r = requests.post(
            f"{server.url}/v2/studies",
            data=multipart_upload(big, boundary),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
            timeout=TIMEOUT,
        )
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_stored(server, big, r)
    assert_flat(rss, "chunked multipart/related upload of 200 MB")


# ----------------------------------------------------------------------------- downloads


def test_download_instance_stays_flat_and_is_byte_identical(server, big):
    ensure_stored(server, big)
    digest, size = hashlib.sha256(), 0
    with PeakRss(server) as rss, requests.get(
        server.url + big.url, headers={"Accept": ACCEPT_INSTANCE}, stream=True, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 200, r.text[:1000]
        content_type = r.headers["Content-Type"]
        content_length = r.headers.get("Content-Length")
        for chunk in r.iter_content(MiB):
            digest.update(chunk)
            size += len(chunk)
    assert content_type.split(";")[0].strip() == "application/dicom"
    assert content_length == str(big.size)
    assert size == big.size
    assert digest.hexdigest() == big.sha256, "the retrieved instance differs from the uploaded file"
    assert_flat(rss, "WADO-RS instance retrieve of 200 MB")


def test_download_study_multipart_stays_flat_and_is_byte_identical(server, big):
    ensure_stored(server, big)
    with PeakRss(server) as rss, requests.get(
        f"{server.url}/v2/studies/{big.study}", headers={"Accept": ACCEPT_STUDY}, stream=True, timeout=TIMEOUT
    ) as r:
        assert r.status_code == 200, r.text[:1000]
        content_type = r.headers["Content-Type"]
        assert content_type.lower().startswith("multipart/related"), content_type
        parts = read_multipart(r.iter_content(MiB), boundary_of(content_type))
    assert len(parts) == 1, [p.headers for p in parts]
    (part,) = parts
    assert part.headers.get("content-type", "").split(";")[0].strip() == "application/dicom", part.headers
    assert part.size == big.size
    assert part.sha256 == big.sha256, "the instance in the study retrieve differs from the uploaded file"
    assert_flat(rss, "WADO-RS multipart study retrieve of 200 MB")


def test_download_frames_stays_flat_and_returns_the_right_frames(server, big):
    ensure_stored(server, big)
    wanted = [1, 200, 400]
    with PeakRss(server) as rss, requests.get(
        f"{server.url}{big.url}/frames/{','.join(map(str, wanted))}",
        headers={"Accept": ACCEPT_FRAMES},
        stream=True,
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200, r.text[:1000]
        content_type = r.headers["Content-Type"]
        assert content_type.lower().startswith("multipart/related"), content_type
        parts = read_multipart(r.iter_content(MiB), boundary_of(content_type), keep_data=True)
    assert len(parts) == len(wanted), [p.headers for p in parts]
    for number, part in zip(wanted, parts, strict=True):
        assert part.headers.get("content-type", "").split(";")[0].strip() == "application/octet-stream", part.headers
        assert part.size == FRAME_BYTES, f"frame {number}: {part.size} bytes"
        assert part.data == frame_bytes(number), f"frame {number} does not hold the pixels written for it"
    # Three frames are 1.5 MB: over in a moment, so fewer samples are expected.
    assert_flat(rss, "WADO-RS frames retrieve from a 200 MB instance", min_samples=1)


# ----------------------------------------------------------------------------- truncated upload


def test_truncated_multipart_upload_is_rejected_and_leaves_nothing(server, big):
    ensure_absent(server, big)
    tmp_before = set(tmp_files(server))
    boundary = uuid.uuid4().hex
    with PeakRss(server) as rss:
        # The generator ends 1 MiB before the end of the file: no close delimiter is sent.
        # requests still terminates the chunked encoding, so the server sees a clean EOF.
        r = requests.post(
            f"{server.url}/v2/studies",
            data=multipart_upload(big, boundary, stop_short=MiB),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": DICOM_JSON,
            },
            timeout=TIMEOUT,
        )
    assert r.status_code == 400, f"truncated multipart upload answered {r.status_code}: {r.text[:1000]}"
    assert qido_instance(server, big) == [], "a truncated instance was indexed"
    assert blob_files(server, sop=big.sop) == [], "a truncated instance left a blob"
    assert set(tmp_files(server)) <= tmp_before, f"in-progress files were left behind: {tmp_files(server)}"
    r = requests.get(server.url + big.url, headers={"Accept": ACCEPT_INSTANCE}, timeout=60)
    assert r.status_code == 404, r.status_code
    assert_flat(rss, "truncated multipart upload of 200 MB")
