"""Config reloads while requests are in flight: nothing leaks, nothing goes
negative, new settings take effect, and a bad file never stops the watcher."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TEST_ENV, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually


async def test_budget_removed_and_readded_mid_request_keeps_reserved_at_zero(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.default = Script(gate=gate)
    async with start_faregate(to_config(config_data)) as fg:
        call = asyncio.create_task(fg.client.route("hi", budget_key="team", model="gpt-fake"))
        await upstream.wait_for_requests(1)
        without = copy.deepcopy(config_data)
        without["budgets"] = {"other": {"limit_usd": 1, "window": "none"}}
        fg.running.reloader.apply(to_config(without))  # budget "team" removed
        fg.running.reloader.apply(to_config(config_data))  # and added back
        gate.set()
        await call
        snap = await fg.running.state.budget("team")
        assert snap.reserved_nano_usd == 0
        assert snap.remaining_nano_usd <= snap.limit_nano_usd


def _with_pool(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data["limit_pools"] = {"rpm": {"unit": "requests", "capacity": 10, "window": "minute"}}
    data["models"]["gpt-fake"]["limits"] = {"rpm": {"per_request": 1}}
    return data


async def test_limit_pool_removed_mid_request_settles_cleanly(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.default = Script(gate=gate)
    async with start_faregate(to_config(_with_pool(config_data))) as fg:
        call = asyncio.create_task(fg.client.route("hi", budget_key="team", model="gpt-fake"))
        await upstream.wait_for_requests(1)
        fg.running.reloader.apply(to_config(config_data))  # pool and the model's draw gone
        gate.set()
        await call
        assert await fg.reserved_nano_usd() == 0


async def test_limit_pool_removed_and_readded_mid_request_keeps_reserved_at_zero(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.default = Script(gate=gate)
    with_pool = _with_pool(config_data)
    async with start_faregate(to_config(with_pool)) as fg:
        call = asyncio.create_task(fg.client.route("hi", budget_key="team", model="gpt-fake"))
        await upstream.wait_for_requests(1)
        no_pool = copy.deepcopy(with_pool)
        del no_pool["limit_pools"]["rpm"]
        no_pool["limit_pools"]["other"] = {"unit": "requests", "capacity": 10, "window": "minute"}
        no_pool["models"]["gpt-fake"]["limits"] = {"other": {"per_request": 1}}
        fg.running.reloader.apply(to_config(no_pool))
        fg.running.reloader.apply(to_config(with_pool))
        gate.set()
        await call
        snap = fg.running.state.limits.snapshot("rpm")
        assert snap.reserved == 0
        assert snap.remaining <= snap.capacity


async def test_limit_pool_window_change_takes_effect(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    never = _with_pool(config_data)
    never["limit_pools"]["rpm"]["window"] = "none"
    async with start_faregate(to_config(never)) as fg:
        fg.running.reloader.apply(to_config(_with_pool(config_data)))  # none -> minute
        snap = fg.running.state.limits.snapshot("rpm")
        assert snap.resets_at_s != float("inf")


async def test_retry_after_a_reload_that_removed_a_pool(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    data = copy.deepcopy(config_data)
    data["retries"] = {"max_attempts": 3}
    data["limit_pools"] = {"rpm": {"unit": "requests", "capacity": 10, "window": "minute"}}
    data["models"]["gpt-fake"]["limits"] = {"rpm": {"per_request": 1}}
    data["models"]["cheap-fake"]["limits"] = {"rpm": {"per_request": 1}}
    gate = asyncio.Event()
    upstream.queue(Script(status=500, gate=gate))
    async with start_faregate(to_config(data)) as fg:
        call = asyncio.create_task(fg.client.route("hi", budget_key="team"))
        await upstream.wait_for_requests(1)
        fg.running.reloader.apply(to_config(config_data))  # the pool is gone
        gate.set()
        reply = await call  # the fallback to cheap-fake serves it
        assert reply.model_used == "cheap-fake"
        assert await fg.reserved_nano_usd() == 0


async def test_reload_of_retry_settings_reaches_the_retry_budget(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    async with start_faregate(to_config(config_data)) as fg:
        new = copy.deepcopy(config_data)
        new["retries"] = {"max_attempts": 1, "budget_min_retries": 0, "budget_ratio": 0}
        fg.running.reloader.apply(to_config(new))
        budget = fg.running.catalog.deployments["gpt-fake"].retry_budget
        assert budget.try_spend() is False, "old retry-budget settings still in force"


async def test_a_bad_byte_in_the_config_file_is_refused_and_watching_goes_on(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "faregate.yaml"
    config_data["server"]["reload_poll_s"] = 0.02
    path.write_text(yaml.safe_dump(config_data))
    async with start_faregate(to_config(config_data), config_path=path) as fg:
        path.write_bytes(path.read_bytes() + b"# caf\xe9\n")  # latin-1 comment
        await asyncio.sleep(0.2)
        assert fg.running.reloader.reloads == 0
        config_data["budgets"]["more"] = {"limit_usd": 1}
        path.write_text(yaml.safe_dump(config_data))
        await eventually(lambda: fg.running.reloader.reloads != 0)
