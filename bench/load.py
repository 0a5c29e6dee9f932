"""The load generators and the meters: wrk for GETs, a thread pool for STOW, psutil for the servers.

* `ResourceMonitor` samples a server's process tree (master + workers) while a test runs:
  peak RSS of all processes summed, and CPU seconds (user + system) they used.
* `run_wrk` runs wrk over a file of paths (bench/paths.lua) and returns its requests,
  bytes, errors and latency percentiles, plus wrk's own CPU time (from wait4), so a
  saturated client is visible in the report.
* `run_stow` POSTs multipart/related bodies from a thread pool and checks every answer.
* `run_gets` GETs slow, big answers (a big study's /metadata) from a thread pool: every
  connection runs for a fixed time but at least one request, so a server taking seconds
  per answer gets a few requests and a fast one many, with the same client for both.
* `run_storescu` sends Part 10 files by DIMSE C-STORE with DCMTK's storescu (C, a neutral
  client for both servers): one association per storescu process, `concurrency` processes.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

LUA_SCRIPT = Path(__file__).resolve().with_name("paths.lua")
SAMPLE_INTERVAL = 0.05  # seconds between RSS samples
PSS_EVERY = 10  # also read PSS (slower: /proc/PID/smaps_rollup) every this many samples


class BenchmarkError(RuntimeError):
    """A server answered wrongly or a tool failed: the run stops, loudly."""


class NoAnswerInTime(BenchmarkError):
    """wrk ended without one complete answer: each took longer than the test (a loaded machine)."""


# -- server resources ----------------------------------------------------------------------

@dataclass
class Resources:
    peak_rss: int = 0  # bytes, all processes summed, highest sample
    start_rss: int = 0  # bytes, all processes summed, when the test started
    peak_pss: int = 0  # bytes, proportional set size summed (shared pages counted once)
    cpu_seconds: float = 0.0  # user + system of all processes during the test
    processes: int = 0  # how many distinct processes were seen
    machine_busy_seconds: float = 0.0  # CPU time the whole machine spent busy (all cores, all processes)
    machine_steal_seconds: float = 0.0  # CPU time a hypervisor gave to other guests
    machine_irq_seconds: float = 0.0  # interrupt and softirq time (loopback networking), no process's
    harness_cpu_seconds: float = 0.0  # this Python process (the STOW client, the sampler)


class ResourceMonitor:
    """Samples the processes returned by pids() in a background thread.

        with ResourceMonitor(server.pids) as monitor:
            ...load...
        monitor.result.peak_rss, monitor.result.cpu_seconds
    """

    def __init__(self, pids: Callable[[], list[int]], interval: float = SAMPLE_INTERVAL) -> None:
        self._pids = pids
        self._interval = interval
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._started = 0.0
        self.result = Resources()

    def _processes(self) -> list[psutil.Process]:
        current = []
        for pid in self._pids():
            proc = self._procs.get(pid)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
                self._procs[pid] = proc
            current.append(proc)
        return current

    def _sample(self, with_pss: bool) -> int:
        rss = pss = 0
        for proc in self._processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
                    if with_pss:
                        pss += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            cpu = times.user + times.system
            if proc.pid not in self._cpu_start:
                # A process born during the test started from zero.
                born_during = proc.create_time() > self._started
                self._cpu_start[proc.pid] = 0.0 if born_during else cpu
            self._cpu_last[proc.pid] = cpu
        self.result.peak_rss = max(self.result.peak_rss, rss)
        if with_pss:
            self.result.peak_pss = max(self.result.peak_pss, pss)
        return rss

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self._interval):
            count += 1
            self._sample(with_pss=count % PSS_EVERY == 0)

    def __enter__(self) -> ResourceMonitor:
        self._started = time.time() - 1.0  # create_time has a coarse clock
        self.result.start_rss = self._sample(with_pss=True)
        self._machine_start = psutil.cpu_times()
        self._harness_start = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        harness = time.process_time() - self._harness_start
        machine = psutil.cpu_times()
        self._sample(with_pss=True)
        self.result.cpu_seconds = sum(self._cpu_last[p] - self._cpu_start[p] for p in self._cpu_last)
        self.result.processes = len(self._cpu_last)
        self.result.machine_busy_seconds = _busy(machine) - _busy(self._machine_start)
        self.result.machine_steal_seconds = getattr(machine, "steal", 0.0) - getattr(self._machine_start, "steal", 0.0)
        self.result.harness_cpu_seconds = harness
        self.result.machine_irq_seconds = _irq(machine) - _irq(self._machine_start)


def _irq(times) -> float:
    return getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


def _busy(times) -> float:
    """Busy CPU seconds in a psutil.cpu_times() total (guest time is already inside user)."""
    idle = times.idle + getattr(times, "iowait", 0.0) + getattr(times, "steal", 0.0)
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - idle


class QuietGate:
    """Holds a test back until the rest of the machine is nearly idle, within a time budget.

    On a shared machine other jobs (test suites, builds) come and go; a test taken
    while they run measures them too. Before each test, `wait()` samples the whole
    machine's busy CPU in half-second windows until it is at most `max_cores` (the
    servers idle between tests), for at most `per_test` seconds. `retry_allowed()`
    says whether a test disturbed anyway may be taken again. Waits and retries
    together stop once `budget` seconds are spent, so a machine that never calms
    down only makes the run longer by the budget.
    """

    def __init__(self, max_cores: float | None, per_test: float = 20.0, budget: float = 900.0) -> None:
        self.max_cores = max_cores
        self.per_test = per_test
        self.budget = budget
        self.spent = 0.0
        self.repeated = 0  # tests taken again because they were disturbed

    @property
    def enabled(self) -> bool:
        return self.max_cores is not None

    def wait(self) -> float:
        """Seconds waited for the machine to calm down."""
        if not self.enabled:
            return 0.0
        started = time.monotonic()
        deadline = started + min(self.per_test, max(0.0, self.budget - self.spent))
        while time.monotonic() < deadline:
            before = psutil.cpu_times()
            time.sleep(0.5)
            busy = (_busy(psutil.cpu_times()) - _busy(before)) / 0.5
            if busy <= self.max_cores:
                break
        waited = time.monotonic() - started
        self.spent += waited
        return waited

    def disturbed(self, other_cores: float) -> bool:
        return self.enabled and other_cores > self.max_cores

    def retry_allowed(self, test_seconds: float) -> bool:
        if not self.enabled or self.spent + test_seconds > self.budget:
            return False
        self.spent += test_seconds
        self.repeated += 1
        return True


# -- wrk -----------------------------------------------------------------------------------

@dataclass
class WrkResult:
    requests: int
    seconds: float
    bytes: int  # response bytes including headers
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_seconds: float  # wrk's own user + system time

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(origin: str, paths: list[str], accept: str | None, *, connections: int, duration: float,
            timeout: float = 30.0, close_delimited: bool = False, warmup: bool = False) -> WrkResult:
    """wrk with `connections` connections and as many threads, cycling through paths.

    close_delimited: the server ends each response by closing the connection (no
    Content-Length, not chunked; Orthanc does this for studies). wrk then counts one
    "read" error per response although the response is complete; those are expected.
    Any other error (connect, write, timeout, HTTP status >= 400) stops the run.
    warmup: no answer within the duration is no error (a slow server's first answers may take
    longer than a short warm-up; wrk does not count requests still in flight).
    """
    if not paths:
        raise BenchmarkError("no paths to request")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        path_file = Path(tmp) / "paths.txt"
        path_file.write_text("\n".join(paths) + "\n")
        out_file = Path(tmp) / "out.txt"
        argv = [
            "wrk", f"-t{connections}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout={int(timeout)}s", "-s", str(LUA_SCRIPT), origin, "--", str(path_file), accept or "",
        ]
        with open(out_file, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + duration + timeout + 30
        try:
            # wait4 gives this child's own rusage: wrk's CPU, not the servers'.
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"wrk did not finish: {' '.join(argv)}")
                time.sleep(0.05)
        except BaseException:  # also Ctrl-C and the run's time limit: never leave wrk behind
            process.kill()
            os.wait4(process.pid, 0)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        output = out_file.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchmarkError(f"wrk failed ({process.returncode}): {' '.join(argv)}\n{output}")
    line = next((text for text in output.splitlines() if text.startswith("{")), None)
    if line is None:
        raise BenchmarkError(f"no results from wrk: {' '.join(argv)}\n{output}")
    summary = json.loads(line)
    errors = {k: v for k, v in summary["errors"].items() if v}
    if close_delimited and errors.get("read", 0) <= summary["requests"] + connections:
        errors.pop("read", None)
    if summary["requests"] == 0 and not errors and not warmup:
        raise NoAnswerInTime(f"no answer within {duration:g} s: {origin}{paths[0]} Accept: {accept}")
    if errors or (summary["requests"] == 0 and not warmup):
        raise BenchmarkError(
            f"wrk saw errors {errors} in {summary['requests']} requests ('status' counts HTTP >= 400); "
            f"first path {origin}{paths[0]} Accept: {accept}\n{output}"
        )
    lat = summary["latency_us"]
    return WrkResult(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        bytes=summary["bytes"],
        p50_ms=lat["p50"] / 1000,
        p95_ms=lat["p95"] / 1000,
        p99_ms=lat["p99"] / 1000,
        client_cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


# -- a Python client for slow answers -----------------------------------------------------

def run_gets(origin: str, paths: list[str], headers: dict[str, str], *, connections: int, duration: float,
             timeout: float = 300.0) -> WrkResult:
    """GET paths (cycled) on `connections` keep-alive connections, each for `duration` seconds
    but at least one request; bodies are read into one buffer and dropped.

    wrk's fixed duration does not fit answers that take seconds (a test would end with
    requests in flight, uncounted); here every request started is completed and counted.
    Any status but 200 stops the run.
    """
    if not paths:
        raise BenchmarkError("no paths to request")
    host, port = origin.split("://", 1)[1].rsplit(":", 1)
    latencies: list[float] = []
    received = [0]
    lock = threading.Lock()

    def connection(number: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        counter = number * (len(paths) // max(1, connections) + 1)
        try:
            while True:
                path = paths[counter % len(paths)]
                counter += 1
                started = time.perf_counter()
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                size = sum(len(line) for line in str(response.headers).splitlines()) + 16
                while True:
                    n = response.readinto(view)
                    if not n:
                        break
                    size += n
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise BenchmarkError(f"GET {origin}{path} answered {response.status}")
                with lock:
                    latencies.append(elapsed)
                    received[0] += size
                if time.perf_counter() - begun >= duration:
                    return
        finally:
            conn.close()

    cpu_before = time.process_time()
    begun = time.perf_counter()
    with ThreadPoolExecutor(max_workers=connections, thread_name_prefix="get") as pool:
        for future in [pool.submit(connection, i) for i in range(connections)]:
            future.result()
    seconds = time.perf_counter() - begun
    latencies.sort()
    return WrkResult(
        requests=len(latencies), seconds=seconds, bytes=received[0],
        p50_ms=percentile(latencies, 50) * 1000, p95_ms=percentile(latencies, 95) * 1000,
        p99_ms=percentile(latencies, 99) * 1000, client_cpu_seconds=time.process_time() - cpu_before,
    )


# -- STOW ----------------------------------------------------------------------------------

@dataclass
class StowResult:
    instances: int
    requests: int
    seconds: float
    bytes: int  # DICOM bytes sent (the files, without multipart framing)
    p50_ms: float
    p95_ms: float
    client_cpu_seconds: float  # this Python process during the test

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def multipart_body(files: list[Path]) -> tuple[bytes, str, int]:
    """(body, Content-Type, DICOM bytes) of a multipart/related STOW request."""
    boundary = uuid.uuid4().hex
    parts, size = [], 0
    for f in files:
        content = f.read_bytes()
        size += len(content)
        parts += [b"--", boundary.encode(), b"\r\nContent-Type: application/dicom\r\n\r\n", content, b"\r\n"]
    parts += [b"--", boundary.encode(), b"--\r\n"]
    return b"".join(parts), f'multipart/related; type="application/dicom"; boundary={boundary}', size


def run_stow(stow_url: str, files: list[Path], *, per_request: int, concurrency: int,
             timeout: float = 300.0) -> StowResult:
    """Store files, per_request instances per multipart request, from `concurrency` threads.

    The bodies are built before the clock starts, so reading files is not measured.
    Every response must be 200 with one ReferencedSOPSequence item per part and no
    FailedSOPSequence; anything else stops the benchmark.
    """
    batches = [files[i:i + per_request] for i in range(0, len(files), per_request)]
    bodies = [(*multipart_body(batch), len(batch)) for batch in batches]
    local = threading.local()

    def post(item: tuple[bytes, str, int, int]) -> float:
        body, content_type, _, parts = item
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        started = time.perf_counter()
        response = session.post(stow_url, data=body, timeout=timeout,
                                headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchmarkError(f"STOW {stow_url} answered {response.status_code}: {response.text[:2000]}")
        answer = response.json()
        stored = answer.get("00081199", {}).get("Value", [])
        failed = answer.get("00081198", {}).get("Value", [])
        if len(stored) != parts or failed:
            raise BenchmarkError(f"STOW {stow_url} did not store every part: {json.dumps(answer)[:2000]}")
        return elapsed

    cpu_before = time.process_time()
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="stow")
    try:
        latencies = list(pool.map(post, bodies))
    finally:
        # On a failure (or Ctrl-C, or the time limit) drop the requests not yet sent.
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    latencies.sort()
    return StowResult(
        instances=len(files),
        requests=len(bodies),
        seconds=seconds,
        bytes=sum(b[2] for b in bodies),
        p50_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
        client_cpu_seconds=cpu,
    )


# -- DIMSE C-STORE (DCMTK's storescu) ----------------------------------------------------

@dataclass
class StoreScuResult:
    instances: int
    seconds: float
    bytes: int  # the files' bytes (Part 10, as stored)
    associations: int
    client_cpu_seconds: float  # the storescu processes' own user + system time

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


#: DCMTK (since 3.6.2) leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment:
#: storescu's small writes (PDU headers, command sets) then wait ~40 ms for delayed ACKs.
DCMTK_ENV = {"TCP_NODELAY": "1"}


def dcmtk_tool(name: str) -> str | None:
    """The DCMTK program `name` on PATH: an executable binary, not pynetdicom's Python script of
    the same name (its apps install storescu and echoscu into the virtualenv's bin/)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(directory or ".") / name
        try:
            with open(candidate, "rb") as f:
                binary = f.read(4) == b"\x7fELF"
        except OSError:
            continue
        if binary and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def dcmtk_available() -> bool:
    return dcmtk_tool("storescu") is not None and dcmtk_tool("echoscu") is not None


def echo(port: int, called_aet: str, timeout: float = 5.0) -> str | None:
    """C-ECHO to 127.0.0.1:port with DCMTK's echoscu: None when it succeeded, else its output."""
    argv = [dcmtk_tool("echoscu") or "echoscu", "-aec", called_aet, "-to", str(max(1, round(timeout))),
            "127.0.0.1", str(port)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                              env=dict(os.environ, **DCMTK_ENV))
    except subprocess.TimeoutExpired:
        return f"{' '.join(argv)}: no answer in {timeout:g} s"
    return None if done.returncode == 0 else f"{' '.join(argv)} exited with {done.returncode}: " + (
        done.stdout + done.stderr).strip()[-2000:]


def storescu_argv(port: int, called_aet: str, directory: Path) -> list[str]:
    """storescu sending every file of directory on one association.

    Only the presentation contexts the files need (-R), Explicit VR Little Endian proposed first
    (-xe: the files' own syntax, so nothing is transcoded); any failed C-STORE halts it with a
    non-zero exit (its default; --no-halt would exit 0). The files are symbolic links in one
    flat directory (+sd), so no argv limit applies to N. Run with DCMTK_ENV (no Nagle delay).
    """
    return [dcmtk_tool("storescu") or "storescu", "-R", "-xe", "-aet", "BENCHSCU", "-aec", called_aet,
            "-ta", "30", "-ts", "120", "+sd", "127.0.0.1", str(port), str(directory)]


def run_storescu(port: int, called_aet: str, files: list[Path], *, concurrency: int,
                 timeout: float = 1800.0) -> StoreScuResult:
    """Send files by C-STORE from `concurrency` storescu processes at once, each one association
    with a contiguous share of the files; the clock runs from the first start to the last exit.

    A storescu that fails (association refused or aborted, a C-STORE answered with a failure
    status) stops the benchmark; whether every instance was stored is for the caller to check
    (the server's own count), since a warning status still counts as sent.
    """
    if not files:
        raise BenchmarkError("no files to send")
    share = -(-len(files) // concurrency)
    chunks = [files[i:i + share] for i in range(0, len(files), share)]
    with tempfile.TemporaryDirectory(prefix="bench-storescu-") as tmp:
        runs = []
        for i, chunk in enumerate(chunks):
            directory = Path(tmp) / f"client{i}"
            directory.mkdir()
            for j, f in enumerate(chunk):
                (directory / f"{j:07d}.dcm").symlink_to(Path(f).resolve())
            runs.append((storescu_argv(port, called_aet, directory), Path(tmp) / f"client{i}.log"))
        processes: list[tuple[subprocess.Popen, list[str], Path]] = []
        env = dict(os.environ, **DCMTK_ENV)
        cpu = 0.0
        failures = []
        started = time.perf_counter()
        try:
            for argv, log in runs:
                with open(log, "wb") as out:
                    processes.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, env=env), argv, log))
            deadline = time.monotonic() + timeout
            pending = {p.pid: (p, argv, log) for p, argv, log in processes}
            while pending:
                for pid in list(pending):
                    # wait4: each storescu's own rusage, not the servers'.
                    done, status, usage = os.wait4(pid, os.WNOHANG)
                    if not done:
                        continue
                    process, argv, log = pending.pop(pid)
                    process.returncode = os.waitstatus_to_exitcode(status)
                    cpu += usage.ru_utime + usage.ru_stime
                    if process.returncode != 0:
                        failures.append(f"{' '.join(argv)} exited with {process.returncode}:\n"
                                        + log.read_text(errors="replace")[-2000:])
                if pending:
                    if time.monotonic() > deadline:
                        raise BenchmarkError(f"storescu did not finish in {timeout:.0f} s")
                    time.sleep(0.005)
            seconds = time.perf_counter() - started
        except BaseException:  # also Ctrl-C and the run's time limit: never leave storescu behind
            for process, _, _ in processes:
                if process.returncode is None:
                    process.kill()
                    process.wait()
            raise
    if failures:
        raise BenchmarkError("storescu failed: " + "\n".join(failures))
    return StoreScuResult(instances=len(files), seconds=seconds, bytes=sum(Path(f).stat().st_size for f in files),
                          associations=len(chunks), client_cpu_seconds=cpu)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
