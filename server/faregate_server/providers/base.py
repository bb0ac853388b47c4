"""The provider seam: what every upstream adapter offers, and how it fails.

Adapters never import grpc. They raise `UpstreamError` with a kind the gateway
maps onto faregate's error catalogue; transport failures are translated here,
once, by `translate_transport_errors`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from enum import StrEnum
from typing import Any, Protocol

import aiohttp

from faregate_server.config import ModelConfig
from faregate_server.domain import Completion, StreamEnd, UpstreamRequest

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 3600.0
_ERROR_EXCERPT_BYTES = 300


class UpstreamErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"
    """429: the provider asks us to slow down; retry_after_s is set when it said."""
    UNAVAILABLE = "unavailable"
    """5xx, 529, connection refused or dropped, a malformed answer."""
    STALLED = "stalled"
    """No bytes for longer than the idle timeout, or no connection in time."""
    REJECTED = "rejected"
    """A 4xx that would fail anywhere: the request itself is bad."""
    AUTH_FAILED = "auth_failed"
    """401 or 403: faregate's credentials are wrong."""


class UpstreamError(Exception):
    """An upstream call failed; the message never contains credentials."""

    def __init__(
        self,
        kind: UpstreamErrorKind,
        message: str,
        *,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.http_status = http_status
        self.retry_after_s = retry_after_s


class Provider(Protocol):
    """One upstream model behind one wire protocol."""

    async def complete(self, request: UpstreamRequest) -> Completion:
        """The whole answer at once."""
        ...

    def stream(self, request: UpstreamRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Text chunks as they arrive, then exactly one StreamEnd.

        Consume inside `contextlib.aclosing` so that leaving early closes the
        upstream connection at once.
        """
        ...


class JsonEndpoint:
    """One upstream URL taking JSON POSTs, with a model's connect and idle timeouts.

    Whole answers get no read timeout (the caller's deadline bounds them);
    streams get the model's idle timeout between reads.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: Mapping[str, str],
        model: ModelConfig,
    ) -> None:
        self._session = session
        self._url = url
        self._headers = {"Content-Type": "application/json", **headers}
        self._whole_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=model.connect_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=model.connect_timeout_s, sock_read=model.idle_timeout_s
        )

    async def post(self, body: Mapping[str, Any]) -> Any:
        """POSTs body and returns the decoded JSON answer."""
        async with self._session.post(
            self._url, data=json.dumps(body), headers=self._headers, timeout=self._whole_timeout
        ) as response:
            if response.status != 200:
                raise await error_from_response(response)
            return json.loads(await response.read())

    @asynccontextmanager
    async def open_stream(self, body: Mapping[str, Any]) -> AsyncIterator[aiohttp.ClientResponse]:
        """POSTs body and yields the successful response for reading as it arrives.

        Leaving the block early, cancellation included, closes the connection.
        """
        async with self._session.post(
            self._url, data=json.dumps(body), headers=self._headers, timeout=self._stream_timeout
        ) as response:
            if response.status != 200:
                raise await error_from_response(response)
            yield response


async def error_from_response(response: aiohttp.ClientResponse) -> UpstreamError:
    """Classifies a non-200 upstream answer, keeping a short excerpt of its body."""
    status = response.status
    try:
        body = (await response.content.read(_ERROR_EXCERPT_BYTES)).decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        body = ""
    message = f"upstream answered HTTP {status}: {body}".rstrip(": ")
    retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        kind = UpstreamErrorKind.RATE_LIMITED
    elif status in (401, 403):
        kind = UpstreamErrorKind.AUTH_FAILED
    elif status in (408, 409) or status >= 500:
        kind = UpstreamErrorKind.UNAVAILABLE
    else:
        kind = UpstreamErrorKind.REJECTED
    return UpstreamError(kind, message, http_status=status, retry_after_s=retry_after_s)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds, from delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    # A provider's word is capped: one bad header must not bench a model for days.
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


@contextmanager
def translate_transport_errors() -> Iterator[None]:
    """Turns aiohttp and parsing failures into UpstreamError."""
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError:
        # aiohttp's sock_read and sock_connect timeouts; faregate's own deadline
        # arrives as cancellation instead, so it never lands here.
        raise UpstreamError(UpstreamErrorKind.STALLED, "upstream stalled") from None
    except aiohttp.ClientError as error:
        # Only the class name goes into the message: the reprs of some aiohttp
        # errors carry the request's headers, and with them the API key.
        logger.info("upstream connection failed: %s", type(error).__name__)
        raise UpstreamError(
            UpstreamErrorKind.UNAVAILABLE, f"upstream connection failed ({type(error).__name__})"
        ) from None
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise UpstreamError(
            UpstreamErrorKind.UNAVAILABLE,
            f"upstream sent a malformed answer ({type(error).__name__})",
        ) from None
