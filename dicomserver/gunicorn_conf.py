"""gunicorn settings used by `make run` and the end-to-end tests (`-c python:dicomserver.gunicorn_conf`).

gthread workers with deadlines (dicomserver/gunicorn_worker.py): a slow client streaming
a large instance ties up a thread, not a whole process, and one that stalls is cut off.
Threads are cheap while they wait on a socket, so there are enough of them for uploads
(at most DICOMWEB_MAX_UPLOADS each process) and everyone else at once. Override any of
these with GUNICORN_CMD_ARGS or command-line flags.
"""
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile
from typing import Any

workers = int(os.environ.get("DICOMWEB_WORKERS", min(4, multiprocessing.cpu_count())))
worker_class = "dicomserver.gunicorn_worker.Worker"
threads = int(os.environ.get("DICOMWEB_THREADS", 32))
# Large uploads take long; gthread's timeout only guards a worker's heartbeat.
timeout = 300
graceful_timeout = 30
keepalive = 5
# With DICOMWEB_LOG_FORMAT=json the app logs every request itself (a JSON line on stderr),
# so gunicorn's access log is off unless DICOMWEB_ACCESS_LOG asks for it. Its lines end
# with the request id (the answer's X-Request-Id, as in the audit trail and the app's log).
_json_logs = os.environ.get("DICOMWEB_LOG_FORMAT", "").strip().lower() == "json"
accesslog = os.environ.get("DICOMWEB_ACCESS_LOG", "" if _json_logs else "-") or None
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s'
# gunicorn's logger, making only the atoms the access log format names (the same lines).
logger_class = "dicomserver.gunicorn_worker.AccessLogger"
# gunicorn >= 25's control socket lives at one fixed path per user; several servers
# on one host (tests, side-by-side deployments) would fight over it, and we do not use it.
control_socket_disable = True


# Prometheus multiprocess mode (dicomserver/metrics.py): every worker writes its metrics to
# files in PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker adds them all up. The
# variable must be set before a worker imports prometheus_client, so the master sets it
# before it forks: to the operator's directory (emptied, it holds a previous run's counts),
# or to a temporary one of this server's, removed when it stops.
_owned_metrics_dir: list[str] = []


def on_starting(server: Any) -> None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory and "prometheus_client" in sys.modules:  # preload_app imported the app already
        server.log.warning(
            "preload_app without PROMETHEUS_MULTIPROC_DIR: each worker keeps its own metrics, "
            "and /metrics shows those of the worker that answers; set the variable to a directory"
        )
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dicomweb-metrics-")
        _owned_metrics_dir.append(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def post_worker_init(worker: Any) -> None:
    """Start the app's operations runner and webhook delivery thread as the worker starts, not at
    its first request: a restarted server resumes an interrupted re-index, and sends the webhooks
    it owes, with no traffic at all."""
    app = getattr(worker.app, "callable", None)  # the app gunicorn loaded for this worker
    for name in ("dicomserver-operations", "dicomserver-webhooks"):
        runner = getattr(app, "extensions", {}).get(name)
        if runner is not None:
            runner.start()
    hub = getattr(app, "extensions", {}).get("dicomserver-ups-events")
    if hub is not None:
        _end_event_channels_on_stop(hub)


def _end_event_channels_on_stop(hub: Any) -> None:
    """A stopping worker ends its UPS event channels at once (their clients reconnect to another
    worker): each holds a thread the worker would otherwise wait graceful_timeout for."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)
        if callable(previous):
            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                hub.shut()
                previous(sig, frame)

            signal.signal(signum, handler)


def child_exit(server: Any, worker: Any) -> None:
    """A worker's live gauges go with it (its counters and histograms stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    while _owned_metrics_dir:
        shutil.rmtree(_owned_metrics_dir.pop(), ignore_errors=True)
