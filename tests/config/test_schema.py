"""The config schema as a file meets it: every problem at once, each with its path; unknown
and derived keys refused; hostile files refused in one readable error."""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

import pytest
import yaml
from faregate_server.config.fields import Integer, Number, Usd
from faregate_server.config.load import parse_config
from faregate_server.config.schema import Config, ConfigError, LimitUnit, SqliteSynchronous
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tests.conftest import TEST_ENV, base_config


def _config() -> dict[str, Any]:
    return copy.deepcopy(base_config("http://127.0.0.1:1"))


def _problems(data: Any, env: dict[str, str] | None = None) -> list[str]:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(ConfigError) as refused:
        parse_config(text, env=env or TEST_ENV)
    assert str(refused.value) == "\n".join(refused.value.problems)
    return list(refused.value.problems)


def test_every_problem_of_a_file_is_reported_at_once_each_with_its_path() -> None:
    data = _config()
    data["server"].update(listen=50051, colour="blue", max_messages="5")
    data["models"]["gpt-fake"].update(workers=0, provider="bard", quality=2)
    data["models"]["cheap-fake"].update(
        capabilities=["tools", "teleport"], queue=-1, refuses=["top_k"]
    )
    data["routes"]["fancy"] = {"candidates": [{"split": {"gpt-fake": 0}}], "hedge_after_s": -1}
    data["budgets"]["team"] = {"limit_usd": -3, "window": "fortnightly"}
    data["limit_pools"] = {"spend": {"unit": "usd", "capacity": 5}}
    data["state"] = {"backend": "etcd", "sqlite_synchronous": "off"}
    data["telemetry"] = {"otlp_endpoint": "collector:4317", "traces": True}
    data["whatever"] = 1

    assert _problems(data) == [
        "server.listen: must be a string",
        "server.max_messages: must be an integer >= 1",
        "server.colour: unknown field",
        "models.gpt-fake.provider: must be one of openai, anthropic, sim",
        "models.gpt-fake.workers: must be an integer >= 1",
        "models.gpt-fake.quality: must be between 0 and 1",
        "models.cheap-fake.queue: must be an integer >= 0",
        "models.cheap-fake.capabilities[1]: must be one of tools, vision, json_mode",
        "models.cheap-fake.refuses[0]: must be one of temperature, top_p, "
        "temperature_with_top_p, stop, seed, reasoning",
        "routes.fancy.candidates[0].split.gpt-fake: must be an integer >= 1",
        "routes.fancy.hedge_after_s: must be a finite number >= 0.001",
        "budgets.team.limit_usd: expected a non-negative amount of USD, got -3",
        "budgets.team.window: must be one of none, minute, hourly, daily, weekly, monthly",
        "state.backend: must be one of memory, sqlite, redis",
        "state.sqlite_synchronous: must be one of full, normal",
        "telemetry.otlp_endpoint: must start with http:// or https://",
        "telemetry.traces: unknown field",
        "limit_pools.spend.capacity_usd: is required",
        "limit_pools.spend.capacity: is not for a usd pool; it has capacity_usd",
        "whatever: unknown field",
    ]


def test_problems_keep_the_order_of_the_file_sections() -> None:
    text = (
        "telemetry: {metrics: maybe}\n"
        "models: {m: {provider: sim, input_usd_per_mtok: 1, output_usd_per_mtok: 1, workers: 0}}\n"
        "auth: {enabled: false}\n"
        "server: {listen: nowhere}\n"
    )

    assert _problems(text) == [
        "telemetry.metrics: must be true or false",
        "models.m.workers: must be an integer >= 1",
        "server.listen: must be host:port with a port from 0 to 65535, got 'nowhere'",
    ]


def test_rules_between_sections_are_reported_all_at_once_with_their_paths() -> None:
    data = _config()
    data["server"].update(listen="127.0.0.1:50051", default_route="nowhere")
    data["admin"] = {"listen": "127.0.0.1:50051"}
    data["routes"] = {
        "default": ["gpt-fake", "gpt-9", "gpt-fake"],
        "gpt-fake": ["cheap-fake"],
        "canary": {"candidates": [{"split": {"gpt-fake": 9, "gpt-10": 1}}]},
    }
    data["models"]["gpt-fake"]["limits"] = {"rpm": {}}
    data["auth"] = {
        "principals": {"bot": {"budgets": ["tem"], "routes": ["default", "nope"], "models": "*"}}
    }

    assert _problems(data) == [
        "server.default_route: 'nowhere' is neither a route nor a model",
        "models.gpt-fake.limits.rpm: 'rpm' is not a configured limit pool",
        "routes.default[1]: 'gpt-9' is not a configured model",
        "routes.default[2]: lists 'gpt-fake' twice",
        "routes.gpt-fake: a model has the same name",
        "routes.canary.candidates[0]: 'gpt-10' is not a configured model",
        "auth.enabled: auth is on but no principal has an API key or a certificate subject;"
        " add one (`faregate new-api-key`) or set auth.enabled: false for local development",
        "auth.principals.bot.budgets: 'tem' is not configured",
        "auth.principals.bot.routes: 'nope' is not configured",
        "admin.listen: must differ from server.listen (or be empty)",
    ]


