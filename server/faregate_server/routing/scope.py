"""The per-call scope: what one call carries through the core, in its arguments.

A `CallScope` is made once per RPC by the door that received it and passed
down explicitly (gateway → settlement), never found through a context
variable:
- `deadline_s`: when the call must be done, on the event loop's clock (the one
  `asyncio.timeout_at` reads); the door enforces it, the core only bounds
  retry backoffs by it;
- `observer`: the call's record for telemetry, told what was planned, who
  served, when the first output went out and what was charged;
- `on_commit`: called at the call's commit point, before its spend is
  written, so a graceful shutdown lets it finish (rpc/drain.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from faregate_server.domain import AttemptRecord, RoutingDecision, Usage

if TYPE_CHECKING:
    from faregate_server.upstream.catalog import Deployment


class RequestObserver(Protocol):
    """What the core tells the record of one call (telemetry implements it)."""

    def planned(
        self, request_id: str, route: str, first: Deployment, records: Sequence[AttemptRecord]
    ) -> None:
        """The request's id and route, its first choice, and its attempt
        records, a list that grows as attempts end."""
        ...

    def served(self, decision: RoutingDecision) -> None:
        """Who serves the request, after any fallback, and every attempt made."""
        ...

    def first_output(self) -> None:
        """The first output is going out to the caller."""
        ...

    def settled(self, usage: Usage, cost_nano_usd: int) -> None:
        """What the request was charged."""
        ...


class Unobserved:
    """Records nothing (the observer of a call nobody observes)."""

    __slots__ = ()

    def planned(
        self, request_id: str, route: str, first: Deployment, records: Sequence[AttemptRecord]
    ) -> None:
        pass

    def served(self, decision: RoutingDecision) -> None:
        pass

    def first_output(self) -> None:
        pass

    def settled(self, usage: Usage, cost_nano_usd: int) -> None:
        pass


NO_OBSERVER: RequestObserver = Unobserved()
"""Records nothing."""


def _no_commit_hook() -> None:
    pass


@dataclass(frozen=True, slots=True)
class CallScope:
    deadline_s: float
    """When the call must be done, on the event loop's clock."""
    observer: RequestObserver = NO_OBSERVER
    on_commit: Callable[[], None] = _no_commit_hook
    """Called at the commit point, before the spend is written; it must not
    suspend or fail."""

    @classmethod
    def unobserved(cls, deadline_s: float) -> CallScope:
        """A scope of only a deadline: nothing observes the call and no drain
        tracks it (a caller of the gateway with no door, such as a benchmark)."""
        return cls(deadline_s)
