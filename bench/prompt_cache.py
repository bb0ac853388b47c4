"""Prompt caching: what `cache_prompt` saves over an agent's conversation.

An agent's tool loop of `TURNS` turns, with a system prompt of
`SYSTEM_TOKENS` tokens and two tools, runs through a faregate in this
process (the real gRPC server and the typed client) to a fake Anthropic
Messages upstream, also in this process, that emulates the prompt cache:

- the prompt is its blocks in the API's prefix order (each tool, the system
  blocks, each message's content blocks with its role), a block's tokens
  its canonical JSON's bytes / 4, rounded up (an approximation: the fake
  has no tokenizer);
- a block marked `cache_control` is a breakpoint: the prefix up to it is
  remembered, by its hash, for its TTL (`5m` by default, `1h`), if it holds
  at least `MIN_CACHEABLE_TOKENS` (Sonnet's minimum);
- a request reads the longest remembered prefix that ends at one of its
  breakpoints (a read renews it), writes from there to its last breakpoint,
  and the rest is plain input, reported as Anthropic documents it:
  `input_tokens` (after the last breakpoint), `cache_creation_input_tokens`
  (with its `cache_creation` split by TTL) and `cache_read_input_tokens`.
  The real API also looks back about 20 blocks from a breakpoint for an
  earlier entry; the fake does not, so what it reads is what the marks
  alone make readable.

Each turn the model answers with a short text and one `read_file` call;
the agent sends the file back as the tool's result and asks again. The
conversation runs once per mode: caching off, on for five minutes, on for
an hour (the route's `cache_prompt` and `cache_ttl`, the requests saying
nothing). The section prints, per mode, the cost faregate reported
(the sum of `cost_nano_usd`), the same usage priced by hand at the model's
prices from what the fake reported, the token counts, the worst case
reserved per turn, and the saving against caching off. Bounded: 60
requests to local servers, a second or two.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web
from faregate.v1 import router_pb2
from faregate_client import FaregateClient
from faregate_server.app import serve
from faregate_server.config.load import parse_config
from faregate_server.money import format_nano_usd

from bench.report import align

TURNS = 20
SYSTEM_TOKENS = 10_000
MIN_CACHEABLE_TOKENS = 1024
OUTPUT_TOKENS = 60
"""What the fake reports each answer used."""
TOOL_RESULT_BYTES = 1600
"""A file as the tool returns it: about 400 tokens."""
MODEL = "claude-bench"
ROUTE = "agent"
BUDGET = "agent"
KEY_ENV = "BENCH_ANTHROPIC_KEY"
# Sonnet's prices in cents per million tokens (money is never a float);
# the writes are an anthropic model's defaults (1.25 and 2 times the input),
# given in the config too, so the hand pricing reads the same rates.
INPUT_CENTS, OUTPUT_CENTS, READ_CENTS, WRITE_CENTS, WRITE_1H_CENTS = 300, 1500, 30, 375, 600
_NANO_USD_PER_CENT = 10_000_000
_TTL_S = {"5m": 300.0, "1h": 3600.0}
CALL_TIMEOUT_S = 10.0
RUN_MAX_DURATION_S = 30.0


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    cache_prompt: bool
    cache_ttl: str = "5m"


MODES = (Mode("cache_prompt off", False), Mode("on, 5m", True), Mode("on, 1h", True, "1h"))


@dataclass
class Reported:
    """The usage the fake reported, summed over a run."""

    input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    billed_nano_usd: int = 0
    """Each answer's usage priced by hand, rounded up once per answer."""


def _tokens(block: dict[str, Any]) -> int:
    return math.ceil(len(_canonical(block)) / 4)


def _canonical(block: dict[str, Any]) -> bytes:
    return json.dumps(block, sort_keys=True, separators=(",", ":")).encode()


