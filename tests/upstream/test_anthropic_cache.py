"""Prompt caching on the Anthropic wire: where `cache_control` marks go
(the last tool, the system text as a block, the last message and the one
two before it), never more than four, never on a thinking block, and none
at all, with the system a plain string, when caching is off; and the
OpenAI body, which has nothing to mark, the same either way."""

from __future__ import annotations

from typing import Any

from faregate_server.content import (
    CacheTtl,
    GenerationOptions,
    Image,
    MessageExtras,
    ReasoningBlock,
    Tool,
    ToolCall,
)
from faregate_server.domain import ChatMessage, Role, UpstreamRequest
from faregate_server.upstream.providers.anthropic_messages import (
    MAX_CACHE_BREAKPOINTS,
    request_body,
)
from faregate_server.upstream.providers.openai_request import (
    request_body as openai_request_body,
)
from hypothesis import given, settings
from hypothesis import strategies as st

FIVE_MINUTES = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}
SEARCH = Tool("search", "Search the code", {"type": "object"})
READ = Tool("read_file", "Read a file", {"type": "object"})
THINKING = ReasoningBlock(text="Look first.", signature="c2ln")
REDACTED = ReasoningBlock(redacted=b"opaque")


def _request(
    *messages: ChatMessage,
    ttl: CacheTtl | None = CacheTtl.FIVE_MINUTES,
    tools: tuple[Tool, ...] = (),
) -> UpstreamRequest:
    return UpstreamRequest(
        upstream_model="m",
        messages=messages,
        max_output_tokens=4096,
        temperature=None,
        options=GenerationOptions(tools=tools) if tools else None,
        cache_ttl=ttl,
    )


def _system(text: str) -> ChatMessage:
    return ChatMessage(Role.SYSTEM, text)


def _user(text: str) -> ChatMessage:
    return ChatMessage(Role.USER, text)


def _assistant(
    text: str, *calls: ToolCall, reasoning: tuple[ReasoningBlock, ...] = ()
) -> ChatMessage:
    return ChatMessage(Role.ASSISTANT, text, MessageExtras(tool_calls=calls, reasoning=reasoning))


def _tool(call_id: str, text: str) -> ChatMessage:
    return ChatMessage(Role.TOOL, text, MessageExtras(tool_call_id=call_id))


_PREFIX_ORDER = (".tools", ".system", ".messages")


