"""The budget alerter: its log line and counts, and webhook POSTs to a real
receiver on 127.0.0.1, with retries, a give-up, a refusal and a full queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from faregate_server.config.schema import TelemetryConfig, Window
from faregate_server.state.alerts import BudgetAlert
from faregate_server.telemetry.budget_alerts import AlertStatistics, BudgetAlerter

from tests.fakes.webhook import FakeWebhook
from tests.support.eventually import eventually

MONDAY_S = 1_795_392_000.0  # 2026-11-23 00:00 UTC


def _alert(threshold: float = 0.8, spent: int = 800) -> BudgetAlert:
    return BudgetAlert("team-a", threshold, spent, 1_000, Window.WEEKLY, MONDAY_S, MONDAY_S + 90)


@pytest.fixture
async def webhook() -> AsyncIterator[FakeWebhook]:
    receiver = FakeWebhook()
    await receiver.start()
    yield receiver
    await receiver.aclose()


@asynccontextmanager
async def _running(alerter: BudgetAlerter) -> AsyncIterator[None]:
    """The alerter's sender running, as the server runs it."""
    task = asyncio.create_task(alerter.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})


def _alerter(url: str, attempts: int = 3, queue_size: int = 16) -> BudgetAlerter:
    config = TelemetryConfig(
        alert_webhook_url=url, alert_webhook_attempts=attempts, alert_webhook_timeout_s=5
    )
    return BudgetAlerter(config, queue_size=queue_size, backoff_s=0.001)


async def test_an_alert_is_logged_counted_and_posted_as_json(
    webhook: FakeWebhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "faregate.alerts")
    alerter = _alerter(webhook.url)
    async with _running(alerter):
        alerter.budget_alert(_alert())

        await eventually(lambda: alerter.statistics().delivered == 1)

    assert webhook.bodies == [
        {
            "budget": "team-a",
            "threshold": 0.8,
            "spent_nano_usd": 800,
            "limit_nano_usd": 1_000,
            "window": "weekly",
            "window_start": "2026-11-23T00:00:00Z",
            "time": "2026-11-23T00:01:30Z",
        }
    ]
    (line,) = [r for r in caplog.records if r.name == "faregate.alerts"]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        "budget alert: budget=team-a threshold=0.8 spent_nano_usd=800 limit_nano_usd=1000"
        " window=weekly window_start=2026-11-23T00:00:00Z"
    )
    assert line.budget_alert == webhook.bodies[0]  # type: ignore[attr-defined]
    assert alerter.statistics() == AlertStatistics(
        raised=(("team-a", "0.8", 1),), delivered=1, retries=0, failed=0, dropped=0, queued=0
    )


async def test_a_500_is_retried_until_delivered(webhook: FakeWebhook) -> None:
    webhook.statuses.extend([500, 503])
    alerter = _alerter(webhook.url, attempts=3)
    async with _running(alerter):
        alerter.budget_alert(_alert())

        await eventually(lambda: alerter.statistics().delivered == 1)

    assert len(webhook.bodies) == 3
    assert webhook.bodies[0] == webhook.bodies[2]
    assert (alerter.statistics().retries, alerter.statistics().failed) == (2, 0)


async def test_an_alert_is_given_up_after_its_attempts_and_counted(
    webhook: FakeWebhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.statuses.extend([500] * 10)
    alerter = _alerter(webhook.url, attempts=3)
    async with _running(alerter):
        alerter.budget_alert(_alert())

        await eventually(lambda: alerter.statistics().failed == 1)

    assert len(webhook.bodies) == 3
    assert (alerter.statistics().delivered, alerter.statistics().retries) == (0, 2)
    assert "gave up on the alert for team-a at 0.8 after 3 attempts (HTTP 500)" in caplog.text
    assert webhook.url not in caplog.text


async def test_a_receiver_that_refuses_the_alert_is_not_asked_again(webhook: FakeWebhook) -> None:
    webhook.statuses.append(404)
    alerter = _alerter(webhook.url, attempts=5)
    async with _running(alerter):
        alerter.budget_alert(_alert())

        await eventually(lambda: alerter.statistics().failed == 1)

    assert len(webhook.bodies) == 1


async def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    receiver = FakeWebhook()
    await receiver.start()
    url = receiver.url
    await receiver.aclose()  # nothing listens there now
    alerter = _alerter(url, attempts=2)
    async with _running(alerter):
        alerter.budget_alert(_alert())

        await eventually(lambda: alerter.statistics().failed == 1)

    assert alerter.statistics().retries == 1


async def test_a_full_queue_drops_alerts_and_counts_them_without_waiting(
    webhook: FakeWebhook,
) -> None:
    webhook.gate = asyncio.Event()  # the receiver hangs
    alerter = _alerter(webhook.url, queue_size=1)
    async with _running(alerter):
        alerter.budget_alert(_alert(0.5, 500))
        await webhook.entered.wait()  # the first is in its POST, held at the gate
        alerter.budget_alert(_alert(0.8, 800))  # queued
        alerter.budget_alert(_alert(1.0, 1_000))  # no room: dropped

        statistics = alerter.statistics()
        assert (statistics.queued, statistics.dropped) == (1, 1)
        assert [threshold for _, threshold, _ in statistics.raised] == ["0.5", "0.8", "1.0"]
        webhook.gate.set()
        await eventually(lambda: alerter.statistics().delivered == 2)

    assert [body["threshold"] for body in webhook.bodies] == [0.5, 0.8]


async def test_without_a_webhook_alerts_are_logged_and_counted_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alerter = BudgetAlerter(TelemetryConfig())

    await alerter.run()  # nothing to send: returns at once
    alerter.budget_alert(_alert())

    assert "budget alert: budget=team-a threshold=0.8" in caplog.text
    assert alerter.statistics().raised == (("team-a", "0.8", 1),)
    assert alerter.statistics().queued == 0
