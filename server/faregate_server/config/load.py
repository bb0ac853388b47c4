"""Reads a YAML config file into the schema's frozen `Config`.

A bad file stops startup (or is refused by a reload) with one `ConfigError` whose
message has a line per problem, each naming its field's path, e.g.
`models.gpt-4o.workers: must be an integer >= 1`. The fields, their defaults and
their rules are the schema's (`faregate_server.config.schema`); this module only
reads text, parses YAML and hands the result over, with the environment the
schema reads API keys from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from faregate_server.config.fields import address_problem
from faregate_server.config.problems import ConfigError, Loc, lines, notes_context
from faregate_server.config.schema import Config, TlsConfig, config_adapter, tls_adapter

__all__ = ["address_problem", "load_config", "load_tls", "parse_config"]

_T = TypeVar("_T")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Loads and validates a config file, or the embedded default when path is None."""
    if path is None:
        text = resources.files("faregate_server").joinpath("default_config.yaml").read_text()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text: {error.reason}") from None
    return parse_config(text, env)


def parse_config(text: str, env: Mapping[str, str] | None = None) -> Config:
    """Validates config YAML text; see `load_config`. API keys come from `env`
    (default: the process environment)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {error}") from None
    except ValueError as error:  # a scalar the resolver cannot build: 2024-13-01, 5000 digits
        raise ConfigError(f"not valid YAML: {error}") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise ConfigError("not valid YAML: nested too deeply") from None
    if data is None:  # an empty file
        data = {}
    return _validate(config_adapter(), data, (), env=env or os.environ)


def load_tls(section: Mapping[str, Any], path: str = "server.tls") -> TlsConfig:
    """Reads and checks the TLS files a `server.tls`-shaped section names; the
    server calls it again when the files change (see `faregate_server.security.tls`)."""
    return _validate(tls_adapter(), section, tuple(path.split(".")))


def _validate(adapter: TypeAdapter[_T], data: Any, at: Loc, **context: Any) -> _T:
    validation, notes = notes_context(**context)
    failure: ValidationError | None = None
    try:
        valid = adapter.validate_python(data, context=validation)
    except ValidationError as error:
        failure = error
    if failure is None and not notes:
        return valid
    sections = [str(key) for key in data] if isinstance(data, Mapping) else []
    raise ConfigError.of(lines(failure, notes, at, sections, data))
