"""Whether a candidate can ever serve a request: the judgement that makes a
candidate infeasible whatever the moment, as (field, problem) pairs that
`explain` shows and an explicit model's INVALID_ARGUMENT names.

In this order, the first that applies: a feature the provider's adapter does
not carry upstream; a generation setting the provider refuses whatever the
model (`Provider.refusal`: a temperature over its range, Anthropic's rules
for reasoning); a setting the model itself refuses (`refuses` in its
config: OpenAI's reasoning models take no temperature or top_p, newer
Claude models not both at once); the context window and output cap; a
capability asked for or needed by what the request uses (tools need
`tools`, images `vision`, a response schema `json_mode`);
`min_context_tokens`, `min_quality`, `max_cost_nano_usd`.
"""

from __future__ import annotations

from faregate_server.content import Feature
from faregate_server.domain import Capability, RefusableSetting, RouteCall, call_features
from faregate_server.upstream.catalog import Deployment


def unfit_for(
    call: RouteCall,
    deployment: Deployment,
    input_tokens: int,
    room: int,
    max_output_tokens: int,
    worst_case: int,
) -> tuple[str, str] | None:
    """(field, problem) for the first reason the candidate can never serve
    the call, in the order the module docstring gives, or None when it can."""
    model = deployment.config
    hints = call.hints
    if call.features:
        uncarried = _uncarried(call, deployment)
        if uncarried is not None:
            return uncarried
    if call.temperature is not None or call.options is not None:
        refused = deployment.provider.refusal(call.temperature, call.options, max_output_tokens)
        if refused is None and model.refuses:
            refused = _refused_by_model(call, model.refuses)
        if refused is not None:
            return refused
    if room < 1:
        return (
            "messages",
            f"about {input_tokens} input tokens exceed the context window of "
            f"{model.context_window_tokens}",
        )
    if max_output_tokens > model.max_output_tokens:
        return ("max_output_tokens", f"exceeds the model's cap of {model.max_output_tokens}")
    if max_output_tokens > room:
        return (
            "max_output_tokens",
            f"with about {input_tokens} input tokens exceeds the context window of "
            f"{model.context_window_tokens}",
        )
    missing = hints.capabilities - model.capabilities
    if missing:
        names = ", ".join(sorted(capability.value for capability in missing))
        return ("required_capabilities", f"the model lacks {names}")
    if call.features:
        lacking = _lacking_capability(call, model.capabilities)
        if lacking is not None:
            return lacking
    if (
        hints.min_context_tokens is not None
        and hints.min_context_tokens > model.context_window_tokens
    ):
        return ("min_context_tokens", f"the model's window is {model.context_window_tokens}")
    if hints.min_quality is not None and model.quality < hints.min_quality:
        return ("min_quality", f"the model's quality is {model.quality}")
    if hints.max_cost_nano_usd is not None and worst_case > hints.max_cost_nano_usd:
        return ("max_cost_nano_usd", f"the worst case costs {worst_case} nano-USD")
    return None


_NEEDED_CAPABILITIES = (
    (Feature.TOOLS, Capability.TOOLS, "tools"),
    (Feature.IMAGES, Capability.VISION, "messages"),
)


def _lacking_capability(
    call: RouteCall, capabilities: frozenset[Capability]
) -> tuple[str, str] | None:
    """(field, problem) of the first capability the call needs, inferred from
    what it uses (tools need `tools`, images `vision`, a response schema
    `json_mode`), that the model lacks, if there is one."""
    for feature, capability, field in _NEEDED_CAPABILITIES:
        if feature in call.features and capability not in capabilities:
            return (field, f"the model lacks {capability.value}, which {feature.value} need")
    options = call.options
    if (
        options is not None
        and options.response_format is not None
        and options.response_format.schema is not None
        and Capability.JSON_MODE not in capabilities
    ):
        return ("response_format", "the model lacks json_mode, which a json_schema needs")
    return None


def _uncarried(call: RouteCall, deployment: Deployment) -> tuple[str, str] | None:
    """(field, problem) of the first feature the call uses that the model's
    provider adapter does not send upstream, if there is one."""
    missing = call.features - deployment.provider.carried_features
    if not missing:
        return None
    fields = call_features(call.messages, call.options)
    feature = next(feature for feature in fields if feature in missing)
    name = feature.value.replace("_", " ")
    provider = deployment.config.provider.value
    return (fields[feature], f"faregate does not yet send {name} to {provider} models")


def _refused_by_model(
    call: RouteCall, refuses: frozenset[RefusableSetting]
) -> tuple[str, str] | None:
    """(field, problem) of the first setting the call gives that the model's
    config says it refuses, if there is one."""
    options = call.options
    top_p = options is not None and options.top_p is not None
    given = {
        RefusableSetting.TEMPERATURE: call.temperature is not None,
        RefusableSetting.TOP_P: top_p,
        RefusableSetting.TEMPERATURE_WITH_TOP_P: call.temperature is not None and top_p,
        RefusableSetting.STOP: options is not None and bool(options.stop),
        RefusableSetting.SEED: options is not None and options.seed is not None,
        RefusableSetting.REASONING: options is not None and options.reasoning is not None,
    }
    for setting in RefusableSetting:
        if setting in refuses and given[setting]:
            if setting is RefusableSetting.TEMPERATURE_WITH_TOP_P:
                return ("top_p", "the model takes temperature or top_p, not both")
            return (setting.value, "the model refuses it (`refuses` in its config)")
    return None
