"""Benchmark dicomserver beside Orthanc (and nginx as a ceiling) and write docs/benchmarks.md.

    python bench/run.py                                  # N=500 and N=3000, 3 rounds, both servers
    python bench/run.py --n 3000 --repeat 3              # one size
    python bench/run.py --quick --servers dicomserver    # a smoke run in well under a minute
    python bench/run.py --servers dicomserver --ops metadata,qido-instances \\
                        --dicomserver-env DICOMWEB_WORKERS=3 --out /tmp/b.md
    python bench/run.py --ops dimse-store --update       # measure DIMSE C-STORE again, keep the
                                                         # other rows of docs/benchmarks.md

Each data size is measured on its own: fresh servers, all its rounds, then the next
size. A round of one size: every server in turn (STOW of the N instances, the GET
operations, for dicomserver also WADO instance through nginx in X-Accel mode, then the
big study stored and its /metadata asked), then the same server's DIMSE listener fresh
(`dicomserver dimse`, Orthanc's DICOM port) taking the N files by C-STORE from storescu,
`dicomserver import` of the N files into a fresh archive, nginx alone and the gunicorn floors.

Every server is started here (loopback, free port, fresh temporary data) and stopped
before the run ends, also on failure or Ctrl-C; the whole run is bounded by
--time-limit. See bench/report.py for the method as written into the report.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/run.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import requests

from bench import generate, ops, report
from bench.load import (
    BenchmarkError,
    NoAnswerInTime,
    QuietGate,
    ResourceMonitor,
    dcmtk_available,
    run_gets,
    run_storescu,
    run_stow,
    run_wrk,
    wrk_available,
)
from bench.servers import (
    REPO,
    DicomServer,
    DicomServerDimse,
    External,
    GunicornFloor,
    Nginx,
    NginxProxy,
    Orthanc,
    Server,
    export_commit,
)

DEFAULT_N = "500,3000"
QUICK_N = "50,100"
DEFAULT_BIG = 5000
QUICK_BIG = 200
#: --ops keys of the rows that are not GET_OPS or STOW_OPS.
BIG_KEY = "big-study"
IMPORT_KEY = "import"
DIMSE_KEY = ops.DIMSE_OP.key
#: The --ops keys measured without the HTTP servers.
NOT_HTTP_KEYS = frozenset({IMPORT_KEY, DIMSE_KEY})


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", help="comma-separated data sizes, instances to generate and store, each measured "
                              f"with its own servers and rounds (default {DEFAULT_N}, --quick {QUICK_N})")
    p.add_argument("--big-study", type=int, metavar="N",
                   help=f"instances of the big study whose /metadata is measured (default {DEFAULT_BIG}, "
                        f"--quick {QUICK_BIG}; 0: not measured)")
    p.add_argument("--repeat", type=int, help="rounds per server, in alternation (default 3, --quick 1)")
    p.add_argument("--concurrency", default="1,4", help="comma-separated client concurrencies (default 1,4)")
    p.add_argument("--servers", default="dicomserver,orthanc",
                   help="comma-separated: dicomserver, orthanc, external (default dicomserver,orthanc); "
                        "ratios compare the first two")
    p.add_argument("--ops", help="comma-separated operation keys to run (default all): "
                   + ", ".join([o.key for o in ops.STOW_OPS] + [o.key for o in ops.GET_OPS]
                               + [ops.PROXY_OP, BIG_KEY, IMPORT_KEY, DIMSE_KEY]))
    p.add_argument("--duration", type=float, help="seconds per wrk test (default 5, --quick 1)")
    p.add_argument("--big-duration", type=float,
                   help="seconds each connection asks for a big study's /metadata, at least one request "
                        "(default 3, --quick 1)")
    p.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each test (default 1, --quick 0)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md",
                   help="the Markdown report (default docs/benchmarks.md); raw records go next to it as .json")
    p.add_argument("--quick", action="store_true", help="a CI-sized smoke run (small N, 1 round, 1 s tests)")
    p.add_argument("--no-nginx", action="store_true",
                   help="skip nginx: the ceiling and dicomserver behind nginx (X-Accel)")
    p.add_argument("--no-floors", action="store_true",
                   help="skip the gunicorn floors (the files through gunicorn + a bare WSGI app / one Flask route)")
    p.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    p.add_argument("--cache-dir", type=Path, default=generate.CACHE_ROOT, help="where generated data is kept")
    p.add_argument("--dicomserver-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for dicomserver (repeatable), e.g. DICOMWEB_WORKERS=3")
    p.add_argument("--dicomserver-rev", metavar="REV",
                   help="serve this commit (exported with git archive) instead of the working tree, "
                        "e.g. HEAD or main~3: measures exactly one commit, and lets two be compared")
    p.add_argument("--external-url", help="DICOMweb base URL of a server started elsewhere (--servers external)")
    p.add_argument("--quiet-cores", type=float,
                   help="before each test wait until other processes use at most this many cores, and take a "
                        "GET test again when they used more (default 0.3; --quick: off; 0 or less: off)")
    p.add_argument("--retries", type=int, default=2, help="times a disturbed GET test is taken again (default 2)")
    p.add_argument("--quiet-budget", type=float, default=900.0,
                   help="seconds the whole run may spend waiting for quiet and repeating tests (default 900)")
    p.add_argument("--update", action="store_true",
                   help="merge into the report at --out instead of replacing it: this run's rows take the place "
                        "of the same server's and operation's rows of the earlier run (read from --out's .json), "
                        "the rest is kept; needs the same --n and --concurrency, e.g. --ops dimse-store --update")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite --out from the records of an earlier run (its .json), e.g. after "
                        "editing the text in bench/report.py")
    p.add_argument("--time-limit", type=float, default=4 * 3600, help="stop the whole run after this many seconds")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(n) for n in (args.n or (QUICK_N if args.quick else DEFAULT_N)).split(",") if n.strip()]
    except ValueError:
        p.error("--n takes comma-separated numbers, e.g. 500,3000")
    if args.big_study is None:
        args.big_study = QUICK_BIG if args.quick else DEFAULT_BIG
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.big_duration = args.big_duration or (1.0 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if args.quick else 1.0)
    if args.quiet_cores is None:
        args.quiet_cores = None if args.quick else 0.3
    args.gate = QuietGate(args.quiet_cores if args.quiet_cores and args.quiet_cores > 0 else None,
                          budget=args.quiet_budget)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    known = ({o.key for o in ops.STOW_OPS} | {o.key for o in ops.GET_OPS}
             | {ops.PROXY_OP, BIG_KEY, IMPORT_KEY, DIMSE_KEY})
    args.ops = set(args.ops.split(",")) if args.ops else known
    if args.ops - known:
        p.error(f"unknown operations: {', '.join(sorted(args.ops - known))}")
    if len(set(args.servers)) != len(args.servers) or set(args.servers) - {"dicomserver", "orthanc", "external"}:
        p.error("--servers takes distinct names among dicomserver, orthanc, external")
    if "external" in args.servers and not args.external_url:
        p.error("--servers external needs --external-url")
    if min(args.concurrency, default=0) < 1 or min(args.sizes, default=0) < 1 or args.repeat < 1:
        p.error("--n, --repeat and every --concurrency must be positive")
    if len(set(args.sizes)) != len(args.sizes):
        p.error("--n takes distinct sizes")
    if args.update and args.render:
        p.error("--update and --render do not go together")
    if args.update and not args.out.with_suffix(".json").exists():
        p.error(f"--update needs the records of the earlier run: {args.out.with_suffix('.json')} does not exist")
    if args.big_study and args.big_study < len(generate.BIG_SERIES_FRACTIONS):
        p.error(f"--big-study takes 0 or at least {len(generate.BIG_SERIES_FRACTIONS)} instances")
    args.dicomserver_env_dict = dict(item.split("=", 1) for item in args.dicomserver_env)
    return args


def make_factories(args, source: Path | None = None, commit: str | None = None) -> dict[str, callable]:
    env = args.dicomserver_env_dict
    return {
        "dicomserver": lambda: DicomServer(env=env, source=source, commit=commit),
        "orthanc": Orthanc,
        "external": lambda: External(args.external_url),
    }


def make_dimse_factories(args, source: Path | None = None, commit: str | None = None) -> dict[str, callable]:
    """The DIMSE listener of each server that has one (an external DICOMweb server has none here)."""
    env = args.dicomserver_env_dict
    return {
        "dicomserver": lambda: DicomServerDimse(env=env, source=source, commit=commit),
        "orthanc": lambda: Orthanc(dimse=True),
    }


def check_tools(args, get_ops) -> None:
    missing = []
    if get_ops and not wrk_available():
        missing.append("wrk (Debian package wrk)")
    if DIMSE_KEY in args.ops and {"dicomserver", "orthanc"} & set(args.servers) and not dcmtk_available():
        missing.append("DCMTK's storescu and echoscu (Debian package dcmtk)")
    if "orthanc" in args.servers and not Orthanc.available():
        missing.append("Orthanc with its DICOMweb plugin (Debian packages orthanc orthanc-dicomweb)")
    if missing:
        raise SystemExit("missing: " + "; ".join(missing) + ". `make bench` installs them when run as root.")


def stow_phase(server: Server, data: generate.DataSet, args, round_no: int, records: list) -> None:
    """Store every instance: in one slice per (concurrency, STOW operation), each timed."""
    stow_ops = [o for o in ops.STOW_OPS if o.key in args.ops]
    configs = [(c, o) for c in args.concurrency for o in stow_ops]
    files = [f for *_, f in data.instances()]
    url = server.base_url + "/studies"
    if not configs:  # nothing to time: just load the data
        run_stow(url, files, per_request=10, concurrency=max(args.concurrency))
        return
    size = -(-len(files) // len(configs))
    for i, (conc, op) in enumerate(configs):
        chunk = files[i * size:(i + 1) * size]
        if not chunk:
            continue
        args.gate.wait()
        with ResourceMonitor(server.pids) as monitor:
            result = run_stow(url, chunk, per_request=op.per_request, concurrency=conc)
        res = monitor.result
        records.append({
            "n": data.n, "round": round_no, "server": server.name, "op": op.key, "concurrency": conc,
            "instances": result.instances, "requests": result.requests, "seconds": result.seconds,
            "instances_per_s": result.instances_per_s, "mb_per_s": result.mb_per_s,
            "p50_ms": result.p50_ms, "p95_ms": result.p95_ms,
            "bytes_per_response": None, "client_cpu_s": result.client_cpu_seconds,
            **_resources(server, res), **_other_load(res, client_process_cpu=0.0),
        })
        log(f"  {server.label} c={conc} {op.key}: {result.instances_per_s:.1f} inst/s, "
            f"{result.mb_per_s:.1f} MB/s, p50 {result.p50_ms:.1f} ms ({result.instances} instances; "
            f"server CPU {res.cpu_seconds:.1f} s, client CPU {result.client_cpu_seconds / result.seconds:.2f} cores)")


def _resources(server: Server, res) -> dict:
    if not server.pids() and not res.processes:
        return {"server_cpu_s": None, "server_peak_rss": None, "server_peak_pss": None}
    return {"server_cpu_s": res.cpu_seconds, "server_peak_rss": res.peak_rss, "server_peak_pss": res.peak_pss}


def _other_load(res, client_process_cpu: float) -> dict:
    """CPU the rest of the machine used during a test: busy time not spent by the server, wrk, this
    harness or the kernel's interrupt handling (loopback networking, which no process is charged for).
    Anything but ~0 means the figures were taken on a machine that was not idle."""
    ours = res.cpu_seconds + client_process_cpu + res.harness_cpu_seconds + res.machine_irq_seconds
    return {"other_cpu_s": max(0.0, res.machine_busy_seconds - ours), "steal_cpu_s": res.machine_steal_seconds,
            "irq_cpu_s": res.machine_irq_seconds}


def dimse_phase(server: DicomServerDimse | Orthanc, name: str, data: generate.DataSet, args, round_no: int,
                records: list) -> None:
    """C-STORE every instance into a fresh DIMSE listener: in one slice per concurrency (as STOW's
    slices), each timed, each followed by the server's own count, which must be all sent so far."""
    files = [f for *_, f in data.instances()]
    size = -(-len(files) // len(args.concurrency))
    sent = 0
    for i, conc in enumerate(args.concurrency):
        chunk = files[i * size:(i + 1) * size]
        if not chunk:
            continue
        args.gate.wait()
        with ResourceMonitor(server.pids) as monitor:
            try:
                result = run_storescu(server.dicom_port, server.ae_title, chunk, concurrency=conc)
            except BenchmarkError as error:
                raise BenchmarkError(f"{server.label}: {error}\n{server.log()[-3000:]}") from None
        res = monitor.result
        sent += result.instances
        stored = server.instances_stored()
        if stored != sent:
            raise BenchmarkError(f"{server.label} holds {stored} instances after {sent} were sent by C-STORE "
                                 f"(storescu reported no failure):\n{server.log()[-3000:]}")
        records.append({
            "n": data.n, "round": round_no, "server": name, "op": DIMSE_KEY, "concurrency": conc,
            "instances": result.instances, "requests": result.instances, "seconds": result.seconds,
            "instances_per_s": result.instances_per_s, "mb_per_s": result.mb_per_s,
            "p50_ms": None, "p95_ms": None, "bytes_per_response": None,
            "client_cpu_s": result.client_cpu_seconds, "associations": result.associations,
            "stored_after": stored, "sent_after": sent, **_resources(server, res),
            **_other_load(res, client_process_cpu=result.client_cpu_seconds),
        })
        log(f"  {server.label} c={conc} {DIMSE_KEY}: {result.instances_per_s:.1f} inst/s, "
            f"{result.mb_per_s:.1f} MB/s ({result.instances} instances on {result.associations} association(s), "
            f"{stored} stored; server CPU {res.cpu_seconds:.1f} s, storescu CPU "
            f"{result.client_cpu_seconds / result.seconds:.2f} cores)")


def get_test(server: Server, name: str, op_key: str, paths: list[str], accept: str | None, conc: int, args,
             round_no: int, records: list, close_delimited: bool = False, n: int | None = None) -> None:
    """One wrk test; taken again (up to --retries times) if other processes disturbed it.

    Of the attempts, the one with the least other load is kept, whatever its figures.
    """
    prefixed = [server.base_path + p for p in paths]
    attempts = []
    while True:
        args.gate.wait()
        if args.warmup > 0:
            run_wrk(server.origin, prefixed, accept, connections=conc, duration=args.warmup,
                    close_delimited=close_delimited, warmup=True)
        with ResourceMonitor(server.pids) as monitor:
            try:
                result = run_wrk(server.origin, prefixed, accept, connections=conc, duration=args.duration,
                                 close_delimited=close_delimited)
                client = "wrk"
            except NoAnswerInTime:
                # Every answer took longer than the test: wrk counts none. The Python client
                # completes at least one request per connection instead.
                result = run_gets(server.origin, prefixed, {"Accept": accept} if accept else {}, connections=conc,
                                  duration=args.duration)
                client = "python"
        res = monitor.result
        record = {
            "n": n, "round": round_no, "server": name, "op": op_key, "concurrency": conc,
            "requests": result.requests, "seconds": result.seconds, "rps": result.rps,
            "mb_per_s": result.mb_per_s, "p50_ms": result.p50_ms, "p95_ms": result.p95_ms,
            "p99_ms": result.p99_ms, "bytes_per_response": result.bytes / result.requests,
            "client_cpu_s": result.client_cpu_seconds, "close_delimited": close_delimited, "client": client,
            **_resources(server, res),
            # The Python client's CPU is this harness's own, counted as such already.
            **_other_load(res, client_process_cpu=result.client_cpu_seconds if client == "wrk" else 0.0),
        }
        attempts.append(record)
        other = record["other_cpu_s"] / result.seconds
        log(f"  {server.label} c={conc} {op_key}: {result.rps:.1f} req/s, {result.mb_per_s:.1f} MB/s, "
            f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms (server CPU {res.cpu_seconds:.1f} s, "
            f"{client} CPU {result.client_cpu_seconds / result.seconds:.2f} cores, other {other:.2f} cores)")
        if (len(attempts) > args.retries or not args.gate.disturbed(other)
                or not args.gate.retry_allowed(args.duration + args.warmup)):
            break
        log(f"    disturbed by {other:.2f} cores of other load: taking it again")
    kept = min(attempts, key=lambda r: r["other_cpu_s"] / r["seconds"])
    kept["attempts"] = len(attempts)
    records.append(kept)


def measure_server(server: Server, data, big, args, round_no: int, records: list, paths: dict, validations: dict,
                   unavailable: dict) -> None:
    log(f"N={data.n} round {round_no + 1}/{args.repeat}: {server.label} at {server.base_url}; "
        f"storing {data.n} instances")
    stow_phase(server, data, args, round_no, records)
    get_ops = [o for o in ops.GET_OPS if o.key in args.ops]
    for op in get_ops:
        # One answer of each kind, checked against the generated data, before anything is timed.
        validations.setdefault(server.name, {})[op.key] = ops.validate(op, server, data, paths[op.key][0])
    for conc in args.concurrency:
        for op in get_ops:
            get_test(server, server.name, op.key, paths[op.key], op.accept_for(server.name), conc, args,
                     round_no, records, close_delimited=validations[server.name][op.key]["close_delimited"],
                     n=data.n)
    if isinstance(server, DicomServer) and args.use_proxy:
        proxy_phase(server, data, args, round_no, records, paths, unavailable)
    if big is not None:
        big_phase(server, data, big, args, round_no, records, validations)


def proxy_phase(server: DicomServer, data, args, round_no: int, records: list, paths: dict,
                unavailable: dict) -> None:
    """WADO instance through nginx in front of a second gunicorn on the same store, started with
    DICOMWEB_ACCEL_REDIRECT: dicomserver answers with the file's name, nginx sends the file."""
    if ops.PROXY_OP in unavailable:
        return
    env = {**args.dicomserver_env_dict, "DICOMWEB_ACCEL_REDIRECT": NginxProxy.PREFIX}
    instance_paths = paths.get(ops.CEILING_OP) or ops.paths_for(ops.GET_OPS[0], data, args.seed)
    accel = DicomServer(env=env, source=args.source, commit=args.commit, store=server.store_dir)
    try:
        accel.start()
    except RuntimeError as error:  # dicomserver refused the variable at start-up
        unavailable[ops.PROXY_OP] = ("X-Accel mode not available in this build (dicomserver did not start with "
                                     "DICOMWEB_ACCEL_REDIRECT)")
        log(f"  {unavailable[ops.PROXY_OP]}: {str(error)[:500]}")
        return
    try:
        with NginxProxy(accel) as proxy:
            url = proxy.origin + proxy.base_path + instance_paths[0]
            answer = requests.get(url, headers={"Accept": ops.PROXY_ACCEPT}, timeout=60)
            why = ops.check_proxied_instance(answer, data, instance_paths[0])
            if why:
                unavailable[ops.PROXY_OP] = f"X-Accel mode not available in this build ({why})"
                log(f"  {proxy.label}: {unavailable[ops.PROXY_OP]}; not measured")
                return
            for conc in args.concurrency:
                get_test(proxy, proxy.name, ops.PROXY_OP, instance_paths, ops.PROXY_ACCEPT, conc, args, round_no,
                         records, n=data.n)
    finally:
        accel.stop()


def big_phase(server: Server, data, big, args, round_no: int, records: list, validations: dict) -> None:
    """Store the big study (timed, as extra information), then ask its study and series /metadata.

    At the highest concurrency only (the issue's targets are there): a Python client, every
    connection for --big-duration seconds but at least one request (Orthanc takes seconds per answer).
    Orthanc runs with HTTP compression off (bench/orthanc.json), so it is asked without gzip only.
    """
    conc = max(args.concurrency)
    files = [f for *_, f in big.instances()]
    args.gate.wait()
    with ResourceMonitor(server.pids) as monitor:
        result = run_stow(server.base_url + "/studies", files, per_request=10, concurrency=conc)
    res = monitor.result
    records.append({
        "n": data.n, "round": round_no, "server": server.name, "op": "big-stow", "concurrency": conc,
        "instances": result.instances, "requests": result.requests, "seconds": result.seconds,
        "instances_per_s": result.instances_per_s, "mb_per_s": result.mb_per_s,
        "p50_ms": result.p50_ms, "p95_ms": result.p95_ms, "bytes_per_response": None,
        "client_cpu_s": result.client_cpu_seconds, **_resources(server, res), **_other_load(res, 0.0),
    })
    log(f"  {server.label}: big study of {big.n} stored, {result.instances_per_s:.0f} inst/s")
    for op in ops.BIG_OPS:
        if op.gzip and isinstance(server, Orthanc):
            continue
        path = server.base_path + op.path(big)
        with ResourceMonitor(server.pids) as whole:  # RSS growth: from before the first answer
            check = ops.fetch_big(op, server, big)
            validations.setdefault(server.name, {})[op.key] = check
            args.gate.wait()
            with ResourceMonitor(server.pids) as monitor:
                got = run_gets(server.origin, [path], op.headers(), connections=conc, duration=args.big_duration)
        res = monitor.result
        records.append({
            "n": data.n, "round": round_no, "server": server.name, "op": op.key, "concurrency": conc,
            "requests": got.requests, "seconds": got.seconds, "rps": got.rps, "mb_per_s": got.mb_per_s,
            "p50_ms": got.p50_ms, "p95_ms": got.p95_ms, "p99_ms": got.p99_ms,
            "bytes_per_response": check["bytes"], "json_bytes": check["json_bytes"],
            "content_encoding": check["content_encoding"], "client_cpu_s": got.client_cpu_seconds,
            "rss_before": whole.result.start_rss, "rss_growth": max(0, whole.result.peak_rss - whole.result.start_rss),
            **_resources(server, res), **_other_load(res, client_process_cpu=0.0),
        })
        log(f"  {server.label} c={conc} {op.key}: p50 {got.p50_ms:.0f} ms, p95 {got.p95_ms:.0f} ms, "
            f"{got.requests} requests, {check['bytes'] / 1e6:.1f} MB each, server CPU "
            f"{res.cpu_seconds / max(1, got.requests) * 1000:.0f} ms/request, RSS growth "
            f"{records[-1]['rss_growth'] / 1e6:.0f} MB")


def import_phase(data, args, round_no: int, records: list) -> None:
    """`dicomserver import DIR` of the N files into a fresh store and index: files/s, MB/s, CPU
    (the command's and its worker processes'), then the index must hold N instances."""
    script = Path(sys.executable).with_name("dicomserver")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dicomserver"]
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        env = dict(os.environ, **args.dicomserver_env_dict)
        env.update({
            "DICOMWEB_BLOBSTORE_URL": str(Path(tmp) / "blobs"),
            "DICOMWEB_DATABASE_URL": f"sqlite:///{Path(tmp) / 'index.db'}",
            "PYTHONPATH": os.pathsep.join([str(args.source or REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep),
        })
        argv = [*command, "import", str(data.directory), "--no-progress"]
        args.gate.wait()
        log(f"N={data.n} round {round_no + 1}/{args.repeat}: dicomserver import of {data.n} files")
        with open(Path(tmp) / "import.log", "wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen(argv, env=env, cwd=args.source or REPO, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)

            def tree() -> list[int]:
                try:
                    root = psutil.Process(process.pid)
                    return [root.pid] + [c.pid for c in root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    return []

            try:
                with ResourceMonitor(tree) as monitor:
                    _, status, usage = os.wait4(process.pid, 0)  # rusage of the command and its reaped workers
            except BaseException:
                process.kill()
                process.wait()
                raise
            seconds = time.perf_counter() - started
        output = (Path(tmp) / "import.log").read_text(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            raise BenchmarkError(f"{shlex.join(argv)} failed:\n{output[-3000:]}")
        with sqlite3.connect(Path(tmp) / "index.db") as db:
            stored = db.execute("SELECT count(*) FROM instance").fetchone()[0]
        blobs = sum(len(names) for _, _, names in os.walk(Path(tmp) / "blobs"))
        if stored != data.n or blobs < data.n:
            raise BenchmarkError(f"dicomserver import stored {stored} instances ({blobs} blob files), "
                                 f"expected {data.n}:\n{output[-3000:]}")
    res = monitor.result
    # wait4 counts the command and the children it reaped, not the forkserver's workers (reaped by
    # the forkserver, which outlives the command); the 50 ms samples of the process tree miss each
    # process's last moments. Both are lower bounds: the larger is kept, both are recorded.
    cpu = max(usage.ru_utime + usage.ru_stime, res.cpu_seconds)
    # The command's own clock (its summary line: "... in 8.2 s: ..."), without interpreter start-up.
    own = re.search(r" in ([0-9.]+) s: ", output)
    records.append({
        "n": data.n, "round": round_no, "server": "dicomserver-import", "op": IMPORT_KEY, "concurrency": None,
        "instances": data.n, "requests": data.n, "seconds": seconds, "instances_per_s": data.n / seconds,
        "mb_per_s": data.total_bytes / seconds / 1e6, "p50_ms": None, "p95_ms": None, "bytes_per_response": None,
        "client_cpu_s": 0.0, "server_cpu_s": cpu, "server_peak_rss": res.peak_rss, "server_peak_pss": res.peak_pss,
        "processes": res.processes, "command_seconds": float(own.group(1)) if own else None,
        "sampled_cpu_s": res.cpu_seconds, "wait4_cpu_s": usage.ru_utime + usage.ru_stime,
        **_other_load(res, client_process_cpu=cpu - res.cpu_seconds),
    })
    log(f"  dicomserver import: {data.n / seconds:.0f} files/s, {data.total_bytes / seconds / 1e6:.0f} MB/s, "
        f"{cpu:.1f} CPU s ({cpu / data.n * 1000:.1f} ms/file) in {res.processes} processes")


def machine_info() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    except OSError:
        os_name = platform.system()

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10) if wrk_available() else None
    return {
        "CPU": f"{os.cpu_count()} logical cores, {model}",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": f"{os_name}, Linux {platform.release()}",
        "Python": platform.python_version(),
        "libraries": ", ".join(f"{p} {version(p)}" for p in ("gunicorn", "flask", "pydicom", "peewee"))
                     + f", SQLite {sqlite3.sqlite_version}",
        "wrk": ((wrk.stdout or wrk.stderr).splitlines() or ["?"])[0].strip() if wrk else "not installed",
    }


def _command(argv: list[str] | None) -> str:
    """How this run was started: the make command line if make says so, else python bench/run.py ..."""
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    command = shlex.join([python, "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    invoked_as = os.environ.get("BENCH_INVOKED_AS")
    return f"{invoked_as}\n# which ran: {command}" if invoked_as else command


def _install_signal_handlers(time_limit: float) -> None:
    def on_alarm(signum, frame):
        raise BenchmarkError(f"the run exceeded --time-limit={time_limit:.0f} s")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(max(1, int(time_limit)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        args.out.write_text(report.render(saved["records"], saved["info"]))
        log(f"wrote {args.out} from {args.render}")
        return 0
    get_ops = [o for o in ops.GET_OPS if o.key in args.ops]
    check_tools(args, get_ops)
    _install_signal_handlers(args.time_limit)
    started = time.monotonic()
    datasets = [generate.generate(n, args.seed, args.cache_dir, log=log) for n in args.sizes]
    for data in datasets:
        log(f"data: {data.n} instances, {len(data.studies)} studies, {data.total_bytes / 1e6:.0f} MB "
            f"in {data.directory}")
    big = None
    if args.big_study and BIG_KEY in args.ops:
        big = generate.generate_big_study(args.big_study, args.seed, args.cache_dir, log=log)
        log(f"big study: {big.n} instances in {len(big.studies[0].series)} series, {big.total_bytes / 1e6:.0f} MB")
    records: list[dict] = []
    validations: dict = {}
    unavailable: dict[str, str] = {}
    versions: dict[str, str] = {}
    settings: dict[str, str] = {}
    labels = {"dicomserver": DicomServer.label, "orthanc": Orthanc.label, "external": External.label,
              "nginx": Nginx.label, NginxProxy.name: NginxProxy.label, "dicomserver-import": "dicomserver import",
              "dicomserver-dimse": DicomServerDimse.label, "orthanc-dimse": "Orthanc DICOM listener",
              **{f"gunicorn-{a}": GunicornFloor(Path("."), a).label for a in GunicornFloor.APPS}}
    nginx_installed = Nginx.available()
    use_nginx = not args.no_nginx and ops.CEILING_OP in args.ops and nginx_installed
    if not use_nginx and not args.no_nginx:
        log("nginx not measured (not installed, or WADO instance not selected)")
    args.use_proxy = not args.no_nginx and ops.PROXY_OP in args.ops and "dicomserver" in args.servers
    if args.use_proxy and not nginx_installed:
        args.use_proxy = False
        unavailable[ops.PROXY_OP] = "nginx is not installed"
    use_floors = not args.no_floors and ops.CEILING_OP in args.ops
    use_import = IMPORT_KEY in args.ops and "dicomserver" in args.servers
    try:
        with ExitStack() as stack:
            args.source = args.commit = None
            if args.dicomserver_rev:
                args.source = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-src-")))
                args.commit = export_commit(args.dicomserver_rev, args.source)
                log(f"dicomserver: commit {args.commit} exported to {args.source}")
            factories = make_factories(args, args.source, args.commit)
            dimse_factories = make_dimse_factories(args, args.source, args.commit) if DIMSE_KEY in args.ops else {}
            for data in datasets:
                measure_size(data, big, args, factories, dimse_factories, get_ops, records, validations, unavailable,
                             versions, settings, use_nginx, use_floors, use_import)
    finally:
        signal.alarm(0)
    info = {
        "sizes": [d.n for d in datasets],
        "data": {str(d.n): {"n": d.n, "studies": len(d.studies), "data_mb": d.total_bytes / 1e6,
                            "directory": str(d.directory)} for d in datasets},
        "n": datasets[-1].n, "studies": len(datasets[-1].studies), "data_mb": datasets[-1].total_bytes / 1e6,
        "seed": args.seed,
        "big_study": ({"n": big.n, "series": [len(s.instances) for s in big.studies[0].series],
                       "data_mb": big.total_bytes / 1e6, "rows": generate.BIG_ROWS} if big else None),
        "repeat": args.repeat, "duration": args.duration, "warmup": args.warmup, "big_duration": args.big_duration,
        "concurrency": args.concurrency, "servers": args.servers, "labels": labels,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": _command(argv),
        "machine": machine_info(), "versions": versions, "settings": settings,
        "validation": validations, "unavailable": unavailable, "wall_seconds": time.monotonic() - started,
        "quiet": {"max_cores": args.gate.max_cores, "retries": args.retries, "budget_s": args.quiet_budget,
                  "spent_s": args.gate.spent, "repeated": args.gate.repeated},
    }
    if args.update:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        records, info = merge_runs(saved, records, info)
        log(f"merged into the records of {args.out.with_suffix('.json')} ({saved['info'].get('date')})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.render(records, info))
    args.out.with_suffix(".json").write_text(json.dumps({"info": info, "records": records}, indent=1) + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.json')} in {info['wall_seconds'] / 60:.1f} min")
    return 0


def merge_runs(saved: dict, records: list[dict], info: dict) -> tuple[list[dict], dict]:
    """An earlier run's records (saved: its .json) with this run's in place of the same (server,
    operation) pairs, and its info with this run listed under "updates" (command, date, rounds,
    versions), for --update. Both runs must have measured the same sizes and concurrencies."""
    earlier = saved["info"]
    if report.sizes_of(earlier) != info["sizes"] or earlier["concurrency"] != info["concurrency"]:
        raise BenchmarkError(
            f"--update: the report holds N={','.join(map(str, report.sizes_of(earlier)))} at concurrency "
            f"{','.join(map(str, earlier['concurrency']))}; this run measured N={','.join(map(str, info['sizes']))} "
            f"at {','.join(map(str, info['concurrency']))} (pass the same --n and --concurrency)")
    if not records:
        raise BenchmarkError("--update: this run measured nothing")
    replaced = {(r["server"], r["op"]) for r in records}
    default_n = report.sizes_of(earlier)[-1]
    kept = [r if r.get("n") is not None else {**r, "n": default_n} for r in saved["records"]
            if (r["server"], r["op"]) not in replaced]
    merged = dict(earlier)
    for key in ("labels", "settings", "validation", "unavailable"):
        merged[key] = {**(earlier.get(key) or {}), **(info.get(key) or {})}
    merged["servers"] = earlier["servers"] + [s for s in info["servers"] if s not in earlier["servers"]]
    update = {key: info[key] for key in ("command", "date", "repeat", "versions", "wall_seconds")}
    update["operations"] = sorted({r["op"] for r in records})
    if info.get("machine") != earlier.get("machine"):
        update["machine"] = info.get("machine")
    # An earlier update names only the rows it still holds: one whose rows are all measured
    # again is gone (two notes would claim the same rows).
    measured = set(update["operations"])
    still = [{**u, "operations": [op for op in u["operations"] if op not in measured]}
             for u in earlier.get("updates") or []]
    merged["updates"] = [*(u for u in still if u["operations"]), update]
    return kept + records, merged


def measure_size(data, big, args, factories, dimse_factories, get_ops, records, validations, unavailable, versions,
                 settings, use_nginx: bool, use_floors: bool, use_import: bool) -> None:
    """All rounds of one data size, each server fresh in every round (its DIMSE listener too)."""
    paths = {op.key: ops.paths_for(op, data, args.seed) for op in get_ops}
    nginx_paths = ops.nginx_paths(data, random.Random(f"{args.seed}/nginx"))
    with ExitStack() as stack:
        nginx = stack.enter_context(Nginx(data.directory)) if use_nginx else None
        if nginx:
            versions["nginx"] = nginx.version()
            settings["nginx"] = f"{nginx.workers} worker processes, sendfile, no access log"
        for round_no in range(args.repeat):
            for name in args.servers:
                if args.ops - NOT_HTTP_KEYS:
                    with factories[name]() as server:
                        versions.setdefault(name, server.version())
                        settings.setdefault(name, server.settings())
                        measure_server(server, data, big, args, round_no, records, paths, validations, unavailable)
                if name in dimse_factories and DIMSE_KEY not in unavailable:
                    listener = dimse_factories[name]()
                    try:
                        listener.start()
                    except RuntimeError as error:  # an older commit (--dicomserver-rev) has no gateway
                        if "No such command 'dimse'" not in str(error):
                            raise
                        unavailable[DIMSE_KEY] = "the build measured has no `dicomserver dimse` command"
                        log(f"  DIMSE C-STORE not measured: {unavailable[DIMSE_KEY]}")
                        continue
                    try:
                        log(f"N={data.n} round {round_no + 1}/{args.repeat}: {listener.label} DIMSE on port "
                            f"{listener.dicom_port}; C-STORE of {data.n} instances")
                        versions.setdefault(name, listener.version())
                        settings.setdefault(f"{name}-dimse", listener.settings())
                        dimse_phase(listener, name, data, args, round_no, records)
                    finally:
                        listener.stop()
            if use_import:
                import_phase(data, args, round_no, records)
            if nginx:
                log(f"N={data.n} round {round_no + 1}/{args.repeat}: nginx (ceiling for WADO instance)")
                for conc in args.concurrency:
                    get_test(nginx, "nginx", ops.CEILING_OP, nginx_paths, None, conc, args, round_no, records,
                             n=data.n)
            if use_floors:
                for app in GunicornFloor.APPS:
                    with GunicornFloor(data.directory, app, env=args.dicomserver_env_dict,
                                       source=args.source) as floor:
                        log(f"N={data.n} round {round_no + 1}/{args.repeat}: {floor.label} (floor for WADO instance)")
                        versions.setdefault("gunicorn floors", floor.version())
                        for conc in args.concurrency:
                            get_test(floor, floor.name, ops.CEILING_OP, nginx_paths, None, conc, args, round_no,
                                     records, n=data.n)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as error:
        log(f"FAILED: {error}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        sys.exit(130)
