"""What a provider refuses in a request's generation settings.

A refusal is a (field, problem) pair: routing/selection.py judges a
candidate whose provider would refuse the request unfit before any work, so
a route falls back to a candidate that takes it, `explain` says why, and an
explicit model answers INVALID_ARGUMENT naming the field. Nothing here
calls anyone.
"""

from __future__ import annotations

Refusal = tuple[str, str]
"""(field, problem): the request field as the caller spells it, and why."""


def temperature_refusal(temperature: float | None, most: float, provider: str) -> Refusal | None:
    """A refusal when `temperature` is over `provider`'s range, else None."""
    if temperature is None or temperature <= most:
        return None
    return ("temperature", f"must be at most {most:g} for {provider} models")
