"""Scored selection: which of a route's candidates should serve this request.

Every candidate is judged. A candidate is infeasible when it can never serve
the request (fit.py: a feature its adapter does not carry, a setting its
provider or its config refuses, a missing capability, too small a context
window or output cap, `min_quality`, `max_cost_nano_usd`) or
cannot now (cooling down after a 429, breaker open,
pool and queue full, a limit pool unable to cover its draw). The feasible are
scored by

    score = task-weighted quality / effective cost          (prefer BALANCED)

where task-weighted quality is `quality ** (1 + task_weight x difficulty)`
(hard tasks punish weak models) and the effective cost is the worst-case cost
times the limit pools' scarcity multiplier. `prefer` reshapes the formula:
COST leans on cost, QUALITY on quality, LATENCY divides by the expected
latency. Candidates within `score_margin` of the best are equals; between
them, power of two choices on expected latency x load picks the one to try
first. A model with no latency measurement is expected to take no time (an
optimistic prior) while nobody probes it, so it is tried and then measured:
the settlement (settlement.py) claims the probe, synchronously, with the
lease it takes for the model, and until that lease ends the model is neutral
(1 s), so a burst selecting meanwhile sends it one request, not all of them.
When no candidate can serve now, the selection says when the soonest of them
may serve again. The budget is not read here: the settlement reserves in this
order, and a candidate the budget cannot cover is skipped there, atomically.

The worst case is the counted input and the output cap at the model's
prices. With prompt caching on (`cache_ttl`: the request's `cache_prompt`,
else its route's), every input token may be billed as a cache write, or a
read, so the input is priced at the highest rate of those that can apply
(an hour's writes only with a one-hour TTL); without it, at the input price.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from faregate_server.clock import Clock
from faregate_server.config.schema import RouteConfig, RoutingConfig
from faregate_server.content import CacheTtl
from faregate_server.domain import CandidateScore, Preference, RouteCall, TaskKind
from faregate_server.money import Price
from faregate_server.routing.fit import unfit_for
from faregate_server.routing.tasks import TASK_DIFFICULTY
from faregate_server.state.limits import Draw, LimitPools, projected_draw
from faregate_server.upstream.breakers import NEUTRAL_LATENCY_S
from faregate_server.upstream.catalog import Deployment
from faregate_server.upstream.tokens import options_tokens

# Expected latency of a model with no history yet while its first call is
# leased or running, in seconds: neutral, so a burst does not pile onto a
# model nobody has measured. Unprobed and unmeasured, it is expected to take
# no time at all (the optimistic prior), so the next request that could use it
# tries it.
_PROBING_LATENCY_S = NEUTRAL_LATENCY_S
# The least expected latency prefer LATENCY divides by: keeps an unmeasured
# model's score finite while ranking it above any measured one.
_LATENCY_FLOOR_S = 1e-4


def cache_ttl(call: RouteCall, route: RouteConfig) -> CacheTtl | None:
    """How long the call's prompt is to be cached, None for not at all: the
    request's `cache_prompt` when it gave one, else its route's, for the
    route's TTL."""
    wanted = None if call.options is None else call.options.cache_prompt
    if wanted is None:
        wanted = route.cache_prompt
    return route.cache_ttl if wanted else None


def worst_case_nano_usd(
    price: Price, input_tokens: int, output_tokens: int, ttl: CacheTtl | None
) -> int:
    """The most a call can cost: its input at the highest rate that can
    apply to it (see the module docstring) and its output cap."""
    worst = price.cost_nano_usd(input_tokens, output_tokens)
    if ttl is None:
        return worst
    # A cost is linear in how the input splits between kinds, so its most is
    # all of the input of the dearest kind.
    writes_1h = input_tokens if ttl is CacheTtl.ONE_HOUR else 0
    return max(
        worst,
        price.cost_nano_usd(input_tokens, output_tokens, cached_input_tokens=input_tokens),
        price.cost_nano_usd(input_tokens, output_tokens, cache_write_input_tokens=input_tokens),
        price.cost_nano_usd(
            input_tokens,
            output_tokens,
            cache_write_input_tokens=input_tokens,
            cache_write_1h_input_tokens=writes_1h,
        ),
    )


