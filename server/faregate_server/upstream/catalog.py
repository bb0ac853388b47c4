"""The configured models, built once: each with its provider, pool, tokenizer
and live health; and the routes over them.

A `Catalog` is immutable once built. A config reload builds a new one that
reuses the `Deployment` of every model whose config did not change, so its
pool, breaker, latency history and retry budget carry over, while requests in
flight keep the catalog they started with. When the config's secrets changed
(a model's key added or rotated), a reused deployment gets a new provider, so
that what its upstream says is scrubbed of the new secrets too.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from faregate_server.clock import Clock
from faregate_server.config.schema import (
    Config,
    ModelConfig,
    RetryConfig,
    RouteConfig,
    RouteSlot,
)
from faregate_server.config.tokenizers import Tokenizer
from faregate_server.errors import ModelNotFound
from faregate_server.upstream.breakers import CircuitBreaker, LatencyTracker, RetryBudget
from faregate_server.upstream.pools import ModelPool
from faregate_server.upstream.providers import Provider, build_provider
from faregate_server.upstream.redaction import Redactor, config_secrets
from faregate_server.upstream.tokens import EstimatingCounter, TiktokenCounter, TokenCounter


class Deployment:
    """One configured model, ready to serve, with the live state the router reads."""

    __slots__ = (
        "breaker",
        "config",
        "cooldown_until_s",
        "counter",
        "latency",
        "pool",
        "provider",
        "retry_budget",
    )

    def __init__(
        self,
        config: ModelConfig,
        provider: Provider,
        counter: TokenCounter,
        retries: RetryConfig,
        clock: Clock,
    ) -> None:
        self.config = config
        self.provider = provider
        self.counter = counter
        self.pool = ModelPool(config.name, config.workers, config.queue, clock.perf_s)
        self.breaker = CircuitBreaker(config.name, config.breaker, clock)
        self.latency = LatencyTracker()
        self.retry_budget = RetryBudget(
            ratio=retries.budget_ratio,
            min_retries_per_window=retries.budget_min_retries,
            window_s=retries.budget_window_s,
            clock=clock,
        )
        self.cooldown_until_s = 0.0
        """Monotonic time until which an upstream 429 keeps this model out of rotation."""

    @property
    def name(self) -> str:
        return self.config.name


class Catalog:
    """Maps names and route aliases to deployments."""

    config: Config
    redactor: Redactor

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        clock: Clock,
        previous: Catalog | None = None,
    ) -> None:
        # One counter per tokenizer and headroom, whatever the provider (each
        # tiktoken counter holds the process's one encoding of its tokenizer).
        counters: dict[tuple[Tokenizer, float], TokenCounter] = {}
        deployments: dict[str, Deployment] = {}
        kept: Mapping[str, Deployment] = {}
        if previous is not None and previous.config.retries == config.retries:
            # The retry budgets were built from the retry settings: keep them only if those stay.
            kept = previous.deployments
        redactor = Redactor(config_secrets(config))
        for model in config.models.values():
            old = kept.get(model.name)
            if old is not None and old.config == model:
                if previous is not None and previous.redactor.secrets != redactor.secrets:
                    # Its upstream's errors must be scrubbed of the new config's secrets too.
                    old.provider = build_provider(model, session, redactor)
                deployments[model.name] = old
                continue
            key = (model.tokenizer, model.estimate_headroom)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = _counter_for(*key)
            deployments[model.name] = Deployment(
                model, build_provider(model, session, redactor), counter, config.retries, clock
            )
        self.config = config
        self.redactor = redactor
        """Scrubs the config's secrets and credential-looking text from upstream errors."""
        self.deployments: Mapping[str, Deployment] = deployments
        self._routes: dict[str, RouteConfig] = {
            name: RouteConfig(name=name, slots=(RouteSlot(models=(name,), weights=(1,)),))
            for name in deployments
        }
        self._routes.update(config.routes)
        self._default = config.server.default_route

    def resolve(self, model: str) -> RouteConfig:
        """The route for a request's `model`: a route alias, or a model as a route of one.

        Raises:
            ModelNotFound: neither a model nor a route has this name.
        """
        route = self._routes.get(model or self._default)
        if route is None:
            raise ModelNotFound(model)
        return route

    def is_route(self, model: str) -> bool:
        return (model or self._default) in self.config.routes


def _counter_for(tokenizer: Tokenizer, estimate_headroom: float) -> TokenCounter:
    if tokenizer is Tokenizer.ESTIMATE:
        return EstimatingCounter(estimate_headroom)
    return TiktokenCounter(tokenizer)