def _prompt_blocks(body: dict[str, Any]) -> list[tuple[dict[str, Any], str | None]]:
    """The prompt in prefix order: each block without its mark, and the mark's
    TTL when it has one (a breakpoint)."""
    blocks: list[tuple[dict[str, Any], str | None]] = []

    def add(block: dict[str, Any], **extra: Any) -> None:
        mark = block.get("cache_control")
        bare = {key: value for key, value in block.items() if key != "cache_control"}
        blocks.append(({**bare, **extra}, None if mark is None else mark.get("ttl", "5m")))

    for tool in body.get("tools", []):
        add(tool)
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system or []:
        add(block)
    for message in body["messages"]:
        content = message["content"]
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            add(block, role=message["role"])
    return blocks


@dataclass
class CachingAnthropic:
    """The fake upstream: answers POST /v1/messages, emulating the cache."""

    reported: Reported = field(default_factory=Reported)
    _cache: dict[bytes, float] = field(default_factory=dict)
    """Prefix hash -> when it expires (monotonic seconds)."""
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the request reads, writes and pays as plain input, remembering
        what it writes."""
        now_s = time.monotonic()
        digest = hashlib.sha256()
        total = 0
        breakpoints: list[tuple[int, bytes, str]] = []
        for block, ttl in _prompt_blocks(body):
            digest.update(_canonical(block))
            total += _tokens(block)
            if ttl is not None and total >= MIN_CACHEABLE_TOKENS:
                breakpoints.append((total, digest.copy().digest(), ttl))
        read = 0
        for end, key, ttl in breakpoints:
            if self._cache.get(key, 0.0) > now_s:
                read = end
                self._cache[key] = now_s + _TTL_S[ttl]
        writes = {"5m": 0, "1h": 0}
        written = read
        for end, key, ttl in breakpoints:
            if end > written:
                writes[ttl] += end - written
                written = end
            self._cache[key] = max(self._cache.get(key, 0.0), now_s + _TTL_S[ttl])
        return {
            "input_tokens": total - written,
            "cache_creation_input_tokens": writes["5m"] + writes["1h"],
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": writes["5m"],
                "ephemeral_1h_input_tokens": writes["1h"],
            },
            "output_tokens": OUTPUT_TOKENS,
        }

    async def _messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        usage = self.usage(body)
        self._record(usage)
        turn = sum(1 for message in body["messages"] if message["role"] == "assistant") + 1
        content = [
            {"type": "text", "text": f"Reading module {turn}."},
            {"type": "tool_use", "id": f"toolu_{turn:02d}", "name": "read_file",
             "input": {"path": f"src/module_{turn}.py"}},
        ]  # fmt: skip
        return web.json_response(
            {"id": f"msg_{turn}", "type": "message", "role": "assistant", "model": body["model"],
             "content": content, "stop_reason": "tool_use", "stop_sequence": None,
             "usage": usage}
        )  # fmt: skip

    def _record(self, usage: dict[str, Any]) -> None:
        seen = self.reported
        split = usage["cache_creation"]
        seen.input_tokens += usage["input_tokens"]
        seen.cache_write_5m_tokens += split["ephemeral_5m_input_tokens"]
        seen.cache_write_1h_tokens += split["ephemeral_1h_input_tokens"]
        seen.cache_read_tokens += usage["cache_read_input_tokens"]
        seen.output_tokens += usage["output_tokens"]
        seen.billed_nano_usd += _by_hand(usage)


def _by_hand(usage: dict[str, Any]) -> int:
    """An answer's bill from its reported usage, at the model's prices: the
    exact sum, rounded up once, in nano-USD."""
    split = usage["cache_creation"]
    scaled: int = (
        usage["input_tokens"] * INPUT_CENTS
        + split["ephemeral_5m_input_tokens"] * WRITE_CENTS
        + split["ephemeral_1h_input_tokens"] * WRITE_1H_CENTS
        + usage["cache_read_input_tokens"] * READ_CENTS
        + usage["output_tokens"] * OUTPUT_CENTS
    )
    return -(-scaled * _NANO_USD_PER_CENT // 1_000_000)


def _usd_per_mtok(cents: int) -> str:
    """A price as the config writes it: exact decimal USD."""
    return f"{cents // 100}.{cents % 100:02d}"


def _config(mode: Mode, api_base: str) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "default_route": ROUTE, "shutdown_grace_s": 1},
        "models": {
            MODEL: {
                "provider": "anthropic",
                "api_base": api_base,
                "api_key_env": KEY_ENV,
                "input_usd_per_mtok": _usd_per_mtok(INPUT_CENTS),
                "output_usd_per_mtok": _usd_per_mtok(OUTPUT_CENTS),
                "cached_input_usd_per_mtok": _usd_per_mtok(READ_CENTS),
                "cache_write_usd_per_mtok": _usd_per_mtok(WRITE_CENTS),
                "cache_write_1h_usd_per_mtok": _usd_per_mtok(WRITE_1H_CENTS),
                "context_window_tokens": 200_000,
                "max_output_tokens": 1024,
                "capabilities": ["tools"],
            }
        },
        "routes": {
            ROUTE: {
                "candidates": [MODEL],
                "cache_prompt": mode.cache_prompt,
                "cache_ttl": mode.cache_ttl,
            }
        },
        "budgets": {BUDGET: {"limit_usd": 100, "window": "none"}},
        "auth": {"enabled": False},
    }


_TOOLS = [
    router_pb2.Tool(
        name="read_file",
        description="Read a file of the repository",
        parameters_json=json.dumps(
            {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
        ),
    ),
    router_pb2.Tool(
        name="write_file",
        description="Replace a file of the repository",
        parameters_json=json.dumps(
            {
                "type": "object",
                "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
                "required": ["path", "text"],
            }
        ),
    ),
]


def _system_prompt() -> str:
    """About SYSTEM_TOKENS tokens of rules, as the fake counts them."""
    rule = "Rule {n:04d}: read before you write, keep each change small, and test it. "
    text = ""
    n = 0
    while len(text) < 4 * SYSTEM_TOKENS:
        n += 1
        text += rule.format(n=n)
    return text[: 4 * SYSTEM_TOKENS]


@dataclass(frozen=True, slots=True)
class Run:
    mode: Mode
    faregate_nano_usd: int
    """The sum of the answers' cost_nano_usd."""
    reported: Reported
    worst_case_nano_usd: tuple[int, ...]
    """What each turn reserved (explain's worst case)."""
    elapsed_s: float


