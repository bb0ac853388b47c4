"""The domain values faregate works with, free of any wire format.

The servicer translates protobuf messages into these and back; everything
between (planning, budgets, pools, providers) speaks only these. What a
conversation carries beyond plain text (content parts, tools and their calls,
response formats, reasoning) is in content.py; a plain text request holds
none of it, so it costs nothing on the plain path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from faregate_server.content import (
    CacheTtl,
    Feature,
    GenerationOptions,
    MessageExtras,
    ReasoningBlock,
    ToolCall,
)


class Role(StrEnum):
    """Who wrote a chat message; the values are the providers' wire names."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    """A tool's result, answering a call of an earlier assistant turn."""


class FinishReason(StrEnum):
    """Why generation stopped (each provider's stop reasons are mapped onto
    these as protos/faregate/v1/router.proto documents)."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"
    REFUSAL = "refusal"
    """The model declined to answer."""
    PAUSE_TURN = "pause_turn"
    """The provider paused a long turn; sending it back continues it."""
    CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
    """The answer filled the context window: cut short, as with LENGTH."""


class TaskKind(StrEnum):
    """What a coding agent asks for; weights how much model quality matters."""

    BOILERPLATE = "boilerplate"
    GENERATION = "generation"
    REFACTOR = "refactor"
    REVIEW = "review"
    UNIT_TEST = "unit_test"
    PLANNING = "planning"
    ORCHESTRATION = "orchestration"
    SECURITY_REVIEW = "security_review"
    DEBUG = "debug"
    EXPLAIN = "explain"


class Preference(StrEnum):
    """What the caller wants the router to favour."""

    BALANCED = "balanced"
    COST = "cost"
    LATENCY = "latency"
    QUALITY = "quality"


class Capability(StrEnum):
    """What a model can do beyond plain chat."""

    TOOLS = "tools"
    VISION = "vision"
    JSON_MODE = "json_mode"


class RefusableSetting(StrEnum):
    """A request setting a model can refuse though its provider takes it
    (`refuses` in the model's config): a request giving one is not sent to
    the model. In the order a refusal is named."""

    TEMPERATURE = "temperature"
    TOP_P = "top_p"
    TEMPERATURE_WITH_TOP_P = "temperature_with_top_p"
    """Either alone is taken, both at once are not."""
    STOP = "stop"
    SEED = "seed"
    REASONING = "reasoning"
    """A reasoning effort or budget, which models that don't reason refuse."""


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    """Lost a hedge race, or its caller went away."""


@dataclass(frozen=True, slots=True)
class RoutingHints:
    """The caller's say in model selection; every field is optional."""

    prefer: Preference = Preference.BALANCED
    min_quality: float | None = None
    max_cost_nano_usd: int | None = None
    """Candidates whose worst case costs more are infeasible."""
    capabilities: frozenset[Capability] = frozenset()
    min_context_tokens: int | None = None
    task: TaskKind | None = None
    """None: classified from the messages."""
    fallback: bool = True
    """Whether other candidates of the route may serve after the first fails."""
    explain: bool = False
    """Whether to report every candidate's score."""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One upstream attempt of a request, for the caller and the logs."""

    model: str
    outcome: AttemptOutcome
    latency_s: float
    cost_nano_usd: int
    hedge: bool = False
    reason: str = ""
    """Why it failed: faregate's error reason, e.g. UPSTREAM_RATE_LIMITED."""


@dataclass(frozen=True, slots=True)
class CandidateScore:
    """How the router judged one candidate."""

    model: str
    feasible: bool
    reason: str
    """Why it was infeasible; empty when feasible."""
    score: float
    worst_case_nano_usd: int
    quality: float
    """Task-weighted quality."""
    scarcity: float
    """The limit pools' cost multiplier."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    """The message's text; empty when its content is in `extras.parts`."""
    extras: MessageExtras | None = None
    """Parts, tool calls, the call a tool turn answers, reasoning; None when
    the message is plain text."""


