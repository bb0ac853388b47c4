"""State shared by every replica through one Redis (see redis_scripts.py).

Reserve, commit and release are each one atomic script across every budget
and limit pool a request touches, so any number of replicas together never
overspend. A reservation carries a lease that this replica renews while the
request runs (long streams included); if the replica dies, its reservations
return to their budgets once the lease lapses. A commit adds the spend and
appends the ledger record (and a request id's result) in the same script:
the spend is recorded exactly when it is counted.

What each replica keeps to itself: breakers, latency averages, worker pools,
and its view of the limit pools for pricing scarcity (refreshed by every
reserve and commit; admission itself is always decided by Redis).

When Redis is unreachable or slower than `timeout_s`:
- fail_closed: requests get UNAVAILABLE (STATE_UNAVAILABLE) until it returns;
- fail_open: each budget may spend up to `emergency_cap_nano_usd` on this
  replica, counted locally, and that spend is written to Redis (ledger
  included) once it returns.
Either way, a commit that can't reach Redis is queued and written on return,
and a release that can't is left to its lease. A Redis that returns without
its data (restarted with no AOF, or flushed) has lost the holds too: a commit
is charged and recorded all the same, whatever its hold still holds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from faregate_server.clock import Clock
from faregate_server.config.schema import (
    BudgetConfig,
    Config,
    ConfigError,
    LimitDraw,
    WhenUnavailable,
    Window,
)
from faregate_server.domain import RouteResult, claim_key
from faregate_server.errors import (
    BudgetExhausted,
    BudgetNotFound,
    RequestInFlight,
    StateUnavailable,
)
from faregate_server.state.alerts import AlertSink, AlertWatch
from faregate_server.state.budgets import BudgetSnapshot, MemoryBudgetStore, Reservation
from faregate_server.state.ledger import SpendRecord, matches
from faregate_server.state.limits import Draw, LimitPools, units_drawn
from faregate_server.state.redis_scripts import (
    CLAIM,
    COMMIT,
    READ_ACCOUNT,
    RELEASE,
    RENEW,
    RESERVE,
    UNCLAIM,
    UPDATE_BUDGET,
)
from faregate_server.state.replay import StoredResult, encode_result
from faregate_server.state.store import Holding, bounded_commit
from faregate_server.state.windows import next_reset_s, window_start_s

logger = logging.getLogger(__name__)

# Lua numbers are doubles: integers beyond this lose precision.
_LARGEST_EXACT = 2**53
# After a failed call, Redis is not tried again for this long (requests fail
# fast meanwhile); the renewal loop probes it sooner.
_RETRY_AFTER_S = 1.0
_STOP_WAIT_S = 5.0
_CONNECTIONS = 32
# What says Redis is away or too slow, rather than that a command was wrong.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)


@dataclass(frozen=True, slots=True)
class _RemoteHold:
    hold_key: str
    accounts: tuple[str, ...]
    """Budget keys first, then pool keys, as the scripts take them."""
    limits: tuple[int, ...]
    draws: tuple[LimitDraw, ...]


@dataclass(frozen=True, slots=True)
class _EmergencyHold:
    """Held on this replica's emergency allowance while Redis was away."""

    reservation: Reservation
    draws: tuple[LimitDraw, ...]


@dataclass(frozen=True, slots=True)
class _PendingCommit:
    """A commit that could not reach Redis, written when it returns."""

    hold_key: str
    """The request's hold, or for emergency spend one never held in Redis;
    its `done` marker makes a commit written twice (its first reply lost)
    count once."""
    budget_keys: tuple[str, ...]
    draws: tuple[LimitDraw, ...]
    cost_nano_usd: int
    tokens: int
    record: SpendRecord
    result: StoredResult | None


