"""`faregate config-schema`: the JSON Schema editors check a config file with, generated
from the same schema the loader validates with, so its defaults are the loader's."""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from faregate_server.__main__ import main
from faregate_server.config.load import load_config, load_tls, parse_config
from faregate_server.config.schema import Config, ConfigError, TlsConfig, json_schema
from faregate_server.security.api_keys import format_key_hash, new_api_key

from tests.conftest import TEST_ENV, base_config
from tests.support.certs import write_pki

_SECTIONS = {
    "server", "models", "routes", "budgets", "limit_pools", "routing", "retries", "state",
    "admin", "auth", "telemetry",
}  # fmt: skip


def _printed_schema(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["config-schema"]) == 0
    printed: dict[str, Any] = json.loads(capsys.readouterr().out)
    return printed


def test_config_schema_prints_the_json_schema_of_a_config_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    schema = _printed_schema(capsys)

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["properties"]) == _SECTIONS
    assert schema["additionalProperties"] is False
    assert schema["properties"]["models"]["minProperties"] == 1
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition["additionalProperties"] is False, name
            for field, spec in definition["properties"].items():
                assert spec.get("description"), f"{name}.{field} is undocumented"
    model = schema["$defs"]["ModelConfig"]["properties"]
    assert model["workers"] == {
        "default": 16,
        "description": "Concurrent upstream calls.",
        "maximum": 2**63 - 1,
        "minimum": 1,
        "type": "integer",
    }
    assert not {"name", "api_key", "price", "draws"} & set(model)  # derived, not written
    assert {"input_usd_per_mtok", "limits", "api_key_env"} <= set(model)
    state = schema["$defs"]["StateConfig"]["properties"]["sqlite_synchronous"]
    assert state["default"] == "full"
    assert "normal: commits survive a faregate crash" in state["description"]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[1]], **node}
        del node["$ref"]
    return node


def _problems(schema: dict[str, Any], node: dict[str, Any], value: Any, at: str) -> list[str]:
    """A small JSON Schema check (the keywords the config schema uses), for when
    `jsonschema` is not installed."""
    node = _resolve(schema, node)
    if "anyOf" in node:
        branches = [_problems(schema, branch, value, at) for branch in node["anyOf"]]
        return [] if any(not found for found in branches) else [f"{at}: no branch matches"]
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    python: dict[str, Any] = {
        "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
        "integer": int, "number": (int, float),
    }  # fmt: skip
    if kinds and not any(
        isinstance(value, python[kind]) and not (kind in ("integer", "number") and value is True)
        for kind in kinds
    ):
        return [f"{at}: not {kinds}"]
    if "enum" in node and value not in node["enum"]:
        return [f"{at}: not one of {node['enum']}"]
    if "const" in node and value != node["const"]:
        return [f"{at}: not {node['const']!r}"]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not node.get("minimum", value) <= value <= node.get("maximum", value):
        return [f"{at}: out of range"]
    if isinstance(value, str) and not re.search(node.get("pattern", ""), value):
        return [f"{at}: does not match {node['pattern']}"]
    found: list[str] = []
    if isinstance(value, dict):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        found += [f"{at}.{key}: required" for key in node.get("required", []) if key not in value]
        for key, item in value.items():
            if key in properties:
                found += _problems(schema, properties[key], item, f"{at}.{key}")
            elif extra is False:
                found.append(f"{at}.{key}: not allowed")
            elif isinstance(extra, dict):
                found += _problems(schema, extra, item, f"{at}.{key}")
    if (
        isinstance(value, list)
        and node.get("uniqueItems")
        and len(set(map(repr, value))) < len(value)
    ):
        found.append(f"{at}: has duplicates")
    if isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            found += _problems(schema, node["items"], item, f"{at}[{index}]")
    return found


def _schema_problems(schema: dict[str, Any], data: Any) -> list[str]:
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema  # type: ignore[import-untyped]

        validator = jsonschema.Draft202012Validator(schema)
        return [error.message for error in validator.iter_errors(data)]
    return _problems(schema, schema, data, "config")


def test_the_default_config_and_the_test_configs_satisfy_the_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    schema = _printed_schema(capsys)
    default = yaml.safe_load(
        resources.files("faregate_server").joinpath("default_config.yaml").read_text()
    )
    tested = base_config("http://127.0.0.1:1")
    tested["routes"]["canary"] = {
        "candidates": [{"split": {"gpt-fake": 9, "cheap-fake": 1}}],
        "hedge_after_s": 0.5,
    }
    tested["limit_pools"] = {"spend": {"unit": "usd", "capacity_usd": "12.5"}}
    tested["models"]["gpt-fake"]["limits"] = {"spend": {}}

    assert _schema_problems(schema, default) == []
    assert _schema_problems(schema, tested) == []
    assert _schema_problems(schema, {**tested, "colour": "blue"}) != []
    assert _schema_problems(schema, {**tested, "server": {"max_messages": 0}}) != []


_LEFT_OUT = object()


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("routes.default", [{"split": None}]),
        ("models", _LEFT_OUT),
        ("models.gpt-fake.capabilities", ["tools", "vision", "tools"]),
        ("state.redis.url", "http://127.0.0.1:6379"),
        ("telemetry.otlp_endpoint", "collector:4317"),
        ("server.listen", "127.0.0.1:99999"),
        ("server.listen", "127.0.0.1:65536"),
        ("admin.listen", "127.0.0.1:70000"),
        ("limit_pools.rpm", {"unit": "requests", "capacity": 5, "scarcity_k": 17}),
        ("auth.principals.p.requests_per_s", 2e9),
    ],
)
def test_what_the_loader_refuses_the_schema_refuses_too(where: str, value: Any) -> None:
    data = base_config("http://127.0.0.1:1")
    data["auth"] = {"enabled": False}
    *parents, leaf = where.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is _LEFT_OUT:
        del node[leaf]
    else:
        node[leaf] = value

    with pytest.raises(ConfigError):
        parse_config(yaml.safe_dump(data), env=TEST_ENV)
    assert _schema_problems(json_schema(), data) != []


