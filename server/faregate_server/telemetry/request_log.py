"""One JSON line per request, success or failure, on the `faregate.requests` logger.

Fields: ts (Unix seconds), rpc, request_id, trace_id, agent, principal,
budget_keys, route, model, provider, attempts, input_tokens, output_tokens,
cached_input_tokens, cache_write_input_tokens, cache_write_1h_input_tokens and
reasoning_tokens (parts of the input and output, as faregate.v1's Usage
counts them), cost_nano_usd, latency_ms, outcome (the gRPC status code name) and reason
(faregate's ErrorInfo reason, empty on success). The prompt (`messages`) is
added only when the operator set `telemetry.log_prompts`; API keys never
appear, since no field is built from headers or provider settings.

Where the lines go: by default to the logger, as records, so an embedding
application (or a test) routes them as it routes any log. Given a
`LineSink`, as `faregate serve` gives each server a `LineWriter` on stderr
(built by the composition root, app.py, and closed with the server), each
line is instead handed to it as bytes, without logging's record machinery,
and written by the writer's thread, so a slow reader of stderr holds up the
log, never the event loop (and, past the writer's bound, loses lines,
counted).

The line is built only when it goes somewhere, with one orjson encoding of
a flat dict: the cost of a request log is a few microseconds. It is compact
JSON (`{"ts":1795000000.1,"rpc":"Route",...}`), non-ASCII text as UTF-8.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from faregate_server.telemetry.request_observation import RequestObservation

LOGGER_NAME = "faregate.requests"
logger = logging.getLogger(LOGGER_NAME)
# For what orjson refuses (a lone surrogate, say from a config's escape); in
# the same compact form. Built once: json.dumps with options builds one per call.
_encode_slowly = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class LineSink(Protocol):
    """Takes request lines as bytes (a `LineWriter`, under `faregate serve`)."""

    def write(self, line: bytes) -> None:
        """One line, its newline included; must not wait for a slow reader."""
        ...


class RequestLog:
    def __init__(
        self,
        log_prompts: bool,
        now_s: Callable[[], float] = time.time,
        lines: LineSink | None = None,
    ) -> None:
        """`now_s`: the wall clock that dates each line (`ts`); `lines`: where
        the lines go as bytes, or None for the `faregate.requests` logger."""
        self._log_prompts = log_prompts
        self._now_s = now_s
        self._lines = lines

    def write(self, observation: RequestObservation, latency_s: float) -> None:
        writer = self._lines
        if writer is None and not logger.isEnabledFor(logging.INFO):
            return
        call = observation.call
        usage = observation.usage
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
            "cached_input_tokens": usage.cached_input_tokens if usage else 0,
            "cache_write_input_tokens": usage.cache_write_input_tokens if usage else 0,
            "cache_write_1h_input_tokens": usage.cache_write_1h_input_tokens if usage else 0,
            "reasoning_tokens": usage.reasoning_tokens if usage else 0,
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
        if writer is not None:
            writer.write(_line_bytes(line))
            return
        # makeRecord and handle, as logger.info would, minus its stack walk
        # for a caller's file and line that this line does not show.
        logger.handle(
            logger.makeRecord(LOGGER_NAME, logging.INFO, __file__, 0, _line_text(line), (), None)
        )


def _line_bytes(line: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # As stderr would write it: the lone surrogate escaped.
        return f"{_encode_slowly(line)}\n".encode(errors="backslashreplace")


def _line_text(line: dict[str, Any]) -> str:
    try:
        return orjson.dumps(line).decode()
    except orjson.JSONEncodeError:
        return _encode_slowly(line)
