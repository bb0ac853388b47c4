"""eventually(): passes, retries, gives up with the check's own assertion.

No test here measures time: each counts the check's calls, and those that give
up do so after a few milliseconds.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.eventually import eventually

GIVE_UP_S = 0.05  # for checks that never pass


class Counter:
    """A check's calls, counted."""

    def __init__(self) -> None:
        self.calls = 0

    def tick(self) -> int:
        self.calls += 1
        return self.calls


async def test_a_check_that_passes_at_once_is_called_once_and_its_value_returned() -> None:
    counter = Counter()

    value = await eventually(lambda: counter.tick() and "ready")

    assert value == "ready"
    assert counter.calls == 1


async def test_a_check_is_called_until_it_passes_and_the_passing_value_returned() -> None:
    counter = Counter()

    def third_time() -> int:
        calls = counter.tick()
        return calls if calls == 3 else 0

    assert await eventually(third_time, interval_s=0) == 3
    assert counter.calls == 3


async def test_a_check_raising_assertion_error_is_retried_until_it_passes() -> None:
    counter = Counter()

    def third_time() -> bool:
        assert counter.tick() == 3
        return True

    assert await eventually(third_time, interval_s=0) is True
    assert counter.calls == 3


async def test_giving_up_reraises_the_last_assertion_of_the_check() -> None:
    counter = Counter()

    def never() -> bool:
        raise AssertionError(f"call {counter.tick()}")

    with pytest.raises(AssertionError) as caught:
        await eventually(never, timeout_s=GIVE_UP_S, interval_s=0.001)

    assert counter.calls >= 1
    assert str(caught.value) == f"call {counter.calls}"


async def test_giving_up_on_a_falsy_value_names_the_check_and_the_value() -> None:
    def empty_queue() -> list[int]:
        return []

    with pytest.raises(AssertionError) as caught:
        await eventually(empty_queue, timeout_s=GIVE_UP_S)

    assert str(caught.value) == (
        f"waited {GIVE_UP_S:g} s for"
        " test_giving_up_on_a_falsy_value_names_the_check_and_the_value.<locals>.empty_queue;"
        " it last returned []"
    )


async def test_giving_up_on_a_lambda_shows_its_source() -> None:
    with pytest.raises(AssertionError) as caught:
        await eventually(lambda: 1 + 1 == 3, timeout_s=GIVE_UP_S)

    assert "lambda: 1 + 1 == 3" in str(caught.value)
    assert "it last returned False" in str(caught.value)


async def test_a_check_that_returns_none_is_told_a_pass_needs_a_truthy_value() -> None:
    def asserts_only() -> None:
        pass

    with pytest.raises(AssertionError, match=r"returned None \(a check passes by returning"):
        await eventually(asserts_only, timeout_s=GIVE_UP_S)


async def test_an_async_check_is_awaited_until_it_passes() -> None:
    counter = Counter()

    async def third_time() -> str:
        await asyncio.sleep(0)
        assert counter.tick() == 3
        return "done"

    value: str = await eventually(third_time, interval_s=0)

    assert value == "done"
    assert counter.calls == 3


async def test_a_lambda_returning_a_coroutine_is_awaited() -> None:
    counter = Counter()

    async def calls() -> int:
        return counter.tick()

    assert await eventually(lambda: calls(), interval_s=0) == 1


async def test_giving_up_on_an_async_check_reraises_its_last_assertion() -> None:
    counter = Counter()

    async def never() -> bool:
        raise AssertionError(f"call {counter.tick()}")

    with pytest.raises(AssertionError) as caught:
        await eventually(never, timeout_s=GIVE_UP_S, interval_s=0.001)

    assert str(caught.value) == f"call {counter.calls}"


async def test_an_async_check_that_hangs_fails_the_wait_when_the_time_is_up() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    with pytest.raises(AssertionError, match="no call of it returned in that time"):
        await eventually(hangs, timeout_s=GIVE_UP_S)


async def test_an_exception_other_than_assertion_error_propagates_at_once() -> None:
    counter = Counter()

    def broken() -> bool:
        counter.tick()
        raise LookupError("not a failed check")

    with pytest.raises(LookupError):
        await eventually(broken)
    assert counter.calls == 1


async def test_a_timeout_raised_by_the_check_itself_propagates_at_once() -> None:
    counter = Counter()

    async def times_out() -> bool:
        counter.tick()
        raise TimeoutError("the check's own")

    with pytest.raises(TimeoutError, match="the check's own"):
        await eventually(times_out)
    assert counter.calls == 1


async def test_the_check_is_called_once_even_with_no_time_to_wait() -> None:
    counter = Counter()

    assert await eventually(counter.tick, timeout_s=0) == 1
    assert counter.calls == 1
