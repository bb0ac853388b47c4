"""The config schema: every section's type, default and rule, held once, and the rules
between sections.

The sections live beside this module, one concern each (`server`, `models`,
`limits`, `routes`, `state`, `auth`, `telemetry`); this module assembles them into
`Config`, re-exports every config type (`from faregate_server.config.schema import
ModelConfig`), and exports the JSON Schema that `faregate config-schema` prints for
editors. `faregate_server.config.load` reads a file into it.

Invariants:
- Values are frozen stdlib dataclasses: reading one on the hot path is a plain
  attribute access. Pydantic validates a file against them once, at load.
- A rule between sections runs even when a section it reads failed: it looks
  names up in those the file writes, and reads the entries valid on their own;
  a broken rule fails no section. So a bad model does not hide a bad budget, nor
  a bad route a route naming an unknown model, nor a bad budget a grant naming
  an unknown one. Every problem of a file is reported at once, with its path.
- The JSON Schema is generated from the same classes; the defaults it shows are
  the defaults a load applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from faregate_server.config.auth import AuthConfig, Grant, PrincipalConfig, credential_problems
from faregate_server.config.fields import SECTION, Name, NonEmpty, keyed, set_derived
from faregate_server.config.limits import (
    BudgetConfig,
    BudgetWindow,
    LimitDraw,
    LimitPoolConfig,
    LimitUnit,
    Window,
)
from faregate_server.config.models import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_MAX_RESPONSE_BYTES,
    BreakerSettings,
    ModelConfig,
    ProviderKind,
    SimSettings,
    settle_model,
)
from faregate_server.config.problems import SHORTHAND, ConfigError, Loc, note
from faregate_server.config.routes import (
    RetryConfig,
    RouteConfig,
    RouteSlot,
    RouteSpelling,
    RoutingConfig,
)
from faregate_server.config.server import AdminConfig, ServerConfig, TlsConfig
from faregate_server.config.state import (
    RedisConfig,
    SqliteSynchronous,
    StateBackend,
    StateConfig,
    WhenUnavailable,
)
from faregate_server.config.telemetry import TelemetryConfig
from faregate_server.security.api_keys import ApiKeyHash

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_MAX_RESPONSE_BYTES",
    "AdminConfig",
    "ApiKeyHash",
    "AuthConfig",
    "BreakerSettings",
    "BudgetConfig",
    "BudgetWindow",
    "Config",
    "ConfigError",
    "Grant",
    "LimitDraw",
    "LimitPoolConfig",
    "LimitUnit",
    "ModelConfig",
    "PrincipalConfig",
    "ProviderKind",
    "RedisConfig",
    "RetryConfig",
    "RouteConfig",
    "RouteSlot",
    "RoutingConfig",
    "ServerConfig",
    "SimSettings",
    "SqliteSynchronous",
    "StateBackend",
    "StateConfig",
    "TelemetryConfig",
    "TlsConfig",
    "WhenUnavailable",
    "Window",
    "config_adapter",
    "json_schema",
    "tls_adapter",
]

_Key = Annotated[str, Name()]


# A rule between sections is attached to the last of the sections it reads, in the
# order fields are declared (and validated); it notes its problems instead of failing,
# so no rule hides another's problems. A section that failed still takes part: a rule
# reads the names its file writes (`_names`), and the entries that are valid on
# their own (`_entries`), so one bad entry hides nothing of the others.
@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole faregate config."""

    # A file without models is refused (`models` is validated even when left out).
    __pydantic_config__ = ConfigDict(**SECTION, json_schema_extra={"required": ["models"]})

    # The rules of a section left out apply all the same (its default is validated).
    server: Annotated[ServerConfig, Field(validate_default=True)] = field(
        default_factory=ServerConfig
    )
    """The gRPC port: where it listens, what it accepts, TLS, how it stops."""
    models: Annotated[
        Mapping[_Key, ModelConfig],
        keyed(),
        NonEmpty("at least one model is required"),
        Field(validate_default=True),
    ] = field(default_factory=dict)
    """The upstream models faregate can call, by the name agents use."""
    routes: Annotated[
        Mapping[_Key, RouteConfig],
        keyed(spelled=Mapping[_Key, RouteSpelling]),
        Field(validate_default=True),
    ] = field(default_factory=dict)
    """Named lists of candidate models; agents name a route in `model`."""
    budgets: Annotated[Mapping[_Key, BudgetConfig], keyed()] = field(default_factory=dict)
    """Money agents may spend, by `budget_key`."""
    limit_pools: Annotated[
        Mapping[_Key, LimitPoolConfig], keyed(), Field(validate_default=True)
    ] = field(default_factory=dict)
    """Provider accounts' limits (requests, tokens or money per window), by name."""
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    """How the router scores candidates."""
    retries: RetryConfig = field(default_factory=RetryConfig)
    """How often a request is tried again, and how retries are rationed."""
    state: StateConfig = field(default_factory=StateConfig)
    """Where budgets, limit pools, the ledger and request ids live."""
    admin: Annotated[AdminConfig, Field(validate_default=True)] = field(default_factory=AdminConfig)
    """The operators' AdminService."""
    auth: Annotated[AuthConfig, Field(validate_default=True)] = field(default_factory=AuthConfig)
    """Who may call faregate, and what they may use."""
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    """Traces, metrics and request logs (read at startup only)."""

    @model_validator(mode="before")
    @classmethod
    def _record_names(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and isinstance(info.context, dict):
            written = {section: data.get(section) for section in _NAMED}
            info.context[_WRITTEN] = {
                section: frozenset(key for key in entries if isinstance(key, str) and key)
                if isinstance(entries, Mapping)
                else frozenset()  # a section that is no mapping names nothing
                for section, entries in written.items()
            }
        return data

    @field_validator("models", mode="wrap")
    @classmethod
    def _settle_models(
        cls, written: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Mapping[str, ModelConfig]:
        models, failure = _entries("models", written, handler, info)
        env: Mapping[str, str] = (info.context or {}).get("env", os.environ)
        note(
            info.context,
            [
                (("models", name, *at), problem)
                for name, model in models.items()
                for at, problem in settle_model(model, env)
            ],
        )
        if failure is not None:
            raise failure
        return models

    @field_validator("routes", mode="wrap")
    @classmethod
    def _routes_name_models(
        cls, written: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Mapping[str, RouteConfig]:
        routes, failure = _entries("routes", written, handler, info)
        models = _names(info, "models")
        problems: list[tuple[Loc, str]] = []
        for name, route in routes.items():
            if name in models:
                problems.append((("routes", name), "a model has the same name"))
            # Paths name the candidates where the file has them.
            short = isinstance(written, Mapping) and isinstance(written.get(name), list)
            listed: Loc = ("routes", name, SHORTHAND if short else "candidates")
            seen: set[str] = set()
            for index, slot in enumerate(route.slots):
                for model in slot.models:
                    if model not in models:
                        problems.append(((*listed, index), f"{model!r} is not a configured model"))
                    elif model in seen:
                        problems.append(((*listed, index), f"lists {model!r} twice"))
                    seen.add(model)
        server: ServerConfig | None = info.data.get("server")
        default = None if server is None else server.default_route
        if default is not None and default not in _names(info, "routes") | models:
            problems.append(
                (("server", "default_route"), f"{default!r} is neither a route nor a model")
            )
        note(info.context, problems)
        if failure is not None:
            raise failure
        return routes

    @field_validator("limit_pools", mode="wrap")
    @classmethod
    def _draws_name_pools(
        cls, written: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Mapping[str, LimitPoolConfig]:
        pools, failure = _entries("limit_pools", written, handler, info)
        named = _names(info, "limit_pools")
        problems: list[tuple[Loc, str]] = []
        for name, model in _valid(info, "models").items():
            unknown = [draw.pool for draw in model.draws if draw.pool not in named]
            problems.extend(
                (("models", name, "limits", pool), f"{pool!r} is not a configured limit pool")
                for pool in unknown
            )
            if not unknown and failure is None:  # an unrated draw takes its pool unit's rate
                draws = tuple(draw.natural(pools[draw.pool].unit) for draw in model.draws)
                set_derived(model, "draws", draws)
        note(info.context, problems)
        if failure is not None:
            raise failure
        return pools

    @field_validator("admin", mode="after")
    @classmethod
    def _admin_port_is_its_own(cls, admin: AdminConfig, info: ValidationInfo) -> AdminConfig:
        server: ServerConfig | None = info.data.get("server")
        # grpc binds with SO_REUSEPORT: both servers would take the port and
        # split its connections between them.
        ephemeral = server is None or server.listen.endswith(":0")
        if server is not None and admin.listen == server.listen and not ephemeral:
            note(
                info.context,
                [(("admin", "listen"), "must differ from server.listen (or be empty)")],
            )
        return admin

    @field_validator("auth", mode="after")
    @classmethod
    def _principals_name_what_exists(cls, auth: AuthConfig, info: ValidationInfo) -> AuthConfig:
        problems = [(("auth", *at), problem) for at, problem in credential_problems(auth)]
        for section in ("budgets", "routes", "models"):
            known = _names(info, section)
            for name, principal in auth.principals.items():
                grant: Grant = getattr(principal, section)
                problems.extend(
                    (("auth", "principals", name, section), f"{unknown!r} is not configured")
                    for unknown in sorted(grant.names - known)
                )
        server: ServerConfig | None = info.data.get("server")
        subjects = any(p.certificate_subjects for p in auth.principals.values())
        if subjects and server is not None and (server.tls is None or not server.tls.mutual):
            problems.append(
                (
                    ("auth", "principals"),
                    "certificate_subjects need mutual TLS (server.tls.client_ca_file):"
                    " without it no client presents a certificate",
                )
            )
        note(info.context, problems)
        return auth


_NAMED = ("models", "routes", "budgets", "limit_pools")
"""The sections of named entries, which rules between sections look names up in."""
_WRITTEN = "faregate_written"
"""Where a loader's validation context holds the names each named section writes."""
_VALID = "faregate_valid"
"""Where it holds the entries of a failed section that are valid on their own."""


def _entries(
    section: str, written: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
) -> tuple[Mapping[str, Any], ValidationError | None]:
    """A named section's entries, and its failure if it failed; then the entries are
    those valid on their own (kept for later rules, see `_valid`)."""
    try:
        return handler(written), None
    except ValidationError as failure:
        valid: dict[str, Any] = {}
        if isinstance(written, Mapping):
            for name, entry in written.items():
                with contextlib.suppress(ValidationError):
                    valid.update(handler({name: entry}))
        if isinstance(info.context, dict):
            info.context.setdefault(_VALID, {})[section] = valid
        return valid, failure


def _valid(info: ValidationInfo, section: str) -> Mapping[str, Any]:
    """A named section's valid entries (all of them, or those valid on their own)."""
    validated: Mapping[str, Any] | None = info.data.get(section)
    if validated is not None:
        return validated
    partial: Mapping[str, Any] = (info.context or {}).get(_VALID, {}).get(section, {})
    return partial


def _names(info: ValidationInfo, section: str) -> frozenset[str]:
    """The names a named section's entries are filed under, valid or not."""
    written: Mapping[str, frozenset[str]] | None = (info.context or {}).get(_WRITTEN)
    if written is not None:
        return written.get(section, frozenset())
    return frozenset(_valid(info, section))


@functools.cache
def config_adapter() -> TypeAdapter[Config]:
    """The validator of whole configs (built on first use: it takes a moment)."""
    return TypeAdapter(Config)


@functools.cache
def tls_adapter() -> TypeAdapter[TlsConfig]:
    """The validator of a `server.tls` section alone, for re-reading its files."""
    return TypeAdapter(TlsConfig)


class _FileSchema(GenerateJsonSchema):
    """JSON Schema of the file as written: no generated titles, and no default
    for a nested section (its own fields show theirs)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if dataclasses.is_dataclass(schema.get("default")):
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)

    def generate(self, schema: CoreSchema, mode: Any = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        return {
            "$schema": self.schema_dialect,
            "title": "faregate config",
            "description": "The YAML config of faregate (faregate serve --config FILE).",
            **{key: value for key, value in generated.items() if key != "title"},
        }


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file, for editors (`faregate config-schema`)."""
    return config_adapter().json_schema(schema_generator=_FileSchema)
