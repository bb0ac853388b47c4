"""A route's prompt caching settings: off and five minutes by default, and
a value of any other kind is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.config.problems import ConfigError
from faregate_server.config.schema import Config
from faregate_server.content import CacheTtl


def _config(route: dict[str, Any]) -> Config:
    return parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}
                },
                "routes": {"default": {"candidates": ["m"], **route}},
                "auth": {"enabled": False},
            }
        )
    )


def test_caching_is_off_for_five_minutes_by_default_and_set_per_route() -> None:
    default = _config({}).routes["default"]
    assert (default.cache_prompt, default.cache_ttl) == (False, CacheTtl.FIVE_MINUTES)
    cached = _config({"cache_prompt": True, "cache_ttl": "1h"}).routes["default"]
    assert (cached.cache_prompt, cached.cache_ttl) == (True, CacheTtl.ONE_HOUR)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"cache_prompt": "yes"}, "routes.default.cache_prompt: must be true or false"),
        ({"cache_prompt": 1}, "routes.default.cache_prompt: must be true or false"),
        ({"cache_ttl": "10m"}, "routes.default.cache_ttl: must be one of 5m, 1h"),
        ({"cache_ttl": 5}, "routes.default.cache_ttl: must be one of 5m, 1h"),
        ({"cache_ttl": None}, "routes.default.cache_ttl: must be one of 5m, 1h"),
    ],
)
def test_a_wrong_setting_is_refused_naming_it(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(route)
