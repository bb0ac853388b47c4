from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from faregate_server.config.load import load_config, parse_config
from faregate_server.config.schema import BudgetWindow, ConfigError
from faregate_server.security.api_keys import format_key_hash, new_api_key
from faregate_server.workers import worker_http_listen

from tests.conftest import TEST_ENV, base_config
from tests.support.certs import write_pki


def test_embedded_default_config_serves_a_demo_budget_with_sim_models() -> None:
    config = load_config()

    assert config.budgets["demo"].window is BudgetWindow.DAILY
    assert {model.provider.value for model in config.models.values()} == {"sim"}
    assert config.routes[config.server.default_route]
    assert config.server.listen == "127.0.0.1:50051"


def test_prices_and_limits_become_integer_nano_usd() -> None:
    config = parse_config(yaml.safe_dump(base_config("http://127.0.0.1:1")), env=TEST_ENV)

    assert config.models["cheap-fake"].price.input_nano_usd_per_mtok == 150_000_000
    assert config.budgets["team"].limit_nano_usd == 100_000_000_000


def test_cache_prices_default_to_input_and_to_anthropics_write_rates() -> None:
    data = base_config("http://127.0.0.1:1")
    data["models"]["gpt-fake"]["cached_input_usd_per_mtok"] = 1.25
    data["models"]["claude-fake"]["cache_write_1h_usd_per_mtok"] = "6.5"
    config = parse_config(yaml.safe_dump(data), env=TEST_ENV)

    gpt, claude = config.models["gpt-fake"].price, config.models["claude-fake"].price
    # gpt-fake: $2.50 input; OpenAI bills no cache write above input.
    assert (gpt.cached_input_nano_usd_per_mtok, gpt.cache_write_nano_usd_per_mtok) == (
        1_250_000_000,
        2_500_000_000,
    )
    assert gpt.cache_write_1h_nano_usd_per_mtok == 2_500_000_000
    # claude-fake: $3 input; a read defaults to it, a five-minute write to 1.25 times.
    assert claude.cached_input_nano_usd_per_mtok == 3_000_000_000
    assert claude.cache_write_nano_usd_per_mtok == 3_750_000_000
    assert claude.cache_write_1h_nano_usd_per_mtok == 6_500_000_000


_KEY = format_key_hash(new_api_key()[1])


