"""A request using a field its candidates' providers are not sent is never
sent without it: each such candidate is infeasible, saying why, and with
none left the plan fails with MODEL_CANNOT_SERVE naming the field."""

from __future__ import annotations

import random

import aiohttp
import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.content import (
    Feature,
    GenerationOptions,
    Image,
    MessageExtras,
    ResponseFormat,
    Tool,
    ToolCall,
)
from faregate_server.domain import (
    ChatMessage,
    Role,
    RouteCall,
    RoutingHints,
    call_features,
)
from faregate_server.errors import ModelCannotServe
from faregate_server.routing.planner import Planner
from faregate_server.routing.selection import Selector
from faregate_server.state.limits import LimitPools
from faregate_server.upstream.catalog import Catalog

from tests.fakes.clock import FakeClock

TOOL = Tool("read_file", "Reads a file.", {"type": "object"})


def _config() -> str:
    model = {
        "input_usd_per_mtok": 1,
        "output_usd_per_mtok": 2,
        "api_base": "http://127.0.0.1:9",
        "capabilities": ["tools", "vision", "json_mode"],
    }
    return yaml.safe_dump(
        {
            "models": {
                "gpt": {**model, "provider": "openai"},
                "claude": {**model, "provider": "anthropic", "api_key_env": "CLAUDE_KEY"},
                "sim": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 2},
                "gpt-plain": {**model, "provider": "openai", "capabilities": []},
            },
            # gpt's adapter sends every feature these tests use, claude's
            # all but a seed, sim's only the tool loop's.
            "routes": {
                "default": ["gpt", "claude", "sim"],
                "others": ["claude", "sim"],
                "plain-first": ["gpt-plain", "gpt"],
            },
            "budgets": {"b": {"limit_usd": 10, "window": "none"}},
            "auth": {"enabled": False},
        }
    )


async def _planner() -> tuple[Catalog, Planner]:
    config = parse_config(_config(), env={"CLAUDE_KEY": "sk-ant-test"})
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
    return catalog, Planner(
        Selector(LimitPools(config.limit_pools, clock), clock, random.Random(0))
    )


def _call(
    messages: tuple[ChatMessage, ...] = (ChatMessage(Role.USER, "hi"),),
    options: GenerationOptions | None = None,
    model: str = "others",
) -> RouteCall:
    return RouteCall(
        model=model,
        messages=messages,
        agent="",
        budget_key="b",
        max_output_tokens=None,
        temperature=None,
        metadata={},
        hints=RoutingHints(explain=True),
        options=options,
        features=frozenset(call_features(messages, options)),
    )


def test_features_are_named_by_the_field_that_first_uses_them() -> None:
    image = Image(url="https://example.com/a.png")
    messages = (
        ChatMessage(Role.USER, "hi"),
        ChatMessage(Role.USER, "", MessageExtras(parts=("look", image))),
        ChatMessage(Role.ASSISTANT, "", MessageExtras(tool_calls=(ToolCall("c", "f", "{}"),))),
        ChatMessage(Role.TOOL, "done", MessageExtras(tool_call_id="c")),
        ChatMessage(Role.USER, "", MessageExtras(parts=(image,))),
    )
    options = GenerationOptions(tools=(TOOL,), stop=("END",), seed=1)
    assert call_features(messages, options) == {
        Feature.TOOLS: "tools",
        Feature.TOOL_CALLS: "messages[2].tool_calls",
        Feature.TOOL_RESULTS: "messages[3].tool_call_id",
        Feature.IMAGES: "messages[1].parts[1].image",
        Feature.CONTENT_PARTS: "messages[1].parts",
        Feature.STOP: "stop",
        Feature.SEED: "seed",
    }
    assert call_features((ChatMessage(Role.USER, "hi"),), None) == {}


async def test_no_candidate_is_sent_a_field_its_provider_is_not_sent() -> None:
    catalog, planner = await _planner()
    # A seed: a field neither provider of this route is sent (Anthropic's API has none).
    with pytest.raises(ModelCannotServe) as refused:
        await planner.plan(_call(options=GenerationOptions(seed=1)), catalog)
    assert refused.value.field == "seed"
    assert refused.value.description == "faregate does not yet send seed to anthropic models"
    assert refused.value.reason == "MODEL_CANNOT_SERVE"


