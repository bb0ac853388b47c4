"""The core path: plan, hold a pool slot, call the provider, settle the money.

Settlement rules, for every way a request can end:
- success: commit the provider-reported cost (or, without reported usage, the
  cost of the counted input and the counted delivered output);
- failure or cancellation before any output reached the caller: release the
  reservation whole, nothing is charged;
- failure or cancellation after output reached the caller: commit the counted
  input and delivered output, never more than was reserved.
A reservation is always either committed or released, whatever interrupts
the request, so the reserved total returns to zero.

The caller's deadline is enforced by the servicer around these calls; here it
arrives as cancellation, which settles like any other interruption.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from faregate_server.budgets import BudgetStore
from faregate_server.domain import (
    RouteCall,
    RouteResult,
    StreamEnd,
    StreamFinished,
    StreamStarted,
    Usage,
)
from faregate_server.errors import (
    FaregateError,
    StreamInterrupted,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamStalled,
    UpstreamUnavailable,
)
from faregate_server.planner import Plan, Planner
from faregate_server.providers import UpstreamError, UpstreamErrorKind

# Retry-After to suggest when a provider said 429 without one.
_DEFAULT_RATE_LIMIT_RETRY_S = 1.0


class Gateway:
    """Serves validated requests; knows nothing of gRPC."""

    def __init__(self, planner: Planner, budgets: BudgetStore) -> None:
        self._planner = planner
        self._budgets = budgets

    async def route(self, call: RouteCall) -> RouteResult:
        """Serves one request whole."""
        plan = await self._planner.plan(call)
        deployment = plan.deployment
        try:
            async with deployment.pool.slot():
                completion = await deployment.provider.complete(plan.upstream_request)
        except BaseException as error:
            await self._budgets.release(plan.reservation)
            if isinstance(error, UpstreamError):
                raise upstream_failure(error, deployment.name) from None
            raise
        usage = completion.usage or Usage(
            plan.input_tokens_estimate, deployment.counter.count_text(completion.text)
        )
        cost = deployment.config.price.cost_nano_usd(usage.input_tokens, usage.output_tokens)
        remaining = await self._budgets.commit(plan.reservation, cost)
        return RouteResult(
            output=completion.text,
            finish_reason=completion.finish_reason,
            usage=usage,
            cost_nano_usd=cost,
            reserved_nano_usd=plan.reservation.amount_nano_usd,
            budget_remaining_nano_usd=remaining,
            model_used=deployment.name,
            provider=deployment.config.provider.value,
            request_id=plan.request_id,
        )

    async def stream(
        self, call: RouteCall
    ) -> AsyncGenerator[StreamStarted | str | StreamFinished, None]:
        """Serves one request as a StreamStarted, text chunks, then a StreamFinished.

        Consume inside `contextlib.aclosing`: closing early settles the delivered part.
        """
        plan = await self._planner.plan(call)
        deployment = plan.deployment
        delivered: list[str] = []
        settled = False
        try:
            async with deployment.pool.slot():
                yield StreamStarted(
                    model_used=deployment.name,
                    provider=deployment.config.provider.value,
                    request_id=plan.request_id,
                    reserved_nano_usd=plan.reservation.amount_nano_usd,
                )
                end: StreamEnd | None = None
                async with aclosing(deployment.provider.stream(plan.upstream_request)) as chunks:
                    async for chunk in chunks:
                        if isinstance(chunk, str):
                            delivered.append(chunk)
                            yield chunk
                        else:
                            end = chunk
            assert end is not None, "a provider stream ends with StreamEnd"
            usage = end.usage or self._counted_usage(plan, delivered)
            cost = deployment.config.price.cost_nano_usd(usage.input_tokens, usage.output_tokens)
            remaining = await self._budgets.commit(plan.reservation, cost)
            settled = True
            yield StreamFinished(
                usage=usage,
                cost_nano_usd=cost,
                budget_remaining_nano_usd=remaining,
                finish_reason=end.finish_reason,
            )
        except UpstreamError as error:
            if delivered:
                raise StreamInterrupted(
                    f"the upstream failed after output was delivered: {error.message}",
                    model=deployment.name,
                ) from None
            raise upstream_failure(error, deployment.name) from None
        finally:
            if not settled:
                await self._settle_interrupted(plan, delivered)

    async def _settle_interrupted(self, plan: Plan, delivered: Sequence[str]) -> None:
        if not delivered:
            await self._budgets.release(plan.reservation)
            return
        usage = self._counted_usage(plan, delivered)
        price = plan.deployment.config.price
        cost = price.cost_nano_usd(usage.input_tokens, usage.output_tokens)
        await self._budgets.commit(plan.reservation, min(cost, plan.reservation.amount_nano_usd))

    @staticmethod
    def _counted_usage(plan: Plan, delivered: Sequence[str]) -> Usage:
        output_tokens = plan.deployment.counter.count_text("".join(delivered))
        # A chunk is at least one token even when the counter says less.
        return Usage(plan.input_tokens_estimate, max(output_tokens, len(delivered)))


def upstream_failure(error: UpstreamError, model: str) -> FaregateError:
    """Maps an upstream failure before any output onto faregate's catalogue."""
    metadata = {"model": model}
    if error.http_status is not None:
        metadata["httpStatus"] = str(error.http_status)
    message = f"model {model!r}: {error.message}"
    if error.kind is UpstreamErrorKind.RATE_LIMITED:
        retry_after_s = error.retry_after_s
        if retry_after_s is None:
            retry_after_s = _DEFAULT_RATE_LIMIT_RETRY_S
        return UpstreamRateLimited(message, retry_after_s, **metadata)
    if error.kind is UpstreamErrorKind.STALLED:
        return UpstreamStalled(message, **metadata)
    if error.kind is UpstreamErrorKind.REJECTED:
        return UpstreamRejected(message, **metadata)
    if error.kind is UpstreamErrorKind.AUTH_FAILED:
        return UpstreamAuthFailed(message, **metadata)
    return UpstreamUnavailable(message, **metadata)