def _marks(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every `cache_control` in a body: (the path of the block holding it,
    it), in the API's prefix order (tools, system, messages)."""
    found = _found(body)
    return sorted(found, key=lambda mark: _PREFIX_ORDER.index(mark[0].split("[")[0]))


def _found(value: Any, path: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "cache_control":
                found.append((path, item))
            else:
                found.extend(_found(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_found(item, f"{path}[{index}]"))
    return found


def test_an_agent_turn_marks_the_last_tool_the_system_and_two_messages() -> None:
    call = ToolCall("toolu_1", "search", '{"q": "cache"}')
    body = request_body(
        _request(
            _system("You are a coding agent."),
            _user("find the cache"),
            _assistant("", call),
            _tool("toolu_1", "found it"),
            tools=(SEARCH, READ),
        ),
        stream=False,
    )

    assert _marks(body) == [
        (".tools[1]", FIVE_MINUTES),
        (".system[0]", FIVE_MINUTES),
        (".messages[0].content[0]", FIVE_MINUTES),
        (".messages[2].content[0]", FIVE_MINUTES),
    ]
    assert body["system"] == [
        {"type": "text", "text": "You are a coding agent.", "cache_control": FIVE_MINUTES}
    ]
    # A plain text turn becomes one text block to carry its mark.
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "find the cache", "cache_control": FIVE_MINUTES}
    ]
    assert "cache_control" not in body["tools"][0]
    assert "cache_control" not in body["messages"][1]["content"][0]


def test_the_system_keeps_its_joined_text_as_one_block() -> None:
    body = request_body(_request(_system("one"), _system("two"), _user("hi")), stream=False)

    assert [block["text"] for block in body["system"]] == ["one\n\ntwo"]


def test_an_hour_ttl_is_sent_on_every_mark() -> None:
    body = request_body(
        _request(
            _system("s"), _user("a"), _assistant("b"), _user("c"),
            ttl=CacheTtl.ONE_HOUR, tools=(SEARCH,),
        ),
        stream=True,
    )  # fmt: skip

    marks = _marks(body)
    assert len(marks) == 4
    assert all(mark == ONE_HOUR for _, mark in marks)


def test_without_caching_nothing_is_marked_and_the_system_is_a_string() -> None:
    body = request_body(
        _request(_system("s"), _user("a"), _assistant("b"), _user("c"), ttl=None, tools=(SEARCH,)),
        stream=False,
    )

    assert _marks(body) == []
    assert body["system"] == "s"
    assert body["messages"][2]["content"] == "c"


def test_a_thinking_block_is_never_marked() -> None:
    call = ToolCall("toolu_1", "search", "{}")
    body = request_body(
        _request(
            _user("q"),
            _assistant("", call, reasoning=(THINKING,)),
            _tool("toolu_1", "r"),
            _assistant("", reasoning=(THINKING, REDACTED)),
        ),
        stream=False,
    )

    # The last message is reasoning alone: nothing in it can carry a mark;
    # two before it, the call after the thinking carries it.
    assert _marks(body) == [(".messages[1].content[1]", FIVE_MINUTES)]
    assert body["messages"][1]["content"][1]["type"] == "tool_use"


def test_a_short_conversation_has_fewer_marks() -> None:
    assert _marks(request_body(_request(_user("hi")), stream=False)) == [
        (".messages[0].content[0]", FIVE_MINUTES)
    ]
    # An empty text carries nothing (the API refuses empty text blocks).
    assert _marks(request_body(_request(_user("")), stream=False)) == []


_BLOCK_TURNS = st.lists(
    st.one_of(
        st.builds(_user, st.sampled_from(["", "u"])),
        st.builds(
            lambda text, reasoning, n: _assistant(
                text,
                *[ToolCall(f"toolu_{i}", "search", "{}") for i in range(n)],
                reasoning=reasoning,
            ),
            st.sampled_from(["", "a"]),
            st.lists(st.sampled_from([THINKING, REDACTED]), max_size=2).map(tuple),
            st.integers(0, 2),
        ),
        st.builds(_tool, st.sampled_from(["toolu_0", "toolu_1"]), st.sampled_from(["", "r"])),
        st.builds(
            lambda: ChatMessage(
                Role.USER, "", MessageExtras(parts=("see", Image(url="https://x/y.png")))
            )
        ),
        st.builds(_system, st.sampled_from(["", "s"])),
    ),
    min_size=1,
    max_size=12,
)


@given(
    _BLOCK_TURNS,
    st.lists(st.sampled_from([SEARCH, READ]), max_size=2, unique_by=lambda tool: tool.name),
)
@settings(max_examples=300, deadline=None)
def test_any_request_has_at_most_four_marks_none_on_thinking(
    turns: list[ChatMessage], tools: list[Tool]
) -> None:
    for ttl in CacheTtl:
        body = request_body(_request(*turns, ttl=ttl, tools=tuple(tools)), stream=False)
        marks = _marks(body)

        assert len(marks) <= MAX_CACHE_BREAKPOINTS
        for path, _ in marks:
            holder: Any = body
            for step in path.replace("[", ".").replace("]", "").strip(".").split("."):
                holder = holder[int(step)] if step.isdigit() else holder[step]
            assert holder.get("type") not in ("thinking", "redacted_thinking")
        assert sum(path.startswith(".tools") for path, _ in marks) <= 1
        assert sum(path.startswith(".system") for path, _ in marks) <= 1
        assert {mark["ttl"] for _, mark in marks if "ttl" in mark} <= {"1h"}
        if body.get("system") is not None:
            assert isinstance(body["system"], list)


def test_openai_has_nothing_to_send_for_caching() -> None:
    # OpenAI caches long prompts on its own: the body is the same either way.
    messages = (_system("s"), _user("a"), _assistant("b"), _user("c"))
    cached = openai_request_body(
        _request(*messages, tools=(SEARCH,)), "max_completion_tokens", stream=False
    )
    plain = openai_request_body(
        _request(*messages, ttl=None, tools=(SEARCH,)), "max_completion_tokens", stream=False
    )

    assert cached == plain