def test_a_rule_between_sections_still_runs_while_another_section_or_rule_is_broken() -> None:
    data = _config()
    data["budgets"]["team"]["limit_usd"] = "lots"
    data["routes"]["default"] = ["gpt-fake", "gpt-9"]
    data["models"]["gpt-fake"]["max_output_tokens"] = 9000

    assert _problems(data, env={"FAKE_ANTHROPIC_KEY": "sk-ant"}) == [
        "models.gpt-fake.api_key_env: environment variable FAKE_OPENAI_KEY is not set",
        "models.gpt-fake.max_output_tokens: must be smaller than context_window_tokens",
        "routes.default[1]: 'gpt-9' is not a configured model",
        "budgets.team.limit_usd: expected a number of USD, got 'lots'",
    ]


def test_a_bad_entry_hides_no_rule_between_sections_from_the_others() -> None:
    data = _config()
    data["server"]["default_route"] = "nope"
    data["routes"] = {"s": [5], "default": ["gpt-fake", "gpt-9"], "broken": ["claude-fake"]}
    data["models"]["claude-fake"]["workers"] = 0  # a bad model is still a model
    data["models"]["gpt-fake"]["limits"] = {"rpm": {}, "tpm": {}}
    data["models"]["bad"] = {"provider": "bard", "limits": {"nowhere": {}}}
    data["limit_pools"] = {"rpm": {"unit": "requests", "capacity": 0}}
    data["budgets"]["bad"] = {"limit_usd": "lots"}
    data["auth"] = {
        "enabled": False,
        "principals": {"bot": {"budgets": ["bad", "team", "tem"], "routes": ["s", "nowhere"]}},
    }

    assert _problems(data) == [
        "server.default_route: 'nope' is neither a route nor a model",
        "models.gpt-fake.limits.tpm: 'tpm' is not a configured limit pool",
        "models.claude-fake.workers: must be an integer >= 1",
        "models.bad.provider: must be one of openai, anthropic, sim",
        "models.bad.input_usd_per_mtok: is required",
        "models.bad.output_usd_per_mtok: is required",
        "routes.default[1]: 'gpt-9' is not a configured model",
        "routes.s[0]: must be a model name or a split",
        "budgets.bad.limit_usd: expected a number of USD, got 'lots'",
        "auth.principals.bot.budgets: 'tem' is not configured",
        "auth.principals.bot.routes: 'nowhere' is not configured",
        "limit_pools.rpm.capacity: must be an integer >= 1",
    ]


def test_a_section_left_out_is_held_to_its_rules_all_the_same() -> None:
    data = _config()
    del data["server"]  # its default route, "default", exists
    data["routes"] = {"main": ["gpt-fake"]}

    assert _problems(data) == ["server.default_route: 'default' is neither a route nor a model"]


@pytest.mark.parametrize(
    "path",
    [
        "colour",
        "server.colour",
        "models.gpt-fake.colour",
        "models.gpt-fake.sim.colour",
        "models.gpt-fake.breaker.colour",
        "routes.default.colour",
        "budgets.team.colour",
        "limit_pools.rpm.colour",
        "routing.colour",
        "retries.colour",
        "state.colour",
        "state.redis.colour",
        "admin.colour",
        "auth.colour",
        "auth.principals.bot.colour",
        "telemetry.colour",
        # What the schema derives, or only code sets, is no field of the file.
        "models.gpt-fake.name",
        "models.gpt-fake.api_key",
        "models.gpt-fake.price",
        "models.gpt-fake.draws",
        "budgets.team.key",
        "budgets.team.limit_nano_usd",
        "state.redis.emergency_cap_nano_usd",
        "routes.default.slots",
        "routes.default.name",
        "auth.principals.bot.name",
    ],
)
def test_an_unknown_key_is_refused_with_its_path(path: str) -> None:
    data = _config()
    data["routes"]["default"] = {"candidates": data["routes"]["default"]}
    data["limit_pools"] = {"rpm": {"unit": "requests", "capacity": 60}}
    data["auth"] = {"enabled": False, "principals": {"bot": {}}}
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = "x"

    assert _problems(data) == [f"{path}: unknown field"]


