"""Reads the YAML config, validates it whole, and builds the frozen `Config`.

A bad file stops startup (or is refused by a reload) with a `ConfigError`
naming the field path and the problem, e.g.
`models.gpt-4o.workers: must be an integer >= 1`.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from faregate_server.config.schema import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_MAX_RESPONSE_BYTES,
    AdminConfig,
    ApiKeyHash,
    AuthConfig,
    BudgetConfig,
    Config,
    ConfigError,
    Grant,
    LimitDraw,
    LimitPoolConfig,
    LimitUnit,
    ModelConfig,
    PrincipalConfig,
    ProviderKind,
    RedisConfig,
    RetryConfig,
    RouteConfig,
    RouteSlot,
    RoutingConfig,
    ServerConfig,
    SimSettings,
    SqliteSynchronous,
    StateBackend,
    StateConfig,
    TelemetryConfig,
    TlsConfig,
    WhenUnavailable,
    Window,
)
from faregate_server.domain import Capability
from faregate_server.money import MoneyFormatError, Price, usd_to_nano_usd
from faregate_server.security.api_keys import KeyFormatError, parse_key_hash
from faregate_server.security.distinguished_names import parse_subject
from faregate_server.upstream.breakers import BreakerSettings

_PROVIDER_DEFAULT_BASE = {
    ProviderKind.ANTHROPIC: "https://api.anthropic.com",
    ProviderKind.SIM: "sim://",
}
_MAX_PORT = 65535
_TOP_LEVEL = {
    "server", "models", "routes", "budgets", "limit_pools", "routing", "retries", "state",
    "admin", "auth", "telemetry",
}  # fmt: skip


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Loads and validates a config file, or the embedded default when path is None."""
    if path is None:
        text = resources.files("faregate_server").joinpath("default_config.yaml").read_text()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text: {error.reason}") from None
    return parse_config(text, env)


def parse_config(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Validates config YAML text; see `load_config`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}") from None
    root = _Node(data if data is not None else {}, "")
    root.expect_keys(_TOP_LEVEL)
    server = _server(root.child("server", {}))
    limit_pools = {name: _limit_pool(name, node) for name, node in root.items("limit_pools")}
    models = {
        name: _model(name, node, env or os.environ, limit_pools)
        for name, node in root.items("models")
    }
    if not models:
        raise ConfigError("models: at least one model is required")
    routes = {name: _route(name, node, models) for name, node in root.items("routes")}
    for name in routes:
        if name in models:
            raise ConfigError(f"routes.{name}: a model has the same name")
    if server.default_route not in routes and server.default_route not in models:
        raise ConfigError(
            f"server.default_route: {server.default_route!r} is neither a route nor a model"
        )
    budgets = {key: _budget(key, node) for key, node in root.items("budgets")}
    admin = _admin(root.child("admin", {}))
    if admin.listen == server.listen and not server.listen.endswith(":0"):
        # grpc binds with SO_REUSEPORT: both servers would take the port and
        # split its connections between them.
        raise ConfigError("admin.listen: must differ from server.listen (or be empty)")
    return Config(
        server=server,
        models=models,
        routes=routes,
        budgets=budgets,
        limit_pools=limit_pools,
        routing=_routing(root.child("routing", {})),
        retries=_retries(root.child("retries", {})),
        state=_state(root.child("state", {})),
        admin=admin,
        auth=_auth(root.child("auth", {}), budgets, routes, models, server),
        telemetry=_telemetry(root.child("telemetry", {})),
    )


