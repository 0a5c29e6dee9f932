"""Crash consistency: SIGKILL a real gunicorn under concurrent STOWs, restart it, lose nothing.

A gunicorn (2 workers, local disk + SQLite) in a process group of its own takes STOWs of
small distinct instances from 8 client threads (one to three instances a request).
Meanwhile the test kills it at random moments, at least three times: the whole process
group (master and workers, SIGKILL) twice, restarting on the same data directory, and one
worker alone once (the master replaces it). Every instance the server acknowledged (a 200
or 202 that lists it in ReferencedSOPSequence) is recorded with its bytes.

After the last restart, every acknowledged instance must be retrievable byte-identical,
found by QIDO and in the change feed; every instance the archive holds must be one that
was sent, byte-identical (acknowledged or not: an answer lost in a kill is not an
instance lost); and everything else the kills left on disk must be what `dicom gc`
reports: each blob without an index row by name, no index row without a blob, and the
temporary files of interrupted writes counted. The figures are printed (run with -s to
see them): acknowledged, kills, lost (must be 0).

DICOMSERVER_CRASH_SEED replays a run's kill schedule (the seed is printed).
"""
from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dicom_factory
import psutil
import pytest
import requests
from live_servers import REPO, LiveServer, blob_files, start_server, stop_server

pytestmark = pytest.mark.live

CLIENTS = 8
WORKERS = 2
THREADS = 8
ROOT = "1.2.826.0.1.3680043.10.1011.40"
ANY_SYNTAX = "application/dicom; transfer-syntax=*"
#: Seconds of load before each kill (drawn between these), and after the last restart.
LOAD_BEFORE_KILL = (0.8, 2.5)
LOAD_AFTER_LAST = 1.5


@dataclass
class Load:
    """What the client threads sent and what the server acknowledged; the current URL."""

    url: str | None = None
    sent: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> Part 10 bytes
    acknowledged: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> RetrieveURL path
    requests: int = 0
    refused: Counter = field(default_factory=Counter)  # answers other than 200/202, by status
    broken: int = 0  # no answer: connection reset or refused by a kill
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    counter: itertools.count = field(default_factory=itertools.count)


def _instance(n: int) -> tuple[str, bytes]:
    """A small instance of its own; five studies, three series each, shared by the threads."""
    study = f"{ROOT}.{n % 5 + 1}"
    ds = dicom_factory.make_instance(
        study=study,
        series=f"{study}.{n % 3 + 1}",
        sop=f"{ROOT}.9.{n + 1}",
        pixel_data=(n % 65536).to_bytes(2, "little") * 16,
        InstanceNumber=n + 1,
    )
    return ds.SOPInstanceUID, dicom_factory.to_bytes(ds)


