"""Budget alerts end to end: thresholds crossed by real Route calls, once per
window, again after it rolls; the webhook POSTs off the request's path; the
counters on /metrics."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from faregate_client import BudgetExhausted
from faregate_server.domain import ChatMessage, Role
from faregate_server.money import Price
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import StartFaregate, to_config
from tests.fakes.clock import FakeClock
from tests.fakes.upstream import FakeUpstream, Script
from tests.fakes.webhook import FakeWebhook
from tests.support.eventually import eventually

GPT_PRICE = Price(2_500_000_000, 10_000_000_000)
MAX_OUTPUT = 10
PROMPT = "Are we over budget yet?"
SUNDAY_LATE_S = 1_795_993_200.0  # Sunday 2026-11-29 23:00 UTC
WEEK_START = "2026-11-23T00:00:00Z"
NEXT_WEEK_START = "2026-11-30T00:00:00Z"
REQUEST = {"budget_key": "week", "model": "gpt-fake", "max_output_tokens": MAX_OUTPUT}


@pytest.fixture
async def webhook() -> AsyncIterator[FakeWebhook]:
    receiver = FakeWebhook()
    await receiver.start()
    yield receiver
    await receiver.aclose()


def _worst_case() -> int:
    input_tokens = TiktokenCounter().count_messages([ChatMessage(Role.USER, PROMPT)])
    return GPT_PRICE.cost_nano_usd(input_tokens, MAX_OUTPUT)


def _alert_budget(
    config_data: dict[str, Any], upstream: FakeUpstream, requests: int, alerts: list[float]
) -> int:
    """A weekly budget that `requests` calls, each charged its worst case, fill
    exactly; returns that cost."""
    worst_case = _worst_case()
    input_tokens = TiktokenCounter().count_messages([ChatMessage(Role.USER, PROMPT)])
    upstream.default = Script(usage=(input_tokens, MAX_OUTPUT))
    config_data["budgets"]["week"] = {
        "limit_usd": str(Decimal(requests * worst_case) / 10**9),
        "window": "weekly",
        "alerts": alerts,
    }
    return worst_case


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "faregate.alerts"]


async def _metrics(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def _series(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found[labels] = float(match.group(2))
    return found


async def test_thresholds_fire_once_each_in_order_and_again_after_the_week_rolls(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    webhook: FakeWebhook,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "faregate.alerts")
    cost = _alert_budget(config_data, upstream, 10, [0.5, 0.8, 1.0])
    config_data["telemetry"]["alert_webhook_url"] = webhook.url
    clock = FakeClock(SUNDAY_LATE_S)
    crossed_at = {}  # request number -> the alert lines it raised
    async with start_faregate(to_config(config_data), clock=clock) as faregate:
        for number in range(1, 11):
            before = len(_logged(caplog))
            await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]
            # Logged on the commit, before the answer: each call's own lines.
            if len(_logged(caplog)) > before:
                crossed_at[number] = _logged(caplog)[before:]
        with pytest.raises(BudgetExhausted):
            await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]

        assert sorted(crossed_at) == [5, 8, 10]
        assert crossed_at[5] == [
            f"budget alert: budget=week threshold=0.5 spent_nano_usd={5 * cost}"
            f" limit_nano_usd={10 * cost} window=weekly window_start={WEEK_START}"
        ]
        assert "threshold=0.8" in crossed_at[8][0]
        assert "threshold=1.0" in crossed_at[10][0]
        await eventually(lambda: len(webhook.bodies) == 3)
        assert [(b["threshold"], b["spent_nano_usd"]) for b in webhook.bodies] == [
            (0.5, 5 * cost),
            (0.8, 8 * cost),
            (1.0, 10 * cost),
        ]
        assert {b["window_start"] for b in webhook.bodies} == {WEEK_START}
        assert {b["limit_nano_usd"] for b in webhook.bodies} == {10 * cost}

        clock.advance(3600)  # Monday 00:00 UTC: a new ISO week
        for _ in range(5):
            await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]

        await eventually(lambda: len(webhook.bodies) == 4)
        assert (webhook.bodies[3]["threshold"], webhook.bodies[3]["window_start"]) == (
            0.5,
            NEXT_WEEK_START,
        )
        assert len(_logged(caplog)) == 4
        port = faregate.running.http_port
        assert port is not None
        text = await _metrics(port)

    alerts = _series(text, "faregate_budget_alerts_total")
    assert alerts == {
        frozenset({("budget", "week"), ("threshold", "0.5")}): 2.0,
        frozenset({("budget", "week"), ("threshold", "0.8")}): 1.0,
        frozenset({("budget", "week"), ("threshold", "1.0")}): 1.0,
    }
    webhooks = _series(text, "faregate_budget_alert_webhooks_total")
    assert webhooks == {
        frozenset({("outcome", "delivered")}): 4.0,
        frozenset({("outcome", "failed")}): 0.0,
        frozenset({("outcome", "dropped")}): 0.0,
    }


async def test_a_webhook_that_hangs_never_delays_route(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    webhook: FakeWebhook,
) -> None:
    _alert_budget(config_data, upstream, 4, [0.25, 0.5, 0.75])
    config_data["telemetry"].update(alert_webhook_url=webhook.url, alert_webhook_timeout_s=60)
    webhook.gate = asyncio.Event()  # never set while the calls run
    async with start_faregate(to_config(config_data)) as faregate:
        await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]
        await webhook.entered.wait()  # its alert's POST hangs at the receiver

        # Both cross a threshold while the POST before theirs hangs.
        second = await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]
        third = await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]

        assert second.cost_nano_usd == third.cost_nano_usd > 0
        assert len(webhook.bodies) == 1
        assert webhook.bodies[0]["threshold"] == 0.25
    # Stopping the server did not wait for the receiver either.


async def test_alerts_are_logged_and_counted_without_a_webhook(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "faregate.alerts")
    _alert_budget(config_data, upstream, 2, [0.5])
    async with start_faregate(to_config(config_data)) as faregate:
        await faregate.client.route(PROMPT, **REQUEST)  # type: ignore[arg-type]
        port = faregate.running.http_port
        assert port is not None
        text = await _metrics(port)

    assert len(_logged(caplog)) == 1
    assert _series(text, "faregate_budget_alerts_total") == {
        frozenset({("budget", "week"), ("threshold", "0.5")}): 1.0
    }