def address_problem(address: str) -> str | None:
    """What is wrong with a host:port to listen on, or None."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > _MAX_PORT:
        return f"must be host:port with a port from 0 to {_MAX_PORT}, got {address!r}"
    return None


def _telemetry(node: _Node) -> TelemetryConfig:
    defaults = TelemetryConfig()
    node.expect_keys(set(TelemetryConfig.__slots__))
    http_listen = node.address("http_listen", defaults.http_listen, optional=True)
    otlp_endpoint = node.string("otlp_endpoint", defaults.otlp_endpoint)
    if otlp_endpoint and not otlp_endpoint.startswith(("http://", "https://")):
        raise node.error("otlp_endpoint", "must start with http:// or https://")
    return TelemetryConfig(
        http_listen=http_listen,
        metrics=node.boolean("metrics", defaults.metrics),
        budget_labels=node.boolean("budget_labels", defaults.budget_labels),
        otlp_endpoint=otlp_endpoint,
        trace_sample_ratio=node.fraction("trace_sample_ratio", defaults.trace_sample_ratio),
        request_log=node.boolean("request_log", defaults.request_log),
        log_prompts=node.boolean("log_prompts", defaults.log_prompts),
    )


def _admin(node: _Node) -> AdminConfig:
    defaults = AdminConfig()
    node.expect_keys(set(AdminConfig.__slots__))
    return AdminConfig(
        enabled=node.boolean("enabled", defaults.enabled),
        listen=node.address("listen", defaults.listen, optional=True),
    )


def _auth(
    node: _Node,
    budgets: Mapping[str, BudgetConfig],
    routes: Mapping[str, RouteConfig],
    models: Mapping[str, ModelConfig],
    server: ServerConfig,
) -> AuthConfig:
    node.expect_keys(set(AuthConfig.__slots__))
    enabled = node.boolean("enabled", AuthConfig().enabled)
    principals = {
        name: _principal(name, principal, budgets, routes, models)
        for name, principal in node.items("principals")
    }
    key_ids = [stored.key_id for principal in principals.values() for stored in principal.api_keys]
    subjects = [subject for p in principals.values() for subject in p.certificate_subjects]
    if len(key_ids) != len(set(key_ids)):
        raise node.error("principals", "two API keys share a key id")
    if len(subjects) != len({parse_subject(subject) for subject in subjects}):
        raise node.error(
            "principals", "two principals claim one certificate subject (in any spelling)"
        )
    if subjects and (server.tls is None or not server.tls.mutual):
        raise node.error(
            "principals",
            "certificate_subjects need mutual TLS (server.tls.client_ca_file):"
            " without it no client presents a certificate",
        )
    if enabled and not key_ids and not subjects:
        raise node.error(
            "enabled",
            "auth is on but no principal has an API key or a certificate subject; add one"
            " (`faregate new-api-key`) or set auth.enabled: false for local development",
        )
    return AuthConfig(enabled=enabled, principals=principals)


def _principal(
    name: str,
    node: _Node,
    budgets: Mapping[str, BudgetConfig],
    routes: Mapping[str, RouteConfig],
    models: Mapping[str, ModelConfig],
) -> PrincipalConfig:
    defaults = PrincipalConfig(name)
    node.expect_keys(set(PrincipalConfig.__slots__) - {"name"})
    requests_per_s = node.number("requests_per_s", defaults.requests_per_s, minimum=0)
    return PrincipalConfig(
        name=name,
        api_keys=_api_keys(node.child("api_keys", [])),
        certificate_subjects=_certificate_subjects(node.child("certificate_subjects", [])),
        budgets=_grant(node.child("budgets", []), budgets),
        routes=_grant(node.child("routes", []), routes),
        models=_grant(node.child("models", []), models),
        requests_per_s=requests_per_s,
        burst=node.integer("burst", max(1, math.ceil(requests_per_s))),
        max_concurrent=node.integer("max_concurrent", defaults.max_concurrent, minimum=0),
        admin=node.boolean("admin", defaults.admin),
    )


def _api_keys(node: _Node) -> tuple[ApiKeyHash, ...]:
    if not isinstance(node.value, list):
        raise ConfigError(f"{node.path}: must be a list of stored key hashes")
    keys = []
    for index, entry in enumerate(node.value):
        try:
            keys.append(parse_key_hash(entry if isinstance(entry, str) else ""))
        except KeyFormatError as error:
            raise ConfigError(f"{node.path}[{index}]: {error}") from None
    return tuple(keys)


def _names(node: _Node) -> tuple[str, ...]:
    if not isinstance(node.value, list) or not all(isinstance(n, str) and n for n in node.value):
        raise ConfigError(f"{node.path}: must be a list of non-empty strings")
    return tuple(node.value)


def _certificate_subjects(node: _Node) -> tuple[str, ...]:
    """Distinguished names as RFC 4514 writes them (security/distinguished_names.py)."""
    subjects = _names(node)
    for index, subject in enumerate(subjects):
        try:
            parse_subject(subject)
        except ValueError as error:
            raise ConfigError(
                f"{node.path}[{index}]: {subject!r} is not a distinguished name: {error}"
            ) from None
    return subjects


def _grant(node: _Node, known: Mapping[str, object]) -> Grant:
    """A list of names, or "*" for every one (later ones included)."""
    if node.value == "*":
        return Grant(everything=True)
    if not isinstance(node.value, list) or not all(isinstance(n, str) for n in node.value):
        raise ConfigError(f'{node.path}: must be a list of names or "*"')
    for name in node.value:
        if name not in known:
            raise ConfigError(f"{node.path}: {name!r} is not configured")
    return Grant(frozenset(node.value))


def _state(node: _Node) -> StateConfig:
    defaults = StateConfig()
    node.expect_keys(set(StateConfig.__slots__))
    return StateConfig(
        backend=node.choice("backend", StateBackend, defaults.backend),
        path=node.string("path", defaults.path),
        sqlite_synchronous=node.choice(
            "sqlite_synchronous", SqliteSynchronous, defaults.sqlite_synchronous
        ),
        request_id_window_s=node.number("request_id_window_s", defaults.request_id_window_s),
        redis=_redis(node.child("redis", {})),
    )


def _redis(node: _Node) -> RedisConfig:
    defaults = RedisConfig()
    node.expect_keys(
        set(RedisConfig.__slots__) - {"emergency_cap_nano_usd"} | {"emergency_cap_usd"}
    )
    url = node.string("url", defaults.url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise node.error("url", "must start with redis://, rediss:// or unix://")
    return RedisConfig(
        url=url,
        namespace=node.string("namespace", defaults.namespace),
        lease_s=node.number("lease_s", defaults.lease_s, minimum=1.0),
        timeout_s=node.number("timeout_s", defaults.timeout_s),
        when_unavailable=node.choice(
            "when_unavailable", WhenUnavailable, defaults.when_unavailable
        ),
        emergency_cap_nano_usd=node.usd("emergency_cap_usd", 0),
        ledger_max_records=node.integer("ledger_max_records", defaults.ledger_max_records),
    )


# Below this, ordinary gRPC headers (path, deadline, user agent) stop fitting.
_MIN_HEADER_BYTES = 1024


def _server(node: _Node) -> ServerConfig:
    defaults = ServerConfig()
    node.expect_keys(set(ServerConfig.__slots__))
    return ServerConfig(
        listen=node.address("listen", defaults.listen),
        default_route=node.string("default_route", defaults.default_route),
        default_deadline_s=node.number("default_deadline_s", defaults.default_deadline_s),
        max_request_bytes=node.integer("max_request_bytes", defaults.max_request_bytes),
        max_output_tokens_limit=node.integer(
            "max_output_tokens_limit", defaults.max_output_tokens_limit
        ),
        max_messages=node.integer("max_messages", defaults.max_messages),
        max_message_chars=node.integer("max_message_chars", defaults.max_message_chars),
        max_metadata_entries=node.integer(
            "max_metadata_entries", defaults.max_metadata_entries, minimum=0
        ),
        max_metadata_key_chars=node.integer(
            "max_metadata_key_chars", defaults.max_metadata_key_chars
        ),
        max_metadata_value_chars=node.integer(
            "max_metadata_value_chars", defaults.max_metadata_value_chars, minimum=0
        ),
        max_header_bytes=node.integer(
            "max_header_bytes", defaults.max_header_bytes, minimum=_MIN_HEADER_BYTES
        ),
        shutdown_grace_s=node.number("shutdown_grace_s", defaults.shutdown_grace_s, minimum=0),
        drain_delay_s=node.number("drain_delay_s", defaults.drain_delay_s, minimum=0),
        reload_poll_s=node.number("reload_poll_s", defaults.reload_poll_s, minimum=0),
        max_concurrent_calls=node.integer("max_concurrent_calls", defaults.max_concurrent_calls),
        loop_lag_limit_s=node.number("loop_lag_limit_s", defaults.loop_lag_limit_s, minimum=0),
        tls=_tls(node.child("tls")) if node.scalar("tls", None) is not None else None,
    )


def load_tls(section: Mapping[str, Any], path: str = "server.tls") -> TlsConfig:
    """Reads and checks the TLS files a `server.tls`-shaped section names; the
    server calls it again when the files change (see `faregate_server.security.tls`)."""
    return _tls(_Node(section, path))


def _tls(node: _Node) -> TlsConfig:
    """Reads the PEM files and checks them with the ssl module, so a bad file
    stops startup naming its field instead of failing every handshake later."""
    node.expect_keys({"cert_file", "key_file", "client_ca_file"})
    cert_file, key_file = node.string("cert_file"), node.string("key_file")
    client_ca_file = node.string("client_ca_file", "")
    cert_pem = _read_certificates(node, "cert_file")
    key_pem = _read_file(node, "key_file")
    if b"PRIVATE KEY-----" not in key_pem:
        raise node.error("key_file", f"{key_file} is not a PEM private key")
    if b"ENCRYPTED" in key_pem:
        raise node.error("key_file", f"{key_file} is encrypted; give an unencrypted key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as error:
        raise node.error(
            "key_file", f"{key_file} is not the key of {cert_file}: {_reason(error)}"
        ) from None
    return TlsConfig(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_file=client_ca_file,
        cert_pem=cert_pem,
        key_pem=key_pem,
        client_ca_pem=_read_certificates(node, "client_ca_file") if client_ca_file else b"",
    )


def _read_certificates(node: _Node, key: str) -> bytes:
    pem = _read_file(node, key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as error:
        raise node.error(
            key, f"{node.string(key)} holds no valid PEM certificate: {_reason(error)}"
        ) from None
    return pem


def _reason(error: Exception) -> str:
    # OpenSSL's short reason (e.g. KEY_VALUES_MISMATCH), not its source line.
    return getattr(error, "reason", None) or str(error)


def _read_file(node: _Node, key: str) -> bytes:
    path = node.string(key)
    if not path:
        raise node.error(key, "must not be empty")
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise node.error(key, f"cannot read {path}: {error.strerror}") from None


def _model(
    name: str, node: _Node, env: Mapping[str, str], pools: Mapping[str, LimitPoolConfig]
) -> ModelConfig:
    node.expect_keys(
        {
            "provider", "upstream_model", "api_base", "api_key_env", "input_usd_per_mtok",
            "output_usd_per_mtok", "context_window_tokens", "max_output_tokens", "workers",
            "queue", "idle_timeout_s", "connect_timeout_s", "sim", "version", "quality",
            "capabilities", "limits", "breaker", "first_byte_timeout_s", "max_response_bytes",
        }
    )  # fmt: skip
    provider = node.choice("provider", ProviderKind)
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
    quality = node.number("quality", 0.5, minimum=0)
    if quality > 1:
        raise node.error("quality", "must be between 0 and 1")
    capabilities = node.child("capabilities", [])
    if not isinstance(capabilities.value, list):
        raise node.error("capabilities", "must be a list")
    idle_timeout_s = node.number("idle_timeout_s", 30.0)
    max_response_bytes = node.integer(
        "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, minimum=1024
    )
    if max_response_bytes > MAX_MAX_RESPONSE_BYTES:
        raise node.error("max_response_bytes", f"must be at most {MAX_MAX_RESPONSE_BYTES}")
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
        idle_timeout_s=idle_timeout_s,
        connect_timeout_s=node.number("connect_timeout_s", 10.0),
        sim=_sim(node.child("sim", {})),
        version=str(node.scalar("version", "")),
        quality=quality,
        capabilities=frozenset(
            _Node(item, f"{capabilities.path}[{index}]").as_choice(Capability)
            for index, item in enumerate(capabilities.value)
        ),
        draws=tuple(_draw(pool, draw, pools) for pool, draw in node.items("limits")),
        breaker=_breaker(node.child("breaker", {})),
        first_byte_timeout_s=node.number("first_byte_timeout_s", idle_timeout_s),
        max_response_bytes=max_response_bytes,
    )


def _sim(node: _Node) -> SimSettings:
    defaults = SimSettings()
    node.expect_keys(set(SimSettings.__slots__))
    return SimSettings(
        first_token_delay_s=node.number(
            "first_token_delay_s", defaults.first_token_delay_s, minimum=0
        ),
        token_delay_s=node.number("token_delay_s", defaults.token_delay_s, minimum=0),
        output_tokens=node.integer("output_tokens", defaults.output_tokens),
        failure_rate=node.fraction("failure_rate", defaults.failure_rate),
        slow_rate=node.fraction("slow_rate", defaults.slow_rate),
        slow_first_token_delay_s=node.number(
            "slow_first_token_delay_s", defaults.slow_first_token_delay_s, minimum=0
        ),
    )


def _breaker(node: _Node) -> BreakerSettings:
    defaults = BreakerSettings()
    node.expect_keys(set(BreakerSettings.__slots__))
    return BreakerSettings(
        consecutive_failures=node.integer("consecutive_failures", defaults.consecutive_failures),
        error_rate=node.fraction("error_rate", defaults.error_rate),
        min_requests=node.integer("min_requests", defaults.min_requests),
        window_s=node.number("window_s", defaults.window_s),
        cooldown_s=node.number("cooldown_s", defaults.cooldown_s),
        half_open_trials=node.integer("half_open_trials", defaults.half_open_trials),
    )


def _limit_pool(name: str, node: _Node) -> LimitPoolConfig:
    node.expect_keys({"unit", "capacity", "capacity_usd", "window", "scarcity_k"})
    unit = node.choice("unit", LimitUnit)
    capacity = node.usd("capacity_usd") if unit is LimitUnit.USD else node.integer("capacity")
    return LimitPoolConfig(
        name=name,
        unit=unit,
        capacity=capacity,
        window=node.choice("window", Window, Window.MINUTE),
        scarcity_k=node.number("scarcity_k", 1.0, minimum=0),
    )


def _draw(pool: str, node: _Node, pools: Mapping[str, LimitPoolConfig]) -> LimitDraw:
    if pool not in pools:
        raise ConfigError(f"{node.path}: {pool!r} is not a configured limit pool")
    node.expect_keys({"per_request", "per_1k_tokens"})
    per_request = node.integer("per_request", 0, minimum=0)
    per_1k_tokens = node.integer("per_1k_tokens", 0, minimum=0)
    unit = pools[pool].unit
    if unit is not LimitUnit.USD and per_request == 0 and per_1k_tokens == 0:
        # The natural draw of the pool's unit.
        if unit is LimitUnit.TOKENS:
            per_1k_tokens = 1000
        else:
            per_request = 1
    return LimitDraw(pool=pool, per_request=per_request, per_1k_tokens=per_1k_tokens)


def _route(name: str, node: _Node, models: Mapping[str, ModelConfig]) -> RouteConfig:
    if isinstance(node.value, list):  # the short form: just the candidates
        entries = node
        node = _Node({"candidates": node.value}, node.path)
    else:
        node.expect_keys({"candidates", "hedge_after_s", "hedge_after_p95"})
        entries = node.child("candidates")
    if not isinstance(entries.value, list) or not entries.value:
        raise ConfigError(f"{entries.path}: must be a non-empty list of models or splits")
    slots = []
    seen: set[str] = set()
    for index, entry in enumerate(entries.value):
        path = f"{entries.path}[{index}]"
        if isinstance(entry, dict):
            split = _Node(entry, path)
            split.expect_keys({"split"})
            weights = split.items("split")
            slot = RouteSlot(
                models=tuple(model for model, _ in weights),
                weights=tuple(weight.as_integer() for _, weight in weights),
            )
        else:
            slot = RouteSlot(models=(entry,), weights=(1,))
        for model in slot.models:
            if model not in models:
                raise ConfigError(f"{path}: {model!r} is not a configured model")
            if model in seen:
                raise ConfigError(f"{path}: lists {model!r} twice")
            seen.add(model)
        if not slot.models:
            raise ConfigError(f"{path}: a split needs at least one model")
        slots.append(slot)
    hedge_after_s = node.scalar("hedge_after_s", None)
    if hedge_after_s is not None:
        hedge_after_s = node.number("hedge_after_s")
    return RouteConfig(
        name=name,
        slots=tuple(slots),
        hedge_after_s=hedge_after_s,
        hedge_after_p95=node.boolean("hedge_after_p95", False),
    )


def _budget(key: str, node: _Node) -> BudgetConfig:
    node.expect_keys({"limit_usd", "window"})
    return BudgetConfig(
        key=key,
        limit_nano_usd=node.usd("limit_usd"),
        window=node.choice("window", Window, Window.NONE),
    )


def _routing(node: _Node) -> RoutingConfig:
    defaults = RoutingConfig()
    node.expect_keys(set(RoutingConfig.__slots__))
    return RoutingConfig(
        task_weight=node.number("task_weight", defaults.task_weight, minimum=0),
        score_margin=node.number("score_margin", defaults.score_margin, minimum=0),
        use_it_or_lose_it_discount=node.fraction(
            "use_it_or_lose_it_discount", defaults.use_it_or_lose_it_discount
        ),
        use_it_or_lose_it_horizon_s=node.number(
            "use_it_or_lose_it_horizon_s", defaults.use_it_or_lose_it_horizon_s, minimum=0
        ),
        use_it_or_lose_it_headroom=node.fraction(
            "use_it_or_lose_it_headroom", defaults.use_it_or_lose_it_headroom
        ),
    )


def _retries(node: _Node) -> RetryConfig:
    defaults = RetryConfig()
    node.expect_keys(set(RetryConfig.__slots__))
    return RetryConfig(
        max_attempts=node.integer("max_attempts", defaults.max_attempts),
        backoff_base_s=node.number("backoff_base_s", defaults.backoff_base_s, minimum=0),
        backoff_max_s=node.number("backoff_max_s", defaults.backoff_max_s, minimum=0),
        budget_ratio=node.number("budget_ratio", defaults.budget_ratio, minimum=0),
        budget_min_retries=node.integer(
            "budget_min_retries", defaults.budget_min_retries, minimum=0
        ),
        budget_window_s=node.number("budget_window_s", defaults.budget_window_s),
        rate_limit_cooldown_s=node.number(
            "rate_limit_cooldown_s", defaults.rate_limit_cooldown_s, minimum=0
        ),
    )


_MISSING: Any = object()
E = TypeVar("E", bound=StrEnum)


class _Node:
    """A YAML value with its dotted path, for typed reads with precise errors."""

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

    def scalar(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default)

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def address(self, key: str, default: Any = _MISSING, *, optional: bool = False) -> str:
        """A host:port to listen on; with `optional`, empty for none."""
        value = self.string(key, default)
        if optional and not value:
            return value
        problem = address_problem(value)
        if problem is not None:
            raise self.error(key, problem + (", or empty for none" if optional else ""))
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int = 1) -> int:
        return self.child(key, default).as_integer(minimum)

    def as_integer(self, minimum: int = 1) -> int:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.path}: must be an integer >= {minimum}")
        return value

    def number(self, key: str, default: Any = _MISSING, minimum: float = 0.001) -> float:
        value = self._get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < minimum
        ):
            raise self.error(key, f"must be a finite number >= {minimum}")
        return float(value)

    def fraction(self, key: str, default: Any = _MISSING) -> float:
        value = self.number(key, default, minimum=0)
        if value > 1:
            raise self.error(key, "must be between 0 and 1")
        return value

    def choice(self, key: str, kind: type[E], default: Any = _MISSING) -> E:
        return self.child(key, default).as_choice(kind)

    def as_choice(self, kind: type[E]) -> E:
        try:
            return kind(self.value)
        except ValueError:
            choices = ", ".join(member.value for member in kind)
            raise ConfigError(f"{self.path}: must be one of {choices}") from None

    def usd(self, key: str, default: Any = _MISSING) -> int:
        try:
            return usd_to_nano_usd(self._get(key, default))
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