@pytest.mark.parametrize(
    ("section", "entry"),
    [
        ("models", "gpt-fake"),
        ("budgets", "team"),
        ("routes", "default"),
        ("limit_pools", "rpm"),
    ],
)
@pytest.mark.parametrize("reserved", ["<key>", "<list>"])
def test_the_keys_the_schema_carries_names_in_are_unknown_fields(
    section: str, entry: str, reserved: str
) -> None:
    data = _config()
    data["routes"]["default"] = {"candidates": data["routes"]["default"]}
    data["limit_pools"] = {"rpm": {"unit": "requests", "capacity": 60}}
    data[section][entry][reserved] = ["gpt-fake"]

    assert _problems(data) == [f"{section}.{entry}: unknown field {reserved}"]


def test_a_key_yaml_reads_as_a_date_is_named_as_written() -> None:
    text = (
        "models: {m: {provider: sim, input_usd_per_mtok: 1, output_usd_per_mtok: 1,"
        " 2024-01-01: x, true: y}}\n"
        "routes: {default: [m]}\n"
        "auth: {enabled: false}\n"
        "2024-01-02: 1\n"
    )

    assert _problems(text) == [
        "models.m.2024-01-01: unknown field",
        "models.m.True: unknown field",
        "2024-01-02: unknown field",
    ]


def _sections() -> list[type]:
    """Every section of the schema: the dataclasses a file's values are validated into."""
    found: list[type] = [Config]
    for section in found:
        for hint in typing.get_type_hints(section, include_extras=True).values():
            for part in _parts(hint):
                is_section = isinstance(part, type) and hasattr(part, "__pydantic_config__")
                if is_section and part not in found:
                    found.append(part)
    return found


def _parts(hint: Any) -> list[Any]:
    """A field's annotation and every type inside it (InitVars opened)."""
    if isinstance(hint, dataclasses.InitVar):
        hint = hint.type
    return [hint, *(part for arg in typing.get_args(hint) for part in _parts(arg))]


@pytest.mark.parametrize("section", _sections(), ids=lambda section: section.__name__)
def test_every_default_keeps_its_own_rule(section: type) -> None:
    fields = section.__dataclass_fields__  # type: ignore[attr-defined]  # InitVars too
    for name, hint in typing.get_type_hints(section, include_extras=True).items():
        metadata = [meta for part in _parts(hint) for meta in getattr(part, "__metadata__", ())]
        rules = [meta for meta in metadata if isinstance(meta, Integer | Number | Usd)]
        defaults = [meta.default for meta in metadata if isinstance(meta, FieldInfo)]
        defaults.append(fields[name].default if name in fields else None)
        for rule in rules:
            for default in defaults:
                if default not in (None, dataclasses.MISSING, PydanticUndefined):
                    rule.check(default)


def test_a_split_cannot_spell_its_slot_as_code_does() -> None:
    data = _config()
    data["routes"]["default"] = [{"models": ["gpt-fake"], "weights": [1]}]

    assert _problems(data) == [
        "routes.default[0]: a split is written {split: {model: weight, ...}}"
    ]


def test_a_key_yaml_reads_as_a_number_is_named_as_written() -> None:
    data = _config()
    data["server"][5] = "x"
    data["models"][7] = {"provider": "sim"}

    assert _problems(data) == [
        "server.5: unknown field",
        "models: names must be non-empty strings, got 7",
    ]


def test_a_usd_pool_takes_capacity_usd_and_the_others_capacity() -> None:
    data = _config()
    data["limit_pools"] = {
        "spend": {"unit": "usd", "capacity": 5},
        "tpm": {"unit": "tokens", "capacity_usd": 5},
    }

    assert _problems(data) == [
        "limit_pools.spend.capacity_usd: is required",
        "limit_pools.spend.capacity: is not for a usd pool; it has capacity_usd",
        "limit_pools.tpm.capacity: is required",
        "limit_pools.tpm.capacity_usd: is not for a tokens pool; it has capacity",
    ]
    data["limit_pools"] = {"spend": {"unit": "usd", "capacity_usd": 5}, "tpm": {"unit": "tokens"}}
    data["limit_pools"]["tpm"]["capacity"] = 1000
    data["models"]["gpt-fake"]["limits"] = {"spend": {}, "tpm": {}}

    config = parse_config(yaml.safe_dump(data), env=TEST_ENV)

    assert config.limit_pools["spend"].capacity == 5 * 10**9
    assert config.limit_pools["spend"].unit is LimitUnit.USD
    draws = {draw.pool: draw for draw in config.models["gpt-fake"].draws}
    assert (draws["spend"].per_request, draws["spend"].per_1k_tokens) == (0, 0)
    assert (draws["tpm"].per_request, draws["tpm"].per_1k_tokens) == (0, 1000)


