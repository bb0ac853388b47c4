"""Limit pools: a provider account's shared limits, and how scarce they are.

A pool counts requests, tokens, money or a custom unit per calendar window;
every model lists the pools it draws on. Before a call the projected draw is
reserved on every pool at once, all or nothing; after it the actual draw is
committed (or the reservation rolled back on failure). Invariant, per pool:
`used + reserved <= capacity` after every reservation; commits of actual draws
can only lower what a reservation held, except when a provider reports more
than projected, which is recorded as used all the same.

Scarcity prices a pool's remaining room into routing: a draw's multiplier is
`1 / f^k` as the remaining fraction f falls, infinite when the draw does not
fit, and discounted when a reset is near and headroom large (use it or lose it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from faregate_server.clock import Clock
from faregate_server.config.schema import (
    Config,
    LimitDraw,
    LimitPoolConfig,
    LimitUnit,
    RoutingConfig,
)
from faregate_server.state.windows import WindowedTally, window_start_s

if TYPE_CHECKING:
    from faregate_server.state.ledger import SpendRecord

Draw = tuple[tuple[str, int], ...]
"""(pool name, units) pairs of one request."""


@dataclass(frozen=True, slots=True)
class LimitReservation:
    """Units held on pools; it keeps the pools themselves, so a reload that
    removes or replaces a pool meanwhile cannot misdirect its settlement."""

    holds: tuple[tuple[_Pool, LimitDraw, int], ...]


@dataclass(frozen=True, slots=True)
class LimitPoolSnapshot:
    name: str
    capacity: int
    used: int
    reserved: int
    resets_at_s: float

    @property
    def remaining(self) -> int:
        return self.capacity - self.used - self.reserved


class _Pool(WindowedTally):
    __slots__ = ("config",)

    def __init__(self, config: LimitPoolConfig, now_s: float) -> None:
        super().__init__(config.window, now_s)
        self.config = config

    @property
    def remaining(self) -> int:
        return self.config.capacity - self.used - self.reserved


def projected_draw(
    draws: tuple[LimitDraw, ...], units: Mapping[str, LimitUnit], tokens: int, cost_nano_usd: int
) -> Draw:
    """What one request of `tokens` input plus output tokens costing `cost_nano_usd` draws."""
    return tuple(
        (draw.pool, units_drawn(draw, units[draw.pool], tokens, cost_nano_usd)) for draw in draws
    )


def units_drawn(draw: LimitDraw, unit: LimitUnit, tokens: int, cost_nano_usd: int) -> int:
    if unit is LimitUnit.USD:
        return cost_nano_usd
    return draw.per_request + -(-draw.per_1k_tokens * tokens // 1000)


class LimitPools:
    """Every configured limit pool, in this process's memory."""

    def __init__(self, configs: Mapping[str, LimitPoolConfig], clock: Clock) -> None:
        self._clock = clock
        now_s = clock.now_s()
        self._pools = {name: _Pool(config, now_s) for name, config in configs.items()}
        self.units: Mapping[str, LimitUnit] = {name: c.unit for name, c in configs.items()}

    def scarcity(self, amounts: Draw, routing: RoutingConfig) -> float:
        """The cost multiplier of drawing `amounts`: 1 when plentiful, inf when it cannot fit."""
        multiplier = 1.0
        now_s = self._clock.now_s()
        for name, amount in amounts:
            pool = self._pools.get(name)
            if pool is None:
                continue  # a reload removed it: it limits nothing any more
            pool.roll(now_s)
            remaining = pool.remaining
            if amount > remaining or remaining <= 0:
                return math.inf
            fraction = remaining / pool.config.capacity
            factor = fraction**-pool.config.scarcity_k
            near_reset = pool.resets_at_s - now_s < routing.use_it_or_lose_it_horizon_s
            if near_reset and fraction > routing.use_it_or_lose_it_headroom:
                factor *= routing.use_it_or_lose_it_discount
            multiplier *= factor
        return multiplier

    def reserve(self, draws: tuple[LimitDraw, ...], amounts: Draw) -> LimitReservation | None:
        """Holds every amount (one per draw, in order), or nothing when any pool lacks room."""
        now_s = self._clock.now_s()
        holds = []
        for draw, (name, amount) in zip(draws, amounts, strict=True):
            pool = self._pools.get(name)
            if pool is None:
                continue  # a reload removed it since the request was planned
            pool.roll(now_s)
            if amount > pool.remaining:
                return None
            holds.append((pool, draw, amount))
        for pool, _, amount in holds:
            pool.reserved += amount
        return LimitReservation(tuple(holds))

    def commit(self, reservation: LimitReservation, tokens: int, cost_nano_usd: int) -> None:
        """Records the actual draw of a request of `tokens` costing `cost_nano_usd`."""
        now_s = self._clock.now_s()
        for pool, draw, amount in reservation.holds:
            pool.reserved -= amount
            pool.roll(now_s)
            pool.used += units_drawn(draw, pool.config.unit, tokens, cost_nano_usd)

    def release(self, reservation: LimitReservation) -> None:
        for pool, _, amount in reservation.holds:
            pool.reserved -= amount

    def retry_after_s(self, amounts: Draw) -> float:
        """Seconds until every pool too full for `amounts` has reset (inf if never)."""
        now_s = self._clock.now_s()
        wait_s = 0.0
        for name, amount in amounts:
            pool = self._pools.get(name)
            if pool is not None and amount > pool.remaining:
                wait_s = max(wait_s, pool.resets_at_s - now_s)
        return wait_s

    def earliest_window_start_s(self) -> float:
        """When the oldest current window began (inf with no pools)."""
        now_s = self._clock.now_s()
        return min(
            (window_start_s(pool.window, now_s) for pool in self._pools.values()),
            default=math.inf,
        )

    def seed(self, records: Iterable[SpendRecord], config: Config) -> None:
        """Counts the draws of recorded requests in each pool's current window
        (at start, from the durable ledger)."""
        now_s = self._clock.now_s()
        starts = {name: window_start_s(pool.window, now_s) for name, pool in self._pools.items()}
        for record in records:
            model = config.models.get(record.model)
            if model is None:
                continue
            tokens = record.input_tokens + record.output_tokens
            for draw in model.draws:
                pool = self._pools.get(draw.pool)
                if pool is not None and record.time_s >= starts[draw.pool]:
                    pool.used += units_drawn(draw, pool.config.unit, tokens, record.cost_nano_usd)

    def observe(self, name: str, used: int, reserved: int) -> None:
        """Adopts a shared store's reading of a pool (for pricing its scarcity)."""
        pool = self._pools.get(name)
        if pool is not None:
            pool.roll(self._clock.now_s())
            pool.used, pool.reserved = used, reserved

    def snapshot(self, name: str) -> LimitPoolSnapshot:
        pool = self._pools[name]
        pool.roll(self._clock.now_s())
        return LimitPoolSnapshot(
            name=name,
            capacity=pool.config.capacity,
            used=pool.used,
            reserved=pool.reserved,
            resets_at_s=pool.resets_at_s,
        )

    def reconfigure(self, configs: Mapping[str, LimitPoolConfig]) -> None:
        """Adopts new pool configs; a pool that keeps its name keeps its use."""
        now_s = self._clock.now_s()
        pools = {}
        for name, config in configs.items():
            pool = self._pools.get(name)
            if pool is None:
                pool = _Pool(config, now_s)
            pool.config = config
            pool.rewindow(config.window, now_s)
            pools[name] = pool
        self._pools = pools
        self.units = {name: c.unit for name, c in configs.items()}
