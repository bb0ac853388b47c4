"""Upstream provider adapters, one module per wire protocol.

`CARRIED_FEATURES` says which request features beyond plain chat each
adapter sends upstream: a request that uses another is never sent to a model
of that provider (routing/selection.py judges it unfit), rather than sent
without it.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from faregate_server.config.schema import ModelConfig, ProviderKind
from faregate_server.content import Feature
from faregate_server.upstream.providers.anthropic import AnthropicProvider
from faregate_server.upstream.providers.base import Provider, UpstreamError, UpstreamErrorKind
from faregate_server.upstream.providers.openai import OpenAIProvider
from faregate_server.upstream.providers.sim import SimProvider
from faregate_server.upstream.redaction import Redactor

__all__ = ["CARRIED_FEATURES", "Provider", "UpstreamError", "UpstreamErrorKind", "build_provider"]

CARRIED_FEATURES: Mapping[ProviderKind, frozenset[Feature]] = {
    ProviderKind.OPENAI: frozenset(),
    ProviderKind.ANTHROPIC: frozenset(),
    ProviderKind.SIM: frozenset(),
}
"""The request features each provider's adapter sends upstream: none yet, so
a request with tools, images, a response format, stop sequences, top_p, a
seed or reasoning is refused (MODEL_CANNOT_SERVE) until its adapter carries it."""


def build_provider(
    model: ModelConfig, session: aiohttp.ClientSession, redactor: Redactor
) -> Provider:
    """The adapter for a configured model, sharing the one HTTP session; `redactor`
    scrubs what upstreams say before it reaches a caller or a log line."""
    if model.provider is ProviderKind.OPENAI:
        return OpenAIProvider(session, model, redactor)
    if model.provider is ProviderKind.ANTHROPIC:
        return AnthropicProvider(session, model, redactor)
    return SimProvider(model)
