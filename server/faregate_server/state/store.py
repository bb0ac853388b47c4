"""The state seam: budgets, limit pools, the spend ledger and request ids.

`StateStore` is the one interface the gateway uses; each backend keeps the
same contract (tests/state/test_state_contract.py runs it against every one):
- `reserve` holds a request's worst case on every budget it draws on and its
  projected draw on every limit pool, all or nothing, atomically with respect
  to every other replica sharing the store;
- `commit` spends the actual cost and draw, frees the holding and makes the
  spend record durable before it returns (with the request's result when it
  carried a client request id, in the same durable step). A cost past the
  holding (an overrun, routing/settlement.py) is spent in full: the budget's
  remaining money may go below zero, and then refuses every reservation
  until its window resets or an operator raises its limit. Every backend
  passes its arguments through `bounded_commit` first, so no single bad
  commit can credit or wedge a budget, or carry a number its store cannot
  hold into a shared write;
- `release` frees a holding whole. It never suspends its caller and never
  fails: cleanup code calls it while being cancelled;
- `claim` reserves a client request id for one request at a time and finds
  the recorded result of one already served;
- with an alert sink, a commit whose spend crosses one of a budget's alert
  thresholds hands it the alert (state/alerts.py), once per crossing.

`LocalState` keeps the accounting in this process (the memory and sqlite
backends; sqlite adds a durable ledger from which spend is summed at start).
`RedisState` (redis_store.py) shares it between replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Protocol

from faregate_server.clock import Clock
from faregate_server.config.schema import Config, LimitDraw
from faregate_server.domain import RouteResult, claim_key
from faregate_server.errors import RequestInFlight
from faregate_server.state.alerts import AlertSink, AlertWatch
from faregate_server.state.budgets import BudgetSnapshot, MemoryBudgetStore, Reservation
from faregate_server.state.ledger import (
    Ledger,
    ResultToKeep,
    SpendRecord,
)
from faregate_server.state.limits import Draw, LimitPools, LimitReservation
from faregate_server.state.replay import StoredResult, encode_result
from faregate_server.state.windows import window_start_s

logger = logging.getLogger(__name__)

LARGEST_COUNT = 2**53 - 1
"""The largest token count or amount every backend stores exactly (Redis's
Lua numbers are doubles; SQLite's integers are 64-bit)."""
_RECORD_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "cache_write_1h_input_tokens",
    "reasoning_tokens",
    "reserved_nano_usd",
    "cost_nano_usd",
    "attempts",
)


@dataclass(frozen=True, slots=True)
class Holding:
    """What one request holds until it commits or releases."""

    budget_keys: tuple[str, ...]
    amount_nano_usd: int
    """The worst case, held on each of the budgets."""
    handle: object
    """The backend's own record of the holding."""