@dataclass(frozen=True, slots=True)
class RouteCall:
    """One agent request, validated.

    Attributes:
        model: A model name or route alias; empty means the default route.
        messages: The conversation, oldest first; never empty.
        agent: The calling agent's name, possibly empty.
        budget_key: The budget to spend from.
        max_output_tokens: The caller's output cap, or None for the model's.
        temperature: Sampling temperature, or None for the provider's default.
        metadata: Caller labels kept for logs.
        hints: The caller's routing preferences.
        additional_budget_keys: Further budgets the request draws on (a team's, say),
            each charged the whole cost, all or nothing.
        request_id: The client's id for the request (AIP-155), or empty; a
            retry with the same id is answered from the first one's result.
        fingerprint: A digest of the request without its id, so a reused id
            with a different request is caught.
        principal: Who the request is authenticated as (empty with auth off).
        options: Tools, tool choice, response format, stop sequences, top_p,
            seed, reasoning and cache_prompt; None when the call sets none of them.
        features: Every `Feature` the call uses, its messages' included: a
            candidate whose provider adapter lacks one is not chosen.
            `call_features` finds them; route_call fills this in.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    agent: str
    budget_key: str
    max_output_tokens: int | None
    temperature: float | None
    metadata: Mapping[str, str]
    hints: RoutingHints = RoutingHints()
    additional_budget_keys: tuple[str, ...] = ()
    request_id: str = ""
    fingerprint: str = ""
    principal: str = ""
    options: GenerationOptions | None = None
    features: frozenset[Feature] = frozenset()

    @property
    def budget_keys(self) -> tuple[str, ...]:
        """Every budget the request draws on, its own first."""
        return (self.budget_key, *self.additional_budget_keys)

    @property
    def claim_key(self) -> str:
        """Where its request id's claim and result are kept (see `claim_key`)."""
        return claim_key(self.principal, self.request_id)


def call_features(
    messages: tuple[ChatMessage, ...], options: GenerationOptions | None
) -> dict[Feature, str]:
    """Every feature a call with these messages and options uses, each with
    the path of the request field that uses it first (`messages[2].parts`),
    in the order of `Feature`."""
    found: dict[Feature, str] = {}
    for index, message in enumerate(messages):
        extras = message.extras
        if extras is None:
            continue
        path = f"messages[{index}]"
        if extras.parts:
            found.setdefault(Feature.CONTENT_PARTS, f"{path}.parts")
            for number, part in enumerate(extras.parts):
                if not isinstance(part, str):
                    found.setdefault(Feature.IMAGES, f"{path}.parts[{number}].image")
        if extras.tool_calls:
            found.setdefault(Feature.TOOL_CALLS, f"{path}.tool_calls")
        if extras.tool_call_id:
            found.setdefault(Feature.TOOL_RESULTS, f"{path}.tool_call_id")
        if extras.reasoning:
            found.setdefault(Feature.REASONING_BLOCKS, f"{path}.reasoning")
    if options is not None:
        requested = {
            Feature.TOOLS: bool(options.tools),
            Feature.TOOL_CHOICE: options.tool_choice is not None,
            Feature.PARALLEL_TOOL_CALLS: options.parallel_tool_calls is not None,
            Feature.RESPONSE_FORMAT: options.response_format is not None,
            Feature.STOP: bool(options.stop),
            Feature.TOP_P: options.top_p is not None,
            Feature.SEED: options.seed is not None,
            Feature.REASONING: options.reasoning is not None,
        }
        found.update((feature, feature.value) for feature, used in requested.items() if used)
    return {feature: found[feature] for feature in _FEATURES if feature in found}


_FEATURES = tuple(Feature)
"""Feature's members in order, listed once: iterating an enum is slow."""


def claim_key(principal: str, request_id: str) -> str:
    """Where a request id's claim and result are kept. Each principal has ids
    of its own, so one can neither read nor block another's; with auth off
    the key is the id itself. The length prefix keeps every pair apart."""
    return f"{len(principal)}:{principal}/{request_id}" if principal else request_id


@dataclass(frozen=True, slots=True)
class Usage:
    """A request's tokens, as faregate.v1's Usage counts them: `input_tokens`
    is every prompt token the provider processed, cached and cache-written
    ones included, and the cache counts are parts of it; `reasoning_tokens`
    is part of `output_tokens`. Each provider's usage is normalised to this
    (upstream/usage.py), so one price rule serves them all (money.py)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    """Input read from the provider's prompt cache."""
    cache_write_input_tokens: int = 0
    """Input written to the provider's prompt cache, for any lifetime."""
    cache_write_1h_input_tokens: int = 0
    """The part of `cache_write_input_tokens` written to live an hour, priced
    apart from five-minute writes (Anthropic)."""
    reasoning_tokens: int = 0
    """Output the model spent reasoning."""


class UsageFlaw(StrEnum):
    """Why an upstream's reported usage was not believed (see upstream/usage.py)."""

    MISSING = "missing"
    """A usage block with a count absent."""
    NOT_INTEGER = "not_integer"
    """A count that is not a JSON integer: a float, a string, a boolean, null."""
    NEGATIVE = "negative"
    PARTS_OVER_WHOLE = "parts_over_whole"
    """A part larger than its whole: cached input beyond the input, reasoning
    beyond the output."""
    OVER_CONTEXT_WINDOW = "over_context_window"
    """More input than the model's context window holds."""
    OVER_OUTPUT_CAP = "over_output_cap"
    """More output than the `max_output_tokens` sent upstream."""
    OVER_RESERVATION = "over_reservation"
    """A cost beyond the worst case reserved for the attempt."""


