"""/metrics and the logs of a real gunicorn with two workers.

Requests spread over the workers are all counted by a scrape, whichever worker answers it
(prometheus_client's multiprocess mode, set up by gunicorn_conf.py), also after a worker
died; with DICOMWEB_LOG_FORMAT=json every line the app writes is JSON, one per request with
the client's request id, and the app's own warnings reach the server's log in both formats.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from dicom_factory import make_instance, to_bytes
from live_servers import LiveServer, start_server, stop_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.live

TOKEN = "scrape-me-please"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
DICOM = {"Content-Type": "application/dicom", "Accept": "application/dicom+json"}
BATCH = 40
#: A gunicorn log line of its own: '[2026-12-06 08:31:55 +0000] [11834] [INFO] ...'.
GUNICORN_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [-+]\d{4}\] \[\d+\] \[[A-Z]+\] ")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def json_server(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("metrics-json"),
        workers=2,
        env={"DICOMWEB_LOG_FORMAT": "json", "DICOMWEB_METRICS_TOKEN": TOKEN},
    )
    yield server
    stop_server(server)


def scrape(server: LiveServer) -> Samples:
    response = requests.get(server.url + "/metrics", headers=SCRAPE, timeout=30)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def healthz_heads(samples: Samples) -> float:
    """HEAD /healthz: sent by these tests only (start_server polls with GET)."""
    labels = frozenset({"service": "ops", "method": "HEAD", "status": "200"}.items())
    return samples.get(("dicomweb_requests_total", labels), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """A request is counted and logged as the server closes its answer, a moment after the
    client has read it: wait for that, not for a set time."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


def log_objects(server: LiveServer) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def request_lines(server: LiveServer) -> dict[str, dict]:
    return {o["request_id"]: o for o in log_objects(server) if o.get("logger") == "dicomserver.requests"}


def send_heads(server: LiveServer, ids: list[str]) -> None:
    """HEAD /healthz once per id, eight at a time, each on a connection of its own."""

    def head(request_id: str) -> int:
        return requests.head(server.url + "/healthz", headers={"X-Request-ID": request_id}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(head, ids)) == [200] * len(ids)


def test_requests_on_every_worker_are_counted_once(json_server):
    before = healthz_heads(scrape(json_server))
    sent, pids = 0, set()
    for batch in range(10):  # until both workers have served some
        ids = [f"count-{batch}-{n}" for n in range(BATCH)]
        send_heads(json_server, ids)
        sent += BATCH
        eventually(lambda batch_ids=ids: set(batch_ids) <= set(request_lines(json_server)))
        pids = {line["pid"] for rid, line in request_lines(json_server).items() if rid.startswith("count-")}
        if len(pids) == 2:
            break
    assert len(pids) == 2, "one worker served every request: the sum over workers was not tested"
    eventually(lambda: healthz_heads(scrape(json_server)) - before == sent)
    for _ in range(8):  # whichever worker answers a scrape, it adds up both
        assert healthz_heads(scrape(json_server)) - before == sent