def _broken(change: dict[str, Any]) -> str:
    data = base_config("http://127.0.0.1:1")
    for path, value in change.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models.gpt-fake.workers": 0}, "models.gpt-fake.workers: must be an integer >= 1"),
        ({"models.gpt-fake.provider": "bard"}, "models.gpt-fake.provider: must be one of"),
        ({"models.gpt-fake.input_usd_per_mtok": "cheap"}, "models.gpt-fake.input_usd_per_mtok"),
        (
            {"models.gpt-fake.cache_write_usd_per_mtok": -1},
            "models.gpt-fake.cache_write_usd_per_mtok",
        ),
        ({"models.gpt-fake.api_key_env": "NOT_SET_ANYWHERE"}, "NOT_SET_ANYWHERE is not set"),
        ({"models.gpt-fake.colour": "blue"}, "models.gpt-fake.colour: unknown field"),
        ({"models.gpt-fake.max_output_tokens": 9000}, "must be smaller than context_window"),
        (
            {"models.gpt-fake.max_response_bytes": 1000},
            "models.gpt-fake.max_response_bytes: must be an integer >= 1024",
        ),
        (
            {"models.gpt-fake.max_response_bytes": 1 << 30},
            "models.gpt-fake.max_response_bytes: must be at most 67108864",
        ),
        ({"models.gpt-fake.first_byte_timeout_s": 0}, "models.gpt-fake.first_byte_timeout_s"),
        (
            {"routes.default": ["gpt-fake", "gpt-9"]},
            "routes.default[1]: 'gpt-9' is not a configured",
        ),
        ({"routes.gpt-fake": ["cheap-fake"]}, "routes.gpt-fake: a model has the same name"),
        ({"budgets.team.window": "fortnightly"}, "budgets.team.window: must be one of"),
        ({"budgets.team.alerts": 0.8}, "budgets.team.alerts: must be a list of fractions"),
        ({"budgets.team.alerts": [50, 80, 100]}, "budgets.team.alerts[0]: must be a fraction"),
        ({"budgets.team.alerts": [0.5, 0]}, "budgets.team.alerts[1]: must be a fraction"),
        ({"budgets.team.alerts": [0.5, 1.5]}, "alerts[1]: must be a fraction above 0 and at"),
        ({"budgets.team.alerts": [-0.5]}, "budgets.team.alerts[0]: must be a fraction"),
        ({"budgets.team.alerts": ["80%"]}, "budgets.team.alerts[0]: must be a fraction"),
        ({"budgets.team.alerts": [True]}, "budgets.team.alerts[0]: must be a fraction"),
        ({"budgets.team.alerts": [float("nan")]}, "alerts[0]: must be a fraction"),
        ({"budgets.team.alerts": [0.8, 0.5]}, "alerts[1]: must be larger than the one before"),
        ({"budgets.team.alerts": [0.5, 0.5]}, "alerts[1]: must be larger than the one before"),
        ({"budgets.team.limit_usd": -3}, "budgets.team.limit_usd"),
        ({"server.default_route": "nowhere"}, "server.default_route"),
        ({"server.listen": 50051}, "server.listen: must be a string"),
        ({"server.shutdown_grace_s": float("inf")}, "shutdown_grace_s: must be a finite number"),
        ({"server.listen": "50051"}, "server.listen: must be host:port with a port from 0"),
        ({"telemetry.http_listen": "127.0.0.1:70000"}, "telemetry.http_listen: must be host:port"),
        (
            {"server.listen": "127.0.0.1:50051", "admin.listen": "127.0.0.1:50051"},
            "admin.listen: must differ from server.listen",
        ),
        ({"retries.backoff_max_s": float("nan")}, "retries.backoff_max_s: must be a finite number"),
        ({"server.max_messages": 0}, "server.max_messages: must be an integer >= 1"),
        ({"server.max_metadata_entries": -1}, "server.max_metadata_entries: must be an integer"),
        ({"server.max_header_bytes": 512}, "server.max_header_bytes: must be an integer >= 1024"),
        ({"server.drain_delay_s": -1}, "server.drain_delay_s"),
        ({"server.max_concurrent_calls": 0}, "server.max_concurrent_calls: must be an integer"),
        ({"server.loop_lag_limit_s": -0.1}, "server.loop_lag_limit_s: must be a finite number"),
        ({"auth.enabled": True}, "auth.enabled: auth is on but no principal has an API key"),
        (
            {"auth.principals": {"bot": {"api_keys": ["sha1:abc"]}}},
            r"auth.principals.bot.api_keys[0]: must look like hmac-sha256:",
        ),
        (
            {"auth.principals": {"bot": {"budgets": ["tem"]}}},
            "auth.principals.bot.budgets: 'tem' is not configured",
        ),
        (
            {"auth.principals": {"bot": {"routes": "all"}}},
            "auth.principals.bot.routes: must be a list of names or",
        ),
        (
            {"auth.principals": {"a": {"api_keys": [_KEY]}, "b": {"api_keys": [_KEY]}}},
            "auth.principals: two API keys share a key id",
        ),
        (
            {"auth.principals": {"bot": {"certificate_subjects": ["CN=bot"]}}},
            r"auth.principals: certificate_subjects need mutual TLS \(server.tls.client_ca_file\)",
        ),
        (
            {"auth.principals": {"bot": {"certificate_subjects": ["CN=bot", "bot"]}}},
            "auth.principals.bot.certificate_subjects[1]: 'bot' is not a distinguished name",
        ),
        (
            {
                "auth.principals": {
                    "a": {"certificate_subjects": ["O=Acme,CN=bot"]},
                    "b": {"certificate_subjects": ["cn=bot, o=Acme"]},
                }
            },
            r"auth.principals: two principals claim one certificate subject \(in any spelling\)",
        ),
    ],
)
def test_bad_config_names_the_field_and_the_problem(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(_broken(change), env=TEST_ENV)


def test_a_model_waits_for_a_whole_answer_to_start_as_long_as_it_waits_inside_a_stream() -> None:
    data = yaml.safe_load(_broken({"models.gpt-fake.idle_timeout_s": 7}))
    del data["models"]["gpt-fake"]["first_byte_timeout_s"]
    data["models"]["cheap-fake"]["first_byte_timeout_s"] = 120
    config = parse_config(yaml.safe_dump(data), env=TEST_ENV)

    assert config.models["gpt-fake"].first_byte_timeout_s == 7.0
    assert config.models["cheap-fake"].first_byte_timeout_s == 120.0
    assert config.models["gpt-fake"].max_response_bytes == 3 << 20


def test_auth_is_on_unless_the_config_turns_it_off() -> None:
    data = base_config("http://127.0.0.1:1")
    del data["auth"]
    with pytest.raises(ConfigError, match="auth is on"):
        parse_config(yaml.safe_dump(data), env=TEST_ENV)
    data["auth"] = {"principals": {"bot": {"api_keys": [_KEY], "budgets": "*"}}}

    auth = parse_config(yaml.safe_dump(data), env=TEST_ENV).auth

    assert auth.enabled
    assert auth.principals["bot"].budgets.allows("anything")
    assert not auth.principals["bot"].routes.allows("default")
    assert _KEY.split(":")[3] not in repr(auth)


def test_api_keys_stay_out_of_reprs() -> None:
    config = parse_config(yaml.safe_dump(base_config("http://127.0.0.1:1")), env=TEST_ENV)

    assert "sk-test-openai" not in repr(config)


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_the_config_reference_is_a_valid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    reference = document.split("## The reference", 1)[1]
    block = reference.split("```yaml\n", 1)[1].split("```", 1)[0]
    env = {"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-ant-x"}
    # The TLS files the reference names, relative to the working directory.
    (tmp_path / "certs").mkdir()
    pki = write_pki(tmp_path / "certs")
    pki.ca.write(tmp_path / "certs", "clients-ca")
    monkeypatch.chdir(tmp_path)

    config = parse_config(block, env=env)

    assert config.routes["fast"].hedge_after_s == 0.8
    assert config.server.max_messages == 1024
    assert config.server.max_header_bytes == 16384
    assert config.limit_pools["anthropic-spend"].capacity == 200 * 10**9
    assert config.server.tls is not None
    assert config.server.tls.mutual


def test_telemetry_defaults_serve_metrics_and_request_logs_but_no_traces_or_prompts() -> None:
    telemetry = load_config().telemetry

    assert telemetry.http_listen == "127.0.0.1:9464"
    assert telemetry.metrics
    assert telemetry.request_log
    assert not telemetry.otlp_endpoint
    assert not telemetry.log_prompts
    assert not telemetry.budget_labels


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"telemetry.http_listen": "localhost"}, "telemetry.http_listen: must be host:port"),
        ({"telemetry.otlp_endpoint": "collector:4317"}, "telemetry.otlp_endpoint: must start"),
        ({"telemetry.trace_sample_ratio": 2}, "telemetry.trace_sample_ratio: must be between"),
        ({"telemetry.log_prompts": "yes"}, "telemetry.log_prompts: must be true or false"),
        ({"telemetry.traces": True}, "telemetry.traces: unknown field"),
        (
            {"telemetry.alert_webhook_url": "hooks.example.com/alert"},
            "telemetry.alert_webhook_url: must be an http:// or https:// URL with a host",
        ),
        (
            {"telemetry.alert_webhook_url": "ftp://hooks.example.com/alert"},
            "telemetry.alert_webhook_url: must be an http:// or https:// URL",
        ),
        ({"telemetry.alert_webhook_url": "https:///alert"}, "alert_webhook_url: must be an http"),
        ({"telemetry.alert_webhook_url": "http://h:99999/"}, "alert_webhook_url: must have a port"),
        ({"telemetry.alert_webhook_url": "http://h/a b"}, "alert_webhook_url: must not hold"),
        ({"telemetry.alert_webhook_url": 8080}, "alert_webhook_url: must be a string"),
        ({"telemetry.alert_webhook_timeout_s": 0}, "alert_webhook_timeout_s: must be a finite"),
        ({"telemetry.alert_webhook_attempts": 0}, "alert_webhook_attempts: must be an integer"),
        ({"telemetry.alert_webhook_attempts": 1000}, "alert_webhook_attempts: must be at most 10"),
    ],
)
def test_bad_telemetry_config_names_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_broken(change), env=TEST_ENV)


