"""The request's generation options, in: validated `GenerationOptions` out.

rpc/translate.py hands a request that sets any of them here: its tools,
tool choice, parallel_tool_calls, response format, stop sequences, top_p,
seed, reasoning and cache_prompt (which has no rule: either value is good).
Like translate.py, `generation_options` adds every violation it finds to
the caller's `violations`, under the field's path.

The rules: tool names follow rules.NAME and are unique, at most MAX_TOOLS;
a tool choice other than the provider's default, and parallel_tool_calls,
need tools (OpenAI refuses them without); a tool's parameters and a response
schema are JSON objects of bounded size; stop sequences, top_p and the
reasoning budget stay within the bounds below.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from faregate.v1 import router_pb2

from faregate_server.config.schema import ServerConfig
from faregate_server.content import (
    DEFAULT_SCHEMA_NAME,
    NO_PARAMETERS,
    GenerationOptions,
    JsonObject,
    Reasoning,
    ReasoningEffort,
    ResponseFormat,
    Tool,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.rpc.rules import NAME, NAME_RULE, AnyRouteRequest, check_tokens, too_many

MAX_TOOLS = 128
"""OpenAI's limit, the lower of the two providers': a request with more could
be served by no OpenAI model."""
MAX_JSON_CHARS = 65536
"""A tool's parameters_json, a response schema_json: parsed on the event
loop before any work, so their size is bounded apart from the request's."""
MAX_STOP_SEQUENCES = 16
"""Anthropic takes more than OpenAI's 4; past this a request is unlikely to be
anything but a mistake."""
MAX_STOP_CHARS = 256

_TOOL_CHOICE_MODES = {
    router_pb2.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    router_pb2.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    router_pb2.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
}
_EFFORTS = {
    router_pb2.REASONING_EFFORT_LOW: ReasoningEffort.LOW,
    router_pb2.REASONING_EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    router_pb2.REASONING_EFFORT_HIGH: ReasoningEffort.HIGH,
}


def uses_options(request: AnyRouteRequest) -> bool:
    """Whether the request sets any field `generation_options` reads."""
    return bool(
        request.tools
        or request.stop
        or request.HasField("tool_choice")
        or request.HasField("parallel_tool_calls")
        or request.HasField("response_format")
        or request.HasField("top_p")
        or request.HasField("seed")
        or request.HasField("reasoning")
        or request.HasField("cache_prompt")
    )


def generation_options(
    request: AnyRouteRequest,
    settings: ServerConfig,
    max_output_tokens: int | None,
    violations: dict[str, str],
) -> GenerationOptions:
    """The request's tools, tool choice, response format, sampling and
    reasoning; `max_output_tokens` is the request's own cap, if it set one."""
    tools = _tools(request, violations)
    # None when the tools are over their limit and unread: what a tool
    # choice names can't be checked against them, and they are not missing.
    names = {tool.name for tool in tools} if tools or not request.tools else None
    if request.HasField("parallel_tool_calls") and not request.tools:
        violations["parallel_tool_calls"] = "needs tools"
    top_p = None
    if request.HasField("top_p"):
        top_p = request.top_p
        if not (math.isfinite(top_p) and 0 <= top_p <= 1):
            violations["top_p"] = "must be between 0 and 1"
    return GenerationOptions(
        tools=tools,
        tool_choice=_tool_choice(request, names, violations),
        parallel_tool_calls=(
            request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
        ),
        response_format=_response_format(request, violations),
        stop=_stop(request, violations),
        top_p=top_p,
        seed=request.seed if request.HasField("seed") else None,
        reasoning=_reasoning(request, settings, max_output_tokens, violations),
        cache_prompt=request.cache_prompt if request.HasField("cache_prompt") else None,
    )


def _tools(request: AnyRouteRequest, violations: dict[str, str]) -> tuple[Tool, ...]:
    if len(request.tools) > MAX_TOOLS:
        violations["tools"] = too_many(len(request.tools), "tools", MAX_TOOLS)
        return ()
    tools: list[Tool] = []
    seen: dict[str, int] = {}
    for index, tool in enumerate(request.tools):
        path = f"tools[{index}]"
        if not NAME.fullmatch(tool.name):
            violations[f"{path}.name"] = NAME_RULE
        elif tool.name in seen:
            violations[f"{path}.name"] = f"repeats the name of tools[{seen[tool.name]}]"
        else:
            seen[tool.name] = index
        parameters = NO_PARAMETERS
        if tool.parameters_json:
            parameters = _json_object(f"{path}.parameters_json", tool.parameters_json, violations)
        tools.append(Tool(tool.name, tool.description, parameters))
    return tuple(tools)


