"""Prometheus metrics: what the archive answered, stored and waited for, for `/metrics`.

Under gunicorn each worker is a process of its own, so the values are kept in
prometheus_client's multiprocess mode: `gunicorn_conf.py` sets PROMETHEUS_MULTIPROC_DIR
before any worker imports this module, every worker writes its values to files there,
and a scrape answered by any worker adds them all up. Without that variable (flask run,
tests) they live in this process. Every label value is bounded: services are the
blueprints, methods a fixed set, reasons the archive's own status codes; never a path or
a UID. The archive's contents (studies, instances) are read from the index at scrape
time rather than kept in gauges: they stay right whichever process or server changed them.
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from backends.base import BlobStore

from .errors import Unauthenticated

__all__ = [
    "CONTENT_TYPE",
    "INDEX_SECONDS",
    "BLOBSTORE_SECONDS",
    "check_scrape_token",
    "count_stow_instance",
    "exposition",
    "method_label",
    "observe_request",
    "open_blob",
    "process_exposition",
    "timed_first_chunk",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No *_created series: multiprocess mode has none, so a scrape looks the same in both modes.
disable_created_metrics()
#: This process' metrics, apart from any library's default registry.
REGISTRY = CollectorRegistry(auto_describe=False)
#: Request methods counted by name; any other is "other" (a client chooses the method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: Uploads of large studies take minutes: the default buckets stop at 10 s.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "dicomweb_requests", "HTTP requests answered", ["service", "method", "status"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "dicomweb_request_duration_seconds",
    "Time from a request's arrival until its answer was sent",
    ["service", "method"],
    buckets=_REQUEST_BUCKETS,
    registry=REGISTRY,
)
REQUEST_BYTES = Counter("dicomweb_request_bytes", "Request body bytes read", ["service"], registry=REGISTRY)
RESPONSE_BYTES = Counter("dicomweb_response_bytes", "Response body bytes sent", ["service"], registry=REGISTRY)
STOW_INSTANCES = Counter(
    "dicomweb_stow_instances",
    "STOW parts by outcome (stored, warning, failed) and reason code (FailureReason or WarningReason)",
    ["outcome", "reason"],
    registry=REGISTRY,
)
BLOBSTORE_SECONDS = Histogram(
    "dicomweb_blobstore_seconds",
    "Blob store calls: put, delete, open (for parsing) and read (until the first bytes of a stream)",
    ["operation"],
    buckets=_STORAGE_BUCKETS,
    registry=REGISTRY,
)
INDEX_SECONDS = Histogram(
    "dicomweb_index_seconds",
    "Index calls: store_instance, delete, instances and metadata (by UID), search (QIDO)",
    ["operation"],
    buckets=_STORAGE_BUCKETS,
    registry=REGISTRY,
)

#: The streaming change feed (changefeed_stream.py): reads of new entries by the process'
#: poller (one per interval while a stream is open, however many), and what is open now.
CHANGEFEED_POLLS = Counter(
    "dicomweb_changefeed_polls", "Reads of new change-feed entries by the streaming feed's pollers", registry=REGISTRY
)
CHANGEFEED_POLLERS = Gauge(
    "dicomweb_changefeed_pollers", "Streaming change-feed pollers running (at most one per process)",
    multiprocess_mode="livesum", registry=REGISTRY,
)
CHANGEFEED_STREAMS = Gauge(
    "dicomweb_changefeed_streams", "Streaming change feeds (Server-Sent Events) open",
    multiprocess_mode="livesum", registry=REGISTRY,
)

#: The DIMSE gateway (`dicomserver dimse`, dimse.py), a process of its own: its requests by
#: command (C-ECHO, C-STORE, ...) and status class, the PDU bytes it received and sent, and
#: the associations it was asked for by outcome. Its C-STORE instances are STOW's
#: (dicomweb_stow_instances), counted once by the same pipeline.
DIMSE_REQUESTS = Counter(
    "dicomweb_dimse_requests",
    "DIMSE requests answered by the gateway, by command (C-ECHO, C-STORE, ...) and status class "
    "(success, warning, cancel, refused, failure)",
    ["command", "status"],
    registry=REGISTRY,
)
DIMSE_BYTES = Counter(
    "dicomweb_dimse_bytes", "PDU bytes the DIMSE gateway received and sent", ["direction"], registry=REGISTRY
)
DIMSE_ASSOCIATIONS = Counter(
    "dicomweb_dimse_associations",
    "Associations requested of the DIMSE gateway, by outcome (accepted, rejected, aborted)",
    ["outcome"],
    registry=REGISTRY,
)
#: The open associations of one process of a gateway of several (DICOMWEB_DIMSE_PROCESSES),
#: summed over the live ones; in no registry: only the multiprocess files of such a gateway
#: carry it (a gateway of one process counts its associations at scrape time instead).
DIMSE_ACTIVE_ASSOCIATIONS = Gauge(
    "dicomweb_dimse_active_associations", "Associations the DIMSE gateway has open",
    multiprocess_mode="livesum", registry=None,
)


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


#: The request metrics' children by (service, method, status): looking labels up costs more
#: than counting (a few microseconds a request), and their number is bounded like the labels.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram, Counter, Counter]] = {}


def observe_request(service: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
    """Count one answered request (`method` already bounded by `method_label`)."""
    key = (service, method, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (
            REQUESTS.labels(service, method, str(status)),
            REQUEST_SECONDS.labels(service, method),
            REQUEST_BYTES.labels(service),
            RESPONSE_BYTES.labels(service),
        )
    requests, duration, received, sent = children
    requests.inc()
    duration.observe(seconds)
    if bytes_in:
        received.inc(bytes_in)
    if bytes_out:
        sent.inc(bytes_out)


#: STOW_INSTANCES' children by (outcome, reason), for the same reason (reasons are the archive's codes).
_stow_children: dict[tuple[str, int | None], Counter] = {}


def count_stow_instance(outcome: str, reason: int | None) -> None:
    child = _stow_children.get((outcome, reason))
    if child is None:
        child = _stow_children[outcome, reason] = STOW_INSTANCES.labels(outcome, "" if reason is None else str(reason))
    child.inc()


def open_blob(store: BlobStore, key: str) -> BinaryIO:
    """store.open, timed (readers that parse the file: transcoding, rendering, pixel data)."""
    with BLOBSTORE_SECONDS.labels("open").time():
        return store.open(key)


def timed_first_chunk(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of a streamed blob read, timing the wait for the first (the store's latency;
    the rest follows at the pace of the client)."""
    try:
        with BLOBSTORE_SECONDS.labels("read").time():
            first = next(chunks, None)
        if first is None:
            return
        yield first
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # a reader closed early lets go of its file or connection now
            close()


