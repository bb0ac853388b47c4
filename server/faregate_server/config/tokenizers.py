"""Which tokenizer counts a model's tokens: the `tokenizer` a model's config
names, and the one it gets when it names none.

The default follows the provider and the upstream model id. An `openai` model
whose id is in one of OpenAI's o200k families (gpt-4o, chatgpt-4o, gpt-4.1,
gpt-4.5, gpt-5 and its point releases, o1, o3, o4) counts with o200k_base; one in
a cl100k family (gpt-4, gpt-3.5-turbo, Azure's gpt-35-turbo) with cl100k_base.
A family matches its own name, or its name followed by `-` (a dated or sized
variant: `gpt-4o-mini`, `o3-2025-04-16`) or, for the o200k families, `.` (a
point release: `gpt-5.1`); a leading `ft:` (a fine-tune) or `openai/` (a
router's namespace) is looked through, and case is ignored. Any other model
counts with the conservative estimate: an `openai` model of another name is an
OpenAI-compatible server (Llama, Qwen, Mistral, gpt-oss…) whose tokenizer
and chat template faregate does not have, and which cl100k can under-count;
`anthropic` (whose tokenizer is not published) and `sim` models always default
to it.
"""

from __future__ import annotations

from enum import StrEnum


class Tokenizer(StrEnum):
    """How a model's prompt and answer are counted."""

    O200K_BASE = "o200k_base"
    """OpenAI's o200k encoding (gpt-4o, gpt-4.1, gpt-5, the o-series)."""
    CL100K_BASE = "cl100k_base"
    """OpenAI's cl100k encoding (gpt-4, gpt-3.5-turbo)."""
    ESTIMATE = "estimate"
    """A conservative byte-based estimate, widened by the model's `estimate_headroom`."""


_O200K_FAMILIES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_CL100K_FAMILIES = ("gpt-4", "gpt-3.5-turbo", "gpt-35-turbo")
_LOOKED_THROUGH = ("ft:", "openai/")


def default_tokenizer(provider: str | None, upstream_model: str | None) -> Tokenizer:
    """The tokenizer of a model that names none (see the module's rule)."""
    if provider != "openai" or not upstream_model:
        return Tokenizer.ESTIMATE
    model = upstream_model.lower()
    for prefix in _LOOKED_THROUGH:
        model = model.removeprefix(prefix)
    if _in_family(model, _O200K_FAMILIES, "-."):
        return Tokenizer.O200K_BASE
    # After o200k: `gpt-4` would otherwise claim `gpt-4o` and `gpt-4.1` (and
    # only `-` follows it, so an unknown `gpt-4.x` is left to the estimate).
    if _in_family(model, _CL100K_FAMILIES, "-"):
        return Tokenizer.CL100K_BASE
    return Tokenizer.ESTIMATE


def _in_family(model: str, families: tuple[str, ...], separators: str) -> bool:
    return any(
        model == family or (model.startswith(family) and model[len(family)] in separators)
        for family in families
    )
