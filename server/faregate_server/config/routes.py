"""The routing sections: `routes` (named candidate lists), `routing` (how candidates are
scored) and `retries`.

A route is written as its list of candidates, or as a mapping with `candidates`
and its hedging and prompt caching settings; a candidate is a model name, or
`{split: {model: weight}}` for a canary, of which one model is drawn per
request. That every candidate names a configured model, once, is a rule
between sections (`faregate_server.config.schema`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from faregate_server.config.fields import (
    A_LIST,
    SECTION,
    Boolean,
    Choice,
    CodeOnly,
    Fraction,
    FromKey,
    Integer,
    Name,
    NonEmpty,
    Number,
    no_default_shown,
)
from faregate_server.config.problems import SHORTHAND, problem
from faregate_server.content import CacheTtl

Split = Annotated[
    Mapping[Annotated[str, Name()], Annotated[int, Integer(1)]],
    NonEmpty("a split needs at least one model"),
]
"""Models and their weights, e.g. `{gpt-4o@v1: 9, gpt-4o@v2: 1}`."""


def _not_null(value: Any) -> Any:
    if value is None:
        raise problem("must be a mapping of models to weights")
    return value


@dataclass(frozen=True, slots=True)
class RouteSlot:
    """One candidate place in a route: a model, or a weighted split between
    versions (a canary), of which one is drawn per request."""

    # In a file a slot is always a split (a bare name is read in `Candidate`).
    __pydantic_config__ = ConfigDict(**SECTION, json_schema_extra={"required": ["split"]})

    models: Annotated[CodeOnly[tuple[str, ...]], Field(default=())]
    weights: Annotated[CodeOnly[tuple[int, ...]], Field(default=())]
    cumulative_weights: SkipJsonSchema[tuple[int, ...]] = field(init=False)
    """Running totals of `weights`, computed once for the per-request draw."""
    # Required in a file (`_candidate` sees to it) and never null there: a slot of
    # no model would fail every request of its route. Code names models instead.
    split: InitVar[
        Annotated[
            Split | None,
            BeforeValidator(_not_null, json_schema_input_type=Split),
            no_default_shown,
        ]
    ] = None
    """A canary: its models and their weights (a candidate written as a mapping)."""

    def __post_init__(self, split: Mapping[str, int] | None) -> None:
        if split is not None:
            object.__setattr__(self, "models", tuple(split))
            object.__setattr__(self, "weights", tuple(split.values()))
        if not self.models or len(self.models) != len(self.weights):
            raise ValueError("a route slot needs one weight per model, and at least one model")
        object.__setattr__(self, "cumulative_weights", tuple(itertools.accumulate(self.weights)))


def _candidate(value: Any) -> Any:
    if isinstance(value, str):
        return RouteSlot(models=(value,), weights=(1,))
    if not isinstance(value, Mapping):
        raise problem("must be a model name or a split")
    if "split" not in value:
        raise problem("a split is written {split: {model: weight, ...}}")
    return value


Candidate = Annotated[
    RouteSlot, BeforeValidator(_candidate, json_schema_input_type=str | RouteSlot)
]
"""A model name, or `{split: {model: weight, ...}}`."""


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A named list of candidates, in preference order."""

    __pydantic_config__ = SECTION

    name: FromKey
    slots: Annotated[
        tuple[Candidate, ...],
        A_LIST,
        NonEmpty("must be a non-empty list of models or splits"),
        Field(validation_alias=AliasChoices("candidates", SHORTHAND)),
    ]
    """Candidates in preference order (written `candidates`); order breaks ties
    between equal scores."""
    hedge_after_s: Annotated[float, Number()] | None = None
    """Start a hedge when the first token is this late; None: no fixed delay."""
    hedge_after_p95: Annotated[bool, Boolean()] = False
    """Start a hedge when the first token is later than the primary's recent p95."""
    cache_prompt: Annotated[bool, Boolean()] = False
    """Have the provider cache each request's prompt, so a conversation's
    repeated prefix is billed at the cache-read price (Anthropic: marks the
    tools, the system prompt and the conversation); a request's own
    `cache_prompt` overrides it."""
    cache_ttl: Annotated[CacheTtl, Choice()] = CacheTtl.FIVE_MINUTES
    """How long a cached prompt lives: `5m` or `1h` (dearer to write, for
    turns further apart)."""

    @property
    def hedged(self) -> bool:
        return self.hedge_after_s is not None or self.hedge_after_p95


RouteSpelling = list[Candidate] | RouteConfig
"""How the file writes a route: its candidates alone, or the whole mapping."""


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """How the router scores candidates."""

    __pydantic_config__ = SECTION

    task_weight: Annotated[float, Number(0)] = 8.0
    """How hard tasks sharpen quality: a model's task-weighted quality is
    quality ** (1 + task_weight x the task's difficulty)."""
    score_margin: Annotated[float, Number(0)] = 0.1
    """Candidates scoring within this fraction of the best are equals; load and
    latency pick among them (power of two choices)."""
    use_it_or_lose_it_discount: Annotated[float, Fraction()] = 0.5
    """Multiplier on a pool's scarcity when its reset is near and headroom is large."""
    use_it_or_lose_it_horizon_s: Annotated[float, Number(0)] = 3600.0
    """How near a reset must be for the discount."""
    use_it_or_lose_it_headroom: Annotated[float, Fraction()] = 0.3
    """Remaining fraction above which the discount applies."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How often a request is tried again, and how retries are rationed."""

    __pydantic_config__ = SECTION

    max_attempts: Annotated[int, Integer(1)] = 3
    """Upstream attempts per request, the first included (hedges count)."""
    backoff_base_s: Annotated[float, Number(0)] = 0.05
    """Full-jitter backoff: a retry of the same model waits up to base x 2^n."""
    backoff_max_s: Annotated[float, Number(0)] = 2.0
    """The longest backoff."""
    budget_ratio: Annotated[float, Number(0)] = 0.1
    """Retries allowed per model as a fraction of its recent requests."""
    budget_min_retries: Annotated[int, Integer(0)] = 3
    """Retries allowed per window regardless of the ratio."""
    budget_window_s: Annotated[float, Number()] = 10.0
    """The span the retry budget counts over."""
    rate_limit_cooldown_s: Annotated[float, Number(0)] = 1.0
    """How long a 429 without Retry-After takes the model out of rotation."""