def _client(load: Load, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while not load.stop.is_set():
        url = load.url
        if url is None:
            time.sleep(0.02)
            continue
        with load.lock:
            numbers = [next(load.counter) for _ in range(rng.choice((1, 1, 2, 3)))]
        instances = [_instance(n) for n in numbers]
        with load.lock:
            load.sent.update(instances)
            load.requests += 1
        if len(instances) == 1:
            body, content_type = instances[0][1], "application/dicom"
        else:
            body = dicom_factory.multipart_body([data for _, data in instances])
            content_type = 'multipart/related; type="application/dicom"; boundary=BOUNDARY-1234'
        try:
            answer = session.post(
                url + "/v2/studies",
                data=body,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                timeout=20,
            )
        except requests.RequestException:
            with load.lock:
                load.broken += 1
            session.close()
            session = requests.Session()
            time.sleep(0.02)
            continue
        if answer.status_code not in (200, 202):
            with load.lock:
                load.refused[answer.status_code] += 1
            time.sleep(0.05)
            continue
        stored = answer.json().get("00081199", {}).get("Value", [])
        with load.lock:
            for item in stored:
                sop = item["00081155"]["Value"][0]
                load.acknowledged[sop] = "/v2/" + item["00081190"]["Value"][0].split("/v2/", 1)[1]


# -- killing ---------------------------------------------------------------------------


def _kill_group(server: LiveServer) -> int:
    """SIGKILL master and workers at once; return how many processes there were."""
    processes = [psutil.Process(pid) for pid in server.pids()]
    os.killpg(server.process.pid, signal.SIGKILL)  # new_session=True: the group id is the master's pid
    server.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (alive := [p for p in processes if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"still running after SIGKILL of the group: {alive}"
    return len(processes)


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a killed worker's new parent may be slow to reap it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_if_running(server: LiveServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


def _kill_one_worker(server: LiveServer, rng: random.Random) -> int:
    workers = psutil.Process(server.process.pid).children()
    assert workers, "the master has no workers"
    victim = rng.choice(workers)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)  # the master reaps it (and starts another)
    return victim.pid


def _restart(data_dir: Path, round_: int) -> LiveServer:
    log = data_dir / "gunicorn.log"
    if log.exists():
        log.rename(data_dir / f"gunicorn-{round_}.log")  # start_server writes a fresh one
    return start_server(data_dir, workers=WORKERS, threads=THREADS, new_session=True)


# -- reading the archive back ------------------------------------------------------------


def _value(item: dict, key: str):
    values = (item.get(key) or {}).get("Value") or []
    return values[0] if values else None


def _all_instances(session: requests.Session, url: str) -> dict[str, str]:
    """Every instance QIDO finds: SOP Instance UID -> retrieve path."""
    found: dict[str, str] = {}
    offset = 0
    while True:
        answer = session.get(f"{url}/v2/instances", params={"limit": 1000, "offset": offset}, timeout=30)
        assert answer.status_code in (200, 204), (answer.status_code, answer.text[:300])
        items = answer.json() if answer.content else []
        for item in items:
            sop = _value(item, "00080018")
            found[sop] = f"/v2/studies/{_value(item, '0020000D')}/series/{_value(item, '0020000E')}/instances/{sop}"
        if len(items) < 1000:
            return found
        offset += 1000


def _qido_by_uid(session: requests.Session, url: str, sops: list[str]) -> set[str]:
    """The given SOP Instance UIDs that QIDO finds by SOPInstanceUID (UID list matching)."""
    found: set[str] = set()
    for start in range(0, len(sops), 50):
        batch = sops[start:start + 50]
        answer = session.get(
            f"{url}/v2/instances", params={"SOPInstanceUID": ",".join(batch), "limit": 1000}, timeout=30
        )
        assert answer.status_code in (200, 204), (answer.status_code, answer.text[:300])
        found |= {_value(item, "00080018") for item in (answer.json() if answer.content else [])}
    return found


def _feed(session: requests.Session, url: str) -> dict[str, list[dict]]:
    """The change feed's entries by SOP Instance UID."""
    entries: dict[str, list[dict]] = {}
    offset = 0
    while True:
        answer = session.get(
            f"{url}/v2/changefeed", params={"offset": offset, "limit": 200, "includeMetadata": "false"}, timeout=30
        )
        assert answer.status_code == 200, (answer.status_code, answer.text[:300])
        page = answer.json()
        for entry in page:
            entries.setdefault(entry["sopInstanceUid"], []).append(entry)
        if len(page) < 200:
            return entries
        offset += len(page)


def _gc_report(data_dir: Path) -> str:
    """`flask --app wsgi dicom gc --grace 0s --dry-run` with the server's DICOMWEB_* settings."""
    env = dict(os.environ)
    env.update(
        {
            "DICOMWEB_BLOBSTORE_URL": str(data_dir / "blobs"),
            "DICOMWEB_DATABASE_URL": f"sqlite:///{data_dir / 'index.db'}",
            "DICOMWEB_AUDIT_LOG": "off",
        }
    )
    flask = [sys.executable, "-m", "flask", "--app", "wsgi", "dicom", "gc", "--grace", "0s", "--dry-run"]
    done = subprocess.run(flask, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# -- the test ----------------------------------------------------------------------------


def test_sigkill_under_concurrent_stow_loses_nothing_acknowledged(tmp_path):
    seed = int(os.environ.get("DICOMSERVER_CRASH_SEED") or random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)
    kinds = ["group", "group", "worker"]
    rng.shuffle(kinds)
    data_dir = tmp_path / "archive"
    load = Load()
    server = _restart(data_dir, 0)
    clients = [threading.Thread(target=_client, args=(load, seed + i), daemon=True) for i in range(CLIENTS)]
    kills: list[str] = []
    started = time.monotonic()
    try:
        load.url = server.url
        for thread in clients:
            thread.start()
        for round_, kind in enumerate(kinds, start=1):
            time.sleep(rng.uniform(*LOAD_BEFORE_KILL))
            if kind == "worker":
                pid = _kill_one_worker(server, rng)
                kills.append(f"worker {pid}")
                continue
            load.url = None  # the clients wait for the restart (requests in flight fail)
            processes = _kill_group(server)
            kills.append(f"group of {processes}")
            server = _restart(data_dir, round_)
            load.url = server.url
        time.sleep(LOAD_AFTER_LAST)
    except BaseException:
        _kill_if_running(server)  # whatever went wrong, no server outlives the test
        raise
    finally:
        load.stop.set()
        for thread in clients:
            thread.join(timeout=30)
    load_seconds = time.monotonic() - started

    session = requests.Session()
    try:
        with load.lock:
            acknowledged, sent = dict(load.acknowledged), dict(load.sent)
        assert len(acknowledged) > 50, f"too little was stored to mean anything: {len(acknowledged)} ({load})"
        lost: dict[str, str] = {}
        for sop, path in acknowledged.items():
            answer = session.get(server.url + path, headers={"Accept": ANY_SYNTAX}, timeout=30)
            if answer.status_code != 200:
                lost[sop] = f"WADO {answer.status_code}"
            elif answer.content != sent[sop]:
                lost[sop] = "WADO answers other bytes"
        for sop in set(acknowledged) - _qido_by_uid(session, server.url, sorted(acknowledged)):
            lost.setdefault(sop, "not found by QIDO")
        feed = _feed(session, server.url)
        for sop in acknowledged:
            if not any(e["action"] == "create" and e["state"] == "current" for e in feed.get(sop, [])):
                lost.setdefault(sop, f"change feed: {feed.get(sop)}")
        held = _all_instances(session, server.url)
        invented = set(held) - set(sent)
        assert not invented, f"the archive holds instances nobody sent: {sorted(invented)[:5]}"
        corrupt = []
        for sop in set(held) - set(acknowledged):  # stored, but the answer was lost in a kill
            answer = session.get(server.url + held[sop], headers={"Accept": ANY_SYNTAX}, timeout=30)
            if answer.status_code != 200 or answer.content != sent[sop]:
                corrupt.append((sop, answer.status_code))
        current = {sop for sop, entries in feed.items() if any(e["state"] == "current" for e in entries)}
    finally:
        session.close()
        stop_server(server)
        _kill_if_running(server)

    report = _gc_report(data_dir)
    on_disk = blob_files(server)
    temporary = list((data_dir / "blobs" / ".tmp").glob("*"))
    by_sop: dict[str, list[str]] = {}
    for path in on_disk:
        key = str(path.relative_to(data_dir / "blobs"))
        by_sop.setdefault(path.name.rsplit("_", 1)[0], []).append(key)
    reported = set(re.findall(r"^orphan blob: (\S+) \(would remove\)$", report, re.MULTILINE))
    expected_orphans = sum(len(keys) - (sop in held) for sop, keys in by_sop.items())

    print(
        f"\ncrash test (seed {seed}): {len(acknowledged)} instances acknowledged in {load.requests} requests "
        f"over {load_seconds:.1f} s; kills: {len(kills)} ({', '.join(kills)}); lost: {len(lost)}; "
        f"stored without acknowledgement: {len(set(held) - set(acknowledged))}; "
        f"answers lost to kills: {load.broken}, refused: {dict(load.refused)}; "
        f"blobs without a row: {expected_orphans} (gc reports {len(reported)}); temporary files: {len(temporary)}"
    )
    assert not lost, f"acknowledged instances lost: {dict(list(lost.items())[:10])} (seed {seed})"
    assert len(kills) >= 3
    assert not corrupt, f"instances held but not as sent: {corrupt[:10]}"
    assert current == set(held), "the change feed's current instances are not what QIDO finds"
    assert f"{len(held)} indexed instances" in report, report
    assert "0 index rows without a blob" in report, report
    assert reported <= {str(p.relative_to(data_dir / "blobs")) for p in on_disk}, report
    assert len(reported) == expected_orphans, f"gc reports {len(reported)} orphan blobs, {expected_orphans} on disk:\n{report}"
    for sop, keys in by_sop.items():
        unreported = [k for k in keys if k not in reported]
        assert len(unreported) == (1 if sop in held else 0), (sop, keys, report)
    counted = re.search(r"(\d+) temporary files", report)
    if counted:  # dicom gc counts them (young ones are left alone, by name only when old)
        assert int(counted.group(1)) == len(temporary), report
