"""Upstream provider adapters, one module per wire protocol.

Each adapter declares the request features beyond plain chat it sends
upstream (`Provider.carried_features`): a request that uses another is never
sent to it (routing/selection.py judges the model unfit), rather than sent
without it.
"""

from __future__ import annotations

import aiohttp

from faregate_server.config.schema import ModelConfig, ProviderKind
from faregate_server.upstream.providers.anthropic import AnthropicProvider
from faregate_server.upstream.providers.base import Provider, UpstreamError, UpstreamErrorKind
from faregate_server.upstream.providers.openai import OpenAIProvider
from faregate_server.upstream.providers.sim import SimProvider
from faregate_server.upstream.redaction import Redactor

__all__ = ["Provider", "UpstreamError", "UpstreamErrorKind", "build_provider"]


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
