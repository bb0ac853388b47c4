"""A simulated provider, for the embedded default config and demos.

It makes no network call and generates placeholder words at a configured
pace, failing at a configured rate as an upstream 503 would. Its answers say
they are simulated, and its model's provider reads "sim" in every response.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import ClassVar

from faregate_server.config.schema import ModelConfig
from faregate_server.content import Feature
from faregate_server.domain import Completion, FinishReason, StreamEnd, UpstreamRequest, Usage
from faregate_server.upstream.providers.base import UpstreamError, UpstreamErrorKind
from faregate_server.upstream.tokens import EstimatingCounter, count_messages

_WORDS = ("simulated", "answer", "from", "faregate's", "sim", "provider.")


class SimProvider:
    """Generates one placeholder token per configured delay."""

    carried_features: ClassVar[frozenset[Feature]] = frozenset()
    """None yet: a request with tools, images, a response format, stop
    sequences, top_p, a seed or reasoning is refused (MODEL_CANNOT_SERVE)
    until this adapter sends it."""

    def __init__(self, model: ModelConfig, rng: random.Random | None = None) -> None:
        self._settings = model.sim
        self._counter = EstimatingCounter()
        self._rng = rng or random.Random()

    async def complete(self, request: UpstreamRequest) -> Completion:
        chunks: list[str] = []
        end: StreamEnd | None = None
        async with aclosing(self.stream(request)) as items:
            async for item in items:
                if isinstance(item, str):
                    chunks.append(item)
                else:
                    end = item
        assert end is not None
        assert end.usage is not None
        return Completion("".join(chunks), end.finish_reason, end.usage)

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[str | StreamEnd, None]:
        settings = self._settings
        if settings.failure_rate and self._rng.random() < settings.failure_rate:
            raise UpstreamError(
                UpstreamErrorKind.UNAVAILABLE, "simulated upstream failure", http_status=503
            )
        output_tokens = min(settings.output_tokens, request.max_output_tokens)
        slow = settings.slow_rate and self._rng.random() < settings.slow_rate
        await asyncio.sleep(
            settings.slow_first_token_delay_s if slow else settings.first_token_delay_s
        )
        for index in range(output_tokens):
            if index:
                await asyncio.sleep(settings.token_delay_s)
            word = _WORDS[index % len(_WORDS)]
            yield f" {word}" if index else word
        finish = (
            FinishReason.LENGTH if output_tokens < settings.output_tokens else FinishReason.STOP
        )
        usage = Usage(await count_messages(self._counter, request.messages), output_tokens)
        yield StreamEnd(finish, usage)
