"""Token counting for worst-case cost estimates and for streams without usage.

A model is counted with the tokenizer its config names (`tokenizer`, by
default inferred from its provider and upstream model id: see
`faregate_server.config.tokenizers`). OpenAI's encodings, o200k and cl100k,
are counted exactly with tiktoken (`TiktokenCounter`, the encoding read from a
package: `faregate_server.upstream.encodings`), plus the chat format's
framing: 3 tokens per message and its role's token, and 3 to prime the reply.
Any other model gets a documented conservative estimate
(`EstimatingCounter`): one token per 3 UTF-8 bytes, rounded up, plus 4
tokens of framing per message. Real tokenizers average about 4 bytes per
token on English and code, so the estimate errs towards reserving too much;
a model whose tokenizer counts more (byte-fallback vocabularies on
non-Latin text, a chat template that adds a system prompt) is given
`estimate_headroom` h, and its texts count one token per 3 / (1 + h) bytes
(the framing stays 4 per message). Counters are shared per tokenizer and
headroom, and a counter's `name` says both: counts are cached by it.

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
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any, Protocol, TypeVar

import orjson

from faregate_server.config.tokenizers import Tokenizer
from faregate_server.content import GenerationOptions, MessageExtras
from faregate_server.domain import ChatMessage, Role
from faregate_server.upstream.encodings import encoding

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
_CUT_SLACK_TOKENS = 16
"""Tokens of slack in every `past_cap`: a stream's last piece of text may
be split into tokens differently by the model than by the count."""
_PIECES_SPLIT_ONE_IN = 32
_ESTIMATE_OVERCOUNT = 2
_MOST_TOKENS_PER_CHAR = 4
"""No count gives a character more: it is at most 4 UTF-8 bytes, a byte-level
tokenizer takes at most a token a byte, and the estimate (with the most
headroom) a token a byte."""
"""How many times a model's own count the estimate may give for honest text."""

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

    def past_cap(self, cap: int) -> int:
        """The count of a stream's delivered output at which the stream is
        past an output cap of `cap` tokens whatever the model's own count: a
        stream counted there is cut (routing/gateway.py), one below it never
        is, so an honest stream is not cut for this count's error."""
        ...


class TiktokenCounter:
    """Exact counts with one of OpenAI's encodings (cl100k unless told)."""

    image_tokens = 4_000

    def __init__(self, tokenizer: Tokenizer = Tokenizer.CL100K_BASE) -> None:
        # The process's one encoding, built here (when a catalog naming it is
        # built, so before any request of its models), never per request.
        self._encoding = encoding(tokenizer)
        self.name = f"tiktoken-{tokenizer.value.removesuffix('_base')}"
        # The chat format encodes each message's role too (one token each).
        self._role_tokens = {role: len(self._encoding.encode_ordinary(role.value)) for role in Role}

    def count_text(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

    def past_cap(self, cap: int) -> int:
        # The model's own count, but for tokens split where a stream's text
        # is counted in pieces: a few in a hundred, and a few more.
        return cap + cap // _PIECES_SPLIT_ONE_IN + _CUT_SLACK_TOKENS

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
    """A conservative byte-based estimate for models without a local tokenizer,
    widened by `headroom` (see the module's rule)."""

    image_tokens = 5_000

    def __init__(self, headroom: float = 0.0) -> None:
        # Exact: tokens = ceil(bytes * (1 + headroom) / 3), the headroom read
        # as the decimal the config wrote (0.1 is a tenth, not a float near it).
        widened = (1 + Fraction(repr(headroom))) / _ESTIMATE_BYTES_PER_TOKEN
        self._tokens_per_byte = (widened.numerator, widened.denominator)
        self.name = "estimate-3-bytes" + (f"+{headroom!r}" if headroom else "")

    def count_text(self, text: str) -> int:
        numerator, denominator = self._tokens_per_byte
        return -(-len(text.encode()) * numerator // denominator)

    def past_cap(self, cap: int) -> int:
        # The estimate counts high on purpose: a real tokenizer takes about
        # 4 bytes a token, up to 6 on long words, where it assumes 3 (and
        # fewer with headroom). Up to twice a model's count (headroom too) is
        # an honest stream's; past it, the model's own count is past the cap.
        numerator, denominator = self._tokens_per_byte
        return (
            -(-cap * _ESTIMATE_OVERCOUNT * numerator * _ESTIMATE_BYTES_PER_TOKEN // denominator)
            + _CUT_SLACK_TOKENS
        )

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
    text = " ".join(texts)
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    key = (counter.name, len(options.tools), digest)
    tokens = _options_tokens_seen.get(key)
    if tokens is None:
        tokens = counter.count_text(text) + _TOOL_FRAMING * len(options.tools)
        if len(_options_tokens_seen) >= _OPTIONS_TOKENS_KEPT:
            del _options_tokens_seen[next(iter(_options_tokens_seen))]
        _options_tokens_seen[key] = tokens
    return tokens


_OPTIONS_TOKENS_KEPT = 1024
_options_tokens_seen: dict[tuple[str, int, bytes], int] = {}
"""The counts `options_tokens` made, by counter, number of tools (each adds
its framing) and a digest of the text it counted, oldest first. An agent
sends the same tools on every turn of its loop, and counting them costs far
more than the digest (5 tools of a few hundred bytes each: about a hundred
microseconds to count, one to digest).
Keyed by digest, never by the text, so the memory kept is bounded by the
number of entries, whatever the size of the tools; the oldest is dropped
when full."""


def _json_text(value: Mapping[str, Any]) -> str:
    # The caller's JSON, parsed by orjson at validation: it encodes back.
    return orjson.dumps(dict(value)).decode()


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

        The text not yet counted is taken as `_MOST_TOKENS_PER_CHAR` tokens
        per character at most, so the batch is counted only once the count
        and that bound reach the limit; then the answer is exact.
        """
        if self._tokens + _MOST_TOKENS_PER_CHAR * self._batch_chars < limit and self.chunks < limit:
            return False
        return self.tokens() >= limit

    def tokens(self) -> int:
        """Tokens in everything added so far (at least one per chunk)."""
        if self._batch:
            self._tokens += self._counter.count_text("".join(self._batch))
            self._batch.clear()
            self._batch_chars = 0
        return max(self._tokens, self.chunks)
