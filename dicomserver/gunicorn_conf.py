"""gunicorn settings used by `make run` and the end-to-end tests (`-c python:dicomserver.gunicorn_conf`).

gthread workers with deadlines (dicomserver/gunicorn_worker.py): a slow client streaming
a large instance ties up a thread, not a whole process, and one that stalls is cut off.
Threads are cheap while they wait on a socket, so there are enough of them for uploads
(at most DICOMWEB_MAX_UPLOADS each process) and everyone else at once. Override any of
these with GUNICORN_CMD_ARGS or command-line flags.
"""
import multiprocessing
import os

workers = int(os.environ.get("DICOMWEB_WORKERS", min(4, multiprocessing.cpu_count())))
worker_class = "dicomserver.gunicorn_worker.Worker"
threads = int(os.environ.get("DICOMWEB_THREADS", 32))
# Large uploads take long; gthread's timeout only guards a worker's heartbeat.
timeout = 300
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("DICOMWEB_ACCESS_LOG", "-") or None
# gunicorn >= 25's control socket lives at one fixed path per user; several servers
# on one host (tests, side-by-side deployments) would fight over it, and we do not use it.
control_socket_disable = True
