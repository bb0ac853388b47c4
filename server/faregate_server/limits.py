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
from collections.abc import Mapping
from dataclasses import dataclass

from faregate_server.clock import Clock
from faregate_server.config import LimitDraw, LimitPoolConfig, LimitUnit, RoutingConfig
from faregate_server.windows import next_reset_s

Draw = tuple[tuple[str, int], ...]
"""(pool name, units) pairs of one request."""


@dataclass(frozen=True, slots=True)
class LimitReservation:
    amounts: Draw


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


class _Pool:
    __slots__ = ("config", "reserved", "resets_at_s", "used")

    def __init__(self, config: LimitPoolConfig, now_s: float) -> None:
        self.config = config
        self.used = 0
        self.reserved = 0
        self.resets_at_s = next_reset_s(config.window, now_s)

    def roll(self, now_s: float) -> None:
        if now_s >= self.resets_at_s:
            self.used = 0
            self.resets_at_s = next_reset_s(self.config.window, now_s)

    @property
    def remaining(self) -> int:
        return self.config.capacity - self.used - self.reserved


def projected_draw(
    draws: tuple[LimitDraw, ...], units: Mapping[str, LimitUnit], tokens: int, cost_nano_usd: int
) -> Draw:
    """What one request of `tokens` input plus output tokens costing `cost_nano_usd` draws."""
    amounts = []
    for draw in draws:
        if units[draw.pool] is LimitUnit.USD:
            amount = cost_nano_usd
        else:
            amount = draw.per_request + -(-draw.per_1k_tokens * tokens // 1000)
        amounts.append((draw.pool, amount))
    return tuple(amounts)


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
            pool = self._pools[name]
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

    def reserve(self, amounts: Draw) -> LimitReservation | None:
        """Holds every amount, or nothing when any pool lacks room."""
        now_s = self._clock.now_s()
        for name, amount in amounts:
            pool = self._pools[name]
            pool.roll(now_s)
            if amount > pool.remaining:
                return None
        for name, amount in amounts:
            self._pools[name].reserved += amount
        return LimitReservation(amounts)

    def commit(self, reservation: LimitReservation, actual: Draw) -> None:
        """Records the actual draw and frees the reservation."""
        self.release(reservation)
        now_s = self._clock.now_s()
        for name, amount in actual:
            pool = self._pools.get(name)
            if pool is not None:
                pool.roll(now_s)
                pool.used += amount

    def release(self, reservation: LimitReservation) -> None:
        for name, amount in reservation.amounts:
            pool = self._pools.get(name)
            if pool is not None:  # a reload may have removed it meanwhile
                pool.reserved -= amount

    def retry_after_s(self, amounts: Draw) -> float:
        """Seconds until every pool too full for `amounts` has reset (inf if never)."""
        now_s = self._clock.now_s()
        wait_s = 0.0
        for name, amount in amounts:
            pool = self._pools[name]
            if amount > pool.remaining:
                wait_s = max(wait_s, pool.resets_at_s - now_s)
        return wait_s

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
            pool = self._pools.get(name) or _Pool(config, now_s)
            pool.config = config
            pools[name] = pool
        self._pools = pools
        self.units = {name: c.unit for name, c in configs.items()}
