"""Budget alerts: finding the commit whose spend crosses one of a budget's thresholds.

A budget's `alerts` are fractions of its limit. Each becomes an exact amount of
nano-USD once, at load (the fraction as written, times the limit, rounded up),
so a commit compares integers only: `amount <= spent` exactly when
`spent / limit >= fraction`. A threshold is crossed by the commit that takes
the budget's spend in its current window from below the amount to at or above
it. Spend only grows within a window, so each threshold is crossed at most
once per window, and again once the window rolls over. Two things move the
marks on purpose: an operator's spend reset (the money counts afresh) and a
new limit (the amounts follow the limit in force).

Every backend reports the spend it computed in the same atomic step as the
commit, so with Redis each crossing is found by exactly one commit among all
replicas, with no extra key. The watch only finds crossings; its sink
(telemetry/budget_alerts.py) logs, counts and sends them. A sink never blocks
and a failing one is logged, never raised into the commit that called it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from faregate_server.clock import Clock
from faregate_server.config.schema import BudgetConfig, Window
from faregate_server.state.windows import window_start_s

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget's spend crossed one of its thresholds in its current window."""

    budget_key: str
    threshold: float
    """The fraction of the limit, as configured (0.8 for 80%)."""
    spent_nano_usd: int
    """The budget's spend in its window after the commit that crossed it."""
    limit_nano_usd: int
    """The limit in force (an operator's override included)."""
    window: Window
    window_start_s: float
    """Unix time at which the budget's current window began (0 for none)."""
    time_s: float
    """When the crossing commit was counted (wall clock)."""


class AlertSink(Protocol):
    def budget_alert(self, alert: BudgetAlert) -> None:
        """Takes one alert; called on the commit's path, so it never waits."""
        ...


def threshold_amounts(limit_nano_usd: int, thresholds: Iterable[float]) -> tuple[int, ...]:
    """Each threshold of a limit in nano-USD: the fraction as written (its
    shortest decimal, 0.8 rather than the float's binary value), rounded up."""
    amounts = []
    for threshold in thresholds:
        exact = Fraction(repr(threshold))
        amounts.append(-(-limit_nano_usd * exact.numerator // exact.denominator))
    return tuple(amounts)


@dataclass(frozen=True, slots=True)
class _Watched:
    config: BudgetConfig
    amounts: tuple[int, ...]
    """The thresholds of the configured limit, computed once."""


class AlertWatch:
    """The budgets that have alerts, and the crossings of their thresholds."""

    __slots__ = ("_clock", "_sink", "_watched")

    def __init__(self, budgets: Iterable[BudgetConfig], sink: AlertSink, clock: Clock) -> None:
        """`clock` dates the alerts and places their windows."""
        self._sink = sink
        self._clock = clock
        self._watched: dict[str, _Watched] = {}
        self.reconfigure(budgets)

    def reconfigure(self, budgets: Iterable[BudgetConfig]) -> None:
        """Adopts reloaded budgets: their thresholds, limits and windows."""
        self._watched = {
            budget.key: _Watched(budget, threshold_amounts(budget.limit_nano_usd, budget.alerts))
            for budget in budgets
            if budget.alerts
        }

    def spent(
        self, budget_key: str, spent_nano_usd: int, cost_nano_usd: int, limit_nano_usd: int
    ) -> None:
        """One commit of `cost_nano_usd` left the budget at `spent_nano_usd` in
        its window under `limit_nano_usd`; hands its sink every threshold that
        commit crossed, lowest first."""
        watched = self._watched.get(budget_key)
        if watched is None:
            return  # the common case: one dict lookup per budget and commit
        config = watched.config
        amounts = watched.amounts
        if limit_nano_usd != config.limit_nano_usd:  # an operator's limit: rare
            amounts = threshold_amounts(limit_nano_usd, config.alerts)
        if spent_nano_usd < amounts[0]:
            return
        before_nano_usd = spent_nano_usd - cost_nano_usd
        for threshold, amount in zip(config.alerts, amounts, strict=True):
            if before_nano_usd < amount <= spent_nano_usd:
                now_s = self._clock.now_s()
                alert = BudgetAlert(
                    budget_key=budget_key,
                    threshold=threshold,
                    spent_nano_usd=spent_nano_usd,
                    limit_nano_usd=limit_nano_usd,
                    window=config.window,
                    window_start_s=window_start_s(config.window, now_s),
                    time_s=now_s,
                )
                try:
                    self._sink.budget_alert(alert)
                except Exception:
                    # The commit that called this must complete whatever the sink does.
                    logger.exception("budget alert not handled: %r", alert)