async def test_explain_says_why_each_candidate_was_passed_over() -> None:
    catalog, _ = await _planner()
    image = Image(data=b"png", media_type="image/png")
    call = _call((ChatMessage(Role.USER, "", MessageExtras(parts=(image,))),))
    selection = Selector(
        LimitPools(catalog.config.limit_pools, FakeClock()), FakeClock(), random.Random(0)
    ).select(call, catalog.resolve("others"), catalog.config.routing, catalog.deployments, None)
    assert [option.deployment.name for option in selection.options] == ["claude"]
    field = "messages[0].parts[0].image"
    assert [(score.model, score.reason) for score in selection.scores] == [
        ("claude", ""),
        ("sim", f"{field}: faregate does not yet send images to sim models"),
    ]


async def test_an_explicit_model_is_refused_naming_the_first_field_it_is_not_sent() -> None:
    catalog, planner = await _planner()
    options = GenerationOptions(top_p=0.5, stop=("END",), seed=1)
    with pytest.raises(ModelCannotServe) as refused:
        await planner.plan(_call(options=options, model="sim"), catalog)
    assert (refused.value.field, refused.value.metadata) == ("stop", {"model": "sim"})
    with pytest.raises(ModelCannotServe) as refused:
        await planner.plan(_call(options=options, model="claude"), catalog)
    assert (refused.value.field, refused.value.metadata) == ("seed", {"model": "claude"})


async def test_a_candidate_whose_provider_carries_the_feature_serves_it() -> None:
    catalog, planner = await _planner()
    plan = await planner.plan(_call(options=GenerationOptions(tools=(TOOL,))), catalog)
    assert [option.deployment.name for option in plan.options] == ["claude"]
    reasons = {score.model: score.reason for score in plan.scores}
    assert reasons["claude"] == ""
    # sim's adapter sends tools, but this sim lacks the capability.
    assert reasons["sim"] == "tools: the model lacks tools, which tools need"


async def test_the_openai_adapter_carries_every_feature() -> None:
    catalog, planner = await _planner()
    image = Image(data=b"png", media_type="image/png")
    messages = (
        ChatMessage(Role.USER, "", MessageExtras(parts=("look", image))),
        ChatMessage(Role.ASSISTANT, "", MessageExtras(tool_calls=(ToolCall("c", "f", "{}"),))),
        ChatMessage(Role.TOOL, "done", MessageExtras(tool_call_id="c")),
    )
    options = GenerationOptions(tools=(TOOL,), stop=("END",), top_p=0.5, seed=1)
    plan = await planner.plan(_call(messages, options, model=""), catalog)
    assert [option.deployment.name for option in plan.options] == ["gpt"]


async def test_a_plain_call_is_judged_as_before() -> None:
    catalog, planner = await _planner()
    plan = await planner.plan(_call(model=""), catalog)
    assert {option.deployment.name for option in plan.options} == {"gpt", "claude", "sim"}
    assert [score.reason for score in plan.scores] == ["", "", ""]


@pytest.mark.parametrize(
    ("options", "messages", "field", "lacks"),
    [
        (GenerationOptions(tools=(TOOL,)), (), "tools", "tools, which tools need"),
        (
            None,
            (ChatMessage(Role.USER, "", MessageExtras(parts=(Image(url="https://e.com/a"),))),),
            "messages",
            "vision, which images need",
        ),
        (
            GenerationOptions(response_format=ResponseFormat({"type": "object"})),
            (),
            "response_format",
            "json_mode, which a json_schema needs",
        ),
    ],
    ids=["tools", "images", "json-schema"],
)
async def test_a_capability_the_request_needs_is_inferred_without_a_hint(
    options: GenerationOptions | None,
    messages: tuple[ChatMessage, ...],
    field: str,
    lacks: str,
) -> None:
    catalog, planner = await _planner()
    plan = await planner.plan(
        _call(messages or (ChatMessage(Role.USER, "hi"),), options, model="plain-first"), catalog
    )
    assert [option.deployment.name for option in plan.options] == ["gpt"]
    reasons = {score.model: score.reason for score in plan.scores}
    assert reasons["gpt-plain"] == f"{field}: the model lacks {lacks}"
    with pytest.raises(ModelCannotServe) as refused:
        await planner.plan(
            _call(messages or (ChatMessage(Role.USER, "hi"),), options, model="gpt-plain"), catalog
        )
    assert refused.value.field == field


async def test_a_json_object_needs_no_json_mode() -> None:
    catalog, planner = await _planner()
    plan = await planner.plan(
        _call(options=GenerationOptions(response_format=ResponseFormat()), model="gpt-plain"),
        catalog,
    )
    assert [option.deployment.name for option in plan.options] == ["gpt-plain"]
