"""The configuration's value types: frozen, validated by `config_loader`, shared by all.

Money is already integer nano-USD here and limits integer pool units, so the
hot path never parses or multiplies decimals. API keys, read from the
environment variables the config names, are kept out of every repr.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from faregate_server.domain import Capability
from faregate_server.money import Price
from faregate_server.upstream.breakers import BreakerSettings

DEFAULT_MAX_RESPONSE_BYTES = 3 << 20
"""3 MiB: an answer this size still fits, with its accounting, in the 4 MiB
message gRPC clients accept by default."""
MAX_MAX_RESPONSE_BYTES = 64 << 20
"""The most `max_response_bytes` may be set to."""


class ConfigError(ValueError):
    """The config is invalid; the message names the field and the problem."""


class ProviderKind(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    SIM = "sim"


class Window(StrEnum):
    """When a budget's spend or a limit pool's use returns to zero (UTC calendar)."""

    NONE = "none"
    MINUTE = "minute"
    HOURLY = "hourly"
    DAILY = "daily"
    MONTHLY = "monthly"


BudgetWindow = Window


class LimitUnit(StrEnum):
    """What a limit pool counts."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    USD = "usd"
    """Money in nano-USD; a model draws its request's cost."""
    CUSTOM = "custom"


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
    slow_rate: float = 0.0
    """Probability, 0 to 1, that the first token takes slow_first_token_delay_s instead."""
    slow_first_token_delay_s: float = 1.0
    """The first-token delay of a slow call (a heavy latency tail)."""


@dataclass(frozen=True, slots=True)
class LimitDraw:
    """How much one request of a model draws from one limit pool, in pool units.

    For a USD pool the draw is the request's cost and these rates are unused.
    """

    pool: str
    per_request: int = 0
    per_1k_tokens: int = 0
    """Units per 1,000 input plus output tokens, rounded up."""


