"""The money and quota sections: budgets, limit pools, and a model's draw on a pool.

Money is integer nano-USD here, read exactly from the file's USD (`limit_usd`,
`capacity_usd`), so the hot path never parses or multiplies decimals; a limit is
integer pool units. Each entry's name is the key it is filed under.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, ModelWrapValidatorHandler, model_validator

from faregate_server.config.fields import (
    SECTION,
    Choice,
    FromKey,
    Integer,
    Number,
    Thresholds,
    Usd,
    no_default_shown,
)
from faregate_server.config.problems import Loc, reject

MAX_SCARCITY_K = 16.0
"""The largest scarcity exponent: the smallest remaining fraction, one unit of
an int64 capacity (about 1e-19), raised to -16 is still a float (about 4e302)."""


class Window(StrEnum):
    """When a budget's spend or a limit pool's use returns to zero (UTC calendar)."""

    NONE = "none"
    MINUTE = "minute"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    """ISO weeks: from Monday 00:00 UTC to the next."""
    MONTHLY = "monthly"


BudgetWindow = Window


class LimitUnit(StrEnum):
    """What a limit pool counts."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    USD = "usd"
    """Money in nano-USD; a model draws its request's cost."""
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """Money agents may spend, per window, under one `budget_key`."""

    __pydantic_config__ = SECTION

    key: FromKey
    """The key agents send in `budget_key`."""
    limit_nano_usd: Annotated[int, Usd(), Field(validation_alias="limit_usd")]
    """Spend allowed per window (written `limit_usd`, in USD)."""
    window: Annotated[Window, Choice(), Field(default=Window.NONE)]
    """When the spend resets."""
    alerts: Annotated[tuple[float, ...], Thresholds()] = ()
    """Fractions of the limit whose crossing raises an alert, once per window each
    (e.g. [0.5, 0.8, 1.0]); increasing, each above 0 and at most 1."""


@dataclass(frozen=True, slots=True)
class LimitDraw:
    """How much one request of a model draws from one limit pool, in pool units.

    For a USD pool the draw is the request's cost and these rates are unused.
    """

    __pydantic_config__ = SECTION

    pool: FromKey
    per_request: Annotated[int, Integer(0)] = 0
    """Units per request. With per_1k_tokens also 0, the pool unit's natural draw:
    1 per request for a requests or custom pool, 1 per token for a tokens pool."""
    per_1k_tokens: Annotated[int, Integer(0)] = 0
    """Units per 1,000 input plus output tokens, rounded up."""

    def natural(self, unit: LimitUnit) -> LimitDraw:
        """This draw, or the natural draw of `unit` when it names no rate."""
        if unit is LimitUnit.USD or self.per_request or self.per_1k_tokens:
            return self
        if unit is LimitUnit.TOKENS:
            return LimitDraw(self.pool, per_1k_tokens=1000)
        return LimitDraw(self.pool, per_request=1)


@dataclass(frozen=True, slots=True)
class LimitPoolConfig:
    """A provider account's limit shared by every model that draws on it."""

    __pydantic_config__ = SECTION

    name: FromKey
    unit: Annotated[LimitUnit, Choice()]
    """What the pool counts: requests, tokens, usd (money) or custom units."""
    # The default stands for "not written" (`_one_capacity` says what is required),
    # and keeps the rule all the same.
    capacity: Annotated[int, Integer(1), Field(default=1), no_default_shown]
    """Units per window (nano-USD for a USD pool, written `capacity_usd`); required
    for the other units."""
    window: Annotated[Window, Choice(), Field(default=Window.MINUTE)]
    """When the pool's use returns to zero."""
    scarcity_k: Annotated[float, Number(0, MAX_SCARCITY_K)] = 1.0
    """Exponent of the scarcity multiplier 1/f^k as the remaining fraction f falls
    (at most 16)."""
    capacity_usd: InitVar[Annotated[int | None, Usd(), Field(default=None), no_default_shown]] = (
        None
    )
    """A USD pool's capacity per window, in USD; required for unit usd, and only for it."""

    def __post_init__(self, capacity_usd: int | None) -> None:
        if capacity_usd is not None:
            object.__setattr__(self, "capacity", capacity_usd)

    @model_validator(mode="wrap")
    @classmethod
    def _one_capacity(
        cls, data: Any, handler: ModelWrapValidatorHandler[LimitPoolConfig]
    ) -> LimitPoolConfig:
        pool = handler(data)
        given = data if isinstance(data, Mapping) else {}
        wanted, other = ("capacity_usd", "capacity")
        if pool.unit is not LimitUnit.USD:
            wanted, other = other, wanted
        problems: list[tuple[Loc, str]] = []
        if wanted not in given:
            problems.append(((wanted,), "is required"))
        if other in given:
            problems.append(((other,), f"is not for a {pool.unit.value} pool; it has {wanted}"))
        reject(problems)
        return pool
