"""A webhook receiver on 127.0.0.1: records each POST, answers a scripted status,
and can hold requests at a gate to play a receiver that hangs."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from typing import Any

from aiohttp import web


class FakeWebhook:
    def __init__(self) -> None:
        self.bodies: list[Any] = []
        """Every POST's JSON body, in arrival order (failed ones included)."""
        self.statuses: deque[int] = deque()
        """Answers for the next POSTs, in order; 200 once they run out."""
        self.gate: asyncio.Event | None = None
        """While set to an unset event, each POST waits for it (a receiver that hangs)."""
        self.entered = asyncio.Event()
        """Set when a POST has arrived (before any gate)."""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, listener).start()
        port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def aclose(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        status = self.statuses.popleft() if self.statuses else 200
        return web.Response(status=status)
