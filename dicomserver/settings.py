"""Server configuration, read once from the environment in `create_app`.

A typed, frozen `Settings` (rather than raw `app.config` keys) so that a typo or a
bad value stops start-up with a message naming the variable, instead of failing on
the first request.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


DEFAULT_BLOBSTORE_URL = "./data/blobs"
DEFAULT_DATABASE_URL = "sqlite:///./data/index.db"
LOG_FORMATS = ("text", "json")
#: WSGI environ key under which the server (gunicorn_worker.py) offers a threading.Event that
#: is set when the process begins its graceful stop: long-lived answers (the streaming change
#: feed) end on it, so the worker can exit within gunicorn's graceful timeout.
SERVER_STOPPING = "dicomserver.stopping"


@dataclass(frozen=True)
class Settings:
    blobstore_url: str = DEFAULT_BLOBSTORE_URL
    database_url: str = DEFAULT_DATABASE_URL
    #: Absolute base URL (scheme://host[:port][/prefix]) for RetrieveURLs when the
    #: server runs behind a proxy; None means "from the request".
    public_url: str | None = None
    #: Largest accepted DICOM instance (one part, or one single-part body).
    max_instance_bytes: int = 2 * 1024**3
    #: Largest instance WADO will transcode (stored size or decoded pixel data);
    #: larger ones are refused with 406 and can still be had with transfer-syntax=*.
    max_transcode_bytes: int = 512 * 1024**2
    #: Parts smaller than this are spooled in memory, larger ones on disk.
    spool_memory_bytes: int = 1024 * 1024
    #: Directory for spooled parts; None = the system temp dir.
    spool_dir: str | None = None
    #: Binary values up to this size are inlined in metadata; larger ones get a BulkDataURI.
    bulkdata_inline_threshold: int = 1024
    #: QIDO: results per page when the request sets no limit, and the cap.
    qido_default_limit: int = 100
    qido_max_limit: int = 1000
    #: SQLite busy timeout: how long a writer waits for another process' lock.
    sqlite_busy_timeout_ms: int = 30000
    #: Largest instance /rendered and /thumbnail will decode; larger ones are refused with 406.
    max_render_bytes: int = 512 * 1024**2
    #: OIDC issuer whose tokens are accepted; None: no authentication (the API is open).
    auth_authority: str | None = None
    #: Audiences a token may be issued for (its `aud` must name one of them).
    auth_audiences: tuple[str, ...] = ()
    #: Accept an http:// authority (tests, loopback); never in production.
    auth_allow_http: bool = False
    #: The token claim that lists the caller's roles.
    auth_roles_claim: str = "roles"
    #: Roles file (the reference server's roles.json format); None: the shipped default.
    auth_roles_file: str | None = None
    #: API keys (hashes and roles) for deployments without an identity provider.
    auth_tokens_file: str | None = None
    #: Origins browsers may call from (CORS): ("*",) for any; empty: CORS off.
    cors_origins: tuple[str, ...] = ()
    #: Host names a request's Host header may name for the absolute URLs in answers.
    trusted_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    #: Client addresses (reverse proxies) whose X-Forwarded-* headers are believed.
    trusted_proxies: tuple[str, ...] = ()
    #: Where audit records go: a file, "-" for stdout; None: nowhere.
    audit_log: str | None = "-"
    #: Keep audit records in the index too, searchable as FHIR AuditEvents at /audit.
    audit_store: bool = True
    #: Audit records older than this are deleted from the index (not from the JSON lines).
    audit_retention_days: int = 90
    #: Seconds a request body may send nothing before the request is answered 408 (gunicorn).
    body_read_timeout: float = 30.0
    #: Seconds a client has to send a whole request head (line and headers) (gunicorn).
    head_timeout: float = 10.0
    #: Request bodies (STOW) read at once per process; more are answered 503 at once, so
    #: that uploads, however slow, leave threads for everyone else (under gunicorn the
    #: default is all the worker's threads but a quarter: gunicorn_worker.py).
    max_uploads: int = 16
    #: /readyz reports not ready when local blob storage has less free space than this.
    min_free_bytes: int = 256 * 1024**2
    #: OHIF's root URL: the study browser links each study to `{viewer_url}/viewer?StudyInstanceUIDs=…`;
    #: None: no viewer link.
    viewer_url: str | None = None
    #: Log lines: "text" (gunicorn's look) or "json" (one object a line, and one a request).
    log_format: str = "text"
    #: When set, a scrape of /metrics must send `Authorization: Bearer <this>`.
    metrics_token: str | None = None
    #: nginx X-Accel-Redirect mode: the prefix of nginx's internal location for the local blob
    #: store's root (e.g. "/_dicomserver_blobs/"); a stored instance asked for as stored is an
    #: empty answer naming its file, which nginx sends. None: dicomserver sends every byte.
    accel_redirect: str | None = None
    #: Run operations (extended query tag re-indexes) in a thread of each server process.
    #: Off: this process only answers; another host or process must run them.
    operations_runner: bool = True
    #: Seconds an operation's runner holds it between checkpoints; a runner that crashed is
    #: replaced this long after its last checkpoint.
    operations_lease_seconds: float = 60.0
    #: Seconds between looks for operations to run, when none is running.
    operations_poll_seconds: float = 5.0
    #: UPS event channels (WebSocket, /subscribers/{AETitle}): how many one server process holds
    #: at most (each holds a server thread; 503 beyond), how often a process holding channels
    #: reads new event reports from the index, and the WebSocket ping that finds dead peers.
    max_event_channels: int = 4
    event_poll_seconds: float = 0.5
    event_ping_seconds: float = 25.0
    #: Instances a re-index reads and commits at a time, and the pause after each batch
    #: (seconds), which leaves the index to STOW and QIDO on a busy archive.
    reindex_batch: int = 500
    reindex_pause: float = 0.0
    #: Export (POST /export): the folder every "folder" destination lies under (None: folder
    #: destinations are refused), the S3 buckets an "s3" destination may name (none: refused)
    #: and the endpoint URLs it may name besides boto3's own; instances copied between two
    #: checkpoints, and the pause after each batch (seconds).
    export_root: str | None = None
    export_s3_buckets: tuple[str, ...] = ()
    export_s3_endpoints: tuple[str, ...] = ()
    export_batch: int = 50
    export_pause: float = 0.0
    #: Instances a bulk update rewrites between two checkpoints (one index commit each), and the
    #: seconds it pauses after each batch (to leave the disk and the index to other work).
    update_batch: int = 20
    update_pause: float = 0.0
    #: Data partitions (the reference's): every study-data route is served at
    #: /v{n}/partitions/{name}/... and only there; off: the routes without the segment.
    partitions: bool = False
    #: Webhooks (/webhooks, docs/events.md): deliver events from a thread of each server process
    #: (off: this process records events but another must deliver them), how often it looks for
    #: work (seconds), a receiver's time to answer (seconds), how long a process's claim on a delivery
    #: lasts (a killed process' deliveries are sent again after it), the attempts and the age
    #: (seconds) after which a delivery fails, the first retry's delay (each next one 5 times
    #: longer, at most an hour, with ±20 % jitter), how long deliveries stay visible (days), how
    #: long a process trusts its copy of what the subscriptions want (seconds), and the hosts
    #: (names, addresses, networks) a subscription may target although they are not public.
    webhooks_delivery: bool = True
    webhooks_poll_seconds: float = 1.0
    webhooks_timeout_seconds: float = 10.0
    webhooks_lease_seconds: float = 60.0
    webhooks_max_attempts: int = 10
    webhooks_max_age_seconds: float = 86400.0
    webhooks_retry_seconds: float = 10.0
    webhooks_retention_days: int = 7
    webhooks_cache_seconds: float = 2.0
    webhooks_allowed_hosts: tuple[str, ...] = ()
    #: Seconds without a new instance after which a series or study is reported stable (webhooks).
    stable_seconds: float = 60.0
    #: The streaming change feed (GET /changefeed, Accept: text/event-stream): seconds between
    #: the process' reads of new entries (one reader per process, whatever the streams), the
    #: most streams a process serves at once (each holds a thread; 503 beyond), seconds of
    #: silence before a `: keep-alive` comment, and the longest a stream lasts before the
    #: server ends it (0: no limit) and the client reconnects with Last-Event-ID.
    changefeed_poll_seconds: float = 1.0
    changefeed_max_streams: int = 4
    changefeed_heartbeat_seconds: float = 15.0
    changefeed_max_stream_seconds: float = 3600.0
    #: The DIMSE gateway (`dicomserver dimse`): its AE title, the address it listens on, the
    #: peers allowed to associate (`AET@host[:port]`; none listed: any calling AE), the ACSE
    #: (association), DIMSE (message) and network (idle) timeouts in seconds, the most
    #: associations at once and the largest PDU it accepts, so a slow peer cannot stall it.
    dimse_ae_title: str = "DICOMSERVER"
    dimse_bind: str = "127.0.0.1"
    dimse_port: int = 11112
    dimse_peers: tuple[str, ...] = ()
    dimse_acse_timeout: float = 30.0
    dimse_dimse_timeout: float = 60.0
    dimse_network_timeout: float = 60.0
    dimse_max_associations: int = 10
    dimse_max_pdu_bytes: int = 65536
    #: Processes of the gateway on its port (dimse_processes.py); None: one per CPU, at most 4.
    #: DICOMWEB_DIMSE_MAX_ASSOCIATIONS is per process.
    dimse_processes: int | None = None
    #: Storage commitment (PS3.4 Annex J): the most references one N-ACTION may carry (more:
    #: refused with 0x0213), and how often a report the requestor's association no longer
    #: takes is tried on a new association to it, that many seconds apart.
    dimse_commitment_max_references: int = 10000
    dimse_commitment_attempts: int = 3
    dimse_commitment_retry_seconds: float = 10.0
    #: The gateway's own Prometheus listener (`GET /metrics`, DICOMWEB_METRICS_TOKEN applies):
    #: off unless a port is set; loopback unless told otherwise.
    dimse_metrics_port: int | None = None
    dimse_metrics_bind: str = "127.0.0.1"
    #: The data partition the gateway stores into and queries (DICOMWEB_PARTITIONS on for any
    #: but the default; created on first use, as STOW creates one).
    dimse_partition: str = "Microsoft.Default"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from DICOMWEB_* variables; raise ConfigError naming the bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, var, parse in _VARIABLES:
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[field] = parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r} is invalid: {exc}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check cross-field rules (also for settings built in code, e.g. by tests)."""
        _check_database_url(self.database_url)
        if self.public_url is not None:
            _check_public_url(self.public_url)
        if self.viewer_url is not None:
            _check_viewer_url(self.viewer_url)
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"DICOMWEB_LOG_FORMAT={self.log_format!r} is invalid: expected text or json")
        if self.qido_default_limit > self.qido_max_limit:
            raise ConfigError(
                "DICOMWEB_QIDO_DEFAULT_LIMIT must not exceed DICOMWEB_QIDO_MAX_LIMIT"
            )
        if self.webhooks_lease_seconds <= self.webhooks_timeout_seconds:
            raise ConfigError(
                "DICOMWEB_WEBHOOKS_LEASE_SECONDS must exceed DICOMWEB_WEBHOOKS_TIMEOUT_SECONDS "
                "(a claim outlives a send)"
            )
        if self.dimse_partition != "Microsoft.Default" and not self.partitions:
            raise ConfigError(
                f"DICOMWEB_DIMSE_PARTITION={self.dimse_partition!r} needs DICOMWEB_PARTITIONS on"
            )
        if self.auth_authority is not None:
            _check_authority(self.auth_authority, allow_http=self.auth_allow_http)
            if not self.auth_audiences:
                raise ConfigError(
                    "DICOMWEB_AUTH_AUDIENCE must name at least one audience when DICOMWEB_AUTH_AUTHORITY is set"
                )


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value <= 0:
        raise ValueError("expected a number greater than 0")
    return value