class StateStore(Protocol):
    @property
    def limits(self) -> LimitPools:
        """This replica's view of the limit pools, for pricing their scarcity."""
        ...

    async def reserve(
        self,
        budget_keys: tuple[str, ...],
        amount_nano_usd: int,
        draws: tuple[LimitDraw, ...],
        units: Draw,
    ) -> Holding | None:
        """Holds the amount on every budget and the units on every pool.

        Returns None, holding nothing, when a limit pool lacks room.

        Raises:
            BudgetNotFound: a key names no budget.
            BudgetExhausted: the amount does not fit a budget's remaining money.
            StateUnavailable: a shared store is unreachable and the config says
                to fail closed.
        """
        ...

    async def commit(
        self,
        holding: Holding,
        cost_nano_usd: int,
        tokens: int,
        record: SpendRecord,
        result: RouteResult | None = None,
    ) -> int:
        """Spends the cost (and the draw of `tokens`), frees the rest, records it.

        `result`, for a request with a claimed request id, is kept for its
        retries. Returns the least money any of the request's budgets has left.
        """
        ...

    def release(self, holding: Holding) -> None:
        """Frees the holding whole; never suspends, never raises."""
        ...

    async def claim(self, request_id: str, fingerprint: str) -> StoredResult | None:
        """Claims a client request id for this request, or finds its served result.

        `request_id` is the id's `claim_key` (scoped to its principal); a
        commit with a result keeps it under the claim key of its record.
        Returns None when the id is now this request's (commit with a result,
        or `unclaim`, ends the claim), or the result of the request that
        already served it.

        Raises:
            RequestInFlight: another request holds the id.
        """
        ...

    async def unclaim(self, request_id: str) -> None:
        """Frees a claimed id that ended without a result, so its retry is
        served; it completes even if the caller is cancelled meanwhile."""
        ...

    async def budget(self, budget_key: str) -> BudgetSnapshot:
        """A budget's current state; raises BudgetNotFound."""
        ...

    async def update_budget(
        self,
        budget_key: str,
        *,
        set_limit_nano_usd: int | None = None,
        top_up_nano_usd: int | None = None,
        reset_spend: bool = False,
    ) -> None:
        """An operator's change; a limit holds until the configured one changes."""
        ...

    async def spend(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        """Ledger records newest first, each with its position (see Ledger.query)."""
        ...

    def reconfigure(self, config: Config) -> None:
        """Adopts a reloaded config; budgets and pools that stay keep their state."""
        ...

    async def aclose(self) -> None: ...


def bounded_commit(
    holding: Holding, cost_nano_usd: int, tokens: int, record: SpendRecord
) -> tuple[int, int, SpendRecord]:
    """A commit's cost, tokens and record as a backend may apply them.

    The gateway asks only for whole, non-negative amounts it bounded itself
    (an overrun past the holding included: routing/settlement.py), so this
    changes nothing on any path it knows; it is the backends' own guarantee.
    A cost that is not a whole number of at most `LARGEST_COUNT` is charged
    the holding (the worst case the request was admitted for), and counts
    beyond `LARGEST_COUNT` or below zero are clamped, each logged as the bug
    it is.
    """
    held = holding.amount_nano_usd
    if (
        # Every commit the gateway makes, checked in one expression: the
        # general path below costs several times this, on every request.
        type(cost_nano_usd) is int
        and 0 <= cost_nano_usd <= LARGEST_COUNT
        and held <= LARGEST_COUNT
        and type(tokens) is int
        and 0 <= tokens <= LARGEST_COUNT
        and record.cost_nano_usd == cost_nano_usd
        and record.reserved_nano_usd == held
        and _is_count(record.input_tokens)
        and _is_count(record.output_tokens)
        and _is_count(record.cached_input_tokens)
        and _is_count(record.cache_write_input_tokens)
        and _is_count(record.cache_write_1h_input_tokens)
        and _is_count(record.reasoning_tokens)
        and _is_count(record.attempts)
    ):
        return cost_nano_usd, tokens, record
    if not _is_count(cost_nano_usd):
        logger.error(
            "commit of %r nano-USD on a holding of %d refused: charged the holding",
            cost_nano_usd,
            held,
        )
        cost_nano_usd = held
    if not _is_count(tokens):
        logger.error("commit of %r tokens clamped", tokens)
        tokens = _clamped(tokens)
    changes: dict[str, int] = {}
    if record.cost_nano_usd != cost_nano_usd:
        changes["cost_nano_usd"] = cost_nano_usd
    for name in _RECORD_COUNTS:
        value = changes.get(name, getattr(record, name))
        if not _is_count(value):
            logger.error("spend record %s=%r clamped", name, value)
            changes[name] = _clamped(value)
    if changes:
        record = dataclasses.replace(record, **changes)  # type: ignore[arg-type]
    return cost_nano_usd, tokens, record


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= LARGEST_COUNT


def _clamped(value: object) -> int:
    if type(value) is not int or value < 0:
        return 0
    return min(value, LARGEST_COUNT)


@dataclass(frozen=True, slots=True)
class _LocalHold:
    budgets: Reservation
    limits: LimitReservation | None


class LocalState:
    """State in this process, with the ledger in memory or in SQLite."""

    def __init__(
        self, config: Config, clock: Clock, ledger: Ledger, alerts: AlertSink | None = None
    ) -> None:
        """`alerts` takes the budget alerts commits raise (state/alerts.py)."""
        self._clock = clock
        self._ledger = ledger
        now_s = clock.now_s()
        spent = ledger.spent_since(
            {key: window_start_s(b.window, now_s) for key, b in config.budgets.items()}
        )
        watch = AlertWatch(config.budgets.values(), alerts, clock) if alerts is not None else None
        self._budgets = MemoryBudgetStore(config.budgets.values(), clock, spent, watch)
        self._limits = LimitPools(config.limit_pools, clock)
        self._limits.seed(ledger.records_since(self._limits.earliest_window_start_s()), config)
        self._result_window_s = config.state.request_id_window_s
        # Client request ids of requests in flight -> their fingerprints.
        self._claims: dict[str, str] = {}
        self._committing: set[str] = set()

    @property
    def limits(self) -> LimitPools:
        return self._limits

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    async def reserve(
        self,
        budget_keys: tuple[str, ...],
        amount_nano_usd: int,
        draws: tuple[LimitDraw, ...],
        units: Draw,
    ) -> Holding | None:
        reservation = self._budgets.reserve(budget_keys, amount_nano_usd)
        limits = None
        if units:
            limits = self._limits.reserve(draws, units)
            if limits is None:
                self._budgets.release(reservation)
                return None
        return Holding(budget_keys, amount_nano_usd, _LocalHold(reservation, limits))

    async def commit(
        self,
        holding: Holding,
        cost_nano_usd: int,
        tokens: int,
        record: SpendRecord,
        result: RouteResult | None = None,
    ) -> int:
        cost_nano_usd, tokens, record = bounded_commit(holding, cost_nano_usd, tokens, record)
        hold = holding.handle
        assert isinstance(hold, _LocalHold)
        # Both commits happen before the first suspension: a cancellation
        # during the durable write below cannot leave them half done.
        if hold.limits is not None:
            self._limits.commit(hold.limits, tokens, cost_nano_usd)
        remaining = self._budgets.commit(hold.budgets, cost_nano_usd)
        if result is None:
            await self._ledger.record(record)
            return remaining
        request_id = claim_key(record.principal, record.request_id)
        stored = StoredResult(self._claims[request_id], encode_result(result), remaining)
        expires_s = self._clock.now_s() + self._result_window_s
        self._committing.add(request_id)
        write = asyncio.ensure_future(
            self._ledger.record(record, ResultToKeep(request_id, stored, expires_s))
        )
        # Claimed until the result is durable, even if this caller is
        # cancelled meanwhile: a retry gets ABORTED, never a second serving.
        write.add_done_callback(lambda _: self._end_claim(request_id))
        await asyncio.shield(write)
        return remaining

    def release(self, holding: Holding) -> None:
        hold = holding.handle
        assert isinstance(hold, _LocalHold)
        self._budgets.release(hold.budgets)
        if hold.limits is not None:
            self._limits.release(hold.limits)

    async def claim(self, request_id: str, fingerprint: str) -> StoredResult | None:
        if request_id in self._claims:
            raise RequestInFlight(request_id)
        # Claimed before the lookup suspends, so a concurrent twin sees it.
        self._claims[request_id] = fingerprint
        try:
            served = await self._ledger.result(request_id, self._clock.now_s())
        except BaseException:
            del self._claims[request_id]
            raise
        if served is not None:
            del self._claims[request_id]
        return served

    async def unclaim(self, request_id: str) -> None:
        if request_id not in self._committing:
            self._claims.pop(request_id, None)

    def _end_claim(self, request_id: str) -> None:
        self._committing.discard(request_id)
        self._claims.pop(request_id, None)

    async def budget(self, budget_key: str) -> BudgetSnapshot:
        return self._budgets.snapshot(budget_key)

    async def update_budget(
        self,
        budget_key: str,
        *,
        set_limit_nano_usd: int | None = None,
        top_up_nano_usd: int | None = None,
        reset_spend: bool = False,
    ) -> None:
        if set_limit_nano_usd is not None:
            self._budgets.set_limit(budget_key, set_limit_nano_usd)
        if top_up_nano_usd is not None:
            limit = self._budgets.snapshot(budget_key).limit_nano_usd
            self._budgets.set_limit(budget_key, limit + top_up_nano_usd)
        if reset_spend:
            self._budgets.reset_spend(budget_key)

    async def spend(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        return await self._ledger.query(budget_key, agent, limit, before)

    def reconfigure(self, config: Config) -> None:
        self._budgets.reconfigure(config.budgets.values())
        self._limits.reconfigure(config.limit_pools)

    async def aclose(self) -> None:
        await self._ledger.aclose()
