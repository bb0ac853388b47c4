"""Telemetry end to end: spans, metrics, /metrics, /healthz, /readyz, request logs.

faregate runs for real on loopback; spans and metrics go to the SDK's
in-memory exporter and reader (or, for /metrics, to the Prometheus reader the
server builds itself); the fake upstream records the headers it was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import FailedPrecondition, FaregateClient, FaregateError
from faregate_server.security.api_keys import format_key_hash, new_api_key
from faregate_server.telemetry.request_log import LOGGER_NAME
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from tests.conftest import StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "server/faregate_server/default_config.yaml"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _route_request(**fields: Any) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="a secret prompt")],
        budget_key="team",
        **fields,
    )


def _by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
    return named


async def test_route_is_one_trace_from_the_caller_through_faregate_to_the_upstream(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    provider, exporter = spans
    async with (
        start_faregate(to_config(config_data), tracer_provider=provider) as faregate,
        grpc.aio.insecure_channel(faregate.target) as channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        response = await stub.Route(
            _route_request(model="gpt-fake", agent="coder"),
            metadata=(("traceparent", TRACEPARENT), ("tracestate", "vendor=1")),
        )

    named = _by_name(exporter.get_finished_spans())
    (server,) = named["faregate.v1.RouterService/Route"]
    assert server.kind is SpanKind.SERVER
    assert server.context is not None
    assert server.parent is not None
    assert format_trace_id(server.context.trace_id) == CALLER_TRACE_ID
    assert format_span_id(server.parent.span_id) == CALLER_SPAN_ID
    attributes = dict(server.attributes or {})
    assert attributes["faregate.request_id"] == response.request_id
    assert attributes["faregate.model"] == "gpt-fake"
    assert attributes["faregate.cost_nano_usd"] == response.cost_nano_usd
    assert attributes["rpc.grpc.status_code"] == 0
    for child in ("faregate.select", "faregate.budget.reserve", "faregate.pool.wait"):
        (span,) = named[child]
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
    (attempt,) = named["chat gpt-fake"]
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.parent is not None
    assert attempt.parent.span_id == server.context.span_id
    assert dict(attempt.attributes or {}) == {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-fake",
        "faregate.model": "gpt-fake",
        "http.response.status_code": 200,
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 3,
    }
    # The upstream request carries the attempt's span, in the caller's trace.
    assert attempt.context is not None
    sent = upstream.received[-1].headers
    assert sent["traceparent"] == (
        f"00-{CALLER_TRACE_ID}-{format_span_id(attempt.context.span_id)}-01"
    )
    assert sent["tracestate"] == "vendor=1"
    (line,) = _request_lines(caplog)
    assert line["trace_id"] == CALLER_TRACE_ID


async def test_stream_attempts_are_spans_and_a_failed_one_is_marked(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config_data["retries"] = {"max_attempts": 2}
    upstream.queue(Script(status=503))
    provider, exporter = spans
    async with start_faregate(to_config(config_data), tracer_provider=provider) as faregate:
        texts = [text async for text in faregate.client.stream_route("hi", budget_key="team")]

    assert "".join(texts) == "Hello, world"
    named = _by_name(exporter.get_finished_spans())
    (server,) = named["faregate.v1.RouterService/StreamRoute"]
    assert server.context is not None
    attempts = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]
    assert [dict(span.attributes or {})["http.response.status_code"] for span in attempts] == [
        503,
        200,
    ]
    assert not attempts[0].status.is_ok
    assert all(
        span.parent is not None and span.parent.span_id == server.context.span_id
        for span in attempts
    )
    # Each upstream request carried its own attempt's span.
    sent = [received.headers["traceparent"] for received in upstream.received]
    assert [header.split("-")[2] for header in sent] == [
        format_span_id(span.context.span_id) for span in attempts if span.context is not None
    ]
    (line,) = _request_lines(caplog)
    assert (line["rpc"], line["attempts"], line["outcome"]) == ("StreamRoute", 2, "OK")
    assert line["trace_id"] == format_trace_id(server.context.trace_id)


def _points(data: MetricsData | None, name: str) -> list[NumberDataPoint]:
    assert data is not None
    points: list[NumberDataPoint] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)  # type: ignore[arg-type]
    return points


async def test_metrics_count_requests_tokens_cost_and_rejections(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    async with start_faregate(to_config(config_data), meter_provider=meter_provider) as faregate:
        answer = await faregate.client.route("hi", budget_key="team", model="gpt-fake")
        with pytest.raises(FaregateError):
            await faregate.client.route("hi", budget_key="nobody", model="gpt-fake")

        port = faregate.running.http_port
        assert port is not None

        # The refusal is recorded as its handler unwinds, after its status was sent.
        async def both_requests_timed() -> dict[str, float]:
            counts = _histogram_counts((await _get(port, "/metrics"))[1])
            assert sum(counts.values()) == 2
            return counts

        durations = await eventually(both_requests_timed)
        data = reader.get_metrics_data()
    meter_provider.shutdown()

    requests = {
        (p.attributes or {}).get("outcome"): (p.value, dict(p.attributes or {}))
        for p in _points(data, "faregate.requests")
    }
    assert requests["OK"] == (
        1,
        {
            "rpc": "Route",
            "route": "gpt-fake",
            "model": "gpt-fake",
            "provider": "openai",
            "outcome": "OK",
        },
    )
    assert requests["FAILED_PRECONDITION"][0] == 1
    (cost,) = _points(data, "faregate.cost.nano_usd")
    assert cost.value == answer.cost_nano_usd
    tokens = {(p.attributes or {})["direction"]: p.value for p in _points(data, "faregate.tokens")}
    assert tokens == {"input": answer.usage.input_tokens, "output": answer.usage.output_tokens}
    (rejected,) = _points(data, "faregate.rejections")
    assert dict(rejected.attributes or {}) == {"rpc": "Route", "reason": "BUDGET_NOT_FOUND"}
    (attempt,) = _points(data, "faregate.attempts")
    assert dict(attempt.attributes or {}) == {
        "model": "gpt-fake",
        "kind": "first",
        "outcome": "succeeded",
    }
    # The latency histogram is faregate's own, on /metrics beside the SDK's instruments.
    assert durations == {
        'model="gpt-fake",outcome="OK",route="gpt-fake",rpc="Route"': 1,
        'model="",outcome="FAILED_PRECONDITION",route="",rpc="Route"': 1,
    }
    in_flight = {
        (p.attributes or {})["model"]: p.value for p in _points(data, "faregate.pool.in_flight")
    }
    assert in_flight == {"gpt-fake": 0, "claude-fake": 0, "cheap-fake": 0}
    # No budget labels unless the operator allows them.
    assert _points(data, "faregate.budget.remaining.nano_usd") == []


async def test_a_stream_records_time_to_first_token_and_a_fallback(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["retries"] = {"max_attempts": 2}
    upstream.by_model["gpt-fake"] = Script(status=503)
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    async with start_faregate(to_config(config_data), meter_provider=meter_provider) as faregate:
        async for _ in faregate.client.stream_route("hi", budget_key="team"):
            pass
        data = reader.get_metrics_data()
        port = faregate.running.http_port
        assert port is not None
        text = (await _get(port, "/metrics"))[1]
    meter_provider.shutdown()

    ttft = _histogram_counts(text, "faregate_time_to_first_token_seconds")
    assert ttft == {'model="cheap-fake",route="default"': 1}
    attempts = {
        (p.attributes or {})["kind"]: dict(p.attributes or {})
        for p in _points(data, "faregate.attempts")
    }
    assert attempts["first"]["model"] == "gpt-fake"
    assert attempts["first"]["outcome"] == "failed"
    assert attempts["fallback"]["model"] == "cheap-fake"


def _histogram_counts(
    text: str, name: str = "faregate_request_duration_seconds"
) -> dict[str, float]:
    """A histogram's observation count per series in /metrics text, by its labels."""
    counts = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_count{{"):
            labels, _, count = line[len(name) + len("_count{") :].rpartition("} ")
            counts[labels] = float(count)
    return counts


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_metrics_are_scraped_over_http_with_budget_labels_when_allowed(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    config_data["telemetry"]["budget_labels"] = True
    async with start_faregate(to_config(config_data)) as faregate:
        answer = await faregate.client.route("hi", budget_key="team", model="gpt-fake")
        for made_up in ("attacker-0", "attacker-1"):
            with pytest.raises(FailedPrecondition):  # BUDGET_NOT_FOUND
                await faregate.client.route("hi", budget_key=made_up, model="gpt-fake")
        port = faregate.running.http_port
        assert port is not None
        status, text = await _get(port, "/metrics")

    assert status == 200
    lines = text.splitlines()
    assert (
        'faregate_requests_total{budget="team",model="gpt-fake",outcome="OK",provider="openai",'
        'route="gpt-fake",rpc="Route"} 1.0'
    ) in lines
    assert (
        'faregate_cost_nano_usd_total{budget="team",model="gpt-fake",provider="openai",'
        f'route="gpt-fake"}} {float(answer.cost_nano_usd)}'
    ) in lines
    remaining = 100 * 10**9 - answer.cost_nano_usd
    (budget_line,) = [line for line in lines if line.startswith("faregate_budget_remaining")]
    assert budget_line.startswith('faregate_budget_remaining_nano_usd{budget="team"} ')
    assert float(budget_line.split()[-1]) == remaining
    assert "attacker" not in text  # a caller's key is a label only when configured
    assert 'faregate_breaker_state{model="gpt-fake"} 0.0' in lines
    assert any(line.startswith("faregate_request_duration_seconds_bucket{") for line in lines)


async def test_readyz_follows_grpc_health_through_a_drain(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.default = Script(gate=gate)
    # A grace longer than the test: the call is still running when it checks.
    config_data["server"]["shutdown_grace_s"] = 60
    async with AsyncExitStack() as stack:
        faregate = await stack.enter_async_context(start_faregate(to_config(config_data)))
        port = faregate.running.http_port
        assert port is not None
        assert await _get(port, "/healthz") == (200, "ok\n")
        assert await _get(port, "/readyz") == (200, "ready\n")

        # A client of its own, which stays open while the server drains.
        client = FaregateClient(faregate.target)
        call = asyncio.create_task(client.route("hi", budget_key="team"))
        await upstream.wait_for_requests(1)
        # Leaving serve() drains: gRPC health goes NOT_SERVING while the call runs on.
        stopping = asyncio.create_task(stack.aclose())

        async def not_ready() -> tuple[int, str]:
            readiness = await _get(port, "/readyz")
            assert readiness[0] != 200
            return readiness

        readiness = await eventually(not_ready, timeout_s=20)
        assert readiness == (503, "not ready: gRPC health is NOT_SERVING\n")
        assert (await _get(port, "/healthz"))[0] == 200
        gate.set()
        assert (await call).output == "Hello, world"
        await stopping
        await client.aclose()


async def test_readyz_is_503_while_the_state_store_is_unreachable(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    # Nothing listens on port 1: a Redis store that fails closed refuses every read.
    config_data["state"] = {"backend": "redis", "redis": {"url": "redis://127.0.0.1:1/0"}}
    async with start_faregate(to_config(config_data)) as faregate:
        port = faregate.running.http_port
        assert port is not None
        status, text = await _get(port, "/readyz")
        assert (await _get(port, "/healthz"))[0] == 200

    assert status == 503
    assert text.startswith("not ready: the state store failed a read")


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(record.getMessage()) for record in caplog.records if record.name == LOGGER_NAME
    ]


async def test_each_request_logs_one_json_line_without_prompt_or_keys(
    faregate: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    answer = await faregate.client.route(
        "a secret prompt", budget_key="team", model="gpt-fake", agent="coder", request_id="r-1"
    )
    with pytest.raises(FaregateError):
        await faregate.client.route("a secret prompt", budget_key="nobody", model="gpt-fake")
    # A refusal's status is sent (context.abort) before its handler unwinds to
    # the line being written: the caller may see the error first.
    await eventually(lambda: len(_request_lines(caplog)) >= 2)

    served, refused = _request_lines(caplog)
    assert served == {
        "ts": served["ts"],
        "rpc": "Route",
        "request_id": "r-1",
        "trace_id": "",
        "agent": "coder",
        "principal": "",
        "budget_keys": ["team"],
        "route": "gpt-fake",
        "model": "gpt-fake",
        "provider": "openai",
        "attempts": 1,
        "input_tokens": answer.usage.input_tokens,
        "output_tokens": answer.usage.output_tokens,
        "cached_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "cache_write_1h_input_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nano_usd": answer.cost_nano_usd,
        "latency_ms": served["latency_ms"],
        "outcome": "OK",
        "reason": "",
    }
    assert served["latency_ms"] > 0
    assert refused["outcome"] == "FAILED_PRECONDITION"
    assert refused["reason"] == "BUDGET_NOT_FOUND"
    assert refused["budget_keys"] == ["nobody"]
    text = caplog.text
    assert "a secret prompt" not in text
    assert "sk-test-openai" not in text


async def test_the_log_line_names_the_principal_and_never_its_key(
    start_faregate: StartFaregate, config_data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    key, stored = new_api_key()
    config_data["auth"] = {
        "enabled": True,
        "principals": {
            "ci-bot": {"api_keys": [format_key_hash(stored)], "budgets": "*", "routes": "*"}
        },
    }
    async with start_faregate(to_config(config_data)) as faregate:
        async with FaregateClient(faregate.target, api_key=key) as client:
            await client.route("hi", budget_key="team")
        with pytest.raises(FaregateError):
            await faregate.client.route("hi", budget_key="team")  # no key

    served, refused = _request_lines(caplog)
    assert (served["principal"], served["outcome"]) == ("ci-bot", "OK")
    assert (refused["principal"], refused["outcome"]) == ("", "UNAUTHENTICATED")
    assert key not in caplog.text


async def test_prompts_are_logged_only_when_the_operator_turns_it_on(
    start_faregate: StartFaregate, config_data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config_data["telemetry"]["log_prompts"] = True
    async with start_faregate(to_config(config_data)) as faregate:
        await faregate.client.route("a secret prompt", budget_key="team")
    (line,) = _request_lines(caplog)
    assert line["messages"] == [{"role": "user", "content": "a secret prompt"}]
    assert "sk-test-openai" not in caplog.text


async def test_request_logs_and_the_http_port_can_be_turned_off(
    start_faregate: StartFaregate, config_data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config_data["telemetry"] = {"http_listen": "", "request_log": False, "metrics": False}
    async with start_faregate(to_config(config_data)) as faregate:
        await faregate.client.route("hi", budget_key="team")
        assert faregate.running.http_port is None
        assert not faregate.running.telemetry.observing
    assert _request_lines(caplog) == []


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.span_names: list[str] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.span_names.extend(span.name for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_are_exported_over_otlp_when_an_endpoint_is_configured(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    # A collector on a thread pool: the exporter sends from its own thread,
    # and the final flush runs while the event loop waits for it.
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]  # generated, untyped
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        config_data["telemetry"]["otlp_endpoint"] = f"http://127.0.0.1:{port}"
        async with start_faregate(to_config(config_data)) as faregate:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake")
    finally:
        server.stop(None)
    assert "faregate.v1.RouterService/Route" in collector.span_names
    assert "chat gpt-fake" in collector.span_names


async def test_each_worker_serves_its_own_metrics_port_and_says_which(
    redis_state: dict[str, Any], tmp_path: Path
) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["state"] = redis_state
    config["server"]["reload_poll_s"] = 0
    config["models"]["sim-small"]["sim"] = {"first_token_delay_s": 0, "output_tokens": 2}
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_server", "serve", "--config", str(path),
        "--workers", "2", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = process.stderr
    ports: dict[int, int] = {}  # pid -> HTTP port
    both_listening = asyncio.Event()

    async def drain_stderr() -> None:  # request lines go there too: keep the pipe empty
        while line := (await stderr.readline()).decode():
            if match := re.search(r"telemetry HTTP .* on 127\.0\.0\.1:(\d+) \(pid (\d+)\)", line):
                ports[int(match[2])] = int(match[1])
                if len(ports) == 2:
                    both_listening.set()

    draining = asyncio.create_task(drain_stderr())
    try:
        async with asyncio.timeout(20):
            target = (await process.stdout.readline()).decode().split()[-1]
            await both_listening.wait()
        async with FaregateClient(target) as client:
            for _ in range(6):
                await client.route("hi", budget_key="demo")
        served = 0
        for port in ports.values():
            status, text = await _get(port, "/metrics")
            assert status == 200
            served += sum(
                int(float(line.split()[-1]))
                for line in text.splitlines()
                if line.startswith("faregate_requests_total{")
            )
        assert len(set(ports.values())) == 2
        assert served == 6  # every request in exactly one worker's series
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0
        await draining


async def test_spans_carry_the_cache_and_reasoning_parts_of_the_usage(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    upstream.queue(
        Script(
            usage_block={
                "input_tokens": 10,
                "cache_creation_input_tokens": 200,
                "cache_read_input_tokens": 300,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 150,
                    "ephemeral_1h_input_tokens": 50,
                },
                "output_tokens": 12,
                "output_tokens_details": {"thinking_tokens": 5},
            }
        )
    )
    async with (
        start_faregate(to_config(config_data), tracer_provider=provider) as faregate,
        grpc.aio.insecure_channel(faregate.target) as channel,
    ):
        await router_pb2_grpc.RouterServiceStub(channel).Route(
            _route_request(model="claude-fake", max_output_tokens=50)
        )

    named = _by_name(exporter.get_finished_spans())
    (server,) = named["faregate.v1.RouterService/Route"]
    (attempt,) = named["chat claude-fake"]
    for span in (server, attempt):
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.usage.input_tokens"] == 510
        assert attributes["gen_ai.usage.cache_read.input_tokens"] == 300
        assert attributes["gen_ai.usage.cache_creation.input_tokens"] == 200
        assert attributes["faregate.usage.cache_write_1h_input_tokens"] == 50
        assert attributes["faregate.usage.reasoning_tokens"] == 5
