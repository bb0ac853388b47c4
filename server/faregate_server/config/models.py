"""The `models` section: one upstream model each, with its breaker and simulation settings.

Prices are integer nano-USD per million tokens, read exactly from the file's USD.
A model's API key is read, at load, from the environment variable its config
names, and kept out of every repr (`settle_model`, which also checks the rules
between a model's fields). A model's draws on limit pools name pools the config
has; the rules between sections (`faregate_server.config.schema`) check that and
give an unrated draw its pool's natural rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from enum import StrEnum
from typing import Annotated

import pydantic.dataclasses
from pydantic import AfterValidator, Field
from pydantic.json_schema import SkipJsonSchema

from faregate_server.config.fields import (
    A_SET,
    SECTION,
    Choice,
    Fraction,
    FromKey,
    Integer,
    Name,
    Number,
    Text,
    Usd,
    Version,
    keyed,
    no_default_shown,
    set_derived,
)
from faregate_server.config.limits import LimitDraw
from faregate_server.config.problems import Loc
from faregate_server.config.tokenizers import Tokenizer, default_tokenizer
from faregate_server.domain import Capability, RefusableSetting
from faregate_server.money import Price

DEFAULT_MAX_RESPONSE_BYTES = 3 << 20
"""3 MiB: an answer this size still fits, with its accounting, in the 4 MiB
message gRPC clients accept by default."""
MAX_MAX_RESPONSE_BYTES = 64 << 20
"""The most `max_response_bytes` may be set to."""


class ProviderKind(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    SIM = "sim"


class OutputCapField(StrEnum):
    """The request field an OpenAI-compatible upstream reads the output cap from."""

    MAX_COMPLETION_TOKENS = "max_completion_tokens"
    """OpenAI's current field, the only one its reasoning models take."""
    MAX_TOKENS = "max_tokens"
    """The older field: the one Ollama and older llama.cpp servers honour."""


_DEFAULT_API_BASE = {
    ProviderKind.ANTHROPIC: "https://api.anthropic.com",
    ProviderKind.SIM: "sim://",
}


@dataclass(frozen=True, slots=True)
class SimToolCall:
    """The call a `sim` model makes when offered tools, so an agent loop can be
    demonstrated with no keys."""

    __pydantic_config__ = SECTION

    name: Annotated[str, Text()] = ""
    """The tool to call; empty: the request's first tool. A request that
    does not offer it gets a plain answer."""
    arguments_json: Annotated[str, Text()] = "{}"
    """The call's arguments, as the JSON text a model would write."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How the simulated provider behaves."""

    __pydantic_config__ = SECTION

    first_token_delay_s: Annotated[float, Number(0)] = 0.05
    """Delay before the first token."""
    token_delay_s: Annotated[float, Number(0)] = 0.01
    """Delay between tokens."""
    output_tokens: Annotated[int, Integer(1)] = 32
    """Tokens generated when max_output_tokens allows."""
    failure_rate: Annotated[float, Fraction()] = 0.0
    """Probability, 0 to 1, that a call fails as an upstream 503."""
    slow_rate: Annotated[float, Fraction()] = 0.0
    """Probability, 0 to 1, that the first token takes slow_first_token_delay_s instead."""
    slow_first_token_delay_s: Annotated[float, Number(0)] = 1.0
    """The first-token delay of a slow call (a heavy latency tail)."""
    tool_call: SimToolCall | None = None
    """When set, a request offering tools whose last turn is not a tool
    result is answered with this call (finish TOOL_CALLS) instead of text;
    after the tool's result, the answer is text again."""


# Validated when built in code too (a pydantic dataclass): the breaker's arithmetic
# relies on these bounds, and tests and tools build settings directly.
@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=SECTION)
class BreakerSettings:
    """When a deployment's circuit breaker opens and how it recovers."""

    consecutive_failures: Annotated[int, Integer(1)] = 5
    """Open after this many failures in a row."""
    error_rate: Annotated[float, Fraction()] = 0.5
    """Also open when failures are at least this share (0 to 1) of the window's outcomes..."""
    min_requests: Annotated[int, Integer(1)] = 10
    """...provided the window holds at least this many outcomes."""
    window_s: Annotated[float, Number()] = 30.0
    """The span the error rate is measured over (in ten buckets of window_s / 10)."""
    cooldown_s: Annotated[float, Number()] = 10.0
    """How long the breaker stays open before it lets trial requests through."""
    half_open_trials: Annotated[int, Integer(1)] = 1
    """Trial requests allowed in flight at once while half-open."""