class Availability(StrEnum):
    """Whether a model that could serve a request can serve it now; each
    value but AVAILABLE is the reason a caller is shown."""

    AVAILABLE = ""
    COOLING_DOWN = "cooling down after an upstream 429"
    BREAKER_OPEN = "circuit breaker open"
    POOL_FULL = "workers and queue full"
    LIMITS_EXHAUSTED = "a limit pool cannot cover the draw"


def availability(deployment: Deployment, now_s: float, scarcity: float = 1.0) -> Availability:
    """Whether `deployment` can serve now (`now_s` on the health clock), its
    limit pools' `scarcity` for the request considered (1: no limit pools)."""
    if deployment.cooldown_until_s > now_s:
        return Availability.COOLING_DOWN
    if not deployment.breaker.allows():
        return Availability.BREAKER_OPEN
    if deployment.pool.saturated:
        return Availability.POOL_FULL
    if math.isinf(scarcity):
        return Availability.LIMITS_EXHAUSTED
    return Availability.AVAILABLE


@dataclass(frozen=True, slots=True)
class Option:
    """A feasible candidate, sized for this request."""

    deployment: Deployment
    input_tokens: int
    max_output_tokens: int
    worst_case_nano_usd: int
    draw: Draw
    score: float


@dataclass(frozen=True, slots=True)
class Selection:
    options: tuple[Option, ...]
    """Feasible candidates, the one to try first at the front."""
    scores: tuple[CandidateScore, ...]
    """Every candidate judged, in route order."""
    unfit: tuple[str, str] | None
    """(field, problem) of the first candidate that can never serve this request."""
    unavailable: Availability
    """Why the first candidate that cannot serve now can't (AVAILABLE if none)."""
    limits_retry_after_s: float
    """When the limit pools that ruled candidates out reset (inf if none did)."""
    available_in_s: float
    """Soonest any candidate that cannot serve now may serve again, in seconds
    (inf if none can say)."""


