"""`faregate export-spend`: the spend ledger as JSON lines, from any backend."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from faregate_server.clock import SystemClock
from faregate_server.config.schema import Config, StateBackend
from faregate_server.state.opening import open_state

_PAGE = 1000


async def export_spend(config: Config, budget_key: str, agent: str, out: TextIO) -> None:
    """Writes every ledger record (filtered when asked), newest first, one per line.

    Safe beside running servers: it opens an SQLite ledger as a reader (no
    writer lock; WAL readers don't block the writer), and a Redis export only
    reads the ledger stream.
    """
    if config.state.backend is StateBackend.MEMORY:
        print("faregate: the memory backend keeps no ledger to export", file=sys.stderr)
        return
    state = await open_state(config, SystemClock(), writer=False)
    try:
        before = None
        while True:
            page = await state.spend(budget_key, agent, _PAGE, before)
            for _, record in page:
                out.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
            if len(page) < _PAGE:
                return
            before = page[-1][0]
    finally:
        await state.aclose()
