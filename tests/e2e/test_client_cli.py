"""The `faregate-client` command line, run as a real subprocess against the
real server: every flag reaches faregate, and it prints the answer, then the
finish reason and the accounting (and with --explain every candidate)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from tests.conftest import Faregate, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script


async def _cli(target: str, *argv: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_client", *argv, "--target", target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _summary(stderr: str) -> dict[str, str]:
    """The key=value fields of the summary line (the first on stderr)."""
    line = stderr.splitlines()[0]
    return dict(field.split("=", 1) for field in line.split())


async def test_every_flag_reaches_faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["budgets"]["squad"] = {"limit_usd": 10, "window": "none"}
    config_data["models"]["cheap-fake"]["capabilities"] = ["json_mode"]
    upstream.default = Script(chunks=["6"], usage=(30, 1))
    argv = [
        "And 3+3?", "--budget-key", "team", "--system", "Be brief.",
        "--turn", "user=2+2?", "--turn", "assistant=4", "--agent", "coder",
        "--max-output-tokens", "20", "--temperature", "0.5", "--metadata", "ticket=FG-12",
        "--additional-budget-key", "squad", "--request-id", "cli-1", "--prefer", "cost",
        "--task", "review", "--explain", "--min-quality", "0.1",
        "--max-cost-nano-usd", "1000000000", "--min-context-tokens", "100",
        "--required-capability", "json_mode", "--fallback", "none",
    ]  # fmt: skip
    async with start_faregate(to_config(config_data)) as faregate:
        code, stdout, stderr = await _cli(faregate.target, *argv)
        again = await _cli(faregate.target, *argv)
        ((_, record),) = await faregate.running.state.spend("squad", "coder", 10, None)
        spent = await faregate.spent_nano_usd("team")

    assert code == 0, stderr
    assert stdout == "6\n"
    summary = _summary(stderr)
    assert summary == {
        "model": "cheap-fake",
        "finish_reason": "stop",
        "input_tokens": "30",
        "output_tokens": "1",
        "cost_nano_usd": str(30 * 150 + 1 * 600),
        "budget_remaining_nano_usd": str(10 * 10**9 - spent),  # squad's, the least left
        "request_id": "cli-1",
        "task": "review",
    }
    candidates = stderr.splitlines()[1:]
    by_model = {line.split()[1]: line for line in candidates}
    assert len(candidates) == 2
    assert all(line.startswith("candidate ") for line in candidates)
    assert "score=" in by_model["cheap-fake"]
    assert "infeasible: " in by_model["gpt-fake"]  # it lacks json_mode
    (received,) = upstream.received  # the retry was answered from the first
    assert [(m["role"], m["content"]) for m in received.body["messages"]] == [
        ("system", "Be brief."),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
    ]
    assert received.body["temperature"] == 0.5
    assert 20 in (received.body.get("max_completion_tokens"), received.body.get("max_tokens"))
    assert (record.request_id, record.budget_keys) == ("cli-1", ("team", "squad"))
    assert spent == int(summary["cost_nano_usd"])
    assert again[:2] == (0, "6\n")


async def test_a_stream_prints_its_text_then_the_finish_reason(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["one", " two"], usage=(5, 2), finish_reason="length")

    code, stdout, stderr = await _cli(faregate.target, "hi", "--budget-key", "team", "--stream")

    assert code == 0, stderr
    assert stdout == "one two\n"
    summary = _summary(stderr)
    assert (summary["model"], summary["finish_reason"]) == ("gpt-fake", "length")
    assert summary["cost_nano_usd"] == str(await faregate.spent_nano_usd())


@pytest.mark.parametrize(
    ("argv", "printed"),
    [
        (["--model", "nope"], "faregate-client: NOT_FOUND MODEL_NOT_FOUND: "),
        (["--required-capability", "vision"], "faregate-client: INVALID_ARGUMENT MODEL_CANNOT"),
        (["--budget-key", "nobody", "--stream"], "FAILED_PRECONDITION BUDGET_NOT_FOUND"),
    ],
)
async def test_a_refusal_prints_its_status_and_reason_and_exits_1(
    faregate: Faregate, argv: list[str], printed: str
) -> None:
    code, stdout, stderr = await _cli(faregate.target, "hi", "--budget-key", "team", *argv)

    assert (code, stdout) == (1, "")
    assert printed in stderr


@pytest.mark.parametrize(
    ("argv", "printed"),
    [
        (["--turn", "robot=x"], "--turn: the role must be one of system, user, assistant"),
        (["--turn", "no equals sign"], "--turn takes ROLE=TEXT"),
        (["--metadata", "=v"], "--metadata takes KEY=VALUE"),
        (["--prefer", "cheap"], "invalid choice: 'cheap'"),
    ],
)
async def test_a_malformed_flag_is_a_usage_error_before_any_call(
    faregate: Faregate, upstream: FakeUpstream, argv: list[str], printed: str
) -> None:
    code, _, stderr = await _cli(faregate.target, "hi", *argv)

    assert code == 2
    assert printed in stderr
    assert upstream.received == []
