"""Where dicomserver spends its CPU under one benchmark operation: py-spy over every gunicorn process.

    python bench/profile.py --op wado-instance --concurrency 4
    python bench/profile.py --op stow-1 --n 500 --dicomserver-rev HEAD --out /tmp/stow.txt

Starts dicomserver as `make bench` does (fresh data, loopback, repo gunicorn_conf),
stores the generated data (for a STOW operation: all but the slice being profiled),
then drives the one operation (wrk for GETs, the STOW client for STOW) while
`py-spy record` samples the master and workers. Prints the functions with the most
samples, by self time and including callees. py-spy is not a project dependency:
`pip install py-spy` (any environment; it is a standalone binary) or pass --py-spy.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/profile.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import generate, ops
from bench.load import run_stow, run_wrk
from bench.servers import DicomServer, export_commit

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def aggregate(raw: str, repo_prefixes: tuple[str, ...]) -> tuple[int, Counter, Counter]:
    """(samples, self counts, inclusive counts) per 'function (file)' from py-spy's raw output."""
    total, own, inclusive = 0, Counter(), Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for frame in stack.split(";"):
            match = FRAME.match(frame.strip())
            name = frame.strip()
            if match:
                path = match.group("file")
                for prefix in repo_prefixes:
                    path = path.replace(prefix, "")
                name = f"{match.group('function')} ({path})"
            frames.append(name)
        if frames:
            own[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    return total, own, inclusive


def main(argv: list[str] | None = None) -> int:
    keys = [o.key for o in ops.STOW_OPS] + [o.key for o in ops.GET_OPS]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", required=True, choices=keys)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--n", type=int, default=500, help="instances to store first (default 500)")
    p.add_argument("--seconds", type=float, default=10.0, help="profiling time for GETs (default 10)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--gil", action="store_true", help="only sample the thread holding the GIL (Python CPU)")
    p.add_argument("--dicomserver-rev", metavar="REV", help="profile this commit instead of the working tree")
    p.add_argument("--dicomserver-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy binary")
    p.add_argument("--out", type=Path, help="also write the report (and the raw stacks next to it)")
    p.add_argument("--cache-dir", type=Path, default=generate.CACHE_ROOT)
    args = p.parse_args(argv)
    if not args.py_spy:
        raise SystemExit("py-spy not found: pip install py-spy, or pass --py-spy /path/to/py-spy")

    data = generate.generate(args.n, cache_root=args.cache_dir)
    files = [f for *_, f in data.instances()]
    stow = next((o for o in ops.STOW_OPS if o.key == args.op), None)
    profiled_files = files[-max(len(files) // 4, 1):] if stow else []
    env = dict(item.split("=", 1) for item in args.dicomserver_env)
    with ExitStack() as stack:
        source = commit = None
        if args.dicomserver_rev:
            source = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="profile-src-")))
            commit = export_commit(args.dicomserver_rev, source)
        server = stack.enter_context(DicomServer(env=env, source=source, commit=commit))
        preload = files[: len(files) - len(profiled_files)]
        if preload:
            run_stow(server.base_url + "/studies", preload, per_request=10, concurrency=4)
        raw_file = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="profile-"))) / "raw.txt"
        # py-spy attaches to the master and follows its workers. It pauses a process for each
        # sample (without that it cannot tell idle threads from busy ones on Linux).
        spy = subprocess.Popen(
            [args.py_spy, "record", "--pid", str(server.process.pid), "--subprocesses",
             "--rate", str(args.rate), "--format", "raw", "--output", str(raw_file)] + (["--gil"] if args.gil else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # let py-spy attach
        started = time.monotonic()
        if stow:
            result = run_stow(server.base_url + "/studies", profiled_files, per_request=stow.per_request,
                              concurrency=args.concurrency)
            summary = f"{result.instances_per_s:.1f} instances/s, p50 {result.p50_ms:.1f} ms"
        else:
            op = next(o for o in ops.GET_OPS if o.key == args.op)
            paths = [server.base_path + path for path in ops.paths_for(op, data, generate.DEFAULT_SEED)]
            ops.validate(op, server, data, paths[0][len(server.base_path):])
            result = run_wrk(server.origin, paths, op.accept_for("dicomserver"), connections=args.concurrency,
                             duration=args.seconds)
            summary = f"{result.rps:.1f} req/s, p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms"
        elapsed = time.monotonic() - started
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not raw_file.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')}")
        raw = raw_file.read_text()
        prefixes = tuple(str(x) + "/" for x in filter(None, [source, Path(__file__).resolve().parents[1]]))
        prefixes += tuple(sorted({m.group(1) for m in re.finditer(r"(/[^ ()]*?/site-packages/)", raw)}))
        total, own, inclusive = aggregate(raw, prefixes)

    lines = [
        f"# py-spy: dicomserver {server.version()} under {args.op}, concurrency {args.concurrency}",
        f"# {summary}; {elapsed:.1f} s; {total} samples at {args.rate}/s over all processes "
        f"(= {total / args.rate:.1f} s sampled{' holding the GIL' if args.gil else ''})",
        "", f"## self (top {args.top})",
    ]
    lines += [f"{100 * c / total:5.1f}%  {name}" for name, c in own.most_common(args.top)]
    lines += ["", f"## including callees (top {args.top})"]
    lines += [f"{100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(args.top)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".raw.txt").write_text(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
