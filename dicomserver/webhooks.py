"""Webhook subscriptions (/webhooks, non-standard): their bodies in and out, the checks on a
target URL, and the signature of a delivery.

Signatures follow Standard Webhooks (standardwebhooks.com): a secret `whsec_<base64 key>`,
headers `webhook-id` (the event id), `webhook-timestamp` (Unix seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, so the spec's
libraries verify them as they are. A target must be http(s) and, unless
DICOMWEB_WEBHOOKS_ALLOWED_HOSTS names it, resolve to public addresses only: a subscription
must not turn the server into a client of its own network (SSRF). Names are resolved again
before every delivery (delivery.py), since DNS answers change.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .errors import BadRequest, NotFound
from .events import PING, TYPES
from .index import Index
from .index.connection import utcnow
from .index.webhooks import DeliveryRecord, WebhookRecord
from .partitions import DEFAULT_NAME, check_name
from .request_json import json_body
from .settings import Settings

SECRET_PREFIX = "whsec_"
#: Keys of a secret a client brings: 24 to 64 bytes (Standard Webhooks' range).
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION = 1024
_ID = re.compile(r"[0-9a-f]{32}")
_MEMBERS = {"url", "events", "secret", "description", "partition", "active"}
#: Deliveries GET /webhooks/{id}/deliveries shows at most.
MAX_DELIVERIES = 1000


# -- signatures ----------------------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64 HMAC-SHA256>` (Standard Webhooks)."""
    mac = hmac.new(signing_key(secret), f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _check_secret(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
        raise BadRequest("secret must be a string 'whsec_' followed by a base64 key (Standard Webhooks)")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("secret: the part after 'whsec_' is not base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise BadRequest(f"secret: the key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")
    return value


# -- targets (SSRF) -------------------------------------------------------------------
class TargetRefused(BadRequest):
    """A URL a subscription may not target (scheme, credentials, a non-public address)."""


def check_url(url: Any, settings: Settings, resolve: bool = True) -> str:
    """An http(s) URL without credentials whose host is public or allowed; TargetRefused if not.
    A name that does not resolve now is accepted (the receiver may not be up yet): each delivery
    checks again."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"url must be an http:// or https:// URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused("url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("url must not carry credentials (the signature authenticates the server)")
    if parts.fragment:
        raise TargetRefused("url must not have a fragment")
    refusal = target_refusal(parts.hostname, port or (443 if parts.scheme == "https" else 80), settings, resolve)
    if refusal is not None:
        raise TargetRefused(f"url: {refusal}")
    return url


def target_refusal(host: str, port: int, settings: Settings, resolve: bool = True) -> str | None:
    """Why a delivery may not go to `host` (None: it may): a loopback, private, link-local or other
    non-public address, unless DICOMWEB_WEBHOOKS_ALLOWED_HOSTS names the host or a network of it."""
    allowed = settings.webhooks_allowed_hosts
    if host.lower().rstrip(".") in {a.lower().rstrip(".") for a in allowed}:
        return None
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        if not resolve:
            return None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return None  # nothing to connect to: a delivery then fails on its own
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    networks = _networks(allowed)
    for address in addresses:
        mapped = getattr(address, "ipv4_mapped", None) or address
        public = mapped.is_global and not mapped.is_multicast
        if not public and not any(mapped in net for net in networks if net.version == mapped.version):
            return (f"{host} is (or resolves to) {mapped}, not a public address; "
                    "DICOMWEB_WEBHOOKS_ALLOWED_HOSTS may allow it")
    return None


def _networks(allowed: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    found = []
    for entry in allowed:
        try:
            found.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            continue  # a host name
    return found


# -- the API -------------------------------------------------------------------------
def _iso(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _check_events(value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)
            or len(set(value)) != len(value)):
        raise BadRequest(f"events must be a non-empty list of distinct event types: {', '.join(TYPES)}")
    unknown = [v for v in value if v not in TYPES]
    if unknown:
        raise BadRequest(f"unknown event type(s) {', '.join(map(repr, unknown))[:200]}; known: {', '.join(TYPES)}")
    return tuple(value)


def _check_text(name: str, value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of at most {limit} characters")
    return value


def _check_partition(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("partition must be a partition name")
    return check_name(value)


def _object(read: Callable[[int], bytes]) -> dict[str, Any]:
    body = json_body(read)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - _MEMBERS)
    if unknown:
        raise BadRequest(f"unknown member(s) {', '.join(unknown)[:200]}; known: {', '.join(sorted(_MEMBERS))}")
    if "active" in body and not isinstance(body["active"], bool):
        raise BadRequest("active must be true or false")
    return body


def document(record: WebhookRecord, last: DeliveryRecord | None = None, *, with_last: bool = False) -> dict[str, Any]:
    """A subscription as the API shows it (never its secret)."""
    shown: dict[str, Any] = {
        "id": record.id, "url": record.url, "events": list(record.events), "description": record.description,
        "partition": record.partition, "active": record.active, "created": _iso(record.created),
        "updated": _iso(record.updated),
    }
    if with_last:
        shown["lastDelivery"] = None if last is None else delivery_document(last)
    return shown


def delivery_document(delivery: DeliveryRecord) -> dict[str, Any]:
    return {
        "id": delivery.id, "eventId": delivery.event_id, "eventType": delivery.event_type,
        "eventTime": _iso(delivery.event_time), "status": delivery.status, "attempts": delivery.attempts,
        "lastAttempt": _iso(delivery.last_attempt), "lastStatus": delivery.last_status,
        "lastError": delivery.last_error, "nextAttempt": _iso(delivery.next_attempt),
    }


def create(index: Index, settings: Settings, read: Callable[[int], bytes]) -> dict[str, Any]:
    """Register a subscription; its document, with the secret when the server made it (shown once)."""
    body = _object(read)
    if "url" not in body or "events" not in body:
        raise BadRequest("the body needs url and events")
    generated = body.get("secret") is None
    now = utcnow()
    record = WebhookRecord(
        id=uuid.uuid4().hex, url=check_url(body["url"], settings), events=_check_events(body["events"]),
        secret=new_secret() if generated else _check_secret(body["secret"]),
        description=_check_text("description", body.get("description"), MAX_DESCRIPTION),
        partition=_check_partition(body.get("partition")), active=body.get("active", True), created=now, updated=now,
    )
    index.add_webhook(record)
    shown = document(record)
    if generated:
        shown["secret"] = record.secret
    return shown


def _find(index: Index, webhook_id: str) -> WebhookRecord:
    record = index.webhook(webhook_id) if _ID.fullmatch(webhook_id) else None
    if record is None:
        raise NotFound(f"there is no webhook {webhook_id[:40]}")
    return record


def list_all(index: Index) -> list[dict[str, Any]]:
    return [document(record) for record in index.webhooks()]


def get(index: Index, webhook_id: str) -> dict[str, Any]:
    record = _find(index, webhook_id)
    return document(record, index.last_delivery(record.id), with_last=True)


def update(index: Index, settings: Settings, webhook_id: str, read: Callable[[int], bytes]) -> dict[str, Any]:
    """Change url, events, secret, description, partition or active; the new document."""
    record = _find(index, webhook_id)
    body = _object(read)
    changes: dict[str, Any] = {"updated": utcnow()}
    if "url" in body:
        changes["url"] = check_url(body["url"], settings)
    if "events" in body:
        changes["events"] = _check_events(body["events"])
    if "secret" in body:
        changes["secret"] = _check_secret(body["secret"])
    if "description" in body:
        changes["description"] = _check_text("description", body["description"], MAX_DESCRIPTION)
    if "partition" in body:
        changes["partition"] = _check_partition(body["partition"])
    if "active" in body:
        changes["active"] = body["active"]
    changed = WebhookRecord(**{**record.__dict__, **changes})
    if not index.update_webhook(changed):
        raise NotFound(f"there is no webhook {webhook_id}")
    return get(index, webhook_id)


def delete(index: Index, webhook_id: str) -> None:
    if not _ID.fullmatch(webhook_id) or not index.delete_webhook(webhook_id):
        raise NotFound(f"there is no webhook {webhook_id[:40]}")


def deliveries(index: Index, webhook_id: str, limit: str | None) -> list[dict[str, Any]]:
    record = _find(index, webhook_id)
    count = 100
    if limit is not None:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_DELIVERIES:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_DELIVERIES}")
        count = int(limit)
    return [delivery_document(d) for d in index.deliveries(record.id, count)]


def ping(index: Index, webhook_id: str) -> dict[str, Any]:
    """Queue a `webhook.ping` event for this subscription only (active or not: it is sent once active)."""
    record = _find(index, webhook_id)
    event_id = str(uuid.uuid4())
    if not index.ping(record.id, event_id, record.partition or DEFAULT_NAME, {"webhookId": record.id}):
        raise NotFound(f"there is no webhook {webhook_id}")
    return {"eventId": event_id, "type": PING}
