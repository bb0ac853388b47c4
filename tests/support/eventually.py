"""Waiting in a test for a condition that offers no event to wait on.

`await eventually(check)` calls `check` until it passes, and returns what the
passing call returned. A check passes when it returns a truthy value; it fails
when it returns a falsy one or raises `AssertionError`. Any other exception is
not a failure to wait out: it propagates at once. When the time is up the last
`AssertionError` is raised again (so pytest shows the check's own assertion),
or, if the last call returned a falsy value, an `AssertionError` naming the
check and that value.

The check may be a plain function or an async one (or any function returning
an awaitable); `timeout_s` bounds the whole wait, an async check's calls
included, so a check that hangs fails the wait instead of the test's timeout.
The check is always called at least once.

Prefer a real event where the code under test offers one: polling is for
counters, files and remote state that change without telling anyone.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
"""Long enough that a loaded CI machine (two cores, several suites at once)
does not fail a wait that takes milliseconds when idle; short enough that a
condition that never comes fails with its own message well inside the 60 s
per-test timeout (pyproject.toml), leaving room for the test's other waits,
its servers' start-up and their drain."""

DEFAULT_INTERVAL_S = 0.01
"""Between checks: short against the waits it serves, long enough that the
polling costs the event loop little."""

_NOTHING = object()  # no call of the check has returned yet


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
) -> T: ...


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> T:
    """Calls `check` every `interval_s` until it passes; returns what it returned.

    Args:
        check: Returns a truthy value once the awaited condition holds; returns
            a falsy value or raises `AssertionError` while it does not.
        timeout_s: How long to keep trying, the checks' own time included.
        interval_s: The pause after each failed check.

    Raises:
        AssertionError: `check` had not passed within `timeout_s`: its last
            `AssertionError`, or one naming the falsy value it last returned.
    """
    last_error: AssertionError | None = None
    last_value: object = _NOTHING
    try:
        async with asyncio.timeout(timeout_s) as scope:
            while True:
                try:
                    result = check()
                    if inspect.isawaitable(result):
                        result = await result
                except AssertionError as failed:
                    last_error = failed
                else:
                    if result:
                        return cast(T, result)
                    last_error, last_value = None, result
                await asyncio.sleep(interval_s)
    except TimeoutError:
        if not scope.expired():
            raise  # the check's own TimeoutError, not the end of the wait
    if last_error is not None:
        raise last_error
    waited = f"waited {timeout_s:g} s for {_describe(check)}"
    if last_value is _NOTHING:
        raise AssertionError(f"{waited}; no call of it returned in that time")
    hint = " (a check passes by returning a truthy value)" if last_value is None else ""
    raise AssertionError(f"{waited}; it last returned {last_value!r}{hint}")


def _describe(check: Callable[[], object]) -> str:
    """The check's name, or for a lambda its source line."""
    name = getattr(check, "__qualname__", repr(check))
    if name.endswith("<lambda>"):
        try:
            return inspect.getsource(check).strip()
        except (OSError, TypeError):
            pass
    return name