def _no_trailing_slash(url: str) -> str:
    return url.rstrip("/")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """One upstream model faregate can call."""

    __pydantic_config__ = SECTION

    name: FromKey
    """The name agents use in `model`."""
    provider: Annotated[ProviderKind, Choice()]
    """Which wire protocol the upstream speaks."""
    upstream_model: Annotated[str, Text(), Field(default_factory=lambda data: data.get("name"))]
    """The model id sent upstream; defaults to the model's name."""
    api_base: Annotated[
        str,
        Text(),
        AfterValidator(_no_trailing_slash),
        Field(
            default_factory=lambda data: _no_trailing_slash(
                _DEFAULT_API_BASE.get(data.get("provider"), "")
            )
        ),
    ]
    """Base URL of the upstream API (for openai: up to and including /v1; required
    for openai, defaults to the provider's own for the others)."""
    api_key_env: Annotated[str, Text()] = ""
    """The environment variable holding the API key (required for anthropic)."""
    api_key: SkipJsonSchema[str | None] = field(init=False, default=None, repr=False)
    """The key read from `api_key_env`; never logged."""
    input_usd_per_mtok: InitVar[Annotated[int, Usd()]]
    """USD per million input tokens."""
    output_usd_per_mtok: InitVar[Annotated[int, Usd()]]
    """USD per million output tokens."""
    cached_input_usd_per_mtok: InitVar[
        Annotated[int | None, Usd(), Field(default=None), no_default_shown]
    ] = None
    """USD per million input tokens read from the prompt cache; defaults to
    the input price, so it never under-counts."""
    cache_write_usd_per_mtok: InitVar[
        Annotated[int | None, Usd(), Field(default=None), no_default_shown]
    ] = None
    """USD per million input tokens written to the prompt cache (Anthropic: a
    five-minute write); defaults to the input price, for anthropic models to
    1.25 times it, Anthropic's rate."""
    cache_write_1h_usd_per_mtok: InitVar[
        Annotated[int | None, Usd(), Field(default=None), no_default_shown]
    ] = None
    """USD per million input tokens written to live an hour (Anthropic);
    defaults to the input price, for anthropic models to 2 times it."""
    price: SkipJsonSchema[Price] = field(init=False)
    """Token prices in nano-USD per million tokens."""
    context_window_tokens: Annotated[int, Integer(1)] = 128_000
    """Input plus output tokens the model accepts."""
    max_output_tokens: Annotated[int, Integer(1)] = 4096
    """Output cap used when the request sets none, and the most it may ask for;
    smaller than context_window_tokens."""
    output_cap_field: Annotated[OutputCapField, Choice()] = OutputCapField.MAX_COMPLETION_TOKENS
    """For openai models: the request field the output cap is sent in.
    `max_completion_tokens` (OpenAI, vLLM) or `max_tokens` (Ollama and older
    llama.cpp, which ignore the other and generate unbounded); ignored by the
    other providers."""
    tokenizer: Annotated[
        Tokenizer,
        Choice(),
        Field(
            default_factory=lambda data: default_tokenizer(
                data.get("provider"), data.get("upstream_model")
            )
        ),
    ]
    """How the model's prompt and answer are counted: o200k_base, cl100k_base or
    estimate; defaults to the upstream model's own encoding for OpenAI's models
    (o200k_base for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series,
    cl100k_base for gpt-4 and gpt-3.5-turbo), else estimate."""
    estimate_headroom: Annotated[float, Number(0, 2)] = 0.0
    """For tokenizer estimate: how much more the model's tokenizer may count
    than the estimate's one token per 3 UTF-8 bytes (0.5: one per 2 bytes; 2,
    the most: one per byte)."""
    workers: Annotated[int, Integer(1)] = 16
    """Concurrent upstream calls."""
    queue: Annotated[int, Integer(0)] = 64
    """Requests that may wait for a worker before new ones are rejected."""
    idle_timeout_s: Annotated[float, Number()] = 30.0
    """Longest wait for a stream's next data event (keep-alives don't count)
    before the stream is cut."""
    connect_timeout_s: Annotated[float, Number()] = 10.0
    """Longest wait for a TCP/TLS connection to the upstream."""
    sim: SimSettings = SimSettings()
    """Behaviour of a `sim` model (ignored by other providers)."""
    version: Annotated[str, Version()] = ""
    """The deployment's version, reported with each answer (canaries split by it)."""
    quality: Annotated[float, Fraction()] = 0.5
    """How good the model is, 0 to 1; the router weighs it against cost."""
    capabilities: Annotated[frozenset[Annotated[Capability, Choice()]], A_SET] = frozenset()
    """What the model can do beyond plain chat."""
    refuses: Annotated[frozenset[Annotated[RefusableSetting, Choice()]], A_SET] = frozenset()
    """Request settings the model refuses though its provider takes them
    (OpenAI's reasoning models: temperature, top_p; newer Claude models:
    temperature_with_top_p): a request giving one is sent elsewhere."""
    limits: InitVar[
        Annotated[Mapping[Annotated[str, Name()], LimitDraw], keyed(), Field(default_factory=dict)]
    ]
    """The limit pools each request draws on, by pool name."""
    draws: SkipJsonSchema[tuple[LimitDraw, ...]] = field(init=False, default=())
    """The limit pools each request draws on."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    """When the model's circuit breaker opens and how it recovers."""
    first_byte_timeout_s: Annotated[
        float, Number(), Field(default_factory=lambda data: data.get("idle_timeout_s"))
    ]
    """Longest wait for a whole (non-streamed) answer to start arriving, and
    longest silence inside it; defaults to idle_timeout_s."""
    max_response_bytes: Annotated[int, Integer(1024, MAX_MAX_RESPONSE_BYTES)] = (
        DEFAULT_MAX_RESPONSE_BYTES
    )
    """Largest whole answer, and largest single stream event, after decompression."""

    def __post_init__(
        self,
        input_usd_per_mtok: int,
        output_usd_per_mtok: int,
        cached_input_usd_per_mtok: int | None,
        cache_write_usd_per_mtok: int | None,
        cache_write_1h_usd_per_mtok: int | None,
        limits: Mapping[str, LimitDraw],
    ) -> None:
        # The InitVars hold nano-USD by now: their rule read the file's USD.
        write, write_1h = _CACHE_WRITE_PERCENT.get(self.provider, (100, 100))
        price = Price(
            input_usd_per_mtok,
            output_usd_per_mtok,
            _given_or(cached_input_usd_per_mtok, input_usd_per_mtok),
            _given_or(cache_write_usd_per_mtok, _times(input_usd_per_mtok, write)),
            _given_or(cache_write_1h_usd_per_mtok, _times(input_usd_per_mtok, write_1h)),
        )
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "draws", tuple(limits.values()))