def _json(value: Any) -> Any:
    """A loaded value as the file (and so the JSON Schema) spells it."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | frozenset):
        return sorted(_json(item) for item in value)
    if isinstance(value, Mapping):
        return {key: _json(item) for key, item in value.items()}
    return value


_MINIMAL = """
models:
  m: {provider: sim, input_usd_per_mtok: 1, output_usd_per_mtok: 1, limits: {spend: {}}}
  t: {provider: sim, input_usd_per_mtok: 1, output_usd_per_mtok: 1, sim: {tool_call: {}}}
routes: {default: {candidates: [m]}}
budgets: {b: {limit_usd: 1}}
limit_pools: {spend: {unit: usd, capacity_usd: 1}, rpm: {unit: requests, capacity: 1}}
auth: {principals: {p: {}, q: {api_keys: [KEY]}}}
""".replace("KEY", format_key_hash(new_api_key()[1]))


def _loaded_sections(config: Config, tls: TlsConfig) -> dict[str, Any]:
    """Each section type of the schema, as loading a section that sets nothing yields it."""
    model = config.models["m"]
    return {
        "ServerConfig": config.server,
        "TlsConfig": tls,
        "ModelConfig": model,
        "SimSettings": model.sim,
        "SimToolCall": config.models["t"].sim.tool_call,
        "BreakerSettings": model.breaker,
        "LimitDraw": model.draws[0],  # of a usd pool: no natural rate applies
        "RouteConfig": config.routes["default"],
        "BudgetConfig": config.budgets["b"],
        "LimitPoolConfig": config.limit_pools["rpm"],
        "RoutingConfig": config.routing,
        "RetryConfig": config.retries,
        "StateConfig": config.state,
        "RedisConfig": config.state.redis,
        "AdminConfig": config.admin,
        "AuthConfig": config.auth,
        "PrincipalConfig": config.auth.principals["p"],
        "TelemetryConfig": config.telemetry,
    }


def test_the_schema_shows_exactly_the_defaults_a_load_applies(
    tmp_path: Path,
) -> None:
    pki = write_pki(tmp_path)
    tls = load_tls({"cert_file": str(pki.server_cert_file), "key_file": str(pki.server_key_file)})
    schema = json_schema()
    config = parse_config(_MINIMAL, env=TEST_ENV)
    sections = _loaded_sections(config, tls)
    # Where the file spells a field otherwise than the config holds it.
    spelled = {"emergency_cap_usd": "emergency_cap_nano_usd"}

    with_defaults = {
        name
        for name, definition in schema["$defs"].items()
        if any("default" in spec for spec in definition.get("properties", {}).values())
    }
    assert with_defaults <= set(sections)  # every section with defaults is checked here
    for name, section in sections.items():
        properties = schema["$defs"][name]["properties"]
        shown = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
        for key, default in shown.items():
            assert _json(getattr(section, spelled.get(key, key))) == default, f"{name}.{key}"
        # And no plain default goes unshown: each is held once, in the schema.
        for field in dataclasses.fields(section):
            written = {value: key for key, value in spelled.items()}.get(field.name, field.name)
            plain = field.default is not dataclasses.MISSING and field.init
            if plain and written in properties and not dataclasses.is_dataclass(field.default):
                # burst's default follows requests_per_s (described, not shown).
                assert written in shown or field.name == "burst", (
                    f"{name}.{field.name} has a default the schema does not show"
                )


def test_defaults_that_follow_other_fields_are_described_not_shown() -> None:
    model = json_schema()["$defs"]["ModelConfig"]["properties"]
    config = parse_config(
        "models: {m: {provider: anthropic, api_key_env: FAKE_ANTHROPIC_KEY,"
        " input_usd_per_mtok: 1, output_usd_per_mtok: 1, idle_timeout_s: 7}}\n"
        "routes: {default: [m]}\nauth: {enabled: false}\n",
        env=TEST_ENV,
    )
    loaded = config.models["m"]

    for key in ("upstream_model", "api_base", "first_byte_timeout_s"):
        assert "default" not in model[key]
    assert "defaults to idle_timeout_s" in model["first_byte_timeout_s"]["description"]
    assert (loaded.upstream_model, loaded.api_base) == ("m", "https://api.anthropic.com")
    assert loaded.first_byte_timeout_s == 7.0


def test_check_config_prints_every_problem_on_a_line_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    data = base_config("http://127.0.0.1:9")
    data["server"]["max_messages"] = 0
    data["routes"]["default"] = ["gpt-fake", "gpt-9"]
    data["budgets"]["team"]["limit_usd"] = -1
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    assert main(["check-config", str(path)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        "faregate: bad config: server.max_messages: must be an integer >= 1",
        "faregate: bad config: routes.default[1]: 'gpt-9' is not a configured model",
        "faregate: bad config: budgets.team.limit_usd: expected a non-negative amount of USD,"
        " got -1",
    ]


def test_the_embedded_default_config_loads_as_it_reads() -> None:
    config = load_config()

    assert set(config.models) == {"sim-large", "sim-small"}
    assert config.models["sim-large"].api_base == "sim:"  # as it always was: no trailing "/"
    assert config.models["sim-large"].workers == 32
    assert config.state.sqlite_synchronous.value == "full"
    assert not config.auth.enabled
