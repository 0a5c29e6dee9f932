"""Concurrent writers against real gunicorn workers sharing one SQLite index and one blob store.

Several worker processes (3 workers x 4 threads) race on the same SQLite file (WAL) and
the same blob directory. After each race the three views of the archive must agree:
the index (QIDO), the blobs on disk (walked directly, in-progress puts under '.tmp'
ignored) and the change feed. An index row without its blob, or a blob without its
row, is a failure.

The access log is switched to a format that prints the worker pid (`%(p)s`) so the
tests can check that requests really were spread over more than one process.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import dicom_factory
import numpy as np
import pytest
import requests
from live_servers import blob_files, start_server, stop_server
from pydicom.uid import generate_uid

pytestmark = pytest.mark.live

TIMEOUT = 60
WORKERS = 3
THREADS = 32  # gunicorn_conf.py's default: uploads may use 24 of them (gunicorn_worker.py)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DICOM_JSON = "application/dicom+json"
ACCEPT_INSTANCE = "application/dicom; transfer-syntax=*"
ALREADY_EXISTS = 45070
# '<pid> METHOD /path STATUS': gunicorn's %(p)s atom is the worker pid as '<1234>'.
ACCESS_LOG_FORMAT = "access pid=%(p)s %(m)s %(U)s %(s)s"
_ACCESS_LINE = re.compile(r"access pid=<(\d+)> (\S+) (\S+) (\d{3})")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("concurrency"),
        workers=WORKERS,
        threads=THREADS,
        env={"GUNICORN_CMD_ARGS": f"--access-logformat '{ACCESS_LOG_FORMAT}'"},
    )
    try:
        yield srv
    finally:
        stop_server(srv)


# ----------------------------------------------------------------------------- helpers


def make_instance(
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    *,
    seed: int = 0,
    instance_number: int = 1,
    series_number: int = 1,
) -> tuple[bytes, str, str, str]:
    """A 16x16 16-bit Secondary Capture image as Part 10 bytes, and its three UIDs."""
    pixels = np.random.default_rng(seed).integers(0, 4096, size=(16, 16), dtype=np.uint16)
    ds = dicom_factory.make_instance(
        study=study,
        series=series,
        sop=sop,
        rows=16,
        columns=16,
        sop_class=SECONDARY_CAPTURE,
        pixel_data=pixels.astype("<u2").tobytes(),
        PatientName="Concurrency^Test",
        PatientID="CONC-1",
        StudyDate="20240101",
        StudyTime="120000",
        Modality="OT",
        SeriesNumber=series_number,
        InstanceNumber=instance_number,
    )
    return dicom_factory.to_bytes(ds), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def race(n: int, action) -> list:
    """Run action(i) in n threads released together by a barrier; results by index.

    An exception in a thread is returned as its result (and re-raised by the caller's
    assertions), so one failing request never hangs the others at the barrier.
    """
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = action(i)
        except BaseException as exc:  # reported, not swallowed
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert not any(t.is_alive() for t in threads), "a request did not finish in time"
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} request(s) raised: {errors[:3]!r}"
    return results


def stow(url: str, body: bytes, *, study: str | None = None, method: str = "POST") -> requests.Response:
    target = f"{url}/v2/studies" + (f"/{study}" if study else "")
    return requests.request(
        method,
        target,
        data=body,
        headers={"Content-Type": "application/dicom", "Accept": DICOM_JSON},
        timeout=TIMEOUT,
    )


def instance_url(url: str, study: str, series: str, sop: str) -> str:
    return f"{url}/v2/studies/{study}/series/{series}/instances/{sop}"


def qido(url: str, path: str, **params) -> list:
    r = requests.get(f"{url}/v2{path}", params=params, headers={"Accept": DICOM_JSON}, timeout=TIMEOUT)
    assert r.status_code == 200, f"QIDO {path} answered {r.status_code}: {r.text[:500]}"
    return r.json()


def value(item: dict, tag: str):
    return item[tag]["Value"][0]


def assert_no_tmp_leftovers(server) -> None:
    """Once every response is in, no put is running: nothing may remain under '.tmp'."""
    tmp = Path(server.data_dir) / "blobs" / ".tmp"
    leftovers = [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []
    assert leftovers == [], f"in-progress blob files were left behind: {leftovers}"


def assert_actions_consistent(feed: list[dict]) -> None:
    """One instance's entries: create only when absent, update/delete only when present."""
    present = False
    for entry in feed:
        action = entry["action"]
        if action == "create":
            assert not present, f"'create' of an instance that exists: sequence {entry['sequence']}"
        else:
            assert action in ("update", "delete"), entry
            assert present, f"'{action}' of an instance that does not exist: sequence {entry['sequence']}"
        present = action != "delete"


