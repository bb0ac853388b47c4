"""A model's `tokenizer` and `estimate_headroom`: the default each model id
gets, and what the loader refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.config.schema import ConfigError
from faregate_server.config.tokenizers import Tokenizer, default_tokenizer

from tests.conftest import TEST_ENV, base_config

O200K, CL100K, ESTIMATE = Tokenizer.O200K_BASE, Tokenizer.CL100K_BASE, Tokenizer.ESTIMATE


@pytest.mark.parametrize(
    ("upstream_model", "tokenizer"),
    [
        ("gpt-4o", O200K),
        ("gpt-4o-mini", O200K),
        ("gpt-4o-2024-08-06", O200K),
        ("chatgpt-4o-latest", O200K),
        ("gpt-4.1", O200K),
        ("gpt-4.1-nano", O200K),
        ("gpt-4.5-preview", O200K),
        ("gpt-5", O200K),
        ("gpt-5-mini", O200K),
        ("gpt-5.1", O200K),
        ("gpt-5.2-codex", O200K),
        ("o1", O200K),
        ("o1-preview", O200K),
        ("o3-mini", O200K),
        ("o3-2025-04-16", O200K),
        ("o4-mini", O200K),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", O200K),
        ("openai/gpt-4o", O200K),
        ("GPT-4o", O200K),
        ("gpt-4", CL100K),
        ("gpt-4-0613", CL100K),
        ("gpt-4-turbo", CL100K),
        ("gpt-4-32k", CL100K),
        ("gpt-3.5-turbo", CL100K),
        ("gpt-3.5-turbo-0125", CL100K),
        ("gpt-35-turbo", CL100K),
        ("ft:gpt-3.5-turbo-0613:acme::xyz", CL100K),
        # Compatible servers, and names that only look like a family.
        ("llama3.1:8b", ESTIMATE),
        ("meta-llama/Llama-3.1-8B-Instruct", ESTIMATE),
        ("Qwen/Qwen2.5-Coder-32B-Instruct", ESTIMATE),
        ("mistral-large-latest", ESTIMATE),
        ("gpt-oss-120b", ESTIMATE),
        ("gpt-4.2", ESTIMATE),
        ("gpt-40", ESTIMATE),
        ("o10-mini", ESTIMATE),
        ("gpt-fake", ESTIMATE),
        ("", ESTIMATE),
    ],
)
def test_openai_models_default_to_their_own_encoding_else_the_estimate(
    upstream_model: str, tokenizer: Tokenizer
) -> None:
    assert default_tokenizer("openai", upstream_model) is tokenizer


@pytest.mark.parametrize("provider", ["anthropic", "sim", None])
def test_other_providers_default_to_the_estimate_whatever_the_id(provider: str | None) -> None:
    assert default_tokenizer(provider, "gpt-4o") is ESTIMATE


def _config() -> dict[str, Any]:
    data = copy.deepcopy(base_config("http://127.0.0.1:1"))
    for model in data["models"].values():
        model.pop("tokenizer", None)
    return data


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(data), env=TEST_ENV)
    return list(refused.value.problems)


def test_a_load_infers_the_tokenizer_from_the_upstream_model_unless_one_is_named() -> None:
    data = _config()
    gpt = data["models"]["gpt-fake"]
    data["models"]["gpt-4o"] = {**gpt}
    data["models"]["azure-gpt"] = {**gpt, "upstream_model": "gpt-35-turbo"}
    data["models"]["named"] = {**gpt, "upstream_model": "gpt-4o", "tokenizer": "cl100k_base"}

    models = parse_config(yaml.safe_dump(data), env=TEST_ENV).models

    assert models["gpt-4o"].tokenizer is O200K
    assert models["azure-gpt"].tokenizer is CL100K
    assert models["named"].tokenizer is CL100K
    assert models["gpt-fake"].tokenizer is ESTIMATE  # a compatible server's name
    assert models["claude-fake"].tokenizer is ESTIMATE
    assert (models["gpt-4o"].estimate_headroom, models["claude-fake"].estimate_headroom) == (0, 0)


def test_an_estimate_headroom_loads_as_written() -> None:
    data = _config()
    data["models"]["claude-fake"]["estimate_headroom"] = 0.25
    data["models"]["gpt-fake"].update(tokenizer="estimate", estimate_headroom=2)

    models = parse_config(yaml.safe_dump(data), env=TEST_ENV).models

    assert models["claude-fake"].estimate_headroom == 0.25
    assert models["gpt-fake"].estimate_headroom == 2.0


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        (
            "tokenizer",
            "llama3",
            "models.claude-fake.tokenizer: must be one of o200k_base, cl100k_base, estimate",
        ),
        (
            "tokenizer",
            "O200K_BASE",
            "models.claude-fake.tokenizer: must be one of o200k_base, cl100k_base, estimate",
        ),
        (
            "tokenizer",
            1,
            "models.claude-fake.tokenizer: must be one of o200k_base, cl100k_base, estimate",
        ),
        (
            "estimate_headroom",
            -0.1,
            "models.claude-fake.estimate_headroom: must be a finite number >= 0",
        ),
        (
            "estimate_headroom",
            "0.5",
            "models.claude-fake.estimate_headroom: must be a finite number >= 0",
        ),
        (
            "estimate_headroom",
            True,
            "models.claude-fake.estimate_headroom: must be a finite number >= 0",
        ),
        (
            "estimate_headroom",
            float("nan"),
            "models.claude-fake.estimate_headroom: must be a finite number >= 0",
        ),
        ("estimate_headroom", 1e300, "models.claude-fake.estimate_headroom: must be at most 2"),
        ("estimate_headroom", 2.5, "models.claude-fake.estimate_headroom: must be at most 2"),
    ],
)
def test_unknown_tokenizers_and_impossible_headrooms_are_refused(
    field: str, value: Any, problem: str
) -> None:
    data = _config()
    data["models"]["claude-fake"][field] = value

    assert _problems(data) == [problem]


def test_a_headroom_on_an_exact_tokenizer_is_refused_not_ignored() -> None:
    data = _config()
    data["models"]["gpt-4o"] = {**data["models"]["gpt-fake"], "estimate_headroom": 0.5}
    data["models"]["cheap-fake"].update(tokenizer="cl100k_base", estimate_headroom=0.1)

    assert _problems(data) == [
        "models.cheap-fake.estimate_headroom: applies only to tokenizer estimate",
        "models.gpt-4o.estimate_headroom: applies only to tokenizer estimate",
    ]
