"""The provider seam: what every upstream adapter offers, and how it fails.

Adapters never import grpc. They raise `UpstreamError` with a kind that
`upstream_failure` maps onto faregate's error catalogue; transport failures
are translated here, once, by `translate_transport_errors`.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from contextlib import AbstractContextManager, aclosing, asynccontextmanager
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from faregate_server.config.schema import ModelConfig
from faregate_server.content import AnswerDelta, Feature, GenerationOptions
from faregate_server.domain import Completion, StreamEnd, UpstreamRequest
from faregate_server.errors import (
    FaregateError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamResponseTooLarge,
    UpstreamStalled,
    UpstreamUnavailable,
)
from faregate_server.upstream.providers.json_codec import decode_json, encode_json
from faregate_server.upstream.providers.reading import (
    IdleWatch,
    NoDataTimeout,
    ResponseTooLarge,
    read_capped,
    read_prefix,
)
from faregate_server.upstream.providers.refusals import Refusal
from faregate_server.upstream.providers.sse import SseEvent, iter_sse
from faregate_server.upstream.redaction import Redactor, excerpt

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 3600.0
_ERROR_EXCERPT_CHARS = 300
ERROR_BODY_BYTES = 8 << 10
"""How much of an upstream error body is logged (redacted over the Redactor's
`margin_bytes` more, then cut): redaction runs on the event loop, at up to
1 ms per KiB of crafted text, and an error body's use is its start."""


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
    OVERSIZED = "oversized"
    """The answer, or one event of a stream, is over the model's max_response_bytes."""


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


def failure_reason(error: UpstreamError) -> str:
    """The ErrorInfo reason an upstream failure maps to."""
    return _UPSTREAM_FAILURES[error.kind].reason


def upstream_failure(error: UpstreamError, model: str) -> FaregateError:
    """Maps an upstream failure before any output onto faregate's catalogue."""
    metadata = {"model": model}
    if error.http_status is not None:
        metadata["httpStatus"] = str(error.http_status)
    message = f"model {model!r}: {error.message}"
    if error.kind is UpstreamErrorKind.RATE_LIMITED:
        return UpstreamRateLimited(message, error.retry_after_s, **metadata)
    return _UPSTREAM_FAILURES[error.kind](message, **metadata)


_UPSTREAM_FAILURES: dict[UpstreamErrorKind, type[FaregateError]] = {
    UpstreamErrorKind.RATE_LIMITED: UpstreamRateLimited,
    UpstreamErrorKind.UNAVAILABLE: UpstreamUnavailable,
    UpstreamErrorKind.STALLED: UpstreamStalled,
    UpstreamErrorKind.OVERSIZED: UpstreamResponseTooLarge,
    UpstreamErrorKind.REJECTED: UpstreamRejected,
    UpstreamErrorKind.AUTH_FAILED: UpstreamAuthFailed,
}


ProviderItem = str | AnswerDelta | StreamEnd
"""What a provider stream yields: text as plain `str` (the lean path),
fragments beyond text, then its StreamEnd."""


class Provider(Protocol):
    """One upstream model behind one wire protocol."""

    @property
    def carried_features(self) -> frozenset[Feature]:
        """The request features beyond plain chat this adapter sends upstream:
        a request using another is never sent to it (routing/selection.py
        judges the model unfit), rather than sent without it."""
        ...

    def refusal(
        self, temperature: float | None, options: GenerationOptions | None, max_output_tokens: int
    ) -> Refusal | None:
        """The first thing in a request's generation settings that the
        provider refuses whatever the model (a temperature over its range:
        OpenAI's is 0 to 2, Anthropic's 0 to 1; Anthropic's rules for
        reasoning), or None. A candidate that would refuse is never called:
        routing/selection.py judges it unfit, before any work."""
        ...

    async def complete(self, request: UpstreamRequest) -> Completion:
        """The whole answer at once."""
        ...

    def stream(self, request: UpstreamRequest) -> AsyncGenerator[ProviderItem, None]:
        """Text chunks, and the tool-call, reasoning and refusal fragments
        (AnswerDelta) of an adapter that carries them, as they arrive, then
        exactly one StreamEnd.

        Consume inside `contextlib.aclosing` so that leaving early closes the
        upstream connection at once.
        """
        ...


