"""A stream's running count and its check against a cap: exact at the cap,
whichever counter, and never counting more than it must."""

from __future__ import annotations

import pytest
from faregate_server.upstream.tokens import (
    EstimatingCounter,
    RunningCount,
    TiktokenCounter,
    TokenCounter,
)

COUNTERS = [TiktokenCounter(), EstimatingCounter()]


def _settled_now(count: RunningCount, counter: TokenCounter) -> int:
    """What `count.tokens()` would say now, without disturbing its batch."""
    twin = RunningCount(counter)
    for name in ("_tokens", "_batch_chars", "chunks"):
        setattr(twin, name, getattr(count, name))
    twin._batch = list(count._batch)
    return twin.tokens()


@pytest.mark.parametrize("counter", COUNTERS, ids=lambda counter: counter.name)
@pytest.mark.parametrize("chunk", [" w", " hello", "", " 日本語", " " + "x" * 50])
def test_the_cap_is_reached_exactly_when_the_count_reaches_it(
    counter: TokenCounter, chunk: str
) -> None:
    cap = 40
    delivered = RunningCount(counter)
    for _ in range(200):
        settled = _settled_now(delivered, counter)
        reached = delivered.reached(cap)
        assert reached == (settled >= cap)
        if reached:
            break
        delivered.add(chunk)
    assert delivered.reached(cap)
    assert delivered.tokens() >= cap


def test_far_from_the_cap_nothing_is_counted() -> None:
    # The check costs comparisons only while the text could not reach the cap.
    delivered = RunningCount(TiktokenCounter())
    for _ in range(10):
        delivered.add(" hello")
    assert not delivered.reached(1_000)
    assert delivered._batch_chars == 60  # still a batch: not counted yet
