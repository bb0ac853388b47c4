"""Each principal's own request rate and concurrent-request cap.

They keep one agent's batch from taking every worker-pool slot and every
queue place from the others. The counts are per replica: N replicas let a
principal through at N times its rate, which is what an operator sizing a
fleet expects of a local limiter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from faregate_server.clock import Clock
from faregate_server.config.schema import PrincipalConfig
from faregate_server.errors import PrincipalConcurrencyLimited, PrincipalRateLimited

# A full principal can't know when a slot frees; suggest a short wait.
_CONCURRENCY_RETRY_S = 0.5


@dataclass(slots=True)
class _Tally:
    tokens: float
    refilled_s: float
    open: int = 0


class Admission:
    """One admitted request: leaving frees its concurrent-request slot."""

    __slots__ = ("_tally",)

    def __init__(self, tally: _Tally | None) -> None:
        self._tally = tally

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._tally is not None:
            self._tally.open -= 1


_UNLIMITED = Admission(None)


class PrincipalLimits:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tallies: dict[str, _Tally] = {}

    def reconfigure(self, principals: Mapping[str, PrincipalConfig]) -> None:
        """Forgets removed principals; kept ones keep their counts."""
        for name in self._tallies.keys() - principals.keys():
            del self._tallies[name]

    def admit(self, principal: PrincipalConfig) -> Admission:
        """Takes one request from the principal's rate and one concurrent slot.

        Raises:
            PrincipalRateLimited: its token bucket is empty.
            PrincipalConcurrencyLimited: it has `max_concurrent` requests open.
        """
        if not principal.requests_per_s and not principal.max_concurrent:
            return _UNLIMITED
        now_s = self._clock.monotonic_s()
        tally = self._tallies.get(principal.name)
        if tally is None:
            tally = self._tallies[principal.name] = _Tally(principal.burst, now_s)
        if principal.max_concurrent and tally.open >= principal.max_concurrent:
            raise PrincipalConcurrencyLimited(principal.name, _CONCURRENCY_RETRY_S)
        if principal.requests_per_s:
            elapsed_s = now_s - tally.refilled_s
            tally.tokens = min(principal.burst, tally.tokens + elapsed_s * principal.requests_per_s)
            tally.refilled_s = now_s
            if tally.tokens < 1:
                raise PrincipalRateLimited(
                    principal.name, (1 - tally.tokens) / principal.requests_per_s
                )
            tally.tokens -= 1
        tally.open += 1
        return Admission(tally)
