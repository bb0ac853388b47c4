"""Config problems: `ConfigError`, and the one place a validation failure becomes its lines.

Invariants:
- Every problem is one line, `path: problem`, where the path is the field's place in
  the file (`models.gpt-4o.workers`, `routes.default.candidates[1]`, `config` for the
  file as a whole); a `ConfigError` carries every problem found, never only the first.
- Lines keep the order of the file's top-level sections, and within a section the
  order the schema checks its fields.
- A name that is not a valid key (`models: {1: ...}`) is reported once, at the
  mapping; nothing is said about the value filed under it.
- A validator that judges several fields of a section at once reports through
  `reject`, naming each problem's place below its own; a rule between sections
  reports through `note`, naming places from the root, and fails no section, so a
  broken rule never hides the problems of the rules after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]
"""A place in the file: mapping keys and list indexes, outermost first."""

_PROBLEM = "config_problem"
_PROBLEMS = "config_problems"
_NOTES = "faregate_notes"
"""Where a loader's validation context holds the problems rules noted."""
_KEY = "[key]"
"""How pydantic marks the key, rather than the value, of a mapping entry."""
SHORTHAND = "<list>"
"""Where an entry written in short form (a route as its bare list of candidates)
holds that list while it is validated; paths leave it out, as the file does."""

_GENERIC = {
    "unexpected_keyword_argument": "unknown field",
    "extra_forbidden": "unknown field",
    "invalid_key": "unknown field",
    "missing": "is required",
    "missing_argument": "is required",
    "missing_keyword_only_argument": "is required",
    "dataclass_type": "must be a mapping",
    "dataclass_args_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "mapping_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "iterable_type": "must be a list",
}
"""The house wording of the errors pydantic itself raises (structure, not values)."""


class ConfigError(ValueError):
    """The config is invalid; the message has one line per problem, each naming its field."""

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = (message,) if problems is None else tuple(problems)
        """Each problem's line, `path: problem`."""

    @classmethod
    def of(cls, problems: Sequence[str]) -> ConfigError:
        return cls("\n".join(problems), problems)


def problem(message: str) -> PydanticCustomError:
    """A field's problem, for its validator to raise; the path is added when it is reported."""
    # The text goes in as context, so braces in a quoted value are not a template.
    return PydanticCustomError(_PROBLEM, "{problem}", {"problem": message})


def reject(problems: Iterable[tuple[Loc, str]], *, from_root: bool = False) -> None:
    """Raises every problem at once, each at its place below the validated value (or,
    `from_root`, below the file's root); none: returns.

    Raises:
        PydanticCustomError: at least one problem.
    """
    found = tuple(problems)
    if found:
        raise PydanticCustomError(
            _PROBLEMS, "{count} problems", {"problems": found, "from_root": from_root}
        )


def note(context: Any, problems: Iterable[tuple[Loc, str]]) -> None:
    """Files the problems of a rule between sections (places below the file's root).

    They do not fail the section the rule is attached to, so the rules after it still
    read that section; the loader (`Notes`) reports them with the rest. Validated
    without a loader's notes, the section fails.
    """
    notes = context.get(_NOTES) if isinstance(context, Mapping) else None
    if notes is None:
        reject(problems, from_root=True)
    else:
        notes.extend(problems)


def notes_context(**context: Any) -> tuple[dict[str, Any], list[tuple[Loc, str]]]:
    """A validation context whose rules file their problems in the list returned with it."""
    notes: list[tuple[Loc, str]] = []
    return {**context, _NOTES: notes}, notes


def path(loc: Loc) -> str:
    """`models.gpt-4o.workers`, `routes.default.candidates[1]`; `config` for the root."""
    text = ""
    for part in loc:
        if part == SHORTHAND:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "config"


def _key_as_written(written: Any, loc: Loc) -> str:
    """The last key of `loc` as the file writes it: `2024-01-01`, not the repr pydantic
    makes of the date YAML reads it as (`str` of the key, as YAML read it)."""
    node = written
    for part in loc[:-1]:
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    for key in node if isinstance(node, Mapping) else ():
        # Pydantic keeps a str or an int key (a bool as an int) and quotes any other.
        if key == loc[-1] or (not isinstance(key, str | int) and repr(key) == loc[-1]):
            return str(key)
    return str(loc[-1])


def lines(
    error: ValidationError | None,
    notes: Sequence[tuple[Loc, str]] = (),
    prefix: Loc = (),
    sections: Sequence[str] = (),
    written: Any = None,
) -> list[str]:
    """The lines of a validation's problems (those pydantic raised, and those rules noted),
    under `prefix`, sorted by the file's `sections`; `written` is what was validated,
    for naming unknown keys as the file writes them."""
    found: list[tuple[Loc, str]] = [(prefix + loc, text) for loc, text in notes]
    bad_keys: list[Loc] = []
    for details in error.errors(include_url=False) if error is not None else ():
        loc = prefix + tuple(details["loc"])
        if any(loc[: len(bad)] == bad for bad in bad_keys):
            continue  # the value of a name already refused
        kind = details["type"]
        if kind == "default_factory_not_called":
            continue  # a default computed from a field that is already reported
        context = details.get("ctx") or {}
        if loc and loc[-1] == _KEY:
            bad_keys.append(loc[:-1])
            found.append((loc[:-2], str(context.get("problem", "names must be strings"))))
        elif kind == _PROBLEM:
            found.append((loc, str(context["problem"])))
        elif kind == _PROBLEMS:
            at = prefix if context["from_root"] else loc
            found.extend((at + below, text) for below, text in context["problems"])
        elif kind in ("unexpected_keyword_argument", "extra_forbidden", "invalid_key") and loc:
            # An unknown key is named as written, even when YAML read it as a number or a date.
            key = _key_as_written(written, tuple(details["loc"]))
            found.append(((*loc[:-1], key), _GENERIC[kind]))
        else:
            found.append((loc, _GENERIC.get(kind) or details["msg"]))
    order = {name: index for index, name in enumerate(sections)}
    found.sort(key=lambda item: order.get(str(item[0][0]), len(order)) if item[0] else -1)
    return [f"{path(loc)}: {text}" for loc, text in found]