@dataclass(frozen=True, slots=True)
class LimitPoolConfig:
    """A provider account's limit shared by every model that draws on it."""

    name: str
    unit: LimitUnit
    capacity: int
    """Units per window (nano-USD for a USD pool)."""
    window: Window
    scarcity_k: float = 1.0
    """Exponent of the scarcity multiplier 1/f^k as the remaining fraction f falls."""


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
    """Longest wait for a stream's next data event (keep-alives don't count)
    before the stream is cut."""
    connect_timeout_s: float
    """Longest wait for a TCP/TLS connection to the upstream."""
    sim: SimSettings
    """Behaviour of a `sim` model (ignored by other providers)."""
    version: str = ""
    """The deployment's version, reported with each answer (canaries split by it)."""
    quality: float = 0.5
    """How good the model is, 0 to 1; the router weighs it against cost."""
    capabilities: frozenset[Capability] = frozenset()
    draws: tuple[LimitDraw, ...] = ()
    """The limit pools each request draws on."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    first_byte_timeout_s: float = 30.0
    """Longest wait for a whole (non-streamed) answer to start arriving, and
    longest silence inside it; the loader defaults it to `idle_timeout_s`."""
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    """Largest whole answer, and largest single stream event, after decompression."""


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    key: str
    """The key agents send in `budget_key`."""
    limit_nano_usd: int
    """Spend allowed per window."""
    window: Window
    """When the spend resets."""


@dataclass(frozen=True, slots=True)
class RouteSlot:
    """One candidate place in a route: a model, or a weighted split between
    versions (a canary), of which one is drawn per request."""

    models: tuple[str, ...]
    weights: tuple[int, ...]
    cumulative_weights: tuple[int, ...] = field(init=False)
    """Running totals of `weights`, computed once for the per-request draw."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cumulative_weights", tuple(itertools.accumulate(self.weights)))


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    slots: tuple[RouteSlot, ...]
    """Candidates in preference order; order breaks ties between equal scores."""
    hedge_after_s: float | None = None
    """Start a hedge when the first token is this late; None: no fixed delay."""
    hedge_after_p95: bool = False
    """Start a hedge when the first token is later than the primary's recent p95."""

    @property
    def hedged(self) -> bool:
        return self.hedge_after_s is not None or self.hedge_after_p95


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    task_weight: float = 8.0
    """How hard tasks sharpen quality: a model's task-weighted quality is
    quality ** (1 + task_weight x the task's difficulty)."""
    score_margin: float = 0.1
    """Candidates scoring within this fraction of the best are equals; load and
    latency pick among them (power of two choices)."""
    use_it_or_lose_it_discount: float = 0.5
    """Multiplier on a pool's scarcity when its reset is near and headroom is large."""
    use_it_or_lose_it_horizon_s: float = 3600.0
    """How near a reset must be for the discount."""
    use_it_or_lose_it_headroom: float = 0.3
    """Remaining fraction above which the discount applies."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = 3
    """Upstream attempts per request, the first included (hedges count)."""
    backoff_base_s: float = 0.05
    """Full-jitter backoff: a retry of the same model waits up to base x 2^n."""
    backoff_max_s: float = 2.0
    budget_ratio: float = 0.1
    """Retries allowed per model as a fraction of its recent requests."""
    budget_min_retries: int = 3
    """Retries allowed per window regardless of the ratio."""
    budget_window_s: float = 10.0
    rate_limit_cooldown_s: float = 1.0
    """How long a 429 without Retry-After takes the model out of rotation."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the gRPC port: the files' paths and the PEM contents read and
    checked when the config was loaded.

    The server reads the files again before each new connection's handshake
    and switches to new contents that pass the same checks, so the contents
    take no part in comparing configs.
    """

    cert_file: str
    """The server's certificate chain (PEM), leaf first."""
    key_file: str
    """The private key of `cert_file` (PEM, unencrypted)."""
    client_ca_file: str = ""
    """CA certificates (PEM) that sign client certificates; when set, every
    client must present one (mutual TLS)."""
    cert_pem: bytes = field(default=b"", repr=False, compare=False)
    key_pem: bytes = field(default=b"", repr=False, compare=False)
    client_ca_pem: bytes = field(default=b"", repr=False, compare=False)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_pem)


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
    max_messages: int = 1024
    """Most messages one request may carry."""
    max_message_chars: int = 524_288
    """Most characters (code points) in one message's content."""
    max_metadata_entries: int = 64
    """Most entries in a request's `metadata` map."""
    max_metadata_key_chars: int = 128
    """Longest key in a request's `metadata` map."""
    max_metadata_value_chars: int = 2048
    """Longest value in a request's `metadata` map."""
    max_header_bytes: int = 16384
    """Largest gRPC header block (call metadata) the transport accepts."""
    shutdown_grace_s: float = 5.0
    """How long in-flight requests may run on after a stop is asked; streams
    still running then are ended with UNAVAILABLE and charged what they delivered."""
    drain_delay_s: float = 0.0
    """On a stop, how long health reports NOT_SERVING before new requests are
    refused, so load balancers stop sending first."""
    reload_poll_s: float = 2.0
    """How often the config file is checked for changes (0 turns watching off)."""
    max_concurrent_calls: int = 1000
    """Most Route and StreamRoute calls this process serves at once; one more
    is refused at once with UNAVAILABLE (SERVER_OVERLOADED), never queued.
    Per process: `--workers N` admits N times as many."""
    loop_lag_limit_s: float = 0.1
    """Once the event loop has woken a background probe later than this twice
    within a second, new calls are refused at once with UNAVAILABLE
    (SERVER_OVERLOADED), until a second passes with no late wake-up; 0 turns
    the guard off (the lag is still measured, for the metric)."""
    tls: TlsConfig | None = None
    """TLS (and mutual TLS) for the gRPC port; None serves plaintext."""


class StateBackend(StrEnum):
    MEMORY = "memory"
    """Nothing survives a restart; for tests and demos."""
    SQLITE = "sqlite"
    """Committed spend is durable in an SQLite file before it is reported; one
    process per file."""
    REDIS = "redis"
    """Budgets, limit pools, the ledger and request ids shared by every replica
    through one Redis."""


class SqliteSynchronous(StrEnum):
    """How durable an SQLite ledger's commit is before the spend is reported."""

    FULL = "full"
    """fsync'd at every commit: it survives a power cut or an OS crash."""
    NORMAL = "normal"
    """Written to the WAL but fsync'd only at checkpoints: it survives a crash
    of faregate, but the last commits may be lost to a power cut or an OS crash."""