_CACHE_WRITE_PERCENT: dict[ProviderKind, tuple[int, int]] = {
    ProviderKind.ANTHROPIC: (125, 200),
}
"""A provider's cache write prices (five-minute, one-hour) in percent of the
input price, where it bills writes above input: the defaults when the
config gives none, so a write is never charged less than its bill."""


def _given_or(price: int | None, default: int) -> int:
    return default if price is None else price


def _times(nano_usd: int, percent: int) -> int:
    """`percent` of `nano_usd`, rounded up to a whole nano-USD."""
    return -(-nano_usd * percent // 100)


def settle_model(model: ModelConfig, env: Mapping[str, str]) -> list[tuple[Loc, str]]:
    """Reads a validated model's API key from `env` into it; returns what breaks the
    rules between its fields (places below the model)."""
    problems: list[tuple[Loc, str]] = []
    if not model.api_base:
        problems.append((("api_base",), "is required for openai models"))
    if model.api_key_env:
        api_key = env.get(model.api_key_env)
        if not api_key:
            problems.append(
                (("api_key_env",), f"environment variable {model.api_key_env} is not set")
            )
        set_derived(model, "api_key", api_key or None)
    elif model.provider is ProviderKind.ANTHROPIC:
        problems.append((("api_key_env",), "is required for anthropic models"))
    if model.estimate_headroom and model.tokenizer is not Tokenizer.ESTIMATE:
        problems.append((("estimate_headroom",), "applies only to tokenizer estimate"))
    if model.max_output_tokens >= model.context_window_tokens:
        problems.append((("max_output_tokens",), "must be smaller than context_window_tokens"))
    return problems
