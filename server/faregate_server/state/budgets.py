"""Budgets in this process's memory: the embedded backends' accounting.

Invariant: for every budget, `spent + reserved <= limit` holds after every
`reserve`, so two requests can never both spend the same remaining money. A
request may draw on several budgets at once (an agent's and its team's); it
holds its worst case on each, all or nothing. `commit` records the true cost
on each, in full even past the reservation (an overrun: the remaining money
may then go below zero, refusing every reservation), and frees the rest;
`release` frees the reservation whole. Spend returns to zero at each window
boundary (calendar hour, day, ISO week or month in UTC); reservations in
flight across a boundary stay reserved. With an alert watch, each commit
reports every budget's new spend to it (state/alerts.py).

Every operation completes without suspending, which is what makes each one
atomic under asyncio.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from faregate_server.clock import Clock
from faregate_server.config.schema import BudgetConfig
from faregate_server.errors import BudgetExhausted, BudgetNotFound
from faregate_server.state.alerts import AlertWatch
from faregate_server.state.windows import WindowedTally


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    key: str
    limit_nano_usd: int
    spent_nano_usd: int
    reserved_nano_usd: int
    resets_at_s: float
    """Unix time of the next reset; infinity for a budget without a window."""

    @property
    def remaining_nano_usd(self) -> int:
        return self.limit_nano_usd - self.spent_nano_usd - self.reserved_nano_usd


def effective_limit(config: BudgetConfig, override: tuple[int, int] | None) -> int:
    """The limit in force: an operator's override holds while the configured
    limit it overrode (its base) stays the configured one."""
    if override is not None and override[0] == config.limit_nano_usd:
        return override[1]
    return config.limit_nano_usd


class _Account(WindowedTally):
    __slots__ = ("config", "override")

    def __init__(self, config: BudgetConfig, now_s: float) -> None:
        super().__init__(config.window, now_s)
        self.config = config
        self.override: tuple[int, int] | None = None

    @property
    def limit(self) -> int:
        return effective_limit(self.config, self.override)

    @property
    def remaining(self) -> int:
        return self.limit - self.used - self.reserved


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held on one or more budgets for one request. It keeps the
    accounts themselves, so a reload that removes or replaces a budget
    meanwhile cannot misdirect its settlement."""

    amount_nano_usd: int
    accounts: tuple[_Account, ...]
    reservation_id: int


class MemoryBudgetStore:
    """Every configured budget, in this process's memory."""

    def __init__(
        self,
        budgets: Iterable[BudgetConfig],
        clock: Clock,
        spent: Mapping[str, int] | None = None,
        watch: AlertWatch | None = None,
    ) -> None:
        """Budgets start with `spent` (from the ledger) in their current window;
        `watch` is told each commit's spend, to find alerts."""
        self._clock = clock
        self._watch = watch
        now_s = clock.now_s()
        self._accounts = {budget.key: _Account(budget, now_s) for budget in budgets}
        for key, amount in (spent or {}).items():
            if key in self._accounts:
                self._accounts[key].used = amount
        self._ids = itertools.count(1)

    def reserve(self, budget_keys: tuple[str, ...], amount_nano_usd: int) -> Reservation:
        """Holds amount_nano_usd on every budget, or on none.

        Raises:
            BudgetNotFound: a key names no budget.
            BudgetExhausted: the amount does not fit what one of them has left.
        """
        accounts = tuple(self._account(key) for key in budget_keys)
        now_s = self._clock.now_s()
        for account in accounts:
            account.roll(now_s)
            if amount_nano_usd > account.remaining:
                raise BudgetExhausted(account.config.key, account.remaining, amount_nano_usd)
        for account in accounts:
            account.reserved += amount_nano_usd
        return Reservation(amount_nano_usd, accounts, next(self._ids))

    def commit(self, reservation: Reservation, cost_nano_usd: int) -> int:
        """Spends cost_nano_usd on each budget and frees the reservation.

        Returns the least money any of the request's budgets has left.
        """
        now_s = self._clock.now_s()
        for account in reservation.accounts:
            account.roll(now_s)
            account.reserved -= reservation.amount_nano_usd
            account.used += cost_nano_usd
            if self._watch is not None:
                self._watch.spent(account.config.key, account.used, cost_nano_usd, account.limit)
        return min(account.remaining for account in reservation.accounts)

    def release(self, reservation: Reservation) -> None:
        for account in reservation.accounts:
            account.reserved -= reservation.amount_nano_usd

    def snapshot(self, budget_key: str) -> BudgetSnapshot:
        """The budget's current state; raises BudgetNotFound."""
        account = self._account(budget_key)
        account.roll(self._clock.now_s())
        return BudgetSnapshot(
            key=budget_key,
            limit_nano_usd=account.limit,
            spent_nano_usd=account.used,
            reserved_nano_usd=account.reserved,
            resets_at_s=account.resets_at_s,
        )

    def set_limit(self, budget_key: str, limit_nano_usd: int) -> None:
        """Overrides a budget's limit until its configured limit changes."""
        account = self._account(budget_key)
        account.override = (account.config.limit_nano_usd, limit_nano_usd)

    def reset_spend(self, budget_key: str) -> None:
        """Forgets the current window's spend (reservations in flight stay)."""
        self._account(budget_key).used = 0

    def reconfigure(self, budgets: Iterable[BudgetConfig]) -> None:
        """Adopts new budget configs; a budget that keeps its key keeps its spend."""
        budgets = list(budgets)
        now_s = self._clock.now_s()
        accounts = {}
        for budget in budgets:
            account = self._accounts.get(budget.key)
            if account is None:
                account = _Account(budget, now_s)
            account.config = budget
            account.rewindow(budget.window, now_s)
            accounts[budget.key] = account
        self._accounts = accounts
        if self._watch is not None:
            self._watch.reconfigure(budgets)

    def _account(self, budget_key: str) -> _Account:
        account = self._accounts.get(budget_key)
        if account is None:
            raise BudgetNotFound(budget_key)
        return account