def test_the_scrape_token_is_required(json_server):
    assert requests.get(json_server.url + "/metrics", timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert requests.get(json_server.url + "/metrics", headers=wrong, timeout=30).status_code == 401


def test_json_logs(json_server):
    ds = make_instance()
    body = to_bytes(ds)
    half = len(body) // 2
    chunked = requests.post(  # a generator body goes out with Transfer-Encoding: chunked
        json_server.url + "/v2/studies",
        data=iter([body[:half], body[half:]]),
        headers={**DICOM, "X-Request-ID": "stow-chunked"},
        timeout=60,
    )
    assert chunked.status_code == 200, chunked.text
    again = requests.post(json_server.url + "/v2/studies", data=body, headers={**DICOM, "X-Request-ID": "stow-again"}, timeout=60)
    assert again.status_code == 409
    instance = requests.get(
        f"{json_server.url}/v2/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*", "X-Request-ID": "wado-file"},
        timeout=30,
    )
    assert instance.status_code == 200 and instance.content == body
    missing = requests.get(json_server.url + "/v2/studies/1.2.3/metadata", headers={"X-Request-ID": "missing"}, timeout=30)
    assert missing.status_code == 404 and missing.headers["X-Request-Id"] == "missing"
    ids = {"stow-chunked", "stow-again", "wado-file", "missing"}
    eventually(lambda: ids <= set(request_lines(json_server)))

    for line in json_server.log().splitlines():  # the app's lines are JSON; gunicorn's are its own
        assert line.startswith("{") or GUNICORN_LINE.match(line), line
        if line.startswith("{"):
            json.loads(line)
    lines = request_lines(json_server)
    stored = lines["stow-chunked"]
    assert (stored["service"], stored["method"], stored["route"], stored["status"]) == ("stow", "POST", "/v2/studies", 200)
    assert stored["bytes_in"] == len(body) and stored["bytes_out"] == len(chunked.content)
    assert stored["reason"] is None and stored["duration_ms"] > 0
    assert (lines["stow-again"]["status"], lines["stow-again"]["reason"]) == (409, "failed: 45070 x1")
    sent_file = lines["wado-file"]
    assert sent_file["service"] == "wado" and sent_file["bytes_out"] == len(body)
    assert sent_file["route"] == "/v2/studies/<study>/series/<series>/instances/<instance>"
    assert (lines["missing"]["status"], lines["missing"]["reason"]) == (404, missing.text.strip())
    warnings = [o for o in log_objects(json_server) if o.get("level") == "WARNING" and o.get("logger") == "dicomserver"]
    assert set(json_server.pids()[1:]) <= {o["pid"] for o in warnings if "open to anyone" in o["message"]}


def test_text_logs_and_where_the_metrics_are_kept(tmp_path):
    """Text format: the app's lines in gunicorn's look, the access log with the request id.
    The metrics directory is the server's own (a temporary one, removed at exit) or the
    operator's (emptied at start, kept); counts of a worker that died stay counted."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = start_server(tmp_path / "own", workers=2, env={"TMPDIR": str(scratch)})
    try:
        (directory,) = scratch.glob("dicomweb-metrics-*")
        send_heads(server, [f"text-{n}" for n in range(10)])
        eventually(lambda: healthz_heads(scrape(server)) == 10)
        served = {int(path.stem.split("_")[1]): _heads_in(path) for path in directory.glob("counter_*.db")}
        worker = max(served, key=lambda pid: served[pid])  # a worker's own file: what it counted
        assert served[worker] > 0 and sum(served.values()) == 10
        os.kill(worker, signal.SIGKILL)
        eventually(lambda: len(_live_workers(server) - {worker}) == 2)
        assert len(_live_workers(server) - {worker}) == 2  # the master replaced it
        assert healthz_heads(scrape(server)) == 10
        log = server.log()
    finally:
        stop_server(server)
    assert not directory.exists()
    assert re.search(r"\[INFO\] dicomserver: dicomserver ready", log)
    assert re.search(r"\[WARNING\] dicomserver: the DICOMweb API is open to anyone", log)
    assert re.search(r'"HEAD /healthz HTTP/1.1" 200 .* text-3$', log, re.MULTILINE)

    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"a previous run's counts")
    server = start_server(tmp_path / "given-server", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(given)})
    try:
        assert not (given / "counter_1.db").exists()
        send_heads(server, ["given-1"])
        eventually(lambda: healthz_heads(scrape(server)) == 1)
        assert healthz_heads(scrape(server)) == 1
    finally:
        stop_server(server)
    assert given.is_dir()


def _heads_in(path: Path) -> float:
    """The HEAD /healthz count in one worker's file."""
    for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
        for sample in metric.samples:
            if sample.name == "dicomweb_requests_total" and sample.labels.get("method") == "HEAD":
                return sample.value
    return 0.0


def _live_workers(server: LiveServer) -> set[int]:
    live = set()
    for child in psutil.Process(server.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                live.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return live

