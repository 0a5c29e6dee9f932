"""The webhook delivery thread of a server process (started as the operations runner is).

Each poll it (1) fans the outbox's new events out into deliveries, (2) reports the series and
studies that have been quiet for DICOMWEB_STABLE_SECONDS, and (3) claims due deliveries with a
lease and POSTs them, signed (webhooks.sign). A 2xx marks a delivery delivered, only after the
receiver answered: a process killed in between leaves its claim to expire and the event is
sent again (at least once; the receiver de-duplicates by `webhook-id`). Anything else is
retried after 10 s, 50 s, 250 s, ... (DICOMWEB_WEBHOOKS_RETRY_SECONDS, times 5 each attempt, at
most an hour, ±20 % jitter) until DICOMWEB_WEBHOOKS_MAX_ATTEMPTS or _MAX_AGE_SECONDS, then
`failed`. Every step is a no-op costing no query while no subscription is active (the
outbox's cached view of them).
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import peewee as pw
import requests

from .background import IndexThread
from .events import SERIES_STABLE, STUDY_STABLE, envelope
from .index import Index
from .index.connection import utcnow
from .index.webhooks import DeliveryJob
from .operations import runner_name
from .settings import Settings
from .webhooks import sign, target_refusal

log = logging.getLogger(__name__)

#: Deliveries one claim takes (sent one after another before the next claim).
CLAIM = 10
#: Each retry waits this many times longer than the one before, up to MAX_BACKOFF seconds.
BACKOFF_FACTOR = 5
MAX_BACKOFF = 3600.0
JITTER = 0.2
#: Seconds between purges of old deliveries (per process).
PURGE_EVERY = 600.0
USER_AGENT = "dicomserver-webhooks/1"

Sender = Callable[[DeliveryJob, bytes, dict[str, str]], tuple[int | None, str | None]]


def backoff(settings: Settings, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` attempts."""
    base = min(MAX_BACKOFF, settings.webhooks_retry_seconds * BACKOFF_FACTOR ** max(0, attempts - 1))
    return base * (1 + JITTER * (2 * (rng or random).random() - 1))


def headers(job: DeliveryJob, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": job.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(job.secret, job.event_id, timestamp, body),
    }


class Deliverer:
    """One process's delivery work: the steps of a poll, with the HTTP session it sends through."""

    def __init__(self, index: Index, settings: Settings, owner: str | None = None, send: Sender | None = None):
        self.index = index
        self.settings = settings
        self.owner = owner or runner_name()
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy from the environment: the target checks are ours
        self.send = send or self._post
        self._last_purge = 0.0

    def step(self) -> int:
        """One poll: fan out, stable scan, then deliver what is due; how many deliveries were attempted."""
        index = self.index
        if not index.outbox.wanted():
            return 0
        index.fan_out()
        if index.outbox.wanted(SERIES_STABLE) or index.outbox.wanted(STUDY_STABLE):
            index.scan_stable(dt.timedelta(seconds=self.settings.stable_seconds))
            index.fan_out()
        attempted = 0
        lease = dt.timedelta(seconds=self.settings.webhooks_lease_seconds)
        for job in index.claim_deliveries(self.owner, lease, CLAIM):
            self.deliver(job)
            attempted += 1
        if time.monotonic() - self._last_purge > PURGE_EVERY:
            self._last_purge = time.monotonic()
            index.purge_webhook_history(utcnow() - dt.timedelta(days=self.settings.webhooks_retention_days))
        return attempted

    def deliver(self, job: DeliveryJob) -> None:
        body = envelope(job.event_id, job.event_type, job.event_time, job.partition, job.data, self.settings.public_url)
        status, error = self.send(job, body, headers(job, body, int(time.time())))
        if not self.index.finish_delivery(job, self.owner, status=status, error=error, retry=self._retry):
            log.warning("webhook delivery %s: another process took it over (this one was past its lease)", job.id)

    def _retry(self, job: DeliveryJob) -> dt.datetime | None:
        """When to try again, or None: give up (attempts or age exhausted)."""
        now = utcnow()
        age = (now - job.event_time).total_seconds()
        if job.attempts >= self.settings.webhooks_max_attempts or age >= self.settings.webhooks_max_age_seconds:
            return None
        return now + dt.timedelta(seconds=backoff(self.settings, job.attempts))

    def _post(self, job: DeliveryJob, body: bytes, sent_headers: dict[str, str]) -> tuple[int | None, str | None]:
        """POST once: (HTTP status, None) or (None, why nothing was answered). Redirects are not followed."""
        parts = urlsplit(job.url)
        refusal = target_refusal(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
                                 self.settings)
        if refusal is not None:
            return None, f"refused: {refusal}"
        try:
            response = self._session.post(job.url, data=body, headers=sent_headers, allow_redirects=False,
                                          stream=True, timeout=self.settings.webhooks_timeout_seconds)
        except requests.Timeout:
            return None, f"no answer within {self.settings.webhooks_timeout_seconds:g} s"
        except requests.RequestException as exc:
            return None, f"could not connect: {type(exc).__name__}"
        response.close()  # the receiver's body is not read
        return response.status_code, None

    def close(self) -> None:
        self._session.close()


class DeliveryRunner(IndexThread):
    """The thread of a server process that delivers webhooks (started with the operations runner)."""

    name = "webhooks"

    def _run(self) -> None:
        deliverer = Deliverer(self.index, self.settings)
        try:
            while not self._stop.is_set():
                if self.index.outbox.idle():  # no subscription: no connection, no query
                    self._stop.wait(self.settings.webhooks_poll_seconds)
                    continue
                try:
                    self.index.connect()
                    while deliverer.step() and not self._stop.is_set():
                        pass  # deliveries were due: look again at once
                except pw.OperationalError as exc:
                    log.warning("webhooks: the index is unavailable (%s); trying again", exc)
                except Exception:
                    log.exception("webhooks: a delivery poll failed; trying again")
                finally:
                    self._close()
                self._stop.wait(self.settings.webhooks_poll_seconds)
        finally:
            deliverer.close()