async def run_mode(mode: Mode) -> Run:
    """The conversation through a fresh faregate and a fresh (cold) fake."""
    fake = CachingAnthropic()
    await fake.start()
    try:
        config = parse_config(
            yaml.safe_dump(_config(mode, fake.base_url), sort_keys=False), env={KEY_ENV: "x"}
        )
        async with (
            serve(config) as running,
            FaregateClient(f"127.0.0.1:{running.port}", generate_request_ids=False) as client,
        ):
            started_s = time.perf_counter()
            cost, worst = await asyncio.wait_for(_conversation(client), RUN_MAX_DURATION_S)
            elapsed_s = time.perf_counter() - started_s
    finally:
        await fake.aclose()
    return Run(mode, cost, fake.reported, tuple(worst), elapsed_s)


async def _conversation(client: FaregateClient) -> tuple[int, list[int]]:
    messages = [
        router_pb2.Message(role=router_pb2.ROLE_SYSTEM, content=_system_prompt()),
        router_pb2.Message(
            role=router_pb2.ROLE_USER, content="Find why the cache never hits, and fix it."
        ),
    ]
    cost = 0
    worst: list[int] = []
    for turn in range(1, TURNS + 1):
        answer = await client.route(
            messages, budget_key=BUDGET, tools=_TOOLS, explain=True, timeout_s=CALL_TIMEOUT_S
        )
        cost += answer.cost_nano_usd
        worst.append(answer.candidates[0].worst_case_nano_usd)
        messages.append(
            router_pb2.Message(
                role=router_pb2.ROLE_ASSISTANT, content=answer.output, tool_calls=answer.tool_calls
            )
        )
        for call in answer.tool_calls:
            text = f"# src/module_{turn}.py\n" + "x = 1  # a line of the file\n" * 64
            messages.append(
                router_pb2.Message(
                    role=router_pb2.ROLE_TOOL,
                    content=text[:TOOL_RESULT_BYTES],
                    tool_call_id=call.id,
                )
            )
    return cost, worst


