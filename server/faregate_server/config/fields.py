"""The house's field types: each one check, one error wording and one JSON Schema.

A section is a frozen, slotted stdlib dataclass whose fields say their type, default
and rule once, e.g. `workers: Annotated[int, Integer(1)] = 16`. The loader validates
a file against them with pydantic (see `faregate_server.config.schema`); code that
builds a section itself (tests, fallbacks) calls the plain dataclass constructor, so
reading a config value on the hot path is a plain attribute access.

Invariants:
- Values are checked as YAML gives them, with no coercion: `"5"` is not an integer,
  `1` is not `true`, `3` is not a string.
- Every integer fits in int64 (SQLite, Redis and protobuf all store int64), every
  number is finite, every amount of money is an exact number of nano-USD.
- A section refuses keys it does not know (`SECTION`), and the file cannot set the
  attributes the schema derives (`FromKey`, `set_derived`) or code alone sets (`CodeOnly`).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema, core_schema

from faregate_server.config.problems import SHORTHAND, Loc, problem, reject
from faregate_server.money import MoneyFormatError, usd_to_nano_usd

SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True)
"""Every section's pydantic config: unknown keys are errors; field docstrings document
the JSON Schema."""

INT64_MAX = 2**63 - 1
MAX_PORT = 65535
_T = TypeVar("_T")
_KEY = "<key>"
"""Where a named entry's name travels into its section during validation; written
in a file, it is an unknown field (`keyed` refuses it)."""


class _Rule:
    """An `Annotated` rule: the whole validation of a value (pydantic's own is not
    used, since it coerces), and its JSON Schema."""

    def check(self, value: Any) -> Any:
        """The value as the config holds it.

        Raises:
            PydanticCustomError: the value breaks the rule (see `problem`).
        """
        raise NotImplementedError

    def json_schema(self) -> JsonSchemaValue:
        raise NotImplementedError

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self.json_schema()


@dataclass(frozen=True, slots=True)
class Integer(_Rule):
    """An integer from `minimum` to `maximum`."""

    minimum: int = 1
    maximum: int = INT64_MAX

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            raise problem(f"must be an integer >= {self.minimum}")
        if value > self.maximum:
            raise problem(f"must be at most {self.maximum}")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True, slots=True)
class Number(_Rule):
    """A finite number from `minimum` to `maximum` (an integer is read as a float)."""

    minimum: float = 0.001
    maximum: float = math.inf

    def check(self, value: Any) -> float:
        number = math.nan
        if isinstance(value, int | float) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):  # an integer past the largest float
                number = float(value)
        if not math.isfinite(number) or number < self.minimum:
            raise problem(f"must be a finite number >= {self.minimum}")
        if number > self.maximum:
            raise problem(f"must be at most {self.maximum:g}")
        return number

    def json_schema(self) -> JsonSchemaValue:
        schema: JsonSchemaValue = {"type": "number", "minimum": self.minimum}
        if math.isfinite(self.maximum):
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True, slots=True)
class Fraction(_Rule):
    """A number from 0 to 1."""

    def check(self, value: Any) -> float:
        number: float = Number(0).check(value)
        if number > 1:
            raise problem("must be between 0 and 1")
        return number

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "number", "minimum": 0, "maximum": 1}


@dataclass(frozen=True, slots=True)
class Thresholds(_Rule):
    """A list of fractions of a whole, each above 0 and at most 1, in increasing order
    and each once (`[0.5, 0.8, 1.0]`)."""

    def check(self, value: Any) -> tuple[float, ...]:
        if not isinstance(value, list):
            raise problem("must be a list of fractions, e.g. [0.5, 0.8, 1.0]")
        problems: list[tuple[Loc, str]] = []
        fractions: list[float] = []
        for index, item in enumerate(value):
            number = math.nan
            if isinstance(item, int | float) and not isinstance(item, bool):
                with contextlib.suppress(OverflowError):
                    number = float(item)
            if not 0 < number <= 1:
                # A percentage (80 for 80%) is the likely slip: say what is meant.
                wanted = "must be a fraction above 0 and at most 1 (0.8 is 80%)"
                problems.append(((index,), f"{wanted}, got {_shown(item)}"))
            elif fractions and number <= fractions[-1]:
                problems.append(
                    ((index,), "must be larger than the one before (increasing, each once)")
                )
            else:
                fractions.append(number)
        reject(problems)
        return tuple(fractions)

    def json_schema(self) -> JsonSchemaValue:
        return {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "uniqueItems": True,
        }


@dataclass(frozen=True, slots=True)
class Boolean(_Rule):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise problem("must be true or false")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "boolean"}


@dataclass(frozen=True, slots=True)
class Text(_Rule):
    """A string; with `starts`, one that starts with one of them (or, with `empty_ok`, is empty)."""

    starts: tuple[str, ...] = ()
    empty_ok: bool = False

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise problem("must be a string")
        if self.starts and not (self.empty_ok and not value) and not value.startswith(self.starts):
            *others, last = self.starts
            raise problem(f"must start with {', '.join(others)} or {last}")
        return value

    def json_schema(self) -> JsonSchemaValue:
        if not self.starts:
            return {"type": "string"}
        pattern = "^(" + "|".join(re.escape(start) for start in self.starts) + ")"
        return {"type": "string", "pattern": f"^$|{pattern}" if self.empty_ok else pattern}


@dataclass(frozen=True, slots=True)
class Name(_Rule):
    """A non-empty string: an entry's name, or a name in a list."""

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise problem(f"names must be non-empty strings, got {_shown(value)}")
        return value

    def json_schema(self) -> JsonSchemaValue:
        return {"type": "string", "minLength": 1}


