"""Server reflection, v1 and v1alpha: each port describes what it serves.

Asked with a raw reflection client (both protocol versions, the same
messages on the wire) and with `buf curl` pinned to each version. The
AdminService is described only by the port that serves it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.conftest import Faregate, StartFaregate, to_config
from tests.e2e.test_third_party_clients import BUF, _run
from tests.fakes.upstream import FakeUpstream, Script

VERSIONS = ["v1", "v1alpha"]
ROUTER = "faregate.v1.RouterService"
ADMIN = "faregate.v1.AdminService"
ALWAYS = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def _reflect(
    target: str, version: str, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        reflect = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return [answer async for answer in reflect(iter(requests))]


async def _services(target: str, version: str) -> set[str]:
    (answer,) = await _reflect(
        target, version, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    return {service.name for service in answer.list_services_response.service}


async def _files_for(target: str, version: str, symbol: str) -> list[str] | None:
    """The file names reflection gives for `symbol`; None when it knows no such symbol."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (answer,) = await _reflect(target, version, request)
    if answer.HasField("error_response"):
        assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        return None
    names = []
    for serialized in answer.file_descriptor_response.file_descriptor_proto:
        names.append(descriptor_pb2.FileDescriptorProto.FromString(serialized).name)
    return names


@pytest.fixture
async def separate_admin(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    """The AdminService on a port of its own (admin.listen)."""
    config_data["admin"] = {"enabled": True, "listen": "127.0.0.1:0"}
    async with start_faregate(to_config(config_data)) as running:
        yield running


@pytest.mark.parametrize("version", VERSIONS)
async def test_reflection_lists_the_router_health_and_both_reflections(
    faregate: Faregate, version: str
) -> None:
    assert await _services(faregate.target, version) == {ROUTER, *ALWAYS}
    assert await _files_for(faregate.target, version, ROUTER) == ["faregate/v1/router.proto"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_reflection_describes_itself_in_its_own_version(
    faregate: Faregate, version: str
) -> None:
    files = await _files_for(
        faregate.target, version, f"grpc.reflection.{version}.ServerReflection"
    )
    assert files is not None
    (name,) = files
    assert f"/{version}/" in name


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_router_port_does_not_describe_an_admin_service_served_elsewhere(
    separate_admin: Faregate, version: str
) -> None:
    router_target = separate_admin.target
    admin_target = f"127.0.0.1:{separate_admin.running.admin_port}"

    assert await _services(router_target, version) == {ROUTER, *ALWAYS}
    assert await _files_for(router_target, version, ADMIN) is None
    assert await _files_for(router_target, version, f"{ADMIN}.ListSpend") is None
    assert await _services(admin_target, version) == {ADMIN, *ALWAYS}
    admin_files = await _files_for(admin_target, version, ADMIN)
    assert admin_files is not None
    assert "faregate/v1/admin.proto" in admin_files


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_admin_service_on_the_router_port_is_listed_there(
    start_faregate: StartFaregate, config_data: dict[str, Any], version: str
) -> None:
    config_data["admin"] = {"enabled": True}
    async with start_faregate(to_config(config_data)) as running:
        assert await _services(running.target, version) == {ROUTER, ADMIN, *ALWAYS}


async def _buf_curl(target: str, protocol: str, *arguments: str) -> str:
    if not BUF.exists():
        pytest.fail(f"buf not found at {BUF}: run `make tools` (or set FAREGATE_BUF)")
    argv = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    return await _run(*argv, "--reflect-protocol", protocol, *arguments, f"http://{target}/")


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_buf_curl_lists_and_calls_by_each_reflection_protocol(
    faregate: Faregate, upstream: FakeUpstream, protocol: str
) -> None:
    upstream.default = Script(chunks=["by", " reflection"], usage=(5, 2))
    body = {"messages": [{"role": "ROLE_USER", "content": "hi"}], "budgetKey": "team"}

    listing = await _buf_curl(faregate.target, protocol, "--list-services")
    answer = await _run(
        str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
        "--reflect-protocol", protocol, "--data", json.dumps(body),
        f"http://{faregate.target}/{ROUTER}/Route",
    )  # fmt: skip

    assert set(listing.split()) == {ROUTER, *ALWAYS}
    assert json.loads(answer)["output"] == "by reflection"


async def test_buf_curl_on_the_router_port_cannot_list_a_separate_admin_service(
    separate_admin: Faregate,
) -> None:
    admin_target = f"127.0.0.1:{separate_admin.running.admin_port}"

    on_router = await _buf_curl(separate_admin.target, "grpc-v1", "--list-methods")
    on_admin = await _buf_curl(admin_target, "grpc-v1", "--list-methods")

    assert ADMIN not in on_router
    assert f"{ROUTER}/Route" in on_router.split()
    assert f"{ADMIN}/ReloadConfig" in on_admin.split()