async def measure(progress: bool = True) -> list[Run]:
    """Runs every mode, one after another."""
    runs = []
    for mode in MODES:
        if progress:
            print(f"bench: prompt caching: {mode.name}", file=sys.stderr, flush=True)
        runs.append(await run_mode(mode))
    return runs


def _usd(nano_usd: int) -> str:
    return format_nano_usd(nano_usd)


def _saving(cost: int, base: int) -> str:
    if not base:
        return "n/a"
    return f"{_usd(base - cost)} ({(base - cost) / base:.1%})"


def render(runs: Sequence[Run]) -> str:
    """The section as text."""
    base = runs[0]
    rows: list[tuple[str, ...]] = [("", *(run.mode.name for run in runs))]

    def row(label: str, *cells: str) -> None:
        rows.append((label, *cells))

    row("cost, faregate (sum of cost_nano_usd)", *(_usd(r.faregate_nano_usd) for r in runs))
    row("cost, the fake's usage priced by hand", *(_usd(r.reported.billed_nano_usd) for r in runs))
    row(
        "saving vs off, faregate",
        *(_saving(r.faregate_nano_usd, base.faregate_nano_usd) for r in runs),
    )
    row(
        "saving vs off, priced by hand",
        *(_saving(r.reported.billed_nano_usd, base.reported.billed_nano_usd) for r in runs),
    )
    row("input tokens, plain", *(f"{r.reported.input_tokens:,}" for r in runs))
    row("input tokens, cache writes 5m", *(f"{r.reported.cache_write_5m_tokens:,}" for r in runs))
    row("input tokens, cache writes 1h", *(f"{r.reported.cache_write_1h_tokens:,}" for r in runs))
    row("input tokens, cache reads", *(f"{r.reported.cache_read_tokens:,}" for r in runs))
    row("output tokens", *(f"{r.reported.output_tokens:,}" for r in runs))
    row("worst case reserved, first turn", *(_usd(r.worst_case_nano_usd[0]) for r in runs))
    row("worst case reserved, last turn", *(_usd(r.worst_case_nano_usd[-1]) for r in runs))
    row("wall time of the run (s)", *(f"{run.elapsed_s:.2f}" for run in runs))
    lines = [
        "",
        f"Prompt caching: a {TURNS}-turn agent tool loop, a {SYSTEM_TOKENS:,}-token system"
        " prompt and 2 tools, through the gRPC",
        "  server in this process to a fake Anthropic emulating the cache: tokens = JSON"
        " bytes / 4, a prefix",
        f"  of {MIN_CACHEABLE_TOKENS}+ tokens at a breakpoint cached by its hash for its TTL"
        " (no 20-block lookback).",
        f"  Per Mtok: ${_usd_per_mtok(INPUT_CENTS)} in, ${_usd_per_mtok(WRITE_CENTS)} 5m write,"
        f" ${_usd_per_mtok(WRITE_1H_CENTS)} 1h write, ${_usd_per_mtok(READ_CENTS)} read,"
        f" ${_usd_per_mtok(OUTPUT_CENTS)} out.",
        "  The route's cache_prompt and cache_ttl set the mode; the requests say nothing.",
        "",
        *align(rows),
    ]
    for run in runs:
        gap = run.faregate_nano_usd - run.reported.billed_nano_usd
        if gap:
            lines.append(
                f"NOTE: {run.mode.name}: faregate's cost differs from the bill priced by hand by "
                f"{gap:+,} nano-USD"
            )
    if all(run.faregate_nano_usd == run.reported.billed_nano_usd for run in runs):
        lines.append("faregate's cost equals the bill priced by hand, to the nano-dollar.")
    return "\n".join(lines)


def main() -> int:
    """`python -m bench.prompt_cache`: runs every mode and prints the section."""
    print(render(asyncio.run(measure())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
