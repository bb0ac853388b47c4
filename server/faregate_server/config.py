"""The YAML config: loaded once, validated whole, frozen.

A bad file stops startup with a `ConfigError` naming the field path and the
problem (`models.gpt-4o.workers: must be an integer >= 1`). Prices and limits
are converted to integer nano-USD here, once, so the hot path never parses or
multiplies decimals. API keys are read from the environment variables the
config names and are kept out of every message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from faregate_server.money import MoneyFormatError, Price, usd_to_nano_usd


class ConfigError(ValueError):
    """The config is invalid; the message names the field and the problem."""


class ProviderKind(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    SIM = "sim"


class BudgetWindow(StrEnum):
    """When a budget's spend returns to zero (calendar boundaries in UTC)."""

    NONE = "none"
    HOURLY = "hourly"
    DAILY = "daily"
    MONTHLY = "monthly"


@dataclass(frozen=True, slots=True)
class SimSettings:
    """How the simulated provider behaves."""

    first_token_delay_s: float = 0.05
    """Delay before the first token."""
    token_delay_s: float = 0.01
    """Delay between tokens."""
    output_tokens: int = 32
    """Tokens generated when max_output_tokens allows."""
    failure_rate: float = 0.0
    """Probability, 0 to 1, that a call fails as an upstream 503."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One upstream model faregate can call."""

    name: str
    """The name agents use in `model`."""
    provider: ProviderKind
    """Which wire protocol the upstream speaks."""
    upstream_model: str
    """The model id sent upstream (defaults to `name`)."""
    api_base: str
    """Base URL of the upstream API (for openai: up to and including /v1)."""
    api_key: str | None = field(repr=False)
    """The key read from `api_key_env`; never logged."""
    price: Price
    """Token prices in nano-USD per million tokens."""
    context_window_tokens: int
    """Input plus output tokens the model accepts."""
    max_output_tokens: int
    """Output cap used when the request sets none, and the most it may ask for."""
    workers: int
    """Concurrent upstream calls."""
    queue: int
    """Requests that may wait for a worker before new ones are rejected."""
    idle_timeout_s: float
    """Longest silence between stream events before the stream is cut."""
    connect_timeout_s: float
    """Longest wait for a TCP/TLS connection to the upstream."""
    sim: SimSettings
    """Behaviour of a `sim` model (ignored by other providers)."""


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    key: str
    """The key agents send in `budget_key`."""
    limit_nano_usd: int
    """Spend allowed per window."""
    window: BudgetWindow
    """When the spend resets."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    """host:port for the gRPC server."""
    default_route: str = "default"
    """Route used when a request's `model` is empty."""
    default_deadline_s: float = 60.0
    """Deadline for callers that set none; no call is ever unbounded."""
    max_request_bytes: int = 1 << 20
    """Largest serialized request accepted."""
    max_output_tokens_limit: int = 1_000_000
    """Largest `max_output_tokens` any request may ask for."""
    shutdown_grace_s: float = 5.0
    """How long in-flight requests may run on after a stop is asked."""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    models: Mapping[str, ModelConfig]
    routes: Mapping[str, tuple[str, ...]]
    """Route alias -> candidate model names, preferred first."""
    budgets: Mapping[str, BudgetConfig]


