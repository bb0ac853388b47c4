"""One JSON line per request, success or failure, on the `faregate.requests` logger.

Fields: ts (Unix seconds), rpc, request_id, trace_id, agent, principal,
budget_keys, route, model, provider, attempts, input_tokens, output_tokens,
cost_nano_usd, latency_ms, outcome (the gRPC status code name) and reason
(faregate's ErrorInfo reason, empty on success). The prompt (`messages`) is
added only when the operator set `telemetry.log_prompts`; API keys never
appear, since no field is built from headers or provider settings.

The line is built only when the logger would emit it, with one `json.dumps`
of a flat dict: the cost of a request log is a few microseconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faregate_server.telemetry.request_observation import RequestObservation

LOGGER_NAME = "faregate.requests"
logger = logging.getLogger(LOGGER_NAME)
# One encoder, built once: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


class RequestLog:
    def __init__(self, log_prompts: bool, now_s: Callable[[], float] = time.time) -> None:
        """`now_s`: the wall clock that dates each line (`ts`)."""
        self._log_prompts = log_prompts
        self._now_s = now_s

    def write(self, observation: RequestObservation, latency_s: float) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        call = observation.call
        line: dict[str, Any] = {
            "ts": self._now_s(),
            "rpc": observation.method,
            "request_id": observation.request_id,
            "trace_id": observation.trace_id,
            "agent": call.agent if call else "",
            "principal": call.principal if call else "",
            "budget_keys": call.budget_keys if call else (),
            "route": observation.route,
            "model": observation.model,
            "provider": observation.provider,
            "attempts": len(observation.records),
            "input_tokens": observation.input_tokens,
            "output_tokens": observation.output_tokens,
            "cost_nano_usd": observation.cost_nano_usd,
            "latency_ms": latency_s * 1000,
            "outcome": observation.code,
            "reason": observation.reason,
        }
        if self._log_prompts and call is not None:
            line["messages"] = [
                {"role": message.role.value, "content": message.content}
                for message in call.messages
            ]
        # makeRecord and handle, as logger.info would, minus its stack walk
        # for a caller's file and line that this line does not show.
        logger.handle(
            logger.makeRecord(LOGGER_NAME, logging.INFO, __file__, 0, _encode(line), (), None)
        )
