"""An agent's tool loop through faregate from Node: @grpc/grpc-js and
@grpc/proto-loader read protos/ at run time (tests/node/tool_loop.js), no
generated code. Over Route and then StreamRoute the script offers a tool,
gets a call (streamed as fragments it puts together and checks against
`finish`), sends the result back as a tool turn and gets the answer, against
an OpenAI-compatible upstream that records what each turn carried.

Skipped where node is not on PATH; where it is (as on CI), the npm packages
must be under .tools/node_modules (`make tools`) or FAREGATE_NODE_MODULES.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Faregate, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script, openai_tool_call_deltas

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests/node/tool_loop.js"
NODE = shutil.which("node")
NODE_MODULES = Path(os.environ.get("FAREGATE_NODE_MODULES", REPO / ".tools/node_modules"))
PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader")

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not on PATH: the grpc-js client test needs Node.js"
)

GPT_IN = 2_500  # nano-USD per token: gpt-fake's 2.50 USD per 1M
GPT_OUT = 10_000
CALL = {"id": "call_a", "name": "search", "arguments": '{"query": "faregate"}'}
WIRE_CALL = {
    "id": "call_a",
    "type": "function",
    "function": {"name": "search", "arguments": CALL["arguments"]},
}
SCRIPT_CALL = {"id": "call_a", "name": "search", "arguments_json": CALL["arguments"]}
# What the script's tool answers, as JSON text.
TOOL_RESULT = {
    "query": "faregate",
    "result": "faregate is a gRPC gateway between agents and models.",
}


@pytest.fixture
async def faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    config_data["models"]["gpt-fake"]["capabilities"] = ["tools"]
    async with start_faregate(to_config(config_data)) as running:
        yield running


async def _node_tool_loop(*argv: str) -> tuple[int, str, str]:
    """The Node script's exit status, stdout and stderr."""
    missing = [name for name in PACKAGES if not (NODE_MODULES / name).is_dir()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found in {NODE_MODULES}: run `make tools`"
            " (or set FAREGATE_NODE_MODULES)"
        )
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, str(SCRIPT), *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )  # fmt: skip
    try:
        async with asyncio.timeout(45):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _assert_result_sent(upstream: FakeUpstream, index: int, assistant_text: str | None) -> None:
    """The request at `index` carried the assistant's call and the tool's result."""
    question, assistant, tool = upstream.received[index].body["messages"]
    assert question == {"role": "user", "content": "What is faregate?"}
    assert assistant == {"role": "assistant", "content": assistant_text, "tool_calls": [WIRE_CALL]}
    assert (tool["role"], tool["tool_call_id"]) == ("tool", "call_a")
    assert json.loads(tool["content"]) == TOOL_RESULT


async def test_grpc_js_runs_a_tool_loop_whole_and_streamed(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    deltas = openai_tool_call_deltas([CALL], 5)
    upstream.queue(
        Script(chunks=[], tool_calls=[CALL], finish_reason="tool_calls", usage=(40, 12)),
        Script(chunks=["A gateway."], usage=(70, 5)),
        Script(
            chunks=["Let me look."],
            stream_deltas=deltas,
            finish_reason="tool_calls",
            usage=(40, 15),
        ),
        Script(chunks=["A gate", "way."], usage=(75, 6)),
    )

    status, stdout, stderr = await _node_tool_loop(faregate.target, "team", "gpt-fake")

    assert status == 0, stderr
    result = json.loads(stdout)

    called, answered = result["route"]
    assert called == {
        "model_used": "gpt-fake",
        "finish_reason": "FINISH_REASON_TOOL_CALLS",
        "output": "",
        "tool_calls": [SCRIPT_CALL],
        "cost_nano_usd": str(40 * GPT_IN + 12 * GPT_OUT),
    }
    assert answered == {
        "model_used": "gpt-fake",
        "finish_reason": "FINISH_REASON_STOP",
        "output": "A gateway.",
        "tool_calls": [],
        "cost_nano_usd": str(70 * GPT_IN + 5 * GPT_OUT),
    }
    streamed_call, streamed_answer = result["stream_route"]
    assert streamed_call == {
        "model_used": "gpt-fake",
        "finish_reason": "FINISH_REASON_TOOL_CALLS",
        "output": "Let me look.",
        "tool_calls": [SCRIPT_CALL],
        "cost_nano_usd": str(40 * GPT_IN + 15 * GPT_OUT),
        "tool_call_fragments": len(deltas),
    }
    assert streamed_answer == {
        "model_used": "gpt-fake",
        "finish_reason": "FINISH_REASON_STOP",
        "output": "A gateway.",
        "tool_calls": [],
        "cost_nano_usd": str(75 * GPT_IN + 6 * GPT_OUT),
        "tool_call_fragments": 0,
    }

    [tool] = upstream.received[0].body["tools"]
    assert tool["function"]["name"] == "search"
    assert tool["function"]["parameters"]["properties"] == {"query": {"type": "string"}}
    assert [received.body.get("stream", False) for received in upstream.received] == [
        False,
        False,
        True,
        True,
    ]
    _assert_result_sent(upstream, 1, None)
    _assert_result_sent(upstream, 3, "Let me look.")
    costs = [int(turn["cost_nano_usd"]) for turns in result.values() for turn in turns]
    assert await faregate.spent_nano_usd() == sum(costs)
    assert await faregate.reserved_nano_usd() == 0


async def test_grpc_js_exits_non_zero_on_a_grpc_error(faregate: Faregate) -> None:
    status, stdout, stderr = await _node_tool_loop(faregate.target, "nobody", "gpt-fake")

    assert status == 1
    assert stdout == ""
    assert "FAILED_PRECONDITION: no budget with key 'nobody'" in stderr
