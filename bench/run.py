"""Benchmark dicomserver beside Orthanc (and nginx as a ceiling) and write docs/benchmarks.md.

    python bench/run.py                                  # N=3000, 3 rounds, both servers
    python bench/run.py --n 500 --repeat 3
    python bench/run.py --quick --servers dicomserver    # a smoke run in well under a minute
    python bench/run.py --servers dicomserver --ops metadata,qido-instances \\
                        --dicomserver-env DICOMWEB_WORKERS=3 --out /tmp/b.md

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

from bench import generate, ops, report
from bench.load import BenchmarkError, QuietGate, ResourceMonitor, run_stow, run_wrk, wrk_available
from bench.servers import REPO, DicomServer, External, GunicornFloor, Nginx, Orthanc, Server, export_commit

DEFAULT_N = 3000
QUICK_N = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, help=f"instances to generate and store (default {DEFAULT_N}, --quick {QUICK_N})")
    p.add_argument("--repeat", type=int, help="rounds per server, in alternation (default 3, --quick 1)")
    p.add_argument("--concurrency", default="1,4", help="comma-separated client concurrencies (default 1,4)")
    p.add_argument("--servers", default="dicomserver,orthanc",
                   help="comma-separated: dicomserver, orthanc, external (default dicomserver,orthanc); "
                        "ratios compare the first two")
    p.add_argument("--ops", help="comma-separated operation keys to run (default all): "
                   + ", ".join([o.key for o in ops.STOW_OPS] + [o.key for o in ops.GET_OPS]))
    p.add_argument("--duration", type=float, help="seconds per wrk test (default 5, --quick 1)")
    p.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each test (default 1, --quick 0)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md",
                   help="the Markdown report (default docs/benchmarks.md); raw records go next to it as .json")
    p.add_argument("--quick", action="store_true", help="a CI-sized smoke run (small N, 1 round, 1 s tests)")
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx ceiling")
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
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite --out from the records of an earlier run (its .json), e.g. after "
                        "editing the text in bench/report.py")
    p.add_argument("--time-limit", type=float, default=4 * 3600, help="stop the whole run after this many seconds")
    args = p.parse_args(argv)
    args.n = args.n or (QUICK_N if args.quick else DEFAULT_N)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.0 if args.quick else 1.0)
    if args.quiet_cores is None:
        args.quiet_cores = None if args.quick else 0.3
    args.gate = QuietGate(args.quiet_cores if args.quiet_cores and args.quiet_cores > 0 else None,
                          budget=args.quiet_budget)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    known = {o.key for o in ops.STOW_OPS} | {o.key for o in ops.GET_OPS}
    args.ops = set(args.ops.split(",")) if args.ops else known
    if args.ops - known:
        p.error(f"unknown operations: {', '.join(sorted(args.ops - known))}")
    if len(set(args.servers)) != len(args.servers) or set(args.servers) - {"dicomserver", "orthanc", "external"}:
        p.error("--servers takes distinct names among dicomserver, orthanc, external")
    if "external" in args.servers and not args.external_url:
        p.error("--servers external needs --external-url")
    if min(args.concurrency, default=0) < 1 or args.n < 1 or args.repeat < 1:
        p.error("--n, --repeat and every --concurrency must be positive")
    return args


def make_factories(args, source: Path | None = None, commit: str | None = None) -> dict[str, callable]:
    env = dict(item.split("=", 1) for item in args.dicomserver_env)
    return {
        "dicomserver": lambda: DicomServer(env=env, source=source, commit=commit),
        "orthanc": Orthanc,
        "external": lambda: External(args.external_url),
    }


def check_tools(args, get_ops) -> None:
    missing = []
    if get_ops and not wrk_available():
        missing.append("wrk (Debian package wrk)")
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
            "round": round_no, "server": server.name, "op": op.key, "concurrency": conc,
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


def get_test(server: Server, name: str, op_key: str, paths: list[str], accept: str | None, conc: int, args,
             round_no: int, records: list, close_delimited: bool = False) -> None:
    """One wrk test; taken again (up to --retries times) if other processes disturbed it.

    Of the attempts, the one with the least other load is kept, whatever its figures.
    """
    prefixed = [server.base_path + p for p in paths]
    attempts = []
    while True:
        args.gate.wait()
        if args.warmup > 0:
            run_wrk(server.origin, prefixed, accept, connections=conc, duration=args.warmup,
                    close_delimited=close_delimited)
        with ResourceMonitor(server.pids) as monitor:
            result = run_wrk(server.origin, prefixed, accept, connections=conc, duration=args.duration,
                             close_delimited=close_delimited)
        res = monitor.result
        record = {
            "round": round_no, "server": name, "op": op_key, "concurrency": conc,
            "requests": result.requests, "seconds": result.seconds, "rps": result.rps,
            "mb_per_s": result.mb_per_s, "p50_ms": result.p50_ms, "p95_ms": result.p95_ms,
            "p99_ms": result.p99_ms, "bytes_per_response": result.bytes / result.requests,
            "client_cpu_s": result.client_cpu_seconds, "close_delimited": close_delimited,
            **_resources(server, res), **_other_load(res, client_process_cpu=result.client_cpu_seconds),
        }
        attempts.append(record)
        other = record["other_cpu_s"] / result.seconds
        log(f"  {server.label} c={conc} {op_key}: {result.rps:.1f} req/s, {result.mb_per_s:.1f} MB/s, "
            f"p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms (server CPU {res.cpu_seconds:.1f} s, "
            f"wrk CPU {result.client_cpu_seconds / result.seconds:.2f} cores, other {other:.2f} cores)")
        if (len(attempts) > args.retries or not args.gate.disturbed(other)
                or not args.gate.retry_allowed(args.duration + args.warmup)):
            break
        log(f"    disturbed by {other:.2f} cores of other load: taking it again")
    kept = min(attempts, key=lambda r: r["other_cpu_s"] / r["seconds"])
    kept["attempts"] = len(attempts)
    records.append(kept)


def measure_server(server: Server, data, args, round_no: int, records: list, paths: dict, validations: dict) -> None:
    log(f"round {round_no + 1}/{args.repeat}: {server.label} at {server.base_url}; storing {data.n} instances")
    stow_phase(server, data, args, round_no, records)
    get_ops = [o for o in ops.GET_OPS if o.key in args.ops]
    for op in get_ops:
        # One answer of each kind, checked against the generated data, before anything is timed.
        validations.setdefault(server.name, {})[op.key] = ops.validate(op, server, data, paths[op.key][0])
    for conc in args.concurrency:
        for op in get_ops:
            get_test(server, server.name, op.key, paths[op.key], op.accept_for(server.name), conc, args,
                     round_no, records, close_delimited=validations[server.name][op.key]["close_delimited"])


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
    data = generate.generate(args.n, args.seed, args.cache_dir, log=log)
    log(f"data: {data.n} instances, {len(data.studies)} studies, {data.total_bytes / 1e6:.0f} MB in {data.directory}")
    paths = {op.key: ops.paths_for(op, data, args.seed) for op in get_ops}
    records: list[dict] = []
    validations: dict = {}
    versions: dict[str, str] = {}
    settings: dict[str, str] = {}
    labels = {"dicomserver": DicomServer.label, "orthanc": Orthanc.label, "external": External.label,
              "nginx": Nginx.label, **{f"gunicorn-{a}": GunicornFloor(Path("."), a).label for a in GunicornFloor.APPS}}
    use_nginx = not args.no_nginx and ops.CEILING_OP in args.ops and Nginx.available()
    if not use_nginx and not args.no_nginx:
        log("nginx not measured (not installed, or WADO instance not selected)")
    use_floors = not args.no_floors and ops.CEILING_OP in args.ops
    try:
        with ExitStack() as stack:
            source = commit = None
            if args.dicomserver_rev:
                source = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-src-")))
                commit = export_commit(args.dicomserver_rev, source)
                log(f"dicomserver: commit {commit} exported to {source}")
            factories = make_factories(args, source, commit)
            nginx = stack.enter_context(Nginx(data.directory)) if use_nginx else None
            if nginx:
                versions["nginx"] = nginx.version()
                settings["nginx"] = f"{nginx.workers} worker processes, sendfile, no access log"
            nginx_paths = ops.nginx_paths(data, random.Random(f"{args.seed}/nginx"))
            for round_no in range(args.repeat):
                for name in args.servers:
                    with factories[name]() as server:
                        versions.setdefault(name, server.version())
                        settings.setdefault(name, server.settings())
                        measure_server(server, data, args, round_no, records, paths, validations)
                if nginx:
                    log(f"round {round_no + 1}/{args.repeat}: nginx (ceiling for WADO instance)")
                    for conc in args.concurrency:
                        get_test(nginx, "nginx", ops.CEILING_OP, nginx_paths, None, conc, args, round_no, records)
                if use_floors:
                    for app in GunicornFloor.APPS:
                        floor_env = dict(item.split("=", 1) for item in args.dicomserver_env)
                        with GunicornFloor(data.directory, app, env=floor_env, source=source) as floor:
                            log(f"round {round_no + 1}/{args.repeat}: {floor.label} (floor for WADO instance)")
                            versions.setdefault("gunicorn floors", floor.version())
                            for conc in args.concurrency:
                                get_test(floor, floor.name, ops.CEILING_OP, nginx_paths, None, conc, args, round_no,
                                         records)
    finally:
        signal.alarm(0)
    info = {
        "n": data.n, "studies": len(data.studies), "data_mb": data.total_bytes / 1e6, "seed": data.seed,
        "repeat": args.repeat, "duration": args.duration, "warmup": args.warmup,
        "concurrency": args.concurrency, "servers": args.servers, "labels": labels,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": _command(argv),
        "machine": machine_info(), "versions": versions, "settings": settings,
        "validation": validations, "wall_seconds": time.monotonic() - started,
        "quiet": {"max_cores": args.gate.max_cores, "retries": args.retries, "budget_s": args.quiet_budget,
                  "spent_s": args.gate.spent, "repeated": args.gate.repeated},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.render(records, info))
    args.out.with_suffix(".json").write_text(json.dumps({"info": info, "records": records}, indent=1) + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.json')} in {info['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as error:
        log(f"FAILED: {error}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        sys.exit(130)