def _whole_number(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 0:
        raise ValueError("expected a number of 0 or more")
    return value


def _non_negative_seconds(raw: str) -> float:
    return 0.0 if raw.strip() in ("0", "0.0") else _positive_seconds(raw)


def _positive_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("expected a number of seconds greater than 0")
    return value


def _check_database_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ConfigError(
                f"DICOMWEB_DATABASE_URL={url!r} is invalid: expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        return url
    if scheme in ("postgresql", "postgres", "postgresql+pool", "postgres+pool"):
        return url
    raise ConfigError(
        f"DICOMWEB_DATABASE_URL={url!r} is invalid: expected sqlite:///path or postgresql://..."
    )


def _check_public_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"DICOMWEB_PUBLIC_URL={url!r} is invalid: expected an absolute http(s):// URL"
        )
    return url.rstrip("/")


def _check_viewer_url(url: str) -> str:
    """The viewer's root: a query or fragment would end up in front of the link's own query."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"DICOMWEB_VIEWER_URL={url!r} is invalid: expected an absolute http(s):// URL "
            "without query or fragment, e.g. https://viewer.example.org"
        )
    return url.rstrip("/")


def _parsed_by(check: Callable[[str], str]) -> Callable[[str], str]:
    """A `_VARIABLES` parser from a validator that raises ConfigError naming the variable
    (the table's caller names it again: keep only the reason)."""

    def parse(raw: str) -> str:
        try:
            return check(raw)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    return parse


def _check_authority(url: str, *, allow_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ConfigError(f"DICOMWEB_AUTH_AUTHORITY={url!r} is invalid: expected an https:// issuer URL")
    if parts.scheme == "http" and not allow_http:
        raise ConfigError(
            f"DICOMWEB_AUTH_AUTHORITY={url!r} is invalid: tokens are only fetched over https "
            "(DICOMWEB_AUTH_ALLOW_HTTP=1 allows http, for tests on loopback)"
        )


def _names(raw: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


#: PS3.5 AE title: 1 to 16 characters of the default repertoire, no backslash or control
#: character, not all spaces.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def check_ae_title(raw: str) -> str:
    """An AE title as given (leading and trailing spaces are not significant); ValueError if invalid."""
    title = raw.strip()
    if not _AE_TITLE.fullmatch(title):
        raise ValueError("an AE title is 1 to 16 printable ASCII characters, without a backslash")
    return title


def parse_peer(raw: str) -> tuple[str, str, int | None]:
    """`AET@host[:port]` → (AE title, host, port or None); ValueError if malformed."""
    title, at, address = raw.rpartition("@")
    if not at or not address:
        raise ValueError(f"{raw!r} is not AET@host[:port]")
    host, port = address, ""
    if address.startswith("["):  # [IPv6 address]:port
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:  # host:port (more colons: a bare IPv6 address)
        host, port = address.split(":")
    if not host:
        raise ValueError(f"{raw!r} names no host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{raw!r} has an invalid port")
    return check_ae_title(title), host, int(port) if port else None


def _peers(raw: str) -> tuple[str, ...]:
    names = _names(raw)
    for name in names:
        parse_peer(name)
    return names


def _partition_name(raw: str) -> str:
    from .partitions import InvalidPartitionName, check_name

    try:
        return check_name(raw.strip())
    except InvalidPartitionName:
        raise ValueError("a partition name is 1 to 64 of A-Z a-z 0-9 . _ -") from None


def _audit_target(raw: str) -> str | None:
    return None if raw.lower() in ("off", "none", "0", "false") else raw


def _log_format(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in LOG_FORMATS:
        raise ValueError("expected " + " or ".join(LOG_FORMATS))
    return lowered


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1 or 0")


def _accel_prefix(raw: str) -> str:
    """An absolute URI path ending in '/', to which a blob key is appended as it is: keys are
    [A-Za-z0-9._-] segments that never start with '.' (backends/base.py validate_key)."""
    if not _ACCEL_PREFIX.fullmatch(raw):
        raise ValueError("expected the path of an nginx internal location, e.g. /_dicomserver_blobs/")
    return raw


_ACCEL_PREFIX = re.compile(r"(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+/")


_VARIABLES = (
    ("blobstore_url", "DICOMWEB_BLOBSTORE_URL", str),
    ("database_url", "DICOMWEB_DATABASE_URL", _parsed_by(_check_database_url)),
    ("public_url", "DICOMWEB_PUBLIC_URL", _parsed_by(_check_public_url)),
    ("max_instance_bytes", "DICOMWEB_MAX_INSTANCE_BYTES", _positive_int),
    ("max_transcode_bytes", "DICOMWEB_MAX_TRANSCODE_BYTES", _positive_int),
    ("spool_memory_bytes", "DICOMWEB_SPOOL_MEMORY_BYTES", _positive_int),
    ("spool_dir", "DICOMWEB_SPOOL_DIR", str),
    ("bulkdata_inline_threshold", "DICOMWEB_BULKDATA_THRESHOLD", _positive_int),
    ("qido_default_limit", "DICOMWEB_QIDO_DEFAULT_LIMIT", _positive_int),
    ("qido_max_limit", "DICOMWEB_QIDO_MAX_LIMIT", _positive_int),
    ("sqlite_busy_timeout_ms", "DICOMWEB_SQLITE_BUSY_TIMEOUT_MS", _positive_int),
    ("max_render_bytes", "DICOMWEB_MAX_RENDER_BYTES", _positive_int),
    ("auth_authority", "DICOMWEB_AUTH_AUTHORITY", str),
    ("auth_audiences", "DICOMWEB_AUTH_AUDIENCE", _names),
    ("auth_allow_http", "DICOMWEB_AUTH_ALLOW_HTTP", _flag),
    ("auth_roles_claim", "DICOMWEB_AUTH_ROLES_CLAIM", str),
    ("auth_roles_file", "DICOMWEB_AUTH_ROLES_FILE", str),
    ("auth_tokens_file", "DICOMWEB_AUTH_TOKENS_FILE", str),
    ("cors_origins", "DICOMWEB_CORS_ORIGINS", _names),
    ("trusted_hosts", "DICOMWEB_TRUSTED_HOSTS", _names),
    ("trusted_proxies", "DICOMWEB_TRUSTED_PROXIES", _names),
    ("audit_log", "DICOMWEB_AUDIT_LOG", _audit_target),
    ("audit_store", "DICOMWEB_AUDIT_STORE", _flag),
    ("audit_retention_days", "DICOMWEB_AUDIT_RETENTION_DAYS", _positive_int),
    ("body_read_timeout", "DICOMWEB_BODY_READ_TIMEOUT", _positive_seconds),
    ("head_timeout", "DICOMWEB_HEAD_TIMEOUT", _positive_seconds),
    ("min_free_bytes", "DICOMWEB_MIN_FREE_BYTES", _whole_number),
    ("max_uploads", "DICOMWEB_MAX_UPLOADS", _positive_int),
    ("viewer_url", "DICOMWEB_VIEWER_URL", _parsed_by(_check_viewer_url)),
    ("log_format", "DICOMWEB_LOG_FORMAT", _log_format),
    ("metrics_token", "DICOMWEB_METRICS_TOKEN", str),
    ("accel_redirect", "DICOMWEB_ACCEL_REDIRECT", _accel_prefix),
    ("operations_runner", "DICOMWEB_OPERATIONS_RUNNER", _flag),
    ("operations_lease_seconds", "DICOMWEB_OPERATIONS_LEASE_SECONDS", _positive_seconds),
    ("operations_poll_seconds", "DICOMWEB_OPERATIONS_POLL_SECONDS", _positive_seconds),
    ("reindex_batch", "DICOMWEB_REINDEX_BATCH", _positive_int),
    ("reindex_pause", "DICOMWEB_REINDEX_PAUSE", _non_negative_seconds),
    ("export_root", "DICOMWEB_EXPORT_ROOT", str),
    ("export_s3_buckets", "DICOMWEB_EXPORT_S3_BUCKETS", _names),
    ("export_s3_endpoints", "DICOMWEB_EXPORT_S3_ENDPOINTS", _names),
    ("export_batch", "DICOMWEB_EXPORT_BATCH", _positive_int),
    ("export_pause", "DICOMWEB_EXPORT_PAUSE", _non_negative_seconds),
    ("update_batch", "DICOMWEB_UPDATE_BATCH", _positive_int),
    ("update_pause", "DICOMWEB_UPDATE_PAUSE", _non_negative_seconds),
    ("partitions", "DICOMWEB_PARTITIONS", _flag),
    ("webhooks_delivery", "DICOMWEB_WEBHOOKS_DELIVERY", _flag),
    ("webhooks_poll_seconds", "DICOMWEB_WEBHOOKS_POLL_SECONDS", _positive_seconds),
    ("webhooks_timeout_seconds", "DICOMWEB_WEBHOOKS_TIMEOUT_SECONDS", _positive_seconds),
    ("webhooks_lease_seconds", "DICOMWEB_WEBHOOKS_LEASE_SECONDS", _positive_seconds),
    ("webhooks_max_attempts", "DICOMWEB_WEBHOOKS_MAX_ATTEMPTS", _positive_int),
    ("webhooks_max_age_seconds", "DICOMWEB_WEBHOOKS_MAX_AGE_SECONDS", _positive_seconds),
    ("webhooks_retry_seconds", "DICOMWEB_WEBHOOKS_RETRY_SECONDS", _positive_seconds),
    ("webhooks_retention_days", "DICOMWEB_WEBHOOKS_RETENTION_DAYS", _positive_int),
    ("webhooks_cache_seconds", "DICOMWEB_WEBHOOKS_CACHE_SECONDS", _non_negative_seconds),
    ("webhooks_allowed_hosts", "DICOMWEB_WEBHOOKS_ALLOWED_HOSTS", _names),
    ("stable_seconds", "DICOMWEB_STABLE_SECONDS", _positive_seconds),
    ("changefeed_poll_seconds", "DICOMWEB_CHANGEFEED_POLL_SECONDS", _positive_seconds),
    ("changefeed_max_streams", "DICOMWEB_CHANGEFEED_MAX_STREAMS", _positive_int),
    ("changefeed_heartbeat_seconds", "DICOMWEB_CHANGEFEED_HEARTBEAT_SECONDS", _positive_seconds),
    ("changefeed_max_stream_seconds", "DICOMWEB_CHANGEFEED_MAX_STREAM_SECONDS", _non_negative_seconds),
    ("max_event_channels", "DICOMWEB_MAX_EVENT_CHANNELS", _positive_int),
    ("event_poll_seconds", "DICOMWEB_EVENT_POLL_SECONDS", _positive_seconds),
    ("event_ping_seconds", "DICOMWEB_EVENT_PING_SECONDS", _positive_seconds),
    ("dimse_ae_title", "DICOMWEB_DIMSE_AE_TITLE", _parsed_by(lambda raw: check_ae_title(raw))),
    ("dimse_bind", "DICOMWEB_DIMSE_BIND", str),
    ("dimse_port", "DICOMWEB_DIMSE_PORT", _positive_int),
    ("dimse_peers", "DICOMWEB_DIMSE_PEERS", _peers),
    ("dimse_acse_timeout", "DICOMWEB_DIMSE_ACSE_TIMEOUT", _positive_seconds),
    ("dimse_dimse_timeout", "DICOMWEB_DIMSE_DIMSE_TIMEOUT", _positive_seconds),
    ("dimse_network_timeout", "DICOMWEB_DIMSE_NETWORK_TIMEOUT", _positive_seconds),
    ("dimse_max_associations", "DICOMWEB_DIMSE_MAX_ASSOCIATIONS", _positive_int),
    ("dimse_max_pdu_bytes", "DICOMWEB_DIMSE_MAX_PDU_BYTES", _positive_int),
    ("dimse_processes", "DICOMWEB_DIMSE_PROCESSES", _positive_int),
    ("dimse_commitment_max_references", "DICOMWEB_DIMSE_COMMITMENT_MAX_REFERENCES", _positive_int),
    ("dimse_commitment_attempts", "DICOMWEB_DIMSE_COMMITMENT_ATTEMPTS", _positive_int),
    ("dimse_commitment_retry_seconds", "DICOMWEB_DIMSE_COMMITMENT_RETRY_SECONDS", _non_negative_seconds),
    ("dimse_metrics_port", "DICOMWEB_DIMSE_METRICS_PORT", _positive_int),
    ("dimse_metrics_bind", "DICOMWEB_DIMSE_METRICS_BIND", str),
    ("dimse_partition", "DICOMWEB_DIMSE_PARTITION", _partition_name),
)