class Selector:
    def __init__(self, limits: LimitPools, clock: Clock, rng: random.Random) -> None:
        self._limits = limits
        self._clock = clock
        self._rng = rng

    def select(
        self,
        call: RouteCall,
        route: RouteConfig,
        routing: RoutingConfig,
        deployments: Mapping[str, Deployment],
        task: TaskKind | None,
        input_tokens_by_counter: dict[str, int] | None = None,
    ) -> Selection:
        """Judges every candidate of `route` for `call`, by the catalog's
        `routing` settings and its `deployments`.

        `input_tokens_by_counter` holds prompt counts already made (by counter
        name); the rest are counted here, on the loop (see `tokens.count_messages`).
        """
        hints = call.hints
        difficulty = 0.0 if task is None else TASK_DIFFICULTY[task]
        exponent = 1 + routing.task_weight * difficulty
        ttl = cache_ttl(call, route)
        now_s = self._clock.monotonic_s()
        if input_tokens_by_counter is None:
            input_tokens_by_counter = {}
        options: list[Option] = []
        scores: list[CandidateScore] = []
        unfit: tuple[str, str] | None = None
        unavailable = Availability.AVAILABLE
        limits_retry_after_s = math.inf
        available_in_s = math.inf
        for slot in route.slots:
            name = (
                slot.models[0]
                if len(slot.models) == 1
                else self._rng.choices(slot.models, cum_weights=slot.cumulative_weights)[0]
            )
            deployment = deployments[name]
            model = deployment.config
            counter = deployment.counter
            input_tokens = input_tokens_by_counter.get(counter.name)
            if input_tokens is None:
                input_tokens = counter.count_messages(call.messages)
                if call.options is not None:
                    input_tokens += options_tokens(counter, call.options)
                input_tokens_by_counter[counter.name] = input_tokens
            room = model.context_window_tokens - input_tokens
            max_output_tokens = call.max_output_tokens or min(model.max_output_tokens, room)
            worst_case = worst_case_nano_usd(
                model.price, input_tokens, max(max_output_tokens, 0), ttl
            )
            quality = model.quality**exponent
            problem = unfit_for(call, deployment, input_tokens, room, max_output_tokens, worst_case)
            reason = ""
            scarcity = 1.0
            draw: Draw = ()
            if problem is not None:
                unfit = unfit or problem
                reason = f"{problem[0]}: {problem[1]}"
            else:
                if model.draws:
                    draw = projected_draw(
                        model.draws,
                        self._limits.units,
                        input_tokens + max_output_tokens,
                        worst_case,
                    )
                    scarcity = self._limits.scarcity(draw, routing)
                now = availability(deployment, now_s, scarcity)
                if now is not Availability.AVAILABLE:
                    reason = now.value
                    if unavailable is Availability.AVAILABLE:
                        unavailable = now
                    limits_wait_s = 0.0
                    if math.isinf(scarcity):
                        limits_wait_s = self._limits.retry_after_s(draw)
                        limits_retry_after_s = min(limits_retry_after_s, limits_wait_s)
                    wait_s = max(_available_in_s(deployment, now_s), limits_wait_s)
                    available_in_s = min(available_in_s, wait_s)
            score = 0.0
            if not reason:
                score = _score(hints.prefer, quality, max(worst_case, 1) * scarcity, deployment)
                options.append(
                    Option(deployment, input_tokens, max_output_tokens, worst_case, draw, score)
                )
            if hints.explain:
                scores.append(
                    CandidateScore(
                        model=name,
                        feasible=not reason,
                        reason=reason,
                        score=score,
                        worst_case_nano_usd=worst_case,
                        quality=quality,
                        scarcity=scarcity,
                    )
                )
        return Selection(
            tuple(self._rank(options, routing.score_margin)),
            tuple(scores),
            unfit,
            unavailable,
            limits_retry_after_s,
            available_in_s,
        )

    def _rank(self, options: list[Option], score_margin: float) -> list[Option]:
        if len(options) < 2:
            return options
        # Stable: equal scores keep route order.
        options.sort(key=lambda option: -option.score)
        floor = options[0].score * (1 - score_margin)
        equals = [option for option in options if option.score >= floor]
        if len(equals) >= 2:
            first, second = self._rng.sample(equals, 2)
            pick = min(first, second, key=lambda option: _expected_wait_s(option.deployment))
            options.remove(pick)
            options.insert(0, pick)
        return options


def _available_in_s(deployment: Deployment, now_s: float) -> float:
    """How long until the model's own state lets it serve again: the longest of
    its 429 cool-down, its breaker's and, when full, about one service time of
    its pool (limit pools are the caller's to add)."""
    wait_s = max(deployment.cooldown_until_s - now_s, deployment.breaker.allows_in_s())
    if deployment.pool.saturated:
        wait_s = max(wait_s, deployment.pool.retry_after_s())
    return wait_s


def _score(
    prefer: Preference, quality: float, effective_cost: float, deployment: Deployment
) -> float:
    if prefer is Preference.COST:
        return float(quality**0.25 / effective_cost)
    if prefer is Preference.QUALITY:
        return float(quality / effective_cost**0.05)
    if prefer is Preference.LATENCY:
        wait_s = _expected_wait_s(deployment)
        if wait_s < _LATENCY_FLOOR_S:
            wait_s = _LATENCY_FLOOR_S
        return float(quality**0.1 / (effective_cost**0.05 * wait_s))
    return quality / effective_cost


def _expected_wait_s(deployment: Deployment) -> float:
    """Smoothed latency scaled by how busy the model's workers are.

    A model with no measurement yet, no probe claimed and no call in flight
    expects 0 s: it wins on latency until a lease claims its probe.
    """
    latency = deployment.latency
    expected_s = latency.ewma_total_s
    in_flight = latency.in_flight
    if expected_s is None:
        if not (in_flight or latency.probing):
            return 0.0
        expected_s = _PROBING_LATENCY_S
    return expected_s * (1 + in_flight / deployment.config.workers)
