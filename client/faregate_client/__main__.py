"""A quick call from a shell: `faregate-client "Hello" --budget-key demo [--stream]`.

The answer goes to stdout; to stderr a line with the model that served it, the
finish reason, the tokens, the cost, what is left of the budget and the request
id (then, with --explain, one line per candidate). Every field of the request
has its flag, named as in the contract; `--turn ROLE=TEXT` adds earlier turns
of a conversation, in order, before MESSAGE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from faregate.v1 import router_pb2

from faregate_client._channel import ClientTls
from faregate_client._errors import FaregateError
from faregate_client._request import RouteOptions, enum_name, enum_names
from faregate_client._sync_client import SyncFaregateClient

_FINISH = router_pb2.FinishReason.DESCRIPTOR
_TASK = router_pb2.Task.DESCRIPTOR


def build_parser() -> argparse.ArgumentParser:
    """The command line; each option of RouteOptions has the flag of its name."""
    parser = argparse.ArgumentParser(
        prog="faregate-client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("message", help="the user message to send (the last turn)")
    parser.add_argument("--target", default="127.0.0.1:50051", help="faregate's host:port")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FAREGATE_API_KEY"),
        help="sent as a bearer token (default: $FAREGATE_API_KEY)",
    )
    parser.add_argument("--budget-key", default="demo")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    parser.add_argument("--stream", action="store_true", help="print text as it arrives")

    talk = parser.add_argument_group("the conversation")
    talk.add_argument("--system", help="a system message to send first")
    talk.add_argument(
        "--turn",
        action="append",
        default=[],
        metavar="ROLE=TEXT",
        help="an earlier turn, before MESSAGE (repeatable, in order); ROLE is one of "
        + ", ".join(enum_names(router_pb2.Role.DESCRIPTOR)),
    )

    request = parser.add_argument_group("the request")
    request.add_argument("--model", default="", help="a model or route (default route if empty)")
    request.add_argument("--agent", default="", help="the calling agent's name")
    request.add_argument("--max-output-tokens", type=int)
    request.add_argument("--temperature", type=float)
    request.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label kept with the request (repeatable)",
    )
    request.add_argument(
        "--additional-budget-key",
        dest="additional_budget_keys",
        action="append",
        default=[],
        metavar="KEY",
        help="a further budget the request draws on (repeatable)",
    )
    request.add_argument(
        "--request-id",
        help="makes a retry safe: the same id is served and charged once (default: a fresh one)",
    )

    hints = parser.add_argument_group("routing hints (docs/routing.md)")
    hints.add_argument("--prefer", choices=enum_names(router_pb2.Preference.DESCRIPTOR))
    hints.add_argument(
        "--task",
        choices=enum_names(_TASK),
        metavar="TASK",
        help="the kind of work: " + ", ".join(enum_names(_TASK)),
    )
    hints.add_argument(
        "--explain", action="store_true", help="print every candidate's score to stderr"
    )
    hints.add_argument("--min-quality", type=float, help="0 to 1")
    hints.add_argument("--max-cost-nano-usd", type=int, help="the most the worst case may cost")
    hints.add_argument("--min-context-tokens", type=int)
    hints.add_argument(
        "--required-capability",
        dest="required_capabilities",
        action="append",
        default=[],
        choices=enum_names(router_pb2.Capability.DESCRIPTOR),
        help="a capability the model must have (repeatable)",
    )
    hints.add_argument("--fallback", choices=enum_names(router_pb2.FallbackPolicy.DESCRIPTOR))

    agent = parser.add_argument_group("tools, output format and sampling")
    agent.add_argument(
        "--tool", dest="tools", action="append", default=[], metavar="JSON",
        help='a tool, as {"name": ..., "description": ..., "parameters": {JSON Schema}}'
        " (repeatable)",
    )  # fmt: skip
    agent.add_argument(
        "--tool-choice", help="auto, none, required, or the name of the tool to call"
    )
    agent.add_argument("--parallel-tool-calls", action=argparse.BooleanOptionalAction)
    agent.add_argument(
        "--response-format", metavar="json_object|SCHEMA",
        help="json_object, or a JSON Schema the answer must match (strict)",
    )  # fmt: skip
    agent.add_argument("--stop", action="append", default=[], help="a stop sequence (repeatable)")
    agent.add_argument("--top-p", type=float)
    agent.add_argument("--seed", type=int)
    agent.add_argument(
        "--reasoning", metavar="EFFORT|TOKENS",
        help="low, medium or high effort, or a thinking budget in tokens",
    )  # fmt: skip
    agent.add_argument(
        "--cache-prompt", action=argparse.BooleanOptionalAction,
        help="have the provider cache the prompt (default: the route's setting)",
    )  # fmt: skip

    tls = parser.add_argument_group("TLS (any of these turns it on)")
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    tls.add_argument("--ca", help="PEM file of the CA that signed faregate's certificate")
    tls.add_argument("--cert", help="PEM client certificate, for mutual TLS")
    tls.add_argument("--key", help="PEM private key of --cert")
    tls.add_argument("--server-name", help="the name in faregate's certificate, if not the host")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    try:
        messages = _conversation(args)
        metadata = dict(_pair(item, "--metadata", "KEY=VALUE") for item in args.metadata)
        options = _options(args, metadata)
    except ValueError as error:
        parser.error(str(error))
    try:
        with SyncFaregateClient(args.target, api_key=args.api_key, tls=_tls(args)) as client:
            if args.stream:
                _stream(client, messages, args, options)
            else:
                _route(client, messages, args, options)
    except FaregateError as error:
        print(f"faregate-client: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"faregate-client: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


def _options(args: argparse.Namespace, metadata: dict[str, str]) -> RouteOptions:
    """The request's options from the flags.

    Raises:
        ValueError: a flag's value does not parse (a tool or schema that is not JSON).
    """
    return {
        "model": args.model,
        "agent": args.agent,
        "max_output_tokens": args.max_output_tokens,
        "temperature": args.temperature,
        "metadata": metadata,
        "prefer": args.prefer,
        "task": args.task,
        "explain": args.explain,
        "min_quality": args.min_quality,
        "max_cost_nano_usd": args.max_cost_nano_usd,
        "min_context_tokens": args.min_context_tokens,
        "required_capabilities": args.required_capabilities,
        "fallback": args.fallback,
        "additional_budget_keys": args.additional_budget_keys,
        "request_id": args.request_id,
        "tools": [_tool(text) for text in args.tools],
        "tool_choice": _tool_choice(args.tool_choice),
        "parallel_tool_calls": args.parallel_tool_calls,
        "response_format": _response_format(args.response_format),
        "stop": args.stop,
        "top_p": args.top_p,
        "seed": args.seed,
        "reasoning": _reasoning(args.reasoning),
        "cache_prompt": args.cache_prompt,
    }


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{flag} takes a JSON object, not {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} takes a JSON object, not {text!r}")
    return value


def _tool(text: str) -> router_pb2.Tool:
    tool = _json_object(text, "--tool")
    return router_pb2.Tool(
        name=str(tool.get("name", "")),
        description=str(tool.get("description", "")),
        parameters_json=json.dumps(tool.get("parameters", {"type": "object"})),
    )


def _tool_choice(choice: str | None) -> router_pb2.ToolChoice | None:
    if choice is None:
        return None
    mode = router_pb2.ToolChoiceMode.DESCRIPTOR.values_by_name.get(
        f"TOOL_CHOICE_MODE_{choice.upper()}"
    )
    if mode is not None and mode.number:
        return router_pb2.ToolChoice(mode=mode.number)  # type: ignore[arg-type]
    return router_pb2.ToolChoice(tool_name=choice)


def _response_format(text: str | None) -> router_pb2.ResponseFormat | None:
    if text is None:
        return None
    if text == "json_object":
        return router_pb2.ResponseFormat(json_object=True)
    schema = _json_object(text, "--response-format")
    return router_pb2.ResponseFormat(
        json_schema=router_pb2.JsonSchema(
            name="answer", schema_json=json.dumps(schema), strict=True
        )
    )


def _reasoning(text: str | None) -> router_pb2.Reasoning | None:
    if text is None:
        return None
    if text.isdigit():
        return router_pb2.Reasoning(budget_tokens=int(text))
    effort = router_pb2.ReasoningEffort.DESCRIPTOR.values_by_name.get(
        f"REASONING_EFFORT_{text.upper()}"
    )
    if effort is None or not effort.number:
        raise ValueError(f"--reasoning takes low, medium, high or a number of tokens, not {text!r}")
    return router_pb2.Reasoning(effort=effort.number)  # type: ignore[arg-type]


def _pair(item: str, flag: str, form: str) -> tuple[str, str]:
    key, equals, value = item.partition("=")
    if not equals or not key:
        raise ValueError(f"{flag} takes {form}, not {item!r}")
    return key, value


def _conversation(args: argparse.Namespace) -> list[tuple[str, str]]:
    roles = enum_names(router_pb2.Role.DESCRIPTOR)
    messages = [("system", args.system)] if args.system else []
    for turn in args.turn:
        role, text = _pair(turn, "--turn", "ROLE=TEXT")
        if role not in roles:
            raise ValueError(f"--turn: the role must be one of {', '.join(roles)}, not {role!r}")
        messages.append((role, text))
    messages.append(("user", args.message))
    return messages


def _tls(args: argparse.Namespace) -> ClientTls | None:
    if not (args.tls or args.ca or args.cert or args.server_name):
        return None
    return ClientTls.from_files(args.ca, args.cert, args.key, args.server_name)


def _route(
    client: SyncFaregateClient,
    messages: list[tuple[str, str]],
    args: argparse.Namespace,
    options: RouteOptions,
) -> None:
    reply = client.route(messages, budget_key=args.budget_key, timeout_s=args.timeout, **options)
    print(reply.output)
    _tool_calls_and_refusal(reply.tool_calls, reply.refusal)
    _summary(
        reply.model_used, reply.finish_reason, reply.usage, reply.cost_nano_usd,
        reply.budget_remaining_nano_usd, reply.request_id, reply.task, reply.candidates,
    )  # fmt: skip


def _stream(
    client: SyncFaregateClient,
    messages: list[tuple[str, str]],
    args: argparse.Namespace,
    options: RouteOptions,
) -> None:
    stream = client.stream_route(
        messages, budget_key=args.budget_key, timeout_s=args.timeout, **options
    )
    for text in stream:
        print(text, end="", flush=True)
    print()
    start, finish = stream.start, stream.finish
    assert start is not None
    assert finish is not None
    _tool_calls_and_refusal(finish.tool_calls, "")
    _summary(
        start.model_used, finish.finish_reason, finish.usage, finish.cost_nano_usd,
        finish.budget_remaining_nano_usd, start.request_id, start.task, start.candidates,
    )  # fmt: skip


def _tool_calls_and_refusal(tool_calls: Sequence[router_pb2.ToolCall], refusal: str) -> None:
    # After the text, one line per call the model made, for an agent (or a
    # person) to run the tool and send its result as a ROLE_TOOL turn.
    for call in tool_calls:
        print(f"tool_call id={call.id} name={call.name} arguments={call.arguments_json}")
    if refusal:
        print(f"refusal: {refusal}")


def _summary(
    model: str,
    finish_reason: int,
    usage: router_pb2.Usage,
    cost_nano_usd: int,
    budget_remaining_nano_usd: int,
    request_id: str,
    task: int,
    candidates: Sequence[router_pb2.CandidateScore],
) -> None:
    fields = [
        f"model={model}",
        f"finish_reason={enum_name(_FINISH, finish_reason)}",
        f"input_tokens={usage.input_tokens}",
        f"output_tokens={usage.output_tokens}",
        f"cost_nano_usd={cost_nano_usd}",
        f"budget_remaining_nano_usd={budget_remaining_nano_usd}",
        f"request_id={request_id}",
    ]
    if task:
        fields.append(f"task={enum_name(_TASK, task)}")
    print(" ".join(fields), file=sys.stderr)
    for candidate in candidates:
        score = f"score={candidate.score:.6g}"
        verdict = score if candidate.feasible else f"infeasible: {candidate.reason}"
        print(
            f"candidate {candidate.model} worst_case_nano_usd={candidate.worst_case_nano_usd} "
            f"quality={candidate.quality:.3g} scarcity={candidate.scarcity:.3g} {verdict}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
