"""Budgets: reserve the worst case before a call, commit the actual cost after.

Invariant: for every budget, `spent + reserved <= limit` holds after every
`reserve`, so two requests can never both spend the same remaining money.
`commit` records the true cost (which a correct worst-case estimate keeps at or
below the reservation) and frees the rest; `release` frees a reservation whole.
Spend returns to zero at each window boundary (calendar hour, day or month in
UTC); reservations in flight across a boundary stay reserved.

`BudgetStore` is the seam for the durable and shared backends; `MemoryBudgetStore`
keeps state in this process. Its operations never suspend, which is what makes
each one atomic under asyncio.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from faregate_server.clock import Clock
from faregate_server.config import BudgetConfig
from faregate_server.errors import BudgetExhausted, BudgetNotFound
from faregate_server.windows import WindowedTally


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one request until it commits or releases."""

    budget_key: str
    amount_nano_usd: int
    reservation_id: int


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


class BudgetStore(Protocol):
    """Atomic budget accounting; each call is all-or-nothing."""

    async def reserve(self, budget_key: str, amount_nano_usd: int) -> Reservation:
        """Holds amount_nano_usd.

        Raises:
            BudgetNotFound: no budget has this key.
            BudgetExhausted: the amount does not fit what remains.
        """
        ...

    async def commit(self, reservation: Reservation, cost_nano_usd: int) -> int:
        """Spends cost_nano_usd, frees the reservation; returns the money remaining."""
        ...

    async def release(self, reservation: Reservation) -> int:
        """Frees the reservation without spending; returns the money remaining."""
        ...

    def check(self, budget_key: str) -> None:
        """Raises BudgetNotFound unless the key exists."""
        ...

    def snapshot(self, budget_key: str) -> BudgetSnapshot:
        """The budget's current state; raises BudgetNotFound."""
        ...


class _Account(WindowedTally):
    __slots__ = ("config",)

    def __init__(self, config: BudgetConfig, now_s: float) -> None:
        super().__init__(config.window, now_s)
        self.config = config

    @property
    def remaining(self) -> int:
        return self.config.limit_nano_usd - self.used - self.reserved


class MemoryBudgetStore:
    """Budgets in this process's memory."""

    def __init__(
        self,
        budgets: Iterable[BudgetConfig],
        clock: Clock,
        spent: Mapping[str, int] | None = None,
    ) -> None:
        """Budgets start with `spent` (from the ledger) in their current window."""
        self._clock = clock
        now_s = clock.now_s()
        self._accounts = {budget.key: _Account(budget, now_s) for budget in budgets}
        for key, amount in (spent or {}).items():
            if key in self._accounts:
                self._accounts[key].used = amount
        # Reservation id -> the account it holds money on, until it settles.
        self._holders: dict[int, _Account] = {}
        self._ids = itertools.count(1)

    async def reserve(self, budget_key: str, amount_nano_usd: int) -> Reservation:
        account = self._account(budget_key)
        account.roll(self._clock.now_s())
        if amount_nano_usd > account.remaining:
            raise BudgetExhausted(budget_key, account.remaining, amount_nano_usd)
        account.reserved += amount_nano_usd
        reservation = Reservation(budget_key, amount_nano_usd, next(self._ids))
        self._holders[reservation.reservation_id] = account
        return reservation

    async def commit(self, reservation: Reservation, cost_nano_usd: int) -> int:
        account = self._held(reservation)
        account.roll(self._clock.now_s())
        account.reserved -= reservation.amount_nano_usd
        account.used += cost_nano_usd
        return account.remaining

    async def release(self, reservation: Reservation) -> int:
        account = self._held(reservation)
        account.roll(self._clock.now_s())
        account.reserved -= reservation.amount_nano_usd
        return account.remaining

    def check(self, budget_key: str) -> None:
        self._account(budget_key)

    def snapshot(self, budget_key: str) -> BudgetSnapshot:
        account = self._account(budget_key)
        account.roll(self._clock.now_s())
        return BudgetSnapshot(
            key=budget_key,
            limit_nano_usd=account.config.limit_nano_usd,
            spent_nano_usd=account.used,
            reserved_nano_usd=account.reserved,
            resets_at_s=account.resets_at_s,
        )

    def budget_keys(self) -> list[str]:
        return list(self._accounts)

    def config(self, budget_key: str) -> BudgetConfig:
        return self._account(budget_key).config

    def set_limit(self, budget_key: str, limit_nano_usd: int) -> None:
        """Changes a budget's limit until the next reload (an operator's override)."""
        account = self._account(budget_key)
        account.config = dataclasses.replace(account.config, limit_nano_usd=limit_nano_usd)

    def reset_spend(self, budget_key: str) -> None:
        """Forgets the current window's spend (reservations in flight stay)."""
        self._account(budget_key).used = 0

    def reconfigure(self, budgets: Iterable[BudgetConfig]) -> None:
        """Adopts new budget configs; a budget that keeps its key keeps its spend."""
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

    def _held(self, reservation: Reservation) -> _Account:
        # The account the money was held on, even if a reload has since
        # removed its budget or replaced it with a new one of the same key.
        return self._holders.pop(reservation.reservation_id)

    def _account(self, budget_key: str) -> _Account:
        account = self._accounts.get(budget_key)
        if account is None:
            raise BudgetNotFound(budget_key)
        return account
