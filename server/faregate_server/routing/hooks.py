"""What the core path tells telemetry about the whole server, as a protocol.

Routing never imports telemetry: it calls these hooks, and telemetry
(telemetry/observation.py) implements them. They trace the steps worth a span
(selection, each budget reservation, each wait for a worker slot, each
upstream attempt) and count what the core alone can see (answers whose usage
was not believed, charges past their reservation, streams cut at their
reserved output). What one request did travels separately, in its
`CallScope` (scope.py).

`NO_HOOKS` does nothing, at the cost of a method call per hook: for parts
built outside a server (benches, unit tests).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Protocol

from faregate_server.domain import ImplausibleUsage, ReportedUsage

if TYPE_CHECKING:
    from faregate_server.upstream.catalog import Deployment
    from faregate_server.upstream.providers import UpstreamError


class AttemptSpan(Protocol):
    """One upstream attempt, as telemetry follows it."""

    def activate(self) -> object:
        """Makes the attempt current while its request is sent; returns a token."""
        ...

    def deactivate(self, token: object) -> None: ...

    def succeeded(self, usage: ReportedUsage) -> None: ...

    def failed(self, error: UpstreamError) -> None: ...

    def abandoned(self) -> None:
        """Ended without a verdict: a lost hedge, a caller gone."""
        ...


class Hooks(Protocol):
    def span(self, name: str, model: str = "") -> AbstractContextManager[object]:
        """A leaf span for the block (or a shared no-op)."""
        ...

    def pool_wait(self, deployment: Deployment) -> AbstractContextManager[object] | None:
        """A span for the wait for one of the deployment's worker slots; None
        when nothing is traced, so the slot is taken with no wrapper at all."""
        ...

    def attempt(self, deployment: Deployment) -> AttemptSpan:
        """Follows one upstream attempt on the deployment."""
        ...

    def implausible_usage(self, deployment: Deployment, usage: ImplausibleUsage) -> None:
        """An upstream answer whose reported usage was not believed."""
        ...

    def overrun(self, deployment: Deployment, overrun_nano_usd: int) -> None:
        """A request charged `overrun_nano_usd` past its reservation."""
        ...

    def stream_cut(self, deployment: Deployment) -> None:
        """A stream cut when its delivered output reached its reserved output."""
        ...


_NO_SPAN: AbstractContextManager[object] = nullcontext()


class _NoAttempt:
    __slots__ = ()

    def activate(self) -> object:
        return None

    def deactivate(self, token: object) -> None:
        pass

    def succeeded(self, usage: ReportedUsage) -> None:
        pass

    def failed(self, error: UpstreamError) -> None:
        pass

    def abandoned(self) -> None:
        pass


_NO_ATTEMPT = _NoAttempt()


class _NoHooks:
    __slots__ = ()

    def span(self, name: str, model: str = "") -> AbstractContextManager[object]:
        return _NO_SPAN

    def pool_wait(self, deployment: Deployment) -> AbstractContextManager[object] | None:
        return None

    def attempt(self, deployment: Deployment) -> AttemptSpan:
        return _NO_ATTEMPT

    def implausible_usage(self, deployment: Deployment, usage: ImplausibleUsage) -> None:
        pass

    def overrun(self, deployment: Deployment, overrun_nano_usd: int) -> None:
        pass

    def stream_cut(self, deployment: Deployment) -> None:
        pass


NO_HOOKS: Hooks = _NoHooks()
"""Traces and counts nothing."""