def _tool_choice(
    request: AnyRouteRequest, names: set[str] | None, violations: dict[str, str]
) -> ToolChoice | None:
    """The request's tool choice; `names` are its tools' (None when they went
    unread). Any choice but the provider's default needs tools: OpenAI
    refuses one without them."""
    if not request.HasField("tool_choice"):
        return None
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "mode":
        if choice.mode == router_pb2.TOOL_CHOICE_MODE_UNSPECIFIED:
            return None
        mode = _TOOL_CHOICE_MODES.get(choice.mode)
        if mode is None:
            violations["tool_choice.mode"] = "is not a known mode"
            return None
        if names is not None and not names:
            violations["tool_choice.mode"] = f"{mode.name} needs tools"
        return ToolChoice(mode)
    if which == "tool_name":
        if names is not None and choice.tool_name not in names:
            violations["tool_choice.tool_name"] = "must name one of the request's tools"
        return ToolChoice(ToolChoiceMode.TOOL, choice.tool_name)
    return None


def _response_format(request: AnyRouteRequest, violations: dict[str, str]) -> ResponseFormat | None:
    if not request.HasField("response_format"):
        return None
    wanted = request.response_format
    which = wanted.WhichOneof("format")
    if which == "json_object":
        return ResponseFormat() if wanted.json_object else None
    if which != "json_schema":
        return None
    given = wanted.json_schema
    name = given.name or DEFAULT_SCHEMA_NAME
    if not NAME.fullmatch(name):
        violations["response_format.json_schema.name"] = NAME_RULE
    schema = None
    if not given.schema_json:
        violations["response_format.json_schema.schema_json"] = "is required"
    else:
        schema = _json_object(
            "response_format.json_schema.schema_json", given.schema_json, violations
        )
    return ResponseFormat(schema=schema, name=name, strict=given.strict)


def _stop(request: AnyRouteRequest, violations: dict[str, str]) -> tuple[str, ...]:
    stop = tuple(request.stop)
    if len(stop) > MAX_STOP_SEQUENCES:
        violations["stop"] = f"has {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed"
        return stop
    for index, sequence in enumerate(stop):
        if not 1 <= len(sequence) <= MAX_STOP_CHARS:
            violations[f"stop[{index}]"] = f"must be 1 to {MAX_STOP_CHARS} characters"
    return stop


def _reasoning(
    request: AnyRouteRequest,
    settings: ServerConfig,
    max_output_tokens: int | None,
    violations: dict[str, str],
) -> Reasoning | None:
    if not request.HasField("reasoning"):
        return None
    asked = request.reasoning
    effort = _EFFORTS.get(asked.effort)
    if effort is None and asked.effort != router_pb2.REASONING_EFFORT_UNSPECIFIED:
        violations["reasoning.effort"] = "is not a known effort"
    budget = None
    if asked.HasField("budget_tokens"):
        budget = asked.budget_tokens
        field = "reasoning.budget_tokens"
        limit = settings.max_output_tokens_limit
        if (
            check_tokens(field, budget, limit, violations)
            and max_output_tokens is not None
            and budget >= max_output_tokens
        ):
            violations[field] = (
                f"must be less than max_output_tokens ({max_output_tokens}):"
                " reasoning is part of the output"
            )
    elif asked.effort == router_pb2.REASONING_EFFORT_UNSPECIFIED:
        violations["reasoning"] = "set effort or budget_tokens"
    return Reasoning(effort, budget)


def _json_object(field: str, text: str, violations: dict[str, str]) -> JsonObject:
    """`text` parsed, when it is a JSON object of at most MAX_JSON_CHARS; else
    an empty one, with a violation under `field`."""
    if len(text) > MAX_JSON_CHARS:
        violations[field] = f"is {len(text)} characters; at most {MAX_JSON_CHARS} are allowed"
        return {}
    try:
        parsed: Any = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        violations[field] = f"is not valid JSON: {error}"
        return {}
    if not isinstance(parsed, dict):
        violations[field] = "must be a JSON object"
        return {}
    return parsed