def check_scrape_token(expected: str | None, authorization: str | None) -> None:
    """With DICOMWEB_METRICS_TOKEN set, a scrape must send it as a bearer token (401 otherwise)."""
    if expected is None:
        return
    scheme, _, sent = (authorization or "").partition(" ")
    if not (scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), expected.encode())):
        raise Unauthenticated("", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


def exposition(stored_counts: Callable[[], tuple[int, int]]) -> bytes:
    """Every process' metrics and the archive's contents in Prometheus' text format.

    `stored_counts` gives (studies, instances); when it fails the rest is still answered.
    """
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(_Stored(stored_counts))
    return generate_latest(registry)


def process_exposition(*collectors: Collector) -> bytes:
    """This process' own metrics (never another process' files) and `collectors`, in
    Prometheus' text format: what a process beside gunicorn (the DIMSE gateway) serves."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def directory_exposition(path: str) -> bytes:
    """The metrics the processes of a DIMSE gateway of several wrote into `path` (their own
    multiprocess directory, never gunicorn's), added up, in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=path)
    return generate_latest(registry)


class _ThisProcess(Collector):
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class _Stored(Collector):
    """The studies and instances the index holds, read at scrape time."""

    def __init__(self, stored_counts: Callable[[], tuple[int, int]]) -> None:
        self.stored_counts = stored_counts

    def collect(self) -> Iterable[Metric]:
        try:
            studies, instances = self.stored_counts()
        except Exception as exc:  # the index is down: the other metrics still say so
            log.warning("metrics: the archive's counts could not be read: %s", exc)
            return []
        return [
            GaugeMetricFamily("dicomweb_studies_stored", "Studies in the archive", value=studies),
            GaugeMetricFamily("dicomweb_instances_stored", "Instances in the archive", value=instances),
        ]