def changes(url: str) -> list[dict]:
    """The whole change feed (v2 pages by offset), oldest first."""
    entries: list[dict] = []
    while True:
        r = requests.get(
            f"{url}/v2/changefeed",
            params={"offset": len(entries), "limit": 200, "includeMetadata": "false"},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, f"change feed answered {r.status_code}: {r.text[:500]}"
        page = r.json()
        entries.extend(page)
        if len(page) < 200:
            return entries


def assert_feed_well_ordered(entries: list[dict]) -> None:
    sequences = [e["sequence"] for e in entries]
    assert len(set(sequences)) == len(sequences), f"duplicate change-feed sequences: {sequences}"
    assert sequences == sorted(sequences), f"change-feed sequences are not increasing: {sequences}"
    timestamps = [e["timestamp"] for e in entries]
    assert timestamps == sorted(timestamps), "change-feed timestamps go backwards as sequences go up"


def worker_pids(server, method: str, path_prefix: str) -> Counter:
    """Worker pids that served matching requests, from the pid-stamped access log."""
    pids: Counter = Counter()
    for match in _ACCESS_LINE.finditer(server.log()):
        pid, m, path, _status = match.groups()
        if m == method and path.startswith(path_prefix):
            pids[int(pid)] += 1
    return pids


def log_tail(server, lines: int = 60) -> str:
    return "\n".join(server.log().splitlines()[-lines:])


# ----------------------------------------------------------------------------- tests


def test_concurrent_uploads_of_one_instance_store_it_once(server):
    body, study, series, sop = make_instance(seed=1)

    responses = race(20, lambda i: stow(server.url, body))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == Counter({200: 1, 409: 19}), f"statuses {dict(statuses)}\n{log_tail(server)}"
    for r in responses:
        payload = r.json()
        if r.status_code == 200:
            assert [value(i, "00081155") for i in payload["00081199"]["Value"]] == [sop]
            assert "00081198" not in payload
        else:
            failed = payload["00081198"]["Value"]
            assert len(failed) == 1, payload
            assert value(failed[0], "00081155") == sop
            assert value(failed[0], "00081197") == ALREADY_EXISTS, payload
            assert "00081199" not in payload, payload

    found = qido(server.url, f"/studies/{study}/instances")
    assert [value(i, "00080018") for i in found] == [sop]
    blobs = blob_files(server, study=study)
    assert len(blobs) == 1 and blobs[0].suffix == ".dcm", blobs
    assert blobs[0].read_bytes() == body
    r = requests.get(instance_url(server.url, study, series, sop), headers={"Accept": ACCEPT_INSTANCE}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == body
    feed = [e for e in changes(server.url) if e["sopInstanceUid"] == sop]
    assert [(e["action"], e["state"]) for e in feed] == [("create", "current")], feed
    assert_no_tmp_leftovers(server)


def test_fifty_concurrent_uploads_into_one_new_study(server):
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(5)]
    instances = []  # (body, series, sop)
    for s, series in enumerate(series_uids):
        for n in range(10):
            body, _, _, sop = make_instance(
                study, series, seed=100 + s * 10 + n, instance_number=n + 1, series_number=s + 1
            )
            instances.append((body, series, sop))

    def upload(i: int) -> requests.Response:
        body, _, _ = instances[i]
        # Half name the study in the URL, half do not.
        return stow(server.url, body, study=study if i % 2 == 0 else None)

    responses = race(50, upload)

    statuses = Counter(r.status_code for r in responses)
    failures = [r.text[:300] for r in responses if r.status_code != 200]
    assert statuses == Counter({200: 50}), f"statuses {dict(statuses)}: {failures[:3]}\n{log_tail(server)}"
    for r, (_, _, sop) in zip(responses, instances, strict=True):
        assert [value(i, "00081155") for i in r.json()["00081199"]["Value"]] == [sop]

    # Requests were spread over several worker processes sharing the SQLite file.
    pids = worker_pids(server, "POST", "/v2/studies")
    assert sum(pids.values()) >= 50, f"the access log lacks the uploads: {pids}\n{log_tail(server)}"
    assert len(pids) > 1, f"all uploads were served by one worker: {pids}"

    studies = qido(server.url, "/studies", StudyInstanceUID=study)
    assert len(studies) == 1, studies
    assert int(value(studies[0], "00201208")) == 50, studies[0]  # NumberOfStudyRelatedInstances
    assert int(value(studies[0], "00201206")) == 5, studies[0]  # NumberOfStudyRelatedSeries

    series_found = qido(server.url, f"/studies/{study}/series")
    assert sorted(value(s, "0020000E") for s in series_found) == sorted(series_uids)
    for s in series_found:
        assert int(value(s, "00201209")) == 10, s  # NumberOfSeriesRelatedInstances

    found = qido(server.url, f"/studies/{study}/instances", limit=100)
    assert sorted(value(i, "00080018") for i in found) == sorted(sop for _, _, sop in instances)

    blobs = blob_files(server, study=study)
    assert len(blobs) == 50 and all(b.suffix == ".dcm" for b in blobs), len(blobs)
    stored = {b.read_bytes() for b in blobs}
    assert stored == {body for body, _, _ in instances}, "the blobs are not the 50 uploaded files"

    feed = [e for e in changes(server.url) if e["studyInstanceUid"] == study]
    assert len(feed) == 50, feed
    assert all(e["action"] == "create" and e["state"] == "current" for e in feed), feed
    assert sorted(e["sopInstanceUid"] for e in feed) == sorted(sop for _, _, sop in instances)
    assert_feed_well_ordered(feed)
    assert_no_tmp_leftovers(server)


def test_concurrent_puts_of_one_instance_leave_one_version(server):
    body, study, _series, sop = make_instance(seed=2)

    responses = race(10, lambda i: stow(server.url, body, method="PUT"))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == Counter({200: 10}), f"statuses {dict(statuses)}: {[r.text[:300] for r in responses]}\n{log_tail(server)}"
    for r in responses:
        assert [value(i, "00081155") for i in r.json()["00081199"]["Value"]] == [sop]

    found = qido(server.url, f"/studies/{study}/instances")
    assert [value(i, "00080018") for i in found] == [sop]
    blobs = blob_files(server, study=study)
    assert len(blobs) == 1 and blobs[0].suffix == ".dcm", blobs
    assert blobs[0].read_bytes() == body

    feed = [e for e in changes(server.url) if e["sopInstanceUid"] == sop]
    assert Counter(e["action"] for e in feed) == Counter({"create": 1, "update": 9}), feed
    assert feed[0]["action"] == "create", feed
    assert Counter(e["state"] for e in feed) == Counter({"current": 1, "replaced": 9}), feed
    assert feed[-1]["state"] == "current", "the newest entry is not the current version"
    assert_feed_well_ordered(feed)
    assert_actions_consistent(feed)
    assert_no_tmp_leftovers(server)


def test_racing_delete_and_put_never_split_index_and_blobs(server):
    body, study, series, sop = make_instance(seed=3)
    url = instance_url(server.url, study, series, sop)
    outcomes = Counter()
    for round_number in range(10):
        # Each round starts with the instance stored, then DELETE and PUT race.
        r = stow(server.url, body, method="PUT")
        assert r.status_code == 200, r.text

        # A PUT takes longer than a DELETE (parse, write, fsync): hold the DELETE back
        # by 0-16 ms in turn so that both orders, and the moments in between, occur.
        delay = (round_number % 5) * 0.004

        def act(i: int, delay: float = delay) -> requests.Response:
            if i == 0:
                time.sleep(delay)
                return requests.delete(url, timeout=TIMEOUT)
            return stow(server.url, body, method="PUT")

        deleted, put = race(2, act)
        # The instance exists before the race and a PUT replaces it atomically, so the
        # DELETE always finds it, whichever request goes first.
        assert deleted.status_code == 204, f"round {round_number}: DELETE {deleted.status_code} {deleted.text[:300]}"
        assert put.status_code == 200, f"round {round_number}: PUT {put.status_code} {put.text[:300]}"

        wado = requests.get(url, headers={"Accept": ACCEPT_INSTANCE}, timeout=TIMEOUT)
        found = qido(server.url, "/instances", SOPInstanceUID=sop)
        blobs = blob_files(server, study=study, sop=sop)
        state = f"round {round_number}: WADO {wado.status_code}, QIDO {len(found)}, blobs {blobs}"
        if wado.status_code == 200:
            outcomes["present"] += 1
            assert wado.content == body, state
            assert len(found) == 1, state
            assert len(blobs) == 1, f"{state}: an instance must have exactly one blob"
            assert blobs[0].read_bytes() == body, state
        else:
            outcomes["absent"] += 1
            assert wado.status_code == 404, state
            assert found == [], f"{state}: an index row without its blob"
            assert blobs == [], f"{state}: a blob without its index row"
        assert_no_tmp_leftovers(server)

        # The change feed tells the same story as the archive.
        feed = [e for e in changes(server.url) if e["sopInstanceUid"] == sop]
        assert_feed_well_ordered(feed)
        assert_actions_consistent(feed)
        current = [e for e in feed if e["state"] == "current"]
        last_two = [e["action"] for e in feed[-2:]]
        if wado.status_code == 200:
            # DELETE went first, then the PUT stored the instance anew.
            assert last_two == ["delete", "create"], f"{state}: feed ends {feed[-3:]}"
            assert current == [feed[-1]], f"{state}: current entries {current}"
        else:
            # The PUT replaced the instance, then DELETE removed it.
            assert last_two == ["update", "delete"], f"{state}: feed ends {feed[-3:]}"
            assert current == [], f"{state}: current entries {current}"

    print(f"delete/put race outcomes: {dict(outcomes)}")