@dataclass(frozen=True, slots=True)
class ImplausibleUsage:
    """Usage an upstream reported that the request could not have used.

    It is never charged: the request is charged its reservation instead, and
    the report is kept in the ledger beside that charge.
    """

    flaw: UsageFlaw
    reported: str
    """The counts as reported, as a short JSON object (long values cut)."""


ReportedUsage = Usage | ImplausibleUsage | None
"""What an upstream said it used: believable, not, or nothing at all."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What a provider adapter sends upstream, already resolved to one model."""

    upstream_model: str
    messages: tuple[ChatMessage, ...]
    max_output_tokens: int
    temperature: float | None
    options: GenerationOptions | None = None
    """The call's, as RouteCall.options."""
    cache_ttl: CacheTtl | None = None
    """Cache the prompt for this long (the request's `cache_prompt`, else its
    route's, decided it); None: do not ask the provider to cache it."""
    reported: ReportedSoFar | None = None
    """For a stream: where the adapter keeps the usage reported before the
    end, so a stream cut short is charged no less than it (see ReportedSoFar)."""


class ReportedSoFar:
    """The usage a provider stream has reported before its end, as sent, and
    the reader that makes a ReportedUsage of it.

    Anthropic reports a stream's whole input at its start (`message_start`)
    and its output as running totals; a server that sends usage in every
    chunk does the same for both. A stream cut short (its caller gone, its
    deadline, an upstream failure after output was delivered) is charged the
    larger of this and faregate's own count, count by count
    (routing/settlement.py). The adapter hands over the object it keeps the
    report in, so keeping it costs nothing per event; it is read once, at a
    cut. A provider that reports nothing before its end leaves it unset.
    """

    __slots__ = ("raw", "read")

    def __init__(self) -> None:
        self.raw: object = None
        """The report as decoded from JSON (the adapter may update it in place)."""
        self.read: Callable[[object], ReportedUsage] | None = None
        """How the adapter reads `raw` (its provider's usage block)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer from a provider; usage is None when it reported none."""

    text: str
    finish_reason: FinishReason
    usage: ReportedUsage
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str = ""
    """Why the model declined, when it did and said."""
    reasoning: tuple[ReasoningBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a provider stream; usage is None when it reported none.

    Text chunks before it are plain `str`s, which keeps the per-token path lean.
    """

    finish_reason: FinishReason
    usage: ReportedUsage
    tool_calls: tuple[ToolCall, ...] = ()
    """Every call the stream's ToolCallDeltas made up, assembled, by index."""
    reasoning: tuple[ReasoningBlock, ...] = ()
    """The stream's reasoning, as whole blocks with their signatures."""


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Who served a request and how it was chosen, as its caller is told.

    Made once, when the first result is in (after any retries, fallbacks and
    hedges): the first event of a stream, and part of a whole answer.
    """

    request_id: str
    model: str
    """The configured name of the model serving the request."""
    provider: str
    model_version: str
    reserved_nano_usd: int
    """The worst case held for the serving attempt."""
    task: TaskKind | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    """Every attempt, the serving one last."""
    candidates: tuple[CandidateScore, ...] = ()
    """Every candidate judged, when the caller asked for an explanation."""

    def charged(self, cost_nano_usd: int) -> RoutingDecision:
        """The decision with its serving attempt's cost filled in (the others cost nothing)."""
        # Field by field: dataclasses.replace costs several constructors, on
        # every request (tests/test_domain.py holds this to every field).
        serving = self.attempts[-1]
        paid = AttemptRecord(
            serving.model,
            serving.outcome,
            serving.latency_s,
            cost_nano_usd,
            serving.hedge,
            serving.reason,
        )
        return RoutingDecision(
            self.request_id,
            self.model,
            self.provider,
            self.model_version,
            self.reserved_nano_usd,
            self.task,
            (*self.attempts[:-1], paid),
            self.candidates,
        )


@dataclass(frozen=True, slots=True)
class RouteResult:
    """A served request with its accounting."""

    decision: RoutingDecision
    output: str
    finish_reason: FinishReason
    usage: Usage
    cost_nano_usd: int
    budget_remaining_nano_usd: int
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str = ""
    reasoning: tuple[ReasoningBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """Last event of a successful streamed request."""

    usage: Usage
    cost_nano_usd: int
    budget_remaining_nano_usd: int
    finish_reason: FinishReason
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: tuple[ReasoningBlock, ...] = ()