class JsonEndpoint:
    """One upstream URL taking JSON POSTs, with a model's timeouts and size cap.

    Whole answers must start within the model's first-byte timeout (and not
    go silent for as long between reads); past that the caller's deadline
    bounds them. Streams get the model's idle timeout twice over: between any
    reads (aiohttp's sock_read, which also bounds the wait for the headers)
    and between data events (`IdleWatch`, which keep-alives do not reset).
    A whole answer, and each event of a stream, may hold `max_response_bytes`
    after decompression; a Content-Length over it by more than compression
    can add (0.1 % and 1 KiB) is refused unread.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: Mapping[str, str],
        model: ModelConfig,
        redactor: Redactor,
    ) -> None:
        self._session = session
        self._url = URL(url)  # parsed once: aiohttp parses a str on every request
        self._headers = {"Content-Type": "application/json", **headers}
        self._model_name = model.name
        self._redactor = redactor
        self._max_response_bytes = model.max_response_bytes
        # Compression can add a little: gzip's 18-byte frame and 5 bytes per
        # 64 KiB stored block of an incompressible body, deflate's worst case
        # about 0.03 %.
        self._max_declared_bytes = model.max_response_bytes * 1001 // 1000 + 1024
        self._idle_timeout_s = model.idle_timeout_s
        self._first_byte_timeout_s = model.first_byte_timeout_s
        self._whole_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=model.connect_timeout_s, sock_read=model.first_byte_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=model.connect_timeout_s, sock_read=model.idle_timeout_s
        )

    async def post(self, body: Mapping[str, Any]) -> Any:
        """POSTs body and returns the decoded JSON answer."""
        try:
            async with self._session.post(
                self._url,
                data=encode_json(body),
                headers=self._headers,
                timeout=self._whole_timeout,
            ) as response:
                if response.status != 200:
                    raise await self._error(response)
                self._refuse_declared_oversize(response)
                return decode_json(await read_capped(response.content, self._max_response_bytes))
        except aiohttp.SocketTimeoutError:
            raise NoDataTimeout(
                f"upstream sent nothing for first_byte_timeout_s ({self._first_byte_timeout_s:g} s)"
            ) from None

    @asynccontextmanager
    async def open_stream(
        self, body: Mapping[str, Any], keepalive_events: Collection[str] = ()
    ) -> AsyncIterator[AsyncGenerator[SseEvent, None]]:
        """POSTs body and yields the answer's server-sent events as they arrive.

        Leaving the block early, cancellation included, closes the connection.
        """
        async with self._session.post(
            self._url, data=encode_json(body), headers=self._headers, timeout=self._stream_timeout
        ) as response:
            if response.status != 200:
                raise await self._error(response)
            watch = IdleWatch(response.content, self._idle_timeout_s)
            try:
                events = iter_sse(
                    response.content, watch, self._max_response_bytes, keepalive_events
                )
                async with aclosing(events):
                    yield events
            finally:
                watch.close()

    def _refuse_declared_oversize(self, response: aiohttp.ClientResponse) -> None:
        # Content-Length counts the bytes on the wire, compressed or not. A
        # compressed body can be slightly larger than what it inflates to (an
        # incompressible one), so the refusal waits for the cap plus that
        # slack; within it, the read itself enforces the cap.
        declared = response.content_length
        if declared is not None and declared > self._max_declared_bytes:
            raise ResponseTooLarge(
                f"upstream announced {declared} bytes, over max_response_bytes "
                f"({self._max_response_bytes})"
            )

    async def _error(self, response: aiohttp.ClientResponse) -> UpstreamError:
        return await error_from_response(response, self._redactor, self._model_name)


async def error_from_response(
    response: aiohttp.ClientResponse, redactor: Redactor, model: str
) -> UpstreamError:
    """Classifies a non-200 upstream answer.

    Its body, up to ERROR_BODY_BYTES, is logged redacted (a 429 at INFO, as
    those come in storms; the rest at WARNING); the error's message (which
    callers see) carries a redacted excerpt of it.
    """
    status = response.status
    try:
        raw = await read_prefix(response.content, ERROR_BODY_BYTES + redactor.margin_bytes)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    # Cut where the first ERROR_BODY_BYTES end; a secret the read cut off
    # starts past them. "ignore" drops a character split there.
    kept_chars = len(raw[:ERROR_BODY_BYTES].decode(errors="ignore"))
    body = redactor.redact_head(raw.decode(errors="replace"), kept_chars)
    if body:
        level = logging.INFO if status == 429 else logging.WARNING
        logger.log(level, "model %s: upstream answered HTTP %d: %s", model, status, _escaped(body))
    message = f"upstream answered HTTP {status}: {excerpt(body, _ERROR_EXCERPT_CHARS)}".rstrip(": ")
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


# Control characters (C0, DEL, C1) and Unicode line breaks, as their escapes:
# an upstream's body must not break a log line or forge the next one.
_ESCAPES = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def _escaped(text: str) -> str:
    return text.translate(_ESCAPES)


def error_excerpt(text: str, redactor: Redactor) -> str:
    """What a caller sees of an upstream's error text: its first
    ERROR_BODY_BYTES characters, redacted before they are cut, on one line
    and cut again to a short excerpt."""
    head = redactor.redact_head(text[: ERROR_BODY_BYTES + redactor.margin_bytes], ERROR_BODY_BYTES)
    return excerpt(head, _ERROR_EXCERPT_CHARS)


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


def translate_transport_errors() -> AbstractContextManager[None]:
    """Turns aiohttp and parsing failures inside the block into UpstreamError."""
    return _TRANSPORT_ERRORS


class _TransportErrors:
    """`translate_transport_errors`'s block. A class rather than a
    @contextmanager generator: every upstream call enters one, and a
    generator's setup costs several times this. Holds no state, so one
    instance serves every block at once."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, UpstreamError):
            return
        translated = _transport_error(exc)
        if translated is not None:
            raise translated from None


