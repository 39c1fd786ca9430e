"""The webhook sender: POSTs the outbox's events to ``WEBHOOK_URL`` as the
Standard Webhooks specification describes, at least once, from whichever node
leases each event.

- Signing: ``webhook-id`` (the event's id, the same on every attempt),
  ``webhook-timestamp`` (this attempt's, in seconds) and ``webhook-signature``
  (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``), by the
  ``standardwebhooks`` package; the secret is the Standard Webhooks form.
- Outcomes: a 2xx answer delivers the event. No answer (refused, reset, timed
  out), 429 and 5xx are retried: the first retry after about ``FIRST_RETRY_S``,
  then twice as long each time (with jitter, at most ``MAX_BACKOFF_S``), never
  sooner than the answer's ``Retry-After`` (seconds or an HTTP date), until
  the event is ``WEBHOOK_MAX_AGE_S`` old; then, and at once for any other
  answer (3xx and other 4xx), it is kept as failed.
- Concurrency: at most ``CONCURRENCY`` requests at once, each with a time
  limit; a claim's lease outlasts the request, so no other node sends the
  same event meanwhile, and a node that dies mid-request loses the lease and
  someone sends it again.
- Waking: the notifier wakes the sender of its own node when it writes; the
  sender otherwise sleeps until the next event or lease is due, at most
  ``IDLE_POLL_S`` (events written by nodes that died before sending them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import aiohttp
from standardwebhooks import Webhook

from storage.base import StorageUnavailable
from storage.outbox import Claimed, Outbox

log = logging.getLogger(__name__)

FIRST_RETRY_S = 2.0
MAX_BACKOFF_S = 1800.0
CONCURRENCY = 8
IDLE_POLL_S = 5.0
MIN_WAIT_S = 0.05
LEASE_MARGIN_S = 5.0
STORAGE_RETRY_S = 1.0
STOP_GRACE_S = 3.0
LOG_INTERVAL_S = 60.0
USER_AGENT = "studychat-webhooks/1"
_SECONDS = re.compile(r"[0-9]{1,10}")


class WebhookObserver(Protocol):
    def webhook(self, outcome: str) -> None:
        """Count one ``delivered``, ``retried`` or ``failed`` event."""


def backoff_s(attempts: int) -> float:
    """The wait after ``attempts`` failed attempts: exponential, ±25 % jitter."""
    base = min(MAX_BACKOFF_S, FIRST_RETRY_S * 2.0 ** min(attempts - 1, 30))
    return base * random.uniform(0.75, 1.25)


def retry_after_s(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header in seconds from ``now``; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: no HTTP answer at all
    retry_after: str | None
    error: str


class WebhookSender:
    """Delivers the outbox's events; ``start`` and ``stop`` bracket its life."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        url: str,
        secret: str,
        max_age_s: float,
        timeout_s: float,
        observer: WebhookObserver,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.outbox = outbox
        self.url = url
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.lease_s = timeout_s + LEASE_MARGIN_S
        self.observer = observer
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._signer = Webhook(secret)
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], Claimed] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._failures = 0  # attempts without success since the last log line
        self._logged_at = 0.0

    def wake(self) -> None:
        """New events were written: look now."""
        self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            headers={"User-Agent": USER_AGENT},
        )
        self._loop_task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop claiming; give requests in flight ``STOP_GRACE_S``, then hand
        their events back, due now, for another node (or the next start)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=STOP_GRACE_S)
        left = dict(self._in_flight)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        for event in left.values():
            try:
                await self.outbox.retry_at(event, time.time(), "the sending node stopped")
            except StorageUnavailable:
                pass  # its lease runs out instead
        if self._session is not None:
            await self._session.close()

    # -- the claim loop --

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            # Cleared before the claim: a write after it wakes the next wait.
            self._wake.clear()
            try:
                event = await self.outbox.claim(self.owner, self.lease_s)
            except StorageUnavailable as exc:
                self._slots.release()
                self._log_failure(f"outbox unavailable: {exc}")
                await asyncio.sleep(STORAGE_RETRY_S)
                continue
            except Exception:
                self._slots.release()
                log.exception("webhooks: claiming an event failed")
                await asyncio.sleep(STORAGE_RETRY_S)
                continue
            if event is None:
                self._slots.release()
                await self._idle()
                continue
            task = asyncio.ensure_future(self._deliver(event))
            self._in_flight[task] = event
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhooks: delivery failed unexpectedly", exc_info=task.exception())

    async def _idle(self) -> None:
        """Sleep until woken, until the next event or lease is due, or ``IDLE_POLL_S``."""
        wait = IDLE_POLL_S
        try:
            due = await self.outbox.next_due()
        except StorageUnavailable:
            due = None
        if due is not None:
            wait = min(IDLE_POLL_S, max(MIN_WAIT_S, due - time.time()))
        try:
            async with asyncio.timeout(wait):  # not wait_for: on 3.11 it makes a task per wait
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- one event --

    async def _deliver(self, event: Claimed) -> None:
        deadline = event.created_at + self.max_age_s
        if time.time() >= deadline:
            await self._settle(event, "failed", f"not delivered within {self.max_age_s:g} s")
            return
        answer = await self._post(event)
        now = time.time()
        status = answer.status
        if status is not None and 200 <= status < 300:
            self._failures = 0
            await self._settle(event, "delivered")
            return
        self._log_failure(f"{answer.error} for {event.id} (attempt {event.attempts})")
        if status is not None and status != 429 and status < 500:
            await self._settle(event, "failed", answer.error)
            return
        wait = backoff_s(event.attempts)
        hinted = retry_after_s(answer.retry_after, now)
        if hinted is not None:
            if now + hinted > deadline:
                await self._settle(event, "failed", f"{answer.error}; Retry-After is past the deadline")
                return
            wait = max(wait, hinted)
        if now >= deadline:
            await self._settle(event, "failed", f"{answer.error}; not delivered within {self.max_age_s:g} s")
            return
        # The last attempt is made at the deadline rather than not at all.
        await self._settle(event, "retried", answer.error, due=min(now + wait, deadline))

    async def _post(self, event: Claimed) -> Answer:
        assert self._session is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self._signer.sign(event.id, datetime.fromtimestamp(timestamp, UTC), event.body),
        }
        try:
            async with self._session.post(
                self.url, data=event.body.encode(), headers=headers, allow_redirects=False
            ) as response:
                # The answer's body is not needed: leaving it unread closes the connection.
                return Answer(response.status, response.headers.get("Retry-After"), f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Answer(None, None, f"{type(exc).__name__}: {exc}"[:300])

    async def _settle(self, event: Claimed, outcome: str, error: str = "", *, due: float = 0.0) -> None:
        """Record the outcome; a lost lease (another node took over) records nothing."""
        try:
            if outcome == "delivered":
                kept = await self.outbox.delivered(event)
            elif outcome == "retried":
                kept = await self.outbox.retry_at(event, due, error)
                self.wake()  # the loop's wait may be longer than this retry's
            else:
                kept = await self.outbox.failed(event, error)
                log.warning("webhooks: %s kept as failed after %d attempts: %s", event.id, event.attempts, error)
        except StorageUnavailable as exc:
            # The lease runs out and the event is sent again: at least once.
            log.error("webhooks: could not record %s for %s: %s", outcome, event.id, exc)
            return
        if kept:
            self.observer.webhook(outcome)

    def _log_failure(self, text: str) -> None:
        """At most one line per ``LOG_INTERVAL_S``, with the count since the last one."""
        self._failures += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            log.warning("webhooks: %s (%d failed attempts since the last report)", text, self._failures)
            self._logged_at, self._failures = now, 0