class WhenUnavailable(StrEnum):
    """What a replica does while its shared store is unreachable."""

    FAIL_CLOSED = "fail_closed"
    """Refuse requests with UNAVAILABLE: never a nano-dollar unaccounted."""
    FAIL_OPEN = "fail_open"
    """Serve on, each replica spending at most `emergency_cap_usd` per budget,
    and write that spend to the store once it returns."""


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    """Where the shared store is (redis:// or rediss:// for TLS)."""
    namespace: str = "faregate"
    """Prefix of every key; also their cluster hash tag, so the keys of one
    request share a slot."""
    lease_s: float = 30.0
    """How long a reservation outlives its replica: a crashed replica's
    reservations return to their budgets this long after its last renewal."""
    timeout_s: float = 0.5
    """How long one call to Redis may take before the store counts as unreachable."""
    when_unavailable: WhenUnavailable = WhenUnavailable.FAIL_CLOSED
    emergency_cap_nano_usd: int = 0
    """For fail_open: what this replica may spend per budget while Redis is away."""
    ledger_max_records: int = 1_000_000
    """The ledger stream keeps about this many newest records (export to keep more)."""


@dataclass(frozen=True, slots=True)
class StateConfig:
    backend: StateBackend = StateBackend.SQLITE
    path: str = "faregate.db"
    """The SQLite file, for the sqlite backend."""
    sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.FULL
    """The sqlite backend's durability: full, or normal (cheaper, see SqliteSynchronous)."""
    request_id_window_s: float = 86_400.0
    """How long the result of a request with a client request_id is kept for its retries."""
    redis: RedisConfig = RedisConfig()
    """The shared store, for the redis backend."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    enabled: bool = False
    """Serve faregate.v1.AdminService (to principals granted `admin`)."""
    listen: str = ""
    """host:port of a separate gRPC server for the AdminService (a private
    interface, say); empty serves it beside the RouterService."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Names a principal may use: some, or every one ("*")."""

    names: frozenset[str] = frozenset()
    everything: bool = False

    def allows(self, name: str) -> bool:
        return self.everything or name in self.names


@dataclass(frozen=True, slots=True)
class ApiKeyHash:
    """A stored API key: its public id and a salted digest of its secret part."""

    key_id: str
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PrincipalConfig:
    """Someone who may call faregate, and what they may do."""

    name: str
    api_keys: tuple[ApiKeyHash, ...] = ()
    certificate_subjects: tuple[str, ...] = ()
    """Verified client-certificate subjects (mutual TLS) that stand for it when
    a call carries no API key, as grpc reports them: "O=Acme,CN=agent-1"."""
    budgets: Grant = Grant()
    """Budgets its requests may spend from (every one of a request's keys)."""
    routes: Grant = Grant()
    """Routes it may name, the default route included when `model` is empty."""
    models: Grant = Grant()
    """Models it may name directly, bypassing routes."""
    requests_per_s: float = 0.0
    """Its sustained request rate on each replica; 0 means no limit."""
    burst: int = 1
    """Requests it may send at once above the rate."""
    max_concurrent: int = 0
    """Requests (streams included) it may have open at once on each replica; 0 means no cap."""
    admin: bool = False
    """Whether it may call the AdminService."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = True
    """Every RouterService and AdminService call must carry a credential
    (health and reflection stay open for probes and grpcurl)."""
    principals: Mapping[str, PrincipalConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Traces, metrics and request logs; read at startup (a reload leaves them as they are)."""

    http_listen: str = "127.0.0.1:9464"
    """host:port of the plain-HTTP admin server (/metrics, /healthz, /readyz);
    empty turns it off."""
    metrics: bool = True
    """Record OpenTelemetry metrics (scraped at /metrics)."""
    budget_labels: bool = False
    """Label metrics with budget keys, and export each budget's remaining money.
    Off by default: one series per budget key can be many series."""
    otlp_endpoint: str = ""
    """Where to export traces over OTLP/gRPC (e.g. http://127.0.0.1:4317); empty
    turns tracing off."""
    trace_sample_ratio: float = 1.0
    """Share of new traces (no sampled parent) that are recorded, 0 to 1."""
    request_log: bool = True
    """Write one JSON line per request on the `faregate.requests` logger."""
    log_prompts: bool = False
    """Put each request's messages into its log line (they may hold secrets)."""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    models: Mapping[str, ModelConfig]
    routes: Mapping[str, RouteConfig]
    budgets: Mapping[str, BudgetConfig]
    limit_pools: Mapping[str, LimitPoolConfig] = field(default_factory=dict)
    routing: RoutingConfig = RoutingConfig()
    retries: RetryConfig = RetryConfig()
    state: StateConfig = StateConfig()
    admin: AdminConfig = AdminConfig()
    auth: AuthConfig = AuthConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
