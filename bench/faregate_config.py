"""The config faregate is benchmarked with, written to a file for `faregate serve`.

`bench` is an openai model on the fake upstream, with the `tools`
capability, workers and a waiting room well above the bench's highest
concurrency (64), behind a budget that
cannot run out, so nothing but faregate's own work is measured. State is in
memory, like for like with the pass-through; `sqlite_state` gives the same
config the shipped default backend instead (a ledger file of its own per
faregate: one process writes a ledger). `slow` has a
tiny pool (2 workers, 2 waiting) for the overload measurement; the upstream
delays its answers. The loop-lag guard is off, the rounds saturating the
core on purpose; admission.py measures it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from faregate_server.security.api_keys import format_key_hash

from bench.load import BENCH_BUDGET, BENCH_KEY_HASH, BENCH_MODEL
from bench.upstream import SLOW_MODEL

SLOW_WORKERS = 2
SLOW_QUEUE = 2


def _openai_model(api_base: str, *, workers: int, queue: int) -> dict[str, Any]:
    return {
        "provider": "openai",
        "api_base": api_base,
        "input_usd_per_mtok": 1.00,
        "output_usd_per_mtok": 2.00,
        "context_window_tokens": 32768,
        "max_output_tokens": 1024,
        # The tool-call requests need it; a plain request does not look at it.
        "capabilities": ["tools"],
        "workers": workers,
        "queue": queue,
    }


MEMORY_STATE: dict[str, Any] = {"backend": "memory"}


def sqlite_state(ledger: Path, synchronous: str | None = None) -> dict[str, Any]:
    """The `state` section of the default backend on a ledger file of its own.

    `synchronous` ("full", "normal") is written only when given, so the config
    also suits a faregate from before `state.sqlite_synchronous` (bench/ab.py).
    """
    state: dict[str, Any] = {"backend": "sqlite", "path": str(ledger)}
    if synchronous is not None:
        state["sqlite_synchronous"] = synchronous
    return state


def bench_config(api_base: str, state: Mapping[str, Any] = MEMORY_STATE) -> dict[str, Any]:
    """The config as a YAML-ready mapping; api_base is the upstream's, ending in /v1."""
    return {
        # The rounds saturate the server core on purpose, on a machine that
        # may be busy with other work: the loop-lag guard would refuse some
        # of their calls. It is measured on its own (admission.py).
        "server": {"listen": "127.0.0.1:0", "default_route": BENCH_MODEL, "loop_lag_limit_s": 0},
        "models": {
            BENCH_MODEL: _openai_model(api_base, workers=256, queue=1024),
            SLOW_MODEL: _openai_model(api_base, workers=SLOW_WORKERS, queue=SLOW_QUEUE),
        },
        "budgets": {BENCH_BUDGET: {"limit_usd": 1_000_000, "window": "none"}},
        # Memory by default: like for like with the pass-through, which keeps
        # nothing. The sqlite faregate of the rounds, and state.py, measure
        # what a durable ledger adds.
        "state": dict(state),
        # Every call carries an API key, as in production; the pass-through
        # receives the same metadata and ignores it.
        "auth": {
            "enabled": True,
            "principals": {
                "bench": {
                    "api_keys": [format_key_hash(BENCH_KEY_HASH)],
                    "budgets": [BENCH_BUDGET],
                    "models": [BENCH_MODEL, SLOW_MODEL],
                }
            },
        },
    }


def write_bench_config(path: Path, api_base: str, state: Mapping[str, Any] = MEMORY_STATE) -> Path:
    path.write_text(yaml.safe_dump(bench_config(api_base, state), sort_keys=False))
    return path
