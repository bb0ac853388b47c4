"""The routing simulation's world: its models, limit pool, budget, policies and floors.

Three simulated models of different price and quality share one limit pool
that counts capacity-weighted tokens (input plus output): a token of the
large model draws 1 unit, of the medium 0.4, of the small 0.1, as on a shared
provisioned-capacity account where a bigger model uses more of it. (Were the
draws equal, no routing could lessen pool rejections: a request would draw
the same whichever model served it.) The capacity is sized so that
always-best runs short partway through the simulation's arrival ramp.

The sim models answer at once; a request's latency is *modelled* from the
serving model's time to first token, prefill time per input token and time
per output token (`SimModel`), never slept.

Quality served is the serving model's configured quality. Each request has a
floor set by the kind of task it was written as: planning, orchestration,
security review and debugging need 0.9, the rest 0.5. A rejected request
does not meet its floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faregate_server.domain import TaskKind

REQUESTS = 10_000
SEED = 20_240_601
WAVE = 8
"""Requests arriving together and served concurrently."""
START_RATE_PER_S = 2.0
END_RATE_PER_S = 10.0
OUTPUT_TOKENS = 128
"""What every sim model answers (kept short: each token costs the simulation
a trip through the event loop)."""
POOL = "shared-capacity"
POOL_CAPACITY_PER_MINUTE = 200_000
BUDGET = "agents"
BUDGET_USD = 200
ROUTE = "code"

HARD_FLOOR = 0.9
EASY_FLOOR = 0.5
HARD_TASKS = frozenset(
    {TaskKind.PLANNING, TaskKind.ORCHESTRATION, TaskKind.SECURITY_REVIEW, TaskKind.DEBUG}
)


def floor(task: TaskKind) -> float:
    """The least quality a request of this kind should be served with."""
    return HARD_FLOOR if task in HARD_TASKS else EASY_FLOOR


@dataclass(frozen=True, slots=True)
class SimModel:
    """A simulated model: its config and the latency the simulation models for it."""

    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    quality: float
    pool_units_per_1k_tokens: int
    modelled_ttft_s: float
    modelled_prefill_s_per_token: float
    modelled_s_per_token: float

    def modelled_latency_s(self, input_tokens: int, output_tokens: int) -> float:
        return (
            self.modelled_ttft_s
            + input_tokens * self.modelled_prefill_s_per_token
            + output_tokens * self.modelled_s_per_token
        )


LARGE = SimModel("sim-large", 3.00, 15.00, 0.92, 1000, 0.6, 0.000_2, 0.030)
MEDIUM = SimModel("sim-medium", 0.80, 4.00, 0.75, 400, 0.4, 0.000_1, 0.015)
SMALL = SimModel("sim-small", 0.15, 0.60, 0.55, 100, 0.25, 0.000_05, 0.007)
MODELS = {model.name: model for model in (LARGE, MEDIUM, SMALL)}


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    candidates: tuple[str, ...]
    routing: Mapping[str, float]
    """The config's `routing` section (empty: faregate's defaults)."""
    hint_task: bool = False
    """Whether each request names its task, so faregate need not classify it."""

    @property
    def scored(self) -> bool:
        return len(self.candidates) > 1


ALWAYS_BEST = "always-best"
ALWAYS_CHEAPEST = "always-cheapest"
TUNED_ROUTING: Mapping[str, float] = {"task_weight": 8.5, "score_margin": 0.05}
"""Debugging (difficulty 0.7) to the large model, review and refactoring (0.6)
not: with the large model 3.75x the medium's price and quality 0.92 against
0.75, only a task_weight between about 8.2 and 8.7 separates the two, and only
with a score_margin well under the default 0.1."""
_ALL = (LARGE.name, MEDIUM.name, SMALL.name)
POLICIES = (
    Policy(ALWAYS_BEST, (LARGE.name,), {}),
    Policy(ALWAYS_CHEAPEST, (SMALL.name,), {}),
    Policy("faregate (defaults)", _ALL, {}),
    Policy("faregate (tuned)", _ALL, TUNED_ROUTING),
    Policy("faregate (tuned, task named)", _ALL, TUNED_ROUTING, hint_task=True),
)


def sim_config(policy: Policy) -> dict[str, Any]:
    """The policy's faregate config, as a YAML-ready mapping."""
    models = {
        model.name: {
            "provider": "sim",
            "quality": model.quality,
            "input_usd_per_mtok": model.input_usd_per_mtok,
            "output_usd_per_mtok": model.output_usd_per_mtok,
            "context_window_tokens": 200_000,
            "max_output_tokens": 4096,
            "workers": 4 * WAVE,
            "queue": 4 * WAVE,
            "limits": {POOL: {"per_1k_tokens": model.pool_units_per_1k_tokens}},
            "sim": {"first_token_delay_s": 0, "token_delay_s": 0, "output_tokens": OUTPUT_TOKENS},
        }
        for model in MODELS.values()
    }
    return {
        "server": {"default_route": ROUTE},
        "models": models,
        "routes": {ROUTE: list(policy.candidates)},
        "limit_pools": {
            POOL: {"unit": "tokens", "capacity": POOL_CAPACITY_PER_MINUTE, "window": "minute"}
        },
        "budgets": {BUDGET: {"limit_usd": BUDGET_USD, "window": "none"}},
        "routing": dict(policy.routing),
        "auth": {"enabled": False},
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended."""

    task: TaskKind
    """The kind the request was written as."""
    classified: TaskKind | None
    """The task faregate routed it as (None when rejected)."""
    model: str
    """The serving model ("" when rejected)."""
    cost_nano_usd: int
    input_tokens: int
    output_tokens: int
    reason: str
    """The error's reason when rejected, else ""."""

    @property
    def served(self) -> bool:
        return bool(self.model)

    @property
    def meets_floor(self) -> bool:
        return self.served and MODELS[self.model].quality >= floor(self.task)

    @property
    def modelled_latency_s(self) -> float:
        return MODELS[self.model].modelled_latency_s(self.input_tokens, self.output_tokens)


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: Policy
    outcomes: tuple[Outcome, ...]
    """One per request, in arrival order."""
    elapsed_s: float
    """Wall time of the whole run, in-process."""
