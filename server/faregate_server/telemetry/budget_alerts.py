"""Budget alerts, delivered: a log line, a counter and, when configured, a webhook POST.

`BudgetAlerter` is the state store's alert sink (state/alerts.py finds the
crossings). On the commit's path it does three things that never wait: it
writes one WARNING line on the `faregate.alerts` logger, counts the alert (by
budget and threshold) and, with a webhook, puts the alert in a bounded queue;
when the queue is full the alert's POST is dropped and counted, so memory
stays bounded and no request ever waits for a webhook.

One background task (`run`, owned by the server's lifetime) POSTs queued
alerts one at a time through its own small aiohttp session, never the
upstreams' pool. Each POST has `alert_webhook_timeout_s`, connecting
included; a 2xx answer delivers it; a 429, a 5xx, a timeout or a connection
failure is tried again after a backoff that doubles from `backoff_s` (at most
`_MAX_BACKOFF_S`), up to `alert_webhook_attempts` POSTs in all; any other
answer (a 3xx or 4xx: the URL or the receiver is wrong) gives up at once.
Given up, the alert is counted failed and logged, its URL never (it may
carry a token). Stopping cancels the task; alerts still queued are logged
as not sent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

import aiohttp

from faregate_server.config.schema import TelemetryConfig
from faregate_server.state.alerts import BudgetAlert

logger = logging.getLogger("faregate.alerts")

QUEUE_SIZE = 1024
"""Alerts waiting for their POST, at most; a budget has a few thresholds per
window, so only a receiver that is down for long fills it."""
_MAX_BACKOFF_S = 30.0
_RETRIED_STATUSES = frozenset({408, 429})


class AlertBody(TypedDict):
    """The JSON an alert's webhook POST carries."""

    budget: str
    threshold: float
    spent_nano_usd: int
    limit_nano_usd: int
    window: str
    window_start: str
    """RFC 3339 UTC; 1970-01-01T00:00:00Z for a budget without a window."""
    time: str


@dataclass(frozen=True, slots=True)
class AlertStatistics:
    """What the alerter did since it started."""

    raised: tuple[tuple[str, str, int], ...]
    """(budget key, threshold as configured, alerts raised) per crossed threshold."""
    delivered: int
    """Webhook POSTs answered 2xx."""
    retries: int
    """POSTs made again after a failed one."""
    failed: int
    """Alerts given up after their attempts (or refused by the receiver)."""
    dropped: int
    """Alerts not queued for their POST: the queue was full."""
    queued: int
    """Alerts waiting for their POST now."""


def alert_body(alert: BudgetAlert) -> AlertBody:
    return AlertBody(
        budget=alert.budget_key,
        threshold=alert.threshold,
        spent_nano_usd=alert.spent_nano_usd,
        limit_nano_usd=alert.limit_nano_usd,
        window=alert.window.value,
        window_start=_rfc3339(alert.window_start_s),
        time=_rfc3339(alert.time_s),
    )


class BudgetAlerter:
    """Logs and counts budget alerts, and POSTs them to a webhook in the background."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        queue_size: int = QUEUE_SIZE,
        backoff_s: float = 0.5,
    ) -> None:
        """`queue_size` and `backoff_s` (before the first retry) are for tests;
        the rest comes from the telemetry section."""
        self._url = config.alert_webhook_url
        self._timeout_s = config.alert_webhook_timeout_s
        self._attempts = config.alert_webhook_attempts
        self._backoff_s = backoff_s
        self._queue: asyncio.Queue[BudgetAlert] | None = (
            asyncio.Queue(queue_size) if self._url else None
        )
        self._raised: dict[tuple[str, str], int] = {}
        self._delivered = 0
        self._retries = 0
        self._failed = 0
        self._dropped = 0

    def budget_alert(self, alert: BudgetAlert) -> None:
        """Logs and counts the alert and queues its POST; never waits."""
        body = alert_body(alert)
        logger.warning(
            "budget alert: budget=%s threshold=%s spent_nano_usd=%d limit_nano_usd=%d"
            " window=%s window_start=%s",
            alert.budget_key,
            alert.threshold,
            alert.spent_nano_usd,
            alert.limit_nano_usd,
            body["window"],
            body["window_start"],
            extra={"budget_alert": body},
        )
        key = (alert.budget_key, repr(alert.threshold))
        self._raised[key] = self._raised.get(key, 0) + 1
        if self._queue is None:
            return
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._dropped += 1
            logger.warning(
                "budget alert webhook queue full: alert for %s at %s not sent",
                alert.budget_key,
                alert.threshold,
            )

    def statistics(self) -> AlertStatistics:
        return AlertStatistics(
            raised=tuple((budget, threshold, n) for (budget, threshold), n in self._raised.items()),
            delivered=self._delivered,
            retries=self._retries,
            failed=self._failed,
            dropped=self._dropped,
            queued=self._queue.qsize() if self._queue is not None else 0,
        )

    async def run(self) -> None:
        """POSTs queued alerts until cancelled (returns at once without a webhook)."""
        if self._queue is None:
            return
        connector = aiohttp.TCPConnector(limit=1)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                while True:
                    alert = await self._queue.get()
                    try:
                        await self._deliver(session, alert)
                    except Exception:
                        # A bug here must not stop the alerts after this one.
                        self._failed += 1
                        logger.exception("budget alert webhook failed on %r", alert)
        finally:
            if self._queue.qsize():
                logger.warning("%d budget alerts not sent before stopping", self._queue.qsize())

    async def _deliver(self, session: aiohttp.ClientSession, alert: BudgetAlert) -> None:
        body = alert_body(alert)
        problem = ""
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                self._retries += 1
                await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 2), _MAX_BACKOFF_S))
            try:
                async with (
                    asyncio.timeout(self._timeout_s),
                    session.post(self._url, json=body, allow_redirects=False) as response,
                ):
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                problem = type(error).__name__
                continue
            if 200 <= status < 300:
                self._delivered += 1
                return
            problem = f"HTTP {status}"
            if status < 500 and status not in _RETRIED_STATUSES:
                break  # the receiver refuses it: the same POST again would be too
        self._failed += 1
        logger.warning(
            "budget alert webhook gave up on the alert for %s at %s after %d attempts (%s)",
            alert.budget_key,
            alert.threshold,
            attempt,
            problem,
        )


def _rfc3339(time_s: float) -> str:
    return datetime.fromtimestamp(time_s, UTC).isoformat().replace("+00:00", "Z")