class RedisState:
    """Budgets, limit pools, the ledger and request ids in one Redis."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        client: aioredis.Redis,
        alerts: AlertSink | None = None,
    ) -> None:
        """`alerts` takes the budget alerts commits raise (state/alerts.py)."""
        self._clock = clock
        self._client = client
        self._config = config
        settings = config.state.redis
        self._settings = settings
        self._lease_ms = round(settings.lease_s * 1000)
        self._result_ttl_ms = round(config.state.request_id_window_s * 1000)
        ns = "{" + settings.namespace + "}"
        self._ns = ns
        self._leases = f"{ns}:leases"
        self._ledger = f"{ns}:ledger"
        self._replica = secrets.token_hex(6)
        self._ids = itertools.count()
        self._limits = LimitPools(config.limit_pools, clock)
        self._emergency = MemoryBudgetStore(self._emergency_budgets(config), clock)
        # Fed by the commit script's spend, never the emergency allowance's:
        # spend made while Redis was away alerts once it is written there.
        self._watch = (
            AlertWatch(config.budgets.values(), alerts, clock) if alerts is not None else None
        )
        self._reserve = client.register_script(RESERVE)
        self._commit = client.register_script(COMMIT)
        self._release = client.register_script(RELEASE)
        self._renew = client.register_script(RENEW)
        self._claim = client.register_script(CLAIM)
        self._unclaim = client.register_script(UNCLAIM)
        self._read_account = client.register_script(READ_ACCOUNT)
        self._update_budget = client.register_script(UPDATE_BUDGET)
        self._live_holds: set[str] = set()
        self._live_claims: set[str] = set()
        # Request ids claimed in Redis, and (failing open) on this replica
        # only, each with its request's fingerprint.
        self._claimed: dict[str, tuple[str, str]] = {}
        """Request id -> (fingerprint, owner token) of claims held in Redis."""
        self._local_claims: dict[str, str] = {}
        self._pending: list[_PendingCommit] = []
        self._down_until_s = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, config: Config, clock: Clock, alerts: AlertSink | None = None
    ) -> RedisState:
        """Connects and starts renewing leases; an unreachable Redis is not
        fatal at start (replicas may start first), only logged. `alerts` as
        for the constructor."""
        for budget in config.budgets.values():
            if budget.limit_nano_usd >= _LARGEST_EXACT:
                raise ConfigError(
                    f"budgets.{budget.key}.limit_usd: the redis backend counts exactly"
                    f" up to {_LARGEST_EXACT - 1} nano-USD"
                )
        settings = config.state.redis
        # A bounded pool: a burst waits for a connection rather than opening
        # one per request (waiting is bounded by each request's deadline).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.url,
            max_connections=_CONNECTIONS,
            timeout=None,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            decode_responses=True,
        )
        client = aioredis.Redis.from_pool(pool)  # owns the pool: closing it closes them
        state = cls(config, clock, client, alerts)
        try:
            await client.ping()
        except RedisError as error:
            state._mark_down(error)
        state._renewer = asyncio.create_task(state._renew_forever(), name="faregate-leases")
        return state

    @property
    def limits(self) -> LimitPools:
        return self._limits

    async def reserve(
        self,
        budget_keys: tuple[str, ...],
        amount_nano_usd: int,
        draws: tuple[LimitDraw, ...],
        units: Draw,
    ) -> Holding | None:
        budgets = [self._budget_config(key) for key in budget_keys]
        if self._is_down():
            return self._reserve_locally(budget_keys, amount_nano_usd, draws)
        now_s = self._clock.now_s()
        accounts, limits, arguments = [], [], [self._lease_ms]
        for budget in budgets:
            accounts.append(self._budget_key(budget.key))
            limits.append(budget.limit_nano_usd)
            arguments += [amount_nano_usd, budget.limit_nano_usd, _window(budget.window, now_s)]
        kept_draws = []
        for draw, (name, amount) in zip(draws, units, strict=True):
            pool = self._config.limit_pools.get(name)
            if pool is None:
                continue  # removed by a reload since the request was planned
            kept_draws.append(draw)
            accounts.append(self._pool_key(name))
            limits.append(pool.capacity)
            arguments += [amount, pool.capacity, _window(pool.window, now_s)]
        hold_key = f"{self._ns}:hold:{self._replica}:{next(self._ids)}"
        reserving = self._spawn(
            self._call(self._reserve, [self._leases, hold_key, *accounts], arguments)
        )
        try:
            reply = await asyncio.shield(reserving)
        except StateUnavailable:
            # The script may have run before the reply was lost.
            self._spawn(self._write_release(hold_key))
            return self._reserve_locally(budget_keys, amount_nano_usd, draws)
        except asyncio.CancelledError:
            # The script may still run: whatever it holds goes straight back.
            reserving.add_done_callback(lambda _: self._spawn(self._write_release(hold_key)))
            raise
        if reply[0] == 0:
            index, remaining = int(reply[1]) - 1, int(reply[2])
            if index < len(budgets):
                raise BudgetExhausted(budgets[index].key, remaining, amount_nano_usd)
            # A full pool: this replica's view of it learns as much.
            name = accounts[index].removeprefix(f"{self._ns}:pool:")
            self._limits.observe(name, limits[index] - remaining, 0)
            return None
        self._observe(accounts, reply[1:])
        self._live_holds.add(hold_key)
        hold = _RemoteHold(hold_key, tuple(accounts), tuple(limits), tuple(kept_draws))
        return Holding(budget_keys, amount_nano_usd, hold)

    def _reserve_locally(
        self, budget_keys: tuple[str, ...], amount_nano_usd: int, draws: tuple[LimitDraw, ...]
    ) -> Holding:
        if self._settings.when_unavailable is WhenUnavailable.FAIL_CLOSED:
            raise StateUnavailable("Redis is unreachable", _RETRY_AFTER_S)
        reservation = self._emergency.reserve(budget_keys, amount_nano_usd)
        return Holding(budget_keys, amount_nano_usd, _EmergencyHold(reservation, draws))

    async def commit(
        self,
        holding: Holding,
        cost_nano_usd: int,
        tokens: int,
        record: SpendRecord,
        result: RouteResult | None = None,
    ) -> int:
        cost_nano_usd, tokens, record = bounded_commit(holding, cost_nano_usd, tokens, record)
        stored = None
        if result is not None:
            # Ended here, not by `unclaim`: the commit sets the id's result.
            key = claim_key(record.principal, record.request_id)
            claimed = self._claimed.pop(key, None)
            fingerprint = claimed[0] if claimed else self._local_claims.pop(key, "")
            stored = StoredResult(fingerprint, encode_result(result), 0)
        hold = holding.handle
        if isinstance(hold, _EmergencyHold):
            remaining = self._emergency.commit(hold.reservation, cost_nano_usd)
            # No hold in Redis: a fresh one, never held, names its done marker.
            unheld = f"{self._ns}:hold:{self._replica}:{next(self._ids)}"
            self._pending.append(
                _PendingCommit(
                    unheld, holding.budget_keys, hold.draws, cost_nano_usd, tokens, record, stored
                )
            )
            return remaining
        assert isinstance(hold, _RemoteHold)
        pending = _PendingCommit(
            hold.hold_key,
            holding.budget_keys,
            hold.draws,
            cost_nano_usd,
            tokens,
            record,
            stored,
        )
        # Owned by the store and shielded: a caller cancelled meanwhile must
        # not take the commit with it.
        return await asyncio.shield(self._spawn(self._write_commit(pending)))

    async def _write_commit(self, pending: _PendingCommit) -> int:
        """Writes one commit; queues it when Redis is away. Returns the remaining money."""
        try:
            if self._is_down():
                raise StateUnavailable("Redis is unreachable", _RETRY_AFTER_S)
            return await self._run_commit(pending)
        except StateUnavailable:
            self._pending.append(pending)
            return 0

    async def _run_commit(self, pending: _PendingCommit) -> int:
        now_s = self._clock.now_s()
        budgets = [self._config.budgets.get(key) for key in pending.budget_keys]
        accounts, arguments = [], []
        for key, budget in zip(pending.budget_keys, budgets, strict=True):
            accounts.append(self._budget_key(key))
            limit = budget.limit_nano_usd if budget else 0
            window = _window(budget.window, now_s) if budget else 0
            arguments += [pending.cost_nano_usd, limit, window]
        for draw in pending.draws:
            pool = self._config.limit_pools.get(draw.pool)
            if pool is None:
                continue
            accounts.append(self._pool_key(draw.pool))
            drawn = units_drawn(draw, pool.unit, pending.tokens, pending.cost_nano_usd)
            arguments += [drawn, pool.capacity, _window(pool.window, now_s)]
        result = pending.result
        record = pending.record
        request_key = (
            self._request_key(claim_key(record.principal, record.request_id))
            if result
            else self._leases
        )
        reply = await self._call(
            self._commit,
            [
                self._leases,
                pending.hold_key,
                self._done_key(pending.hold_key),
                self._ledger,
                request_key,
                *accounts,
            ],
            [
                len(pending.budget_keys),
                self._settings.ledger_max_records,
                self._result_ttl_ms,
                result.fingerprint if result else "",
                result.result if result else "",
                *arguments,
                *_record_fields(pending.record),
            ],
        )
        self._live_holds.discard(pending.hold_key)
        if result is not None:
            self._live_claims.discard(request_key)
        if reply[0] == "written":
            return 0  # a repeat of a commit whose first reply was lost
        self._observe(accounts, reply[1:])
        if self._watch is not None:
            # The script's spend per budget, then each budget's limit in force.
            limits = reply[1 + 2 * len(accounts) :]
            for index, key in enumerate(pending.budget_keys):
                spent, limit = int(reply[1 + 2 * index]), int(limits[index])
                self._watch.spent(key, spent, pending.cost_nano_usd, limit)
        return int(reply[0])

    def release(self, holding: Holding) -> None:
        hold = holding.handle
        if isinstance(hold, _EmergencyHold):
            self._emergency.release(hold.reservation)
            return
        assert isinstance(hold, _RemoteHold)
        self._spawn(self._write_release(hold.hold_key))

    async def _write_release(self, hold_key: str) -> None:
        try:
            await self._call(self._release, [self._leases, hold_key], [])
        except StateUnavailable:
            return  # its lease returns the units once it lapses
        finally:
            self._live_holds.discard(hold_key)

    async def claim(self, request_id: str, fingerprint: str) -> StoredResult | None:
        if request_id in self._claimed or request_id in self._local_claims:
            raise RequestInFlight(request_id)  # a twin on this replica
        key = self._request_key(request_id)
        owner = f"{self._replica}:{next(self._ids)}"
        try:
            if self._is_down():
                raise StateUnavailable("Redis is unreachable", _RETRY_AFTER_S)
            reply = await self._call(self._claim, [key], [fingerprint, self._lease_ms, owner])
        except StateUnavailable:
            self._spawn(self._write_unclaim(key, owner))  # in case the script ran
            if self._settings.when_unavailable is WhenUnavailable.FAIL_CLOSED:
                raise
            # Best effort while Redis is away: ids are guarded on this replica only.
            self._local_claims[request_id] = fingerprint
            return None
        if reply[0] == "inflight":
            raise RequestInFlight(request_id)
        if reply[0] == "done":
            return StoredResult(reply[1] or "", reply[2], int(reply[3]))
        self._live_claims.add(key)
        self._claimed[request_id] = (fingerprint, owner)
        return None

    async def unclaim(self, request_id: str) -> None:
        self._local_claims.pop(request_id, None)
        claimed = self._claimed.pop(request_id, None)
        if claimed is None:
            return  # never claimed in Redis, or its result is kept
        key = self._request_key(request_id)
        self._live_claims.discard(key)
        await asyncio.shield(self._spawn(self._write_unclaim(key, claimed[1])))

    async def _write_unclaim(self, key: str, owner: str) -> None:
        try:
            await self._call(self._unclaim, [key], [owner])
        except StateUnavailable:
            return  # the claim lapses with its lease

    async def budget(self, budget_key: str) -> BudgetSnapshot:
        budget = self._budget_config(budget_key)
        now_s = self._clock.now_s()
        used, reserved, limit = await self._call(
            self._read_account,
            [self._budget_key(budget_key)],
            [budget.limit_nano_usd, _window(budget.window, now_s)],
        )
        return BudgetSnapshot(
            key=budget_key,
            limit_nano_usd=int(limit),
            spent_nano_usd=int(used),
            reserved_nano_usd=int(reserved),
            resets_at_s=next_reset_s(budget.window, now_s),
        )

    async def update_budget(
        self,
        budget_key: str,
        *,
        set_limit_nano_usd: int | None = None,
        top_up_nano_usd: int | None = None,
        reset_spend: bool = False,
    ) -> None:
        budget = self._budget_config(budget_key)
        if set_limit_nano_usd is not None:
            change, amount = "limit", set_limit_nano_usd
        elif top_up_nano_usd is not None:
            change, amount = "top_up", top_up_nano_usd
        elif reset_spend:
            change, amount = "reset", 0
        else:
            return
        window = _window(budget.window, self._clock.now_s())
        await self._call(
            self._update_budget,
            [self._budget_key(budget_key)],
            [budget.limit_nano_usd, window, change, amount],
        )

    async def spend(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        found: list[tuple[int, SpendRecord]] = []
        upper = "+" if before is None else f"({_stream_id(before)}"
        while len(found) < limit:
            try:
                entries: list[tuple[str, dict[str, str]]] = await self._client.xrevrange(
                    self._ledger, upper, "-", count=256
                )  # type: ignore[assignment]  # strings: decode_responses is on
            except RedisError as error:
                self._mark_down(error)
                raise StateUnavailable(str(error), _RETRY_AFTER_S) from None
            for entry_id, fields in entries:
                record = _record_from_fields(fields)
                if matches(record, budget_key, agent):
                    found.append((_position(entry_id), record))
                    if len(found) == limit:
                        break
            if len(entries) < 256:
                break
            upper = f"({entries[-1][0]}"
        return found

    def reconfigure(self, config: Config) -> None:
        self._config = config
        self._limits.reconfigure(config.limit_pools)
        self._emergency.reconfigure(self._emergency_budgets(config))
        if self._watch is not None:
            self._watch.reconfigure(config.budgets.values())

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.wait({self._renewer})
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_STOP_WAIT_S)
        await self._flush_pending()
        if self._pending:
            for pending in self._pending:
                logger.error("spend not written to Redis before stopping: %r", pending.record)
        await self._client.aclose()

    # The renewal loop: leases, claims, lapsed holds of dead replicas, and
    # commits waiting for Redis to return.

    async def _renew_forever(self) -> None:
        interval_s = self._settings.lease_s / 3
        while True:
            await asyncio.sleep(min(interval_s, _RETRY_AFTER_S) if self._pending else interval_s)
            try:
                await self.renew()
            except Exception:
                logger.exception("renewing leases failed; retrying")

    async def renew(self) -> None:
        """Extends this replica's leases and claims, returns lapsed holds'
        units, and writes any commits queued while Redis was away."""
        arguments = [self._lease_ms, *self._live_holds, "", *self._live_claims]
        try:
            await self._call(self._renew, [self._leases], arguments, probe=True)
        except StateUnavailable:
            return
        await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self._pending and not self._is_down():
            pending = self._pending[0]
            try:
                await self._run_commit(pending)
            except StateUnavailable:
                return
            self._pending.pop(0)
        if not self._pending and not self._is_down():
            # Everything spent on the emergency allowance is in Redis now.
            for key in self._config.budgets:
                self._emergency.reset_spend(key)

    # Plumbing.

    async def _call(
        self, script: Any, keys: Sequence[str], arguments: Sequence[object], probe: bool = False
    ) -> Any:
        if not probe and self._is_down():
            raise StateUnavailable("Redis is unreachable", _RETRY_AFTER_S)
        try:
            reply = await script(keys=list(keys), args=list(arguments))
        except _UNREACHABLE as error:  # other errors are bugs, not an outage
            self._mark_down(error)
            raise StateUnavailable(type(error).__name__, _RETRY_AFTER_S) from None
        if self._down_until_s:
            logger.warning("Redis is reachable again")
            self._down_until_s = 0.0
        return reply

    def _is_down(self) -> bool:
        # The event loop's clock, not the injected one: this is real waiting.
        return asyncio.get_running_loop().time() < self._down_until_s

    def _mark_down(self, error: Exception) -> None:
        if not self._down_until_s:
            logger.error(
                "Redis is unreachable (%s); %s",
                error,
                "failing open within the emergency cap"
                if self._settings.when_unavailable is WhenUnavailable.FAIL_OPEN
                else "refusing requests until it returns",
            )
        self._down_until_s = asyncio.get_running_loop().time() + _RETRY_AFTER_S

    def _spawn(self, operation: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(operation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _observe(self, accounts: Sequence[str], state: Sequence[Any], from_index: int = 0) -> None:
        """Adopts what a script read of the limit pools, for scarcity pricing."""
        prefix = f"{self._ns}:pool:"
        for index, account in enumerate(accounts):
            if index < from_index or not account.startswith(prefix):
                continue
            if 2 * index + 1 < len(state):
                used, reserved = int(state[2 * index]), int(state[2 * index + 1])
                self._limits.observe(account.removeprefix(prefix), used, reserved)

    def _budget_config(self, budget_key: str) -> BudgetConfig:
        budget = self._config.budgets.get(budget_key)
        if budget is None:
            raise BudgetNotFound(budget_key)
        return budget

    def _emergency_budgets(self, config: Config) -> list[BudgetConfig]:
        cap = config.state.redis.emergency_cap_nano_usd
        return [BudgetConfig(key, cap, Window.NONE) for key in config.budgets]

    def _done_key(self, hold_key: str) -> str:
        """The marker a commit of this hold leaves: `{ns}:done:<the hold's id>`."""
        return f"{self._ns}:done:{hold_key.removeprefix(f'{self._ns}:hold:')}"

    def _budget_key(self, key: str) -> str:
        return f"{self._ns}:budget:{key}"

    def _pool_key(self, name: str) -> str:
        return f"{self._ns}:pool:{name}"

    def _request_key(self, request_id: str) -> str:
        return f"{self._ns}:request:{request_id}"


def _window(window: Window, now_s: float) -> int:
    return int(window_start_s(window, now_s))


def _record_fields(record: SpendRecord) -> list[object]:
    fields = record.to_json()
    fields["budget_keys"] = json.dumps(fields["budget_keys"])
    return [item for pair in fields.items() for item in pair]


def _record_from_fields(fields: dict[str, str]) -> SpendRecord:
    return SpendRecord(
        request_id=fields["request_id"],
        time_s=float(fields["time_s"]),
        budget_keys=tuple(json.loads(fields["budget_keys"])),
        agent=fields["agent"],
        model=fields["model"],
        input_tokens=int(fields["input_tokens"]),
        output_tokens=int(fields["output_tokens"]),
        reserved_nano_usd=int(fields["reserved_nano_usd"]),
        cost_nano_usd=int(fields["cost_nano_usd"]),
        outcome=fields["outcome"],
        route=fields["route"],
        model_version=fields["model_version"],
        attempts=int(fields["attempts"]),
        principal=fields.get("principal", ""),
        usage_flaw=fields.get("usage_flaw", ""),
        reported_usage=fields.get("reported_usage", ""),
    )


# Stream ids are "<ms>-<seq>"; as page positions they are one integer.
_SEQ_BITS = 20


def _position(entry_id: str) -> int:
    ms, seq = entry_id.split("-")
    return (int(ms) << _SEQ_BITS) | int(seq)


def _stream_id(position: int) -> str:
    return f"{position >> _SEQ_BITS}-{position & ((1 << _SEQ_BITS) - 1)}"
