"""API keys and principals: who may call, which budgets, routes and models
they may use, their own rate and concurrency limits, and the AdminService
for operators only."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from faregate.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from faregate_client import (
    ClientTls,
    FaregateClient,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from faregate_server.security.api_keys import format_key_hash, new_api_key
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.certs import write_pki

PRINCIPALS = ("agent-a", "agent-a2", "agent-b", "ops", "limited", "capped")


@dataclass
class Keys:
    """A fresh API key per principal, and the config granting them."""

    keys: dict[str, str]
    hashes: dict[str, str]

    @classmethod
    def make(cls) -> Keys:
        keys, hashes = {}, {}
        for name in PRINCIPALS:
            keys[name], stored = new_api_key()
            hashes[name] = format_key_hash(stored)
        return cls(keys, hashes)

    def auth_section(self) -> dict[str, Any]:
        def principal(name: str, **grants: Any) -> dict[str, Any]:
            return {"api_keys": [self.hashes[name]], **grants}

        team_default = {"budgets": ["team"], "routes": ["default"]}
        return {
            "enabled": True,
            "principals": {
                "agent-a": principal("agent-a", **team_default),
                "agent-a2": principal("agent-a2", **team_default),
                "agent-b": principal("agent-b", budgets=["other"], routes="*", models=["gpt-fake"]),
                "ops": principal("ops", budgets="*", admin=True),
                # A rate so slow that no token comes back during a test.
                "limited": principal("limited", **team_default, requests_per_s=0.001, burst=2),
                "capped": principal("capped", **team_default, max_concurrent=2),
            },
        }


@pytest.fixture
def keys() -> Keys:
    return Keys.make()


@pytest.fixture
def auth_config(config_data: dict[str, Any], keys: Keys) -> dict[str, Any]:
    config_data["budgets"]["other"] = {"limit_usd": 10, "window": "none"}
    config_data["admin"] = {"enabled": True}
    config_data["auth"] = keys.auth_section()
    return config_data


@pytest.fixture
async def gate(
    start_faregate: StartFaregate, auth_config: dict[str, Any]
) -> AsyncIterator[Faregate]:
    async with start_faregate(to_config(auth_config)) as running:
        yield running


@asynccontextmanager
async def client(gate: Faregate, key: str | None) -> AsyncIterator[FaregateClient]:
    async with FaregateClient(gate.target, api_key=key) as typed:
        yield typed


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_a_granted_key_is_served_and_its_principal_is_in_the_ledger(
    gate: Faregate, keys: Keys
) -> None:
    async with client(gate, keys.keys["agent-a"]) as agent:
        reply = await agent.route("hi", budget_key="team")
        stream = agent.stream_route("hi", budget_key="team")
        assert "".join(await read_stream(stream)) == "Hello, world"
    assert reply.cost_nano_usd > 0
    async with grpc.aio.insecure_channel(gate.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        page = await admin.ListSpend(
            admin_pb2.ListSpendRequest(), metadata=_bearer(keys.keys["ops"])
        )
    assert [entry.principal for entry in page.entries] == ["agent-a", "agent-a"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer fg_000000000000_not-a-key",  # an unknown key id
        "Basic dXNlcjpwYXNz",  # not a bearer token
        "Bearer",
        "Bearer something-else-entirely",
    ],
)
async def test_no_key_or_a_bad_key_is_unauthenticated_and_touches_nothing(
    gate: Faregate, upstream: FakeUpstream, authorization: str | None
) -> None:
    metadata = (("authorization", authorization),) if authorization else ()
    async with grpc.aio.insecure_channel(gate.target) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RouteRequest(
            messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
            budget_key="team",
        )
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Route(request, metadata=metadata)
        stream_request = router_pb2.StreamRouteRequest(messages=request.messages, budget_key="team")
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stub.StreamRoute(stream_request, metadata=metadata):
                pass
    for failure in (unary.value, streamed.value):
        assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "fg_" not in (failure.details() or "")
    assert upstream.received == []
    assert await gate.reserved_nano_usd() == 0


async def test_the_right_key_id_with_the_wrong_secret_is_refused(
    gate: Faregate, keys: Keys
) -> None:
    key_id = keys.keys["agent-a"].split("_")[1]
    async with client(gate, f"fg_{key_id}_{'x' * 43}") as forger:
        with pytest.raises(Unauthenticated) as refused:
            await forger.route("hi", budget_key="team")
    assert refused.value.reason == "API_KEY_INVALID"
    async with client(gate, None) as anonymous:
        with pytest.raises(Unauthenticated) as missing:
            await anonymous.route("hi", budget_key="team")
    assert missing.value.reason == "API_KEY_MISSING"


async def test_an_unknown_key_id_costs_the_same_hmac_as_a_wrong_secret(
    gate: Faregate, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted at the standard library's hmac.new, which every key check calls.
    salts: list[bytes] = []
    real_new = hmac.new

    def counting_new(key: bytes, msg: bytes | None = None, digestmod: Any = "") -> hmac.HMAC:
        salts.append(key)
        return real_new(key, msg, digestmod)

    monkeypatch.setattr(hmac, "new", counting_new)
    key_id = keys.keys["agent-a"].split("_")[1]
    presented = {
        "wrong secret": f"fg_{key_id}_{'x' * 43}",
        "unknown key id": f"fg_000000000000_{'x' * 43}",
        "no key shape": "x" * 43,
    }
    computed = {}
    for what, key in presented.items():
        salts.clear()
        async with client(gate, key) as caller:
            with pytest.raises(Unauthenticated) as refused:
                await caller.route("hi", budget_key="team")
        assert refused.value.reason == "API_KEY_INVALID"
        computed[what] = [len(salt) for salt in salts]

    # One HMAC under a salt of the stored length on every path.
    assert computed == {what: [16] for what in presented}


@pytest.mark.parametrize(
    ("principal", "request_fields", "denied"),
    [
        ("agent-a", {"budget_key": "other"}, "budget"),
        ("agent-a", {"budget_key": "no-such-budget"}, "budget"),  # existence is not revealed
        ("agent-a", {"budget_key": "team", "additional_budget_keys": ["other"]}, "budget"),
        ("agent-a", {"budget_key": "team", "model": "gpt-fake"}, "model"),
        ("agent-a", {"budget_key": "team", "model": "no-such-model"}, "model"),
        ("agent-b", {"budget_key": "other", "model": "cheap-fake"}, "model"),
        ("ops", {"budget_key": "team"}, "route"),
    ],
)
async def test_what_is_outside_a_grant_is_permission_denied(
    gate: Faregate,
    keys: Keys,
    upstream: FakeUpstream,
    principal: str,
    request_fields: dict[str, Any],
    denied: str,
) -> None:
    async with client(gate, keys.keys[principal]) as caller:
        with pytest.raises(PermissionDenied) as refused:
            await caller.route("hi", **request_fields)
        with pytest.raises(PermissionDenied):
            await read_stream(caller.stream_route("hi", **request_fields))
    assert refused.value.reason == "NOT_GRANTED"
    assert refused.value.metadata == {"principal": principal, "field": denied}
    assert upstream.received == []
    for budget in ("team", "other"):
        assert await gate.reserved_nano_usd(budget) == 0
        assert await gate.spent_nano_usd(budget) == 0


async def test_granted_routes_and_models_are_served(gate: Faregate, keys: Keys) -> None:
    async with client(gate, keys.keys["agent-b"]) as agent_b:
        by_model = await agent_b.route("hi", budget_key="other", model="gpt-fake")
        by_route = await agent_b.route("hi", budget_key="other", model="default")
    assert by_model.model_used == "gpt-fake"
    assert by_route.model_used in {"gpt-fake", "cheap-fake"}


async def test_request_ids_belong_to_their_principal(
    gate: Faregate, keys: Keys, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()
    upstream.queue(Script(gate=release, chunks=["first"]))
    async with (
        client(gate, keys.keys["agent-a"]) as agent_a,
        client(gate, keys.keys["agent-a2"]) as agent_a2,
    ):
        held = asyncio.create_task(agent_a.route("hi", budget_key="team", request_id="job-1"))
        await upstream.wait_for_requests(1)
        # agent-a's job-1 is in flight; agent-a2's job-1 is another request.
        other = await agent_a2.route("hi", budget_key="team", request_id="job-1")
        release.set()
        first = await held
        again = await agent_a.route("hi", budget_key="team", request_id="job-1")
        other_again = await agent_a2.route("hi", budget_key="team", request_id="job-1")
    assert again == first  # each principal's retry is answered from its own result
    assert other_again == other
    assert (first.output, other.output) == ("first", "Hello, world")
    assert len(upstream.received) == 2
    assert await gate.spent_nano_usd() == first.cost_nano_usd + other.cost_nano_usd


async def test_a_principal_over_its_rate_is_limited_and_others_are_not(
    gate: Faregate, keys: Keys, upstream: FakeUpstream
) -> None:
    async with client(gate, keys.keys["limited"]) as limited:
        for _ in range(2):  # its burst
            await limited.route("hi", budget_key="team")
        with pytest.raises(RateLimited) as refused:
            await limited.route("hi", budget_key="team")
    assert refused.value.reason == "PRINCIPAL_RATE_LIMITED"
    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s > 0
    assert len(upstream.received) == 2
    async with client(gate, keys.keys["agent-a"]) as agent_a:
        await agent_a.route("hi", budget_key="team")


async def test_a_principal_at_its_concurrency_cap_is_limited_until_a_request_ends(
    gate: Faregate, keys: Keys, upstream: FakeUpstream
) -> None:
    release = asyncio.Event()
    upstream.queue(Script(gate=release), Script(gate=release))
    async with client(gate, keys.keys["capped"]) as capped:
        held = [asyncio.create_task(capped.route("hi", budget_key="team")) for _ in range(2)]
        await upstream.wait_for_requests(2)
        with pytest.raises(RateLimited) as refused:
            await read_stream(capped.stream_route("hi", budget_key="team"))
        async with client(gate, keys.keys["agent-a"]) as agent_a:
            await agent_a.route("hi", budget_key="team")  # others are not held up
        release.set()
        await asyncio.gather(*held)
        await capped.route("hi", budget_key="team")  # a slot is free again
    assert refused.value.reason == "PRINCIPAL_CONCURRENCY_LIMITED"
    assert await gate.reserved_nano_usd() == 0


async def test_only_admin_principals_may_call_the_admin_service(gate: Faregate, keys: Keys) -> None:
    async with grpc.aio.insecure_channel(gate.target) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.ListBudgetsRequest()
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await admin.ListBudgets(request)
        with pytest.raises(grpc.aio.AioRpcError) as agent:
            await admin.ListBudgets(request, metadata=_bearer(keys.keys["agent-a"]))
        budgets = await admin.ListBudgets(request, metadata=_bearer(keys.keys["ops"]))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert agent.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert {budget.key for budget in budgets.budgets} == {"team", "other"}


async def test_health_and_reflection_need_no_key(gate: Faregate) -> None:
    async with grpc.aio.insecure_channel(gate.target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = await check(health_pb2.HealthCheckRequest(service=""))
        reflect = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listing = reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [
            service.name
            async for answer in listing
            for service in answer.list_services_response.service
        ]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "faregate.v1.RouterService" in services


async def test_keys_rotate_with_a_reload(
    start_faregate: StartFaregate, auth_config: dict[str, Any], keys: Keys
) -> None:
    async with start_faregate(to_config(auth_config)) as running:
        new_key, stored = new_api_key()
        auth_config["auth"]["principals"]["agent-a"]["api_keys"] = [format_key_hash(stored)]
        running.running.reloader.apply(to_config(auth_config))
        async with client(running, keys.keys["agent-a"]) as old:
            with pytest.raises(Unauthenticated):
                await old.route("hi", budget_key="team")
        async with client(running, new_key) as new:
            await new.route("hi", budget_key="team")


async def test_the_admin_service_can_have_a_port_of_its_own(
    start_faregate: StartFaregate, auth_config: dict[str, Any], keys: Keys
) -> None:
    auth_config["admin"]["listen"] = "127.0.0.1:0"
    async with start_faregate(to_config(auth_config)) as running:
        admin_port = running.running.admin_port
        assert admin_port not in (None, running.running.port)
        request = admin_pb2.ListBudgetsRequest()
        metadata = _bearer(keys.keys["ops"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}") as channel:
            budgets = await admin_pb2_grpc.AdminServiceStub(channel).ListBudgets(
                request, metadata=metadata
            )
        async with grpc.aio.insecure_channel(running.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as absent:
                await admin_pb2_grpc.AdminServiceStub(channel).ListBudgets(
                    request, metadata=metadata
                )
    assert len(budgets.budgets) == 2
    assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_auth_off_is_announced_loudly(
    start_faregate: StartFaregate, config_data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with start_faregate(to_config(config_data)):
            pass
    assert any("AUTHENTICATION IS OFF" in record.message for record in caplog.records)


async def test_a_client_certificate_can_stand_for_a_principal_under_mutual_tls(
    start_faregate: StartFaregate, auth_config: dict[str, Any], keys: Keys, tmp_path: Path
) -> None:
    pki = write_pki(tmp_path)
    auth_config["server"]["tls"] = pki.server_tls(mutual=True)
    auth_config["auth"]["principals"]["by-certificate"] = {
        "certificate_subjects": ["O=Acme,CN=agent-1"],
        "budgets": ["other"],
        "routes": ["default"],
    }
    agent_1 = ClientTls(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)
    unlisted = pki.ca.issue_client("agent-2", "Acme")
    agent_2 = ClientTls(pki.ca.cert_pem, unlisted.cert_pem, unlisted.key_pem)
    async with start_faregate(to_config(auth_config)) as running:
        async with FaregateClient(running.target, tls=agent_1) as by_certificate:
            await by_certificate.route("hi", budget_key="other")
            with pytest.raises(PermissionDenied):  # its grant, not anyone's
                await by_certificate.route("hi", budget_key="team")
        # An API key still wins over the certificate it came with.
        async with FaregateClient(
            running.target, tls=agent_1, api_key=keys.keys["agent-a"]
        ) as by_key:
            await by_key.route("hi", budget_key="team")
        async with FaregateClient(running.target, tls=agent_2) as stranger:
            with pytest.raises(Unauthenticated) as refused:
                await stranger.route("hi", budget_key="other")
    assert refused.value.reason == "API_KEY_INVALID"