_TRANSPORT_ERRORS = _TransportErrors()
_MALFORMED = (
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    RecursionError,
    HttpProcessingError,
)
"""An answer of the wrong shape. AttributeError: JSON of the wrong shape
(`.get` on a list or a string); RecursionError: JSON nested past the
decoder's depth; HttpProcessingError: aiohttp refusing what it parsed
(LineTooLong)."""


def _transport_error(error: BaseException) -> UpstreamError | None:
    """The UpstreamError a failure of the transport or of parsing is; None
    for anything else (cancellation, faregate's own errors), which goes on as it is."""
    if isinstance(error, ResponseTooLarge):
        return UpstreamError(UpstreamErrorKind.OVERSIZED, str(error))
    if isinstance(error, NoDataTimeout):
        return UpstreamError(UpstreamErrorKind.STALLED, str(error))
    if isinstance(error, TimeoutError):
        # aiohttp's sock_read and sock_connect timeouts; faregate's own deadline
        # arrives as cancellation instead, so it never lands here.
        return UpstreamError(UpstreamErrorKind.STALLED, "upstream stalled")
    if isinstance(error, aiohttp.ClientError):
        # Only the class name goes into the message: the reprs of some aiohttp
        # errors carry the request's headers, and with them the API key.
        logger.info("upstream connection failed: %s", type(error).__name__)
        return UpstreamError(
            UpstreamErrorKind.UNAVAILABLE, f"upstream connection failed ({type(error).__name__})"
        )
    if isinstance(error, _MALFORMED):
        return UpstreamError(
            UpstreamErrorKind.UNAVAILABLE,
            f"upstream sent a malformed answer ({type(error).__name__})",
        )
    return None