def test_sqlite_synchronous_is_full_unless_the_config_trades_it_for_speed() -> None:
    data = _config()
    assert parse_config(yaml.safe_dump(data), env=TEST_ENV).state.sqlite_synchronous is (
        SqliteSynchronous.FULL
    )
    data["state"]["sqlite_synchronous"] = "normal"
    state = parse_config(yaml.safe_dump(data), env=TEST_ENV).state

    assert state.sqlite_synchronous is SqliteSynchronous.NORMAL
    data["state"]["sqlite_synchronous"] = "off"
    assert _problems(data) == ["state.sqlite_synchronous: must be one of full, normal"]


def test_api_keys_come_from_the_process_environment_unless_one_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = yaml.safe_dump(_config())
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value + "-from-env")

    from_process = parse_config(text)
    given = parse_config(text, env=TEST_ENV)

    assert from_process.models["gpt-fake"].api_key == "sk-test-openai-from-env"
    assert given.models["gpt-fake"].api_key == "sk-test-openai"
    assert given.models["cheap-fake"].api_key is None  # names no variable
    assert _problems(text, env={"FAKE_OPENAI_KEY": "", "FAKE_ANTHROPIC_KEY": "x"}) == [
        "models.gpt-fake.api_key_env: environment variable FAKE_OPENAI_KEY is not set"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- models\n- routes\n", "config: must be a mapping"),
        ("42\n", "config: must be a mapping"),
        ("server: [1, 2]\n", "server: must be a mapping"),
        ("server:\n", "server: must be a mapping"),
        ("models: [a, b]\n", "models: must be a mapping"),
        ("server: {listen: true}\n", "server.listen: must be a string"),
        ("server: {max_messages: 1.5}\n", "server.max_messages: must be an integer >= 1"),
        ("server: {max_messages: yes}\n", "server.max_messages: must be an integer >= 1"),
        ("server: {max_messages: 1e400}\n", "server.max_messages: must be an integer >= 1"),
        (f"server: {{max_messages: {10**30}}}\n", "server.max_messages: must be at most"),
        (f"server: {{default_deadline_s: {10**400}}}\n", "server.default_deadline_s: must be a"),
        ("server: {default_deadline_s: .inf}\n", "server.default_deadline_s: must be a finite"),
        ("server: {default_deadline_s: .nan}\n", "server.default_deadline_s: must be a finite"),
        ("server: {default_deadline_s: '60'}\n", "server.default_deadline_s: must be a finite"),
        ("budgets: {b: {limit_usd: 1e30}}\n", "budgets.b.limit_usd: must be at most"),
        ("budgets: {b: {limit_usd: [1]}}\n", "budgets.b.limit_usd: expected a number of USD"),
        ("budgets: {b: {limit_usd: 0.0000000001}}\n", "budgets.b.limit_usd: 1e-10 USD is finer"),
        ("state: {backend: [sqlite]}\n", "state.backend: must be one of memory, sqlite, redis"),
        ("state: {redis: {url: http://x}}\n", "state.redis.url: must start with redis://,"),
        ("auth: {principals: {p: {budgets: {a: 1}}}}\n", "auth.principals.p.budgets: must be a"),
        (
            "auth: {principals: {p: {api_keys: key}}}\n",
            "auth.principals.p.api_keys: must be a list",
        ),
        ("routes: {r: [[a, [b]]]}\n", "routes.r[0]: must be a model name or a split"),
        ("routes: {r: []}\n", "routes.r: must be a non-empty list of models or splits"),
        ("routes: {r: {candidates: {a: 1}}}\n", "routes.r.candidates: must be a list"),
        ("routes: {r: [{split: {}}]}\n", "routes.r[0].split: a split needs at least one model"),
        ("routes: {r: [{split: null}]}\n", "routes.r[0].split: must be a mapping of models to"),
        ("routes: {r: [{split: [a]}]}\n", "routes.r[0].split: must be a mapping"),
        ("models: {m: {provider: sim, version: [1]}}\n", "models.m.version: must be a string"),
        ("models: {m: {provider: {a: [1, {b: 2}]}}}\n", "models.m.provider: must be one of"),
        ("models: {m: {sim: {x: {y: z}}}}\n", "models.m.sim.x: unknown field"),
        ("models: {'': {}}\n", "models: names must be non-empty strings, got ''"),
        ("models: {null: {}}\n", "models: names must be non-empty strings, got None"),
        (
            "limit_pools: {p: {unit: requests, capacity: 1, scarcity_k: 2000}}\n",
            "limit_pools.p.scarcity_k: must be at most 16",
        ),
        (
            "auth: {principals: {p: {requests_per_s: 1.0e+300}}}\n",
            "auth.principals.p.requests_per_s: must be at most 1e+09",
        ),
        ("models: [unclosed\n", "not valid YAML"),
        (f"server: {{max_messages: {'9' * 5000}}}\n", "not valid YAML: Exceeds the limit"),
        ("models: " + "[" * 900 + "\n", "not valid YAML: nested too deeply"),
        ("models: " + "{a: " * 900 + "\n", "not valid YAML: nested too deeply"),
        ("models: {m: {version: 2024-13-01}}\n", "not valid YAML: month must be in 1..12"),
        ("models: {m: {capabilities: !!set {tools: null}}}\n", "models.m.capabilities: must be a"),
        ("models: {m: {capabilities: [tools, tools]}}\n", "models.m.capabilities[1]: lists"),
        ("routes: {r: {candidates: !!set {a: null}}}\n", "routes.r.candidates: must be a list"),
    ],
)
def test_a_hostile_file_is_refused_naming_the_field(text: str, problem: str) -> None:
    problems = _problems(text)

    assert any(line.startswith(problem) for line in problems), problems


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        ("1e999990", "must be at most 9223372036.854775807 USD"),
        ("1e999999999", "must be at most 9223372036.854775807 USD"),
        ("1e-999999999", "'1e-999999999' USD is finer than one nano-USD"),
        ("-1e999999999", "expected a non-negative amount of USD, got '-1e999999999'"),
    ],
)
@pytest.mark.parametrize(
    "path",
    [
        "budgets.b.limit_usd",
        "limit_pools.spend.capacity_usd",
        "state.redis.emergency_cap_usd",
        "models.m.input_usd_per_mtok",
    ],
)
def test_an_amount_with_a_huge_exponent_is_refused_at_once_with_its_path(
    path: str, amount: str, problem: str
) -> None:
    data: dict[str, Any] = {
        "models": {"m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
        "routes": {"default": ["m"]},
        "budgets": {"b": {"limit_usd": 1}},
        "limit_pools": {"spend": {"unit": "usd", "capacity_usd": 1}},
        "auth": {"enabled": False},
    }
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = amount

    assert _problems(data) == [f"{path}: {problem}"]


def _alias_bomb(levels: int) -> str:
    """A YAML document of a few hundred bytes holding 9**levels strings through aliases."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_in_one_short_error_wherever_it_points() -> None:
    bomb = _alias_bomb(9)  # 9**9: 387 million strings, were any check to walk them
    text = bomb + (
        "models: {m: {provider: *l8, capabilities: *l8, limits: *l8, sim: *l8, version: *l8,"
        " input_usd_per_mtok: *l8, output_usd_per_mtok: *l8}}\n"
        "routes: {r: *l8}\n"
        "budgets: {b: {limit_usd: *l8}}\n"
        "server: {listen: *l8, tls: *l8}\n"
        "auth: {principals: {p: {api_keys: *l8, budgets: *l8, certificate_subjects: *l8}}}\n"
    )

    problems = _problems(text)

    assert problems[:9] == [f"l{level}: unknown field" for level in range(9)]
    assert "models.m.provider: must be one of openai, anthropic, sim" in problems
    assert "budgets.b.limit_usd: expected a number of USD, got a list" in problems
    assert len(problems) < 100
    assert all(len(line) < 200 for line in problems)


def test_a_mapping_alias_bomb_is_refused_in_one_error_too() -> None:
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: x" for i in range(9)) + "}"]
    for level in range(1, 9):
        lines.append(
            f"m{level}: &m{level} {{" + ", ".join(f"k{i}: *m{level - 1}" for i in range(9)) + "}"
        )
    text = "\n".join(lines) + "\nmodels: *m8\nroutes: *m8\nauth: {principals: *m8}\nstate: *m8\n"

    problems = _problems(text)

    assert "models.k0.provider: is required" in problems
    assert "state.k8: unknown field" in problems
    assert all(len(line) < 200 for line in problems)
