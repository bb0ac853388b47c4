"""What the translate modules share: the request type they read, the rule
for names, and how a violation is recorded and worded.

A violation is a field's path (`messages[2].tool_calls[0].id`) and a
description of the rule it broke; a field breaking two rules has both, one
after the other. A description of a configured limit names the setting, so
the caller knows what to shrink and the operator what to raise.
"""

from __future__ import annotations

import re

from faregate.v1 import router_pb2

AnyRouteRequest = router_pb2.RouteRequest | router_pb2.StreamRouteRequest
"""Either request message: they share every field route_call reads."""

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""A tool's, a tool call's or a response schema's name: OpenAI's rule, the
narrower of the two providers'."""
NAME_RULE = "must be 1 to 64 ASCII letters, digits, underscores or hyphens"


def add(violations: dict[str, str], field: str, description: str) -> None:
    """Adds a violation under `field`, beside any it already has."""
    held = violations.get(field)
    violations[field] = f"{held}; {description}" if held else description


def too_many(count: int, noun: str, limit: int) -> str:
    """The description of a repeated field holding more than a hard limit."""
    return f"has {count} {noun}; at most {limit} are allowed"


def exceeds(setting: str, limit: int) -> str:
    """Names the server setting a request broke, so the caller knows what to shrink."""
    return f"exceeds server.{setting} ({limit})"


def check_tokens(field: str, tokens: int, limit: int, violations: dict[str, str]) -> bool:
    """Whether a token count the request set is positive and at most `limit`
    (server.max_output_tokens_limit); else a violation under `field`."""
    if tokens < 1:
        violations[field] = "must be positive when set"
        return False
    if tokens > limit:
        violations[field] = f"is {tokens}; {exceeds('max_output_tokens_limit', limit)}"
        return False
    return True