def test_budget_alerts_are_read_as_written_and_off_by_default() -> None:
    data = base_config("http://127.0.0.1:1")
    data["budgets"]["team"]["alerts"] = [0.5, 0.8, 1]
    data["telemetry"] = {"alert_webhook_url": "https://hooks.example.com/faregate?token=s3cret"}

    config = parse_config(yaml.safe_dump(data), env=TEST_ENV)

    assert config.budgets["team"].alerts == (0.5, 0.8, 1.0)
    assert config.telemetry.alert_webhook_url.endswith("token=s3cret")
    default = load_config()
    assert all(not budget.alerts for budget in default.budgets.values())
    assert not default.telemetry.alert_webhook_url


def test_a_bad_webhook_url_is_refused_without_quoting_its_secret() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(
            _broken({"telemetry.alert_webhook_url": "https://:s3cret@/hook"}), env=TEST_ENV
        )

    assert "alert_webhook_url" in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_each_worker_serves_metrics_on_the_base_port_plus_its_index() -> None:
    assert worker_http_listen("127.0.0.1:9464", 0) == "127.0.0.1:9464"
    assert worker_http_listen("127.0.0.1:9464", 3) == "127.0.0.1:9467"
    assert worker_http_listen("127.0.0.1:0", 3) == "127.0.0.1:0"  # a free port each
    assert worker_http_listen("", 3) == ""
