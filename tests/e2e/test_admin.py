"""The AdminService: budgets, models, the spend ledger and reload, for operators."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from faregate.v1 import admin_pb2, admin_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from tests.conftest import TEST_ENV, Faregate, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script


@pytest.fixture(params=["memory", "sqlite"])
async def admin(
    request: pytest.FixtureRequest,
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    tmp_path: Path,
) -> AsyncIterator[tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub]]:
    config_data["admin"] = {"enabled": True}
    config_data["state"] = {"backend": request.param, "path": str(tmp_path / "faregate.db")}
    async with (
        start_faregate(to_config(config_data)) as faregate,
        grpc.aio.insecure_channel(faregate.target) as channel,
    ):
        yield faregate, admin_pb2_grpc.AdminServiceStub(channel)


async def test_budgets_show_spend_and_can_be_topped_up_set_and_reset(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub], upstream: FakeUpstream
) -> None:
    faregate, stub = admin
    upstream.default = Script(usage=(10, 2))
    reply = await faregate.client.route("hi", budget_key="team")

    budget = (await stub.GetBudget(admin_pb2.GetBudgetRequest(key="team"))).budget
    assert (budget.limit_nano_usd, budget.spent_nano_usd) == (100 * 10**9, reply.cost_nano_usd)
    assert budget.remaining_nano_usd == 100 * 10**9 - reply.cost_nano_usd
    assert budget.window == "none"

    topped = await stub.UpdateBudget(admin_pb2.UpdateBudgetRequest(key="team", top_up_nano_usd=5))
    assert topped.budget.limit_nano_usd == 100 * 10**9 + 5
    limited = await stub.UpdateBudget(
        admin_pb2.UpdateBudgetRequest(key="team", set_limit_nano_usd=1_000)
    )
    assert limited.budget.remaining_nano_usd == 1_000 - reply.cost_nano_usd
    reset = await stub.UpdateBudget(admin_pb2.UpdateBudgetRequest(key="team", reset_spend=True))
    assert reset.budget.spent_nano_usd == 0

    listed = await stub.ListBudgets(admin_pb2.ListBudgetsRequest())
    assert [b.key for b in listed.budgets] == ["team"]


@pytest.mark.parametrize(
    "change",
    [{}, {"top_up_nano_usd": -1}, {"set_limit_nano_usd": -5}, {"top_up_nano_usd": 2**63 - 1}],
    ids=str,
)
async def test_bad_budget_updates_are_invalid_argument(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub], change: dict[str, Any]
) -> None:
    _, stub = admin
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateBudget(admin_pb2.UpdateBudgetRequest(key="team", **change))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await stub.ListBudgets(admin_pb2.ListBudgetsRequest())
    assert listed.budgets[0].limit_nano_usd == 100 * 10**9  # nothing changed


async def test_unknown_budget_is_budget_not_found(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub],
) -> None:
    _, stub = admin
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetBudget(admin_pb2.GetBudgetRequest(key="nobody"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_models_report_price_pool_and_breaker(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub],
) -> None:
    faregate, stub = admin
    await faregate.client.route("hi", budget_key="team", model="gpt-fake")

    models = {m.name: m for m in (await stub.ListModels(admin_pb2.ListModelsRequest())).models}

    gpt = models["gpt-fake"]
    assert (gpt.provider, gpt.workers, gpt.in_use, gpt.queue_depth) == ("openai", 8, 0, 0)
    assert gpt.input_nano_usd_per_mtok == 2_500_000_000
    assert gpt.breaker_state == "closed"
    assert gpt.ewma_latency_s > 0


async def test_spend_pages_newest_first_with_filters(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub],
) -> None:
    faregate, stub = admin
    ids = [
        (await faregate.client.route("hi", budget_key="team", agent=f"a{i % 2}")).request_id
        for i in range(5)
    ]

    first = await stub.ListSpend(admin_pb2.ListSpendRequest(page_size=2))
    second = await stub.ListSpend(
        admin_pb2.ListSpendRequest(page_size=2, page_token=first.next_page_token)
    )
    last = await stub.ListSpend(
        admin_pb2.ListSpendRequest(page_size=2, page_token=second.next_page_token)
    )
    agent = await stub.ListSpend(admin_pb2.ListSpendRequest(agent="a1"))

    pages = [entry.request_id for page in (first, second, last) for entry in page.entries]
    assert pages == ids[::-1]
    assert last.next_page_token == ""
    assert [entry.request_id for entry in agent.entries] == [ids[3], ids[1]]
    assert first.entries[0].cost_nano_usd > 0


@pytest.mark.parametrize("token", ["garbage", "²", "9" * 25, "0", "-3"])
async def test_a_bad_page_token_is_invalid_argument(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub], token: str
) -> None:
    _, stub = admin
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListSpend(admin_pb2.ListSpendRequest(page_token=token))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reload_without_a_config_file_says_nothing_was_applied(
    admin: tuple[Faregate, admin_pb2_grpc.AdminServiceAsyncStub],
) -> None:
    _, stub = admin
    reply = await stub.ReloadConfig(admin_pb2.ReloadConfigRequest())

    assert reply.applied is False


async def test_admin_is_off_unless_enabled(faregate: Faregate) -> None:
    async with grpc.aio.insecure_channel(faregate.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_pb2_grpc.AdminServiceStub(channel).ListBudgets(
                admin_pb2.ListBudgetsRequest()
            )

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reload_of_a_bad_file_is_refused_saying_why_and_the_old_config_serves_on(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    config_data["admin"] = {"enabled": True}
    config_data["server"]["reload_poll_s"] = 0  # only the call reloads
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config_data))
    good = copy.deepcopy(config_data)
    config_data["models"]["gpt-fake"]["workers"] = 0
    path.write_text(yaml.safe_dump(config_data))
    async with (
        start_faregate(to_config(good), config_path=path) as faregate,
        grpc.aio.insecure_channel(faregate.target) as channel,
    ):
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ReloadConfig(admin_pb2.ReloadConfigRequest())
        served = await faregate.client.route("hi", budget_key="team")
        path.write_text(yaml.safe_dump(good))
        fixed = await stub.ReloadConfig(admin_pb2.ReloadConfigRequest())
        reloads = faregate.running.reloader.reloads

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = refused.value.details() or ""
    assert str(path) in message
    assert "models.gpt-fake.workers: must be an integer >= 1" in message
    trailers = dict(refused.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info, precondition = error_details_pb2.ErrorInfo(), error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(precondition)
    assert (info.reason, info.metadata["file"]) == ("CONFIG_INVALID", str(path))
    (violation,) = precondition.violations
    assert (violation.type, violation.subject) == ("CONFIG", str(path))
    assert violation.description.startswith("models.gpt-fake.workers")
    assert served.model_used == "gpt-fake"  # the old config served on
    assert fixed.applied is True
    assert reloads == 1