_PROVIDER_DEFAULT_BASE = {
    ProviderKind.ANTHROPIC: "https://api.anthropic.com",
    ProviderKind.SIM: "sim://",
}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Loads and validates a config file, or the embedded default when path is None."""
    if path is None:
        text = resources.files("faregate_server").joinpath("default_config.yaml").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    return parse_config(text, env)


def parse_config(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Validates config YAML text; see `load_config`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}") from None
    root = _Node(data if data is not None else {}, "")
    root.expect_keys({"server", "models", "routes", "budgets"})
    server = _server(root.child("server", {}))
    models = {name: _model(name, node, env or os.environ) for name, node in root.items("models")}
    if not models:
        raise ConfigError("models: at least one model is required")
    routes = {name: _route(node, models) for name, node in root.items("routes")}
    for name in routes:
        if name in models:
            raise ConfigError(f"routes.{name}: a model has the same name")
    if server.default_route not in routes and server.default_route not in models:
        raise ConfigError(
            f"server.default_route: {server.default_route!r} is neither a route nor a model"
        )
    budgets = {key: _budget(key, node) for key, node in root.items("budgets")}
    return Config(server=server, models=models, routes=routes, budgets=budgets)


def _server(node: _Node) -> ServerConfig:
    defaults = ServerConfig()
    node.expect_keys(set(ServerConfig.__slots__))
    return ServerConfig(
        listen=node.string("listen", defaults.listen),
        default_route=node.string("default_route", defaults.default_route),
        default_deadline_s=node.number("default_deadline_s", defaults.default_deadline_s),
        max_request_bytes=node.integer("max_request_bytes", defaults.max_request_bytes),
        max_output_tokens_limit=node.integer(
            "max_output_tokens_limit", defaults.max_output_tokens_limit
        ),
        shutdown_grace_s=node.number("shutdown_grace_s", defaults.shutdown_grace_s, minimum=0),
    )


def _model(name: str, node: _Node, env: Mapping[str, str]) -> ModelConfig:
    node.expect_keys(
        {
            "provider", "upstream_model", "api_base", "api_key_env", "input_usd_per_mtok",
            "output_usd_per_mtok", "context_window_tokens", "max_output_tokens", "workers",
            "queue", "idle_timeout_s", "connect_timeout_s", "sim",
        }
    )  # fmt: skip
    provider_name = node.string("provider")
    try:
        provider = ProviderKind(provider_name)
    except ValueError:
        choices = ", ".join(kind.value for kind in ProviderKind)
        raise node.error("provider", f"must be one of {choices}") from None
    api_base = node.string("api_base", _PROVIDER_DEFAULT_BASE.get(provider, ""))
    if not api_base:
        raise node.error("api_base", "is required for openai models")
    key_env = node.string("api_key_env", "")
    api_key = None
    if key_env:
        api_key = env.get(key_env)
        if not api_key:
            raise node.error("api_key_env", f"environment variable {key_env} is not set")
    elif provider is ProviderKind.ANTHROPIC:
        raise node.error("api_key_env", "is required for anthropic models")
    context_window = node.integer("context_window_tokens", 128_000)
    max_output = node.integer("max_output_tokens", 4096)
    if max_output >= context_window:
        raise node.error("max_output_tokens", "must be smaller than context_window_tokens")
    return ModelConfig(
        name=name,
        provider=provider,
        upstream_model=node.string("upstream_model", name),
        api_base=api_base.rstrip("/"),
        api_key=api_key,
        price=Price(
            input_nano_usd_per_mtok=node.usd("input_usd_per_mtok"),
            output_nano_usd_per_mtok=node.usd("output_usd_per_mtok"),
        ),
        context_window_tokens=context_window,
        max_output_tokens=max_output,
        workers=node.integer("workers", 16),
        queue=node.integer("queue", 64, minimum=0),
        idle_timeout_s=node.number("idle_timeout_s", 30.0),
        connect_timeout_s=node.number("connect_timeout_s", 10.0),
        sim=_sim(node.child("sim", {})),
    )


def _sim(node: _Node) -> SimSettings:
    defaults = SimSettings()
    node.expect_keys(set(SimSettings.__slots__))
    failure_rate = node.number("failure_rate", defaults.failure_rate, minimum=0)
    if failure_rate > 1:
        raise node.error("failure_rate", "must be between 0 and 1")
    return SimSettings(
        first_token_delay_s=node.number(
            "first_token_delay_s", defaults.first_token_delay_s, minimum=0
        ),
        token_delay_s=node.number("token_delay_s", defaults.token_delay_s, minimum=0),
        output_tokens=node.integer("output_tokens", defaults.output_tokens),
        failure_rate=failure_rate,
    )


def _route(node: _Node, models: Mapping[str, ModelConfig]) -> tuple[str, ...]:
    candidates = node.value
    if not isinstance(candidates, list) or not candidates:
        raise ConfigError(f"{node.path}: must be a non-empty list of model names")
    for index, candidate in enumerate(candidates):
        if candidate not in models:
            raise ConfigError(f"{node.path}[{index}]: {candidate!r} is not a configured model")
    if len(set(candidates)) != len(candidates):
        raise ConfigError(f"{node.path}: lists a model twice")
    return tuple(candidates)


def _budget(key: str, node: _Node) -> BudgetConfig:
    node.expect_keys({"limit_usd", "window"})
    window_name = node.string("window", BudgetWindow.NONE.value)
    try:
        window = BudgetWindow(window_name)
    except ValueError:
        choices = ", ".join(window.value for window in BudgetWindow)
        raise node.error("window", f"must be one of {choices}") from None
    return BudgetConfig(key=key, limit_nano_usd=node.usd("limit_usd"), window=window)


_MISSING: Any = object()


class _Node:
    """A YAML mapping with its dotted path, for typed reads with precise errors."""

    def __init__(self, value: Any, path: str) -> None:
        self.value = value
        self.path = path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._join(key)}: {problem}")

    def expect_keys(self, allowed: set[str]) -> None:
        if not isinstance(self.value, dict):
            raise ConfigError(f"{self.path or 'config'}: must be a mapping")
        for key in self.value:
            if key not in allowed:
                raise self.error(str(key), "unknown field")

    def child(self, key: str, default: Any = _MISSING) -> _Node:
        return _Node(self._get(key, default), self._join(key))

    def items(self, key: str) -> list[tuple[str, _Node]]:
        mapping = self._get(key, {})
        if not isinstance(mapping, dict):
            raise self.error(key, "must be a mapping of names")
        path = self._join(key)
        entries = []
        for name, value in mapping.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{path}: names must be non-empty strings, got {name!r}")
            entries.append((name, _Node(value if value is not None else {}, f"{path}.{name}")))
        return entries

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int = 1) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}")
        return value

    def number(self, key: str, default: Any = _MISSING, minimum: float = 0.001) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.error(key, f"must be a number >= {minimum}")
        return float(value)

    def usd(self, key: str) -> int:
        try:
            return usd_to_nano_usd(self._get(key))
        except MoneyFormatError as error:
            raise self.error(key, str(error)) from None

    def _get(self, key: str, default: Any = _MISSING) -> Any:
        if not isinstance(self.value, dict):
            raise ConfigError(f"{self.path or 'config'}: must be a mapping")
        value = self.value.get(key, default)
        if value is _MISSING:
            raise self.error(key, "is required")
        return value

    def _join(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key