_PORT = "([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
"""A port from 0 to 65535, as a regular expression (after any leading zeros)."""


def address_problem(address: str) -> str | None:
    """What is wrong with a host:port to listen on, or None."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > MAX_PORT:
        return f"must be host:port with a port from 0 to {MAX_PORT}, got {_shown(address)}"
    return None


@dataclass(frozen=True, slots=True)
class Address(_Rule):
    """A host:port to listen on; with `optional`, empty for none."""

    optional: bool = False

    def check(self, value: Any) -> str:
        text: str = Text().check(value)
        if self.optional and not text:
            return text
        trouble = address_problem(text)
        if trouble is not None:
            raise problem(trouble + (", or empty for none" if self.optional else ""))
        return text

    def json_schema(self) -> JsonSchemaValue:
        address = f"^.+:0*{_PORT}$"
        return {"type": "string", "pattern": f"^$|{address}" if self.optional else address}


def http_url_problem(url: str) -> str | None:
    """What is wrong with an http(s) URL to send requests to, or None."""
    parsed = urlsplit(url)
    try:
        parsed.port  # noqa: B018  (reading it checks it)
    except ValueError:
        return "must have a port from 0 to 65535"
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "must be an http:// or https:// URL with a host"
    if any(char.isspace() or ord(char) < 32 for char in url):
        return "must not hold spaces or control characters"
    return None


@dataclass(frozen=True, slots=True)
class HttpUrl(_Rule):
    """An http:// or https:// URL with a host; with `optional`, empty for none.

    Its problems never quote it: such a URL often carries a secret (a webhook's token).
    """

    optional: bool = False

    def check(self, value: Any) -> str:
        text: str = Text().check(value)
        if self.optional and not text:
            return text
        trouble = http_url_problem(text)
        if trouble is not None:
            raise problem(trouble + (", or empty for none" if self.optional else ""))
        return text

    def json_schema(self) -> JsonSchemaValue:
        url = "^https?://[^/?#\\s]+"
        return {"type": "string", "pattern": f"^$|{url}" if self.optional else url}


@dataclass(frozen=True, slots=True)
class Choice:
    """A member of the annotated enum, written as its value (JSON Schema: the enum's)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        def check(value: Any) -> Enum:
            # Only a string is looked up: the enum's own error would quote any value whole.
            member: Enum | None = None
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    member = source(value)
            if member is None:
                choices = ", ".join(str(member.value) for member in source)
                raise problem(f"must be one of {choices}")
            return member

        return core_schema.no_info_plain_validator_function(
            check, json_schema_input_schema=handler(source)
        )


@dataclass(frozen=True, slots=True)
class Usd(_Rule):
    """An amount of USD (a number, or a decimal string), read exactly into nano-USD."""

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise problem(f"expected a number of USD, got {_shown(value)}")
        try:
            return usd_to_nano_usd(value)
        except MoneyFormatError as error:
            raise problem(str(error)) from None

    def json_schema(self) -> JsonSchemaValue:
        return {"type": ["number", "string"], "minimum": 0}


@dataclass(frozen=True, slots=True)
class Version(_Rule):
    """A label written as a string, a number or a date (YAML reads `2024-05-01` as one)."""

    def check(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float | datetime.date):
            raise problem("must be a string")
        return str(value)

    def json_schema(self) -> JsonSchemaValue:
        return {"type": ["string", "number"]}


@dataclass(frozen=True, slots=True)
class NonEmpty:
    """An `Annotated` rule after the type's own: a collection with at least one item."""

    message: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        def check(value: Any) -> Any:
            if not value:
                raise problem(self.message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["minItems" if json_schema.get("type") == "array" else "minProperties"] = 1
        return json_schema


FromKey = Annotated[str, Field(validation_alias=_KEY), SkipJsonSchema()]
"""A named entry's name: the key it is filed under (`models: {gpt-4o: ...}`), never a
field of its own."""


def keyed(spelled: Any = None) -> BeforeValidator:
    """Fills each entry's `FromKey` field from its key. With `spelled` (how the file
    spells the mapping, for the JSON Schema), an entry may be written as a bare list,
    which the section reads under its `SHORTHAND` alias.

    Use: `Annotated[Mapping[Annotated[str, Name()], Section], keyed()]`.
    """

    def named(value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value  # the mapping's own check says what is wrong
        # The keys that carry a name or a short form in are the schema's own: written
        # in a file, they are unknown fields (refused first, alone; named at their
        # entry, since paths leave the short form's key out).
        reject(
            ((key,), f"unknown field {reserved}")
            for key, entry in value.items()
            if isinstance(entry, Mapping)
            for reserved in (_KEY, SHORTHAND)
            if reserved in entry
        )
        entries: dict[Any, Any] = {}
        for key, entry in value.items():
            if spelled is not None and isinstance(entry, list):
                entry = {SHORTHAND: entry}
            if entry is None:  # `name:` with nothing under it
                entry = {}
            if isinstance(entry, Mapping) and isinstance(key, str):
                entry = {**entry, _KEY: key}
            entries[key] = entry
        return entries

    if spelled is None:
        return BeforeValidator(named)
    return BeforeValidator(named, json_schema_input_type=spelled)


def _a_list(value: Any) -> Any:
    if not isinstance(value, list):
        raise problem("must be a list")
    return value


A_LIST = BeforeValidator(_a_list)
"""For a tuple or frozenset field: written as a YAML list, and only so (pydantic would
also take a set, in no particular order)."""


def _a_set(value: Any) -> Any:
    seen: set[str] = set()
    twice: list[tuple[Loc, str]] = []
    for index, item in enumerate(_a_list(value)):
        if isinstance(item, str):  # what is no string, the item's own check refuses
            if item in seen:
                twice.append(((index,), f"lists {item!r} twice"))
            seen.add(item)
    reject(twice)
    return value


A_SET = BeforeValidator(_a_set)
"""For a frozenset field: written as a YAML list that names each item once (as its
JSON Schema's `uniqueItems` says)."""


def _refuse(value: Any) -> Any:
    raise problem("unknown field")


CodeOnly = Annotated[_T, SkipJsonSchema(), BeforeValidator(_refuse)]
"""A field that code sets and the file may not: `models: CodeOnly[tuple[str, ...]]`."""


def set_derived(section: object, name: str, value: Any) -> None:
    """Sets a derived field of a section still being validated (nobody holds it yet).

    A derived field is computed from others once its section is validated: declared
    `name: SkipJsonSchema[T] = field(init=False, ...)`, it is no argument, so the
    file cannot set it, and the JSON Schema does not show it.
    """
    object.__setattr__(section, name, value)


def _shown(value: Any) -> str:
    """A value quoted in a problem, cut short: a problem line stays one readable line.

    A collection is named, not quoted: YAML aliases can make a small file hold a
    list whose text is exponentially long.
    """
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


no_default_shown = Field(json_schema_extra=_drop_default)
"""For a default that stands for "not written" (a rule then says what is required):
the JSON Schema shows none."""
