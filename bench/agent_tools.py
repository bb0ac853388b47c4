"""The tools of the bench's tool-call requests: five a coding agent defines.

Each is a `faregate.v1.Tool` whose `parameters_json` is a realistic JSON
Schema of a few hundred bytes (properties with descriptions, types, enums,
defaults, required fields), as agent frameworks send them on every turn. The
fake upstream answers any request with tools by calling TOOL_CALL_NAME, one
of them. The schemas are serialised once, at import.
"""

from __future__ import annotations

import json
from typing import Any

from faregate.v1 import router_pb2

from bench.upstream import TOOL_CALL_NAME

TOOL_PROMPT = "Find where discounts are applied to an order and explain the rounding."
"""The user turn of every tool-call request."""


def _schema(properties: dict[str, Any], required: list[str]) -> str:
    return json.dumps(
        {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
    )


_PATH = {"type": "string", "description": "Path of the file, relative to the repository root."}

_DEFINITIONS: tuple[tuple[str, str, str], ...] = (
    (
        "read_file",
        "Read a text file of the repository, or a range of its lines.",
        _schema(
            {
                "path": _PATH,
                "start_line": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "First line to read, from 1; the file's start when absent.",
                },
                "end_line": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Last line to read, inclusive; the file's end when absent.",
                },
            },
            ["path"],
        ),
    ),
    (
        TOOL_CALL_NAME,
        "Search the repository's code for a regular expression; returns matching lines.",
        _schema(
            {
                "pattern": {"type": "string", "description": "A Python regular expression."},
                "path": {
                    "type": "string",
                    "description": "A file or directory to search under; the whole repository "
                    "when absent.",
                },
                "max_results": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 200,
                    "default": 50,
                    "description": "Most matching lines to return.",
                },
                "case_sensitive": {"type": "boolean", "default": True},
            },
            ["pattern"],
        ),
    ),
    (
        "run_tests",
        "Run the test suite, or some of its tests, and return the summary and failures.",
        _schema(
            {
                "paths": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Test files or directories; every test when empty.",
                },
                "keyword": {
                    "type": "string",
                    "description": "Only tests whose names match this expression (pytest -k).",
                },
                "fail_fast": {"type": "boolean", "default": False},
                "timeout_s": {"type": "number", "minimum": 1, "maximum": 600, "default": 120},
            },
            [],
        ),
    ),
    (
        "apply_patch",
        "Apply a unified diff to the working tree; fails without changes if a hunk does not apply.",
        _schema(
            {
                "patch": {
                    "type": "string",
                    "description": "The diff, with ---/+++ headers and @@ hunks.",
                },
                "message": {"type": "string", "description": "Why the change is made."},
                "check_only": {
                    "type": "boolean",
                    "default": False,
                    "description": "Only report whether the patch applies.",
                },
            },
            ["patch", "message"],
        ),
    ),
    (
        "list_directory",
        "List a directory's entries with their kinds and sizes.",
        _schema(
            {
                "path": _PATH,
                "recursive": {"type": "boolean", "default": False},
                "include": {
                    "type": "string",
                    "description": "A glob the entries' names must match, e.g. *.py.",
                },
                "kind": {"type": "string", "enum": ["file", "directory", "any"], "default": "any"},
            },
            ["path"],
        ),
    ),
)

TOOLS: tuple[router_pb2.Tool, ...] = tuple(
    router_pb2.Tool(name=name, description=description, parameters_json=parameters)
    for name, description, parameters in _DEFINITIONS
)
"""Five tools; `parameters_json` from about 370 to 470 bytes each."""
