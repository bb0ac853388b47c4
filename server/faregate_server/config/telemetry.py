"""The `telemetry` section: traces, metrics and request logs (read at startup only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from faregate_server.config.fields import (
    SECTION,
    Address,
    Boolean,
    Fraction,
    HttpUrl,
    Integer,
    Number,
    Text,
)


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Traces, metrics and request logs; read at startup (a reload leaves them as they are)."""

    __pydantic_config__ = SECTION

    http_listen: Annotated[str, Address(optional=True)] = "127.0.0.1:9464"
    """host:port of the plain-HTTP admin server (/metrics, /healthz, /readyz);
    empty turns it off."""
    metrics: Annotated[bool, Boolean()] = True
    """Record OpenTelemetry metrics (scraped at /metrics)."""
    budget_labels: Annotated[bool, Boolean()] = False
    """Label metrics with budget keys, and export each budget's remaining money.
    Off by default: one series per budget key can be many series."""
    otlp_endpoint: Annotated[str, Text(starts=("http://", "https://"), empty_ok=True)] = ""
    """Where to export traces over OTLP/gRPC (e.g. http://127.0.0.1:4317); empty
    turns tracing off."""
    trace_sample_ratio: Annotated[float, Fraction()] = 1.0
    """Share of new traces (no sampled parent) that are recorded, 0 to 1."""
    request_log: Annotated[bool, Boolean()] = True
    """Write one JSON line per request on the `faregate.requests` logger."""
    log_prompts: Annotated[bool, Boolean()] = False
    """Put each request's messages into its log line (they may hold secrets)."""
    alert_webhook_url: Annotated[str, HttpUrl(optional=True)] = ""
    """Where each budget alert is POSTed as JSON (http:// or https://); empty: alerts
    are logged and counted only. Never logged: it may carry a token."""
    alert_webhook_timeout_s: Annotated[float, Number(0.1, 60)] = 5.0
    """How long one POST of an alert may take, connecting included."""
    alert_webhook_attempts: Annotated[int, Integer(1, 10)] = 4
    """POSTs of one alert before it is given up (counted), with backoff between."""
