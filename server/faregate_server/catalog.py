"""The configured models, built once: each with its provider, pool and tokenizer.

`Catalog.resolve` turns a request's `model` (a model name, a route alias, or
empty for the default route) into its candidates, preferred first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from faregate_server.config import Config, ModelConfig, ProviderKind
from faregate_server.errors import ModelNotFound
from faregate_server.pools import ModelPool
from faregate_server.providers import Provider, build_provider
from faregate_server.tokens import EstimatingCounter, TiktokenCounter, TokenCounter


@dataclass(frozen=True, slots=True)
class Deployment:
    """One configured model, ready to serve."""

    config: ModelConfig
    provider: Provider
    pool: ModelPool
    counter: TokenCounter

    @property
    def name(self) -> str:
        return self.config.name


class Catalog:
    """Maps names and route aliases to deployments."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        counters: dict[ProviderKind, TokenCounter] = {}
        deployments: dict[str, Deployment] = {}
        for model in config.models.values():
            counter = counters.get(model.provider)
            if counter is None:
                counter = counters[model.provider] = _counter_for(model.provider)
            deployments[model.name] = Deployment(
                config=model,
                provider=build_provider(model, session),
                pool=ModelPool(model.name, model.workers, model.queue),
                counter=counter,
            )
        self.deployments: Mapping[str, Deployment] = deployments
        self._candidates: dict[str, tuple[Deployment, ...]] = {
            name: (deployment,) for name, deployment in deployments.items()
        }
        for alias, names in config.routes.items():
            self._candidates[alias] = tuple(deployments[name] for name in names)
        self._default = config.server.default_route

    def resolve(self, model: str) -> tuple[Deployment, ...]:
        """Candidates for a request's `model`, preferred first.

        Raises:
            ModelNotFound: neither a model nor a route has this name.
        """
        candidates = self._candidates.get(model or self._default)
        if candidates is None:
            raise ModelNotFound(model)
        return candidates


def _counter_for(provider: ProviderKind) -> TokenCounter:
    if provider is ProviderKind.OPENAI:
        return TiktokenCounter()
    return EstimatingCounter()
