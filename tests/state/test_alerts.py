"""Alert thresholds as exact amounts, and the crossings a watch finds."""

from __future__ import annotations

import pytest
from faregate_server.config.schema import BudgetConfig, Window
from faregate_server.state.alerts import AlertWatch, BudgetAlert, threshold_amounts
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.clock import FakeClock

INT64_MAX = 2**63 - 1


class _Alerts:
    def __init__(self) -> None:
        self.raised: list[BudgetAlert] = []

    def budget_alert(self, alert: BudgetAlert) -> None:
        self.raised.append(alert)


class _Broken:
    def budget_alert(self, alert: BudgetAlert) -> None:
        raise RuntimeError("sink down")


@pytest.mark.parametrize(
    ("limit", "thresholds", "amounts"),
    [
        (1_000, (0.5, 0.8, 1.0), (500, 800, 1_000)),
        (10, (0.3,), (3,)),  # 0.3 as written, not the float just below it
        (7, (0.5,), (4,)),  # rounded up: 3 of 7 is not half spent
        (1, (0.1, 1.0), (1, 1)),
        (0, (0.5,), (0,)),
        (INT64_MAX, (0.1,), (-(-INT64_MAX // 10),)),
    ],
)
def test_thresholds_are_exact_amounts_rounded_up(
    limit: int, thresholds: tuple[float, ...], amounts: tuple[int, ...]
) -> None:
    assert threshold_amounts(limit, thresholds) == amounts


@given(st.integers(0, INT64_MAX), st.integers(1, 1000))
def test_an_amount_is_the_least_spend_at_or_over_its_fraction(limit: int, per_mille: int) -> None:
    (amount,) = threshold_amounts(limit, (per_mille / 1000,))

    assert amount * 1000 >= limit * per_mille
    assert amount == 0 or (amount - 1) * 1000 < limit * per_mille


def test_a_crossing_is_found_once_and_a_budget_without_alerts_never() -> None:
    alerts = _Alerts()
    budgets = [
        BudgetConfig("watched", 1_000, Window.DAILY, (0.5, 0.9)),
        BudgetConfig("quiet", 1_000, Window.DAILY),
    ]
    watch = AlertWatch(budgets, alerts, FakeClock())

    watch.spent("quiet", 1_000, 1_000, 1_000)
    watch.spent("watched", 499, 499, 1_000)
    watch.spent("watched", 500, 1, 1_000)
    watch.spent("watched", 600, 100, 1_000)
    watch.spent("unknown", 600, 100, 1_000)

    assert [(a.budget_key, a.threshold, a.spent_nano_usd) for a in alerts.raised] == [
        ("watched", 0.5, 500)
    ]


def test_a_reload_replaces_the_thresholds() -> None:
    alerts = _Alerts()
    watch = AlertWatch([BudgetConfig("b", 1_000, Window.NONE, (0.5,))], alerts, FakeClock())

    watch.reconfigure([BudgetConfig("b", 2_000, Window.NONE, (0.25,))])
    watch.spent("b", 500, 500, 2_000)

    assert [(a.threshold, a.limit_nano_usd) for a in alerts.raised] == [(0.25, 2_000)]


def test_a_failing_sink_never_fails_the_commit(caplog: pytest.LogCaptureFixture) -> None:
    watch = AlertWatch([BudgetConfig("b", 10, Window.NONE, (0.5,))], _Broken(), FakeClock())

    watch.spent("b", 10, 10, 10)

    assert "budget alert not handled" in caplog.text
