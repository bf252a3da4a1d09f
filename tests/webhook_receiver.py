"""A real HTTP receiver on loopback for the webhook tests: records every request and answers
as told (a status, after an optional delay, or not before it is released)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from service.domain.destinations import DestinationPolicy
from service.domain.webhooks import verify

# The receivers listen on loopback: the tests that send to them allow private destinations.
LOOPBACK_ALLOWED = DestinationPolicy(allow_private=True)


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> dict[str, object]:
        decoded: dict[str, object] = msgspec.json.decode(self.body)
        return decoded


Behaviour = Callable[[Received], Awaitable[int]]


async def ok(_: Received) -> int:
    return 200


def answers(*statuses: int, then: int = 200) -> Behaviour:
    """Answer these statuses one request after another, then `then` for ever."""
    queue = list(statuses)

    async def behave(_: Received) -> int:
        return queue.pop(0) if queue else then

    return behave


def sleeps_first(seconds: float, times: int = 1) -> Behaviour:
    """Hold the first `times` requests for `seconds` (past the sender's timeout), then 200."""
    left = [times]

    async def behave(_: Received) -> int:
        if left[0] > 0:
            left[0] -= 1
            await asyncio.sleep(seconds)
        return 200

    return behave


@dataclass
class Receiver:
    url: str = ""
    port: int = 0
    behaviour: Behaviour = ok
    requests: list[Received] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def ids(self) -> list[str]:
        return [request.webhook_id for request in self.requests]

    def verified(self, secret: str, now: int) -> bool:
        """Every request so far carries a valid signature."""
        return all(verify(secret, request.headers, request.body, now) for request in self.requests)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(method, path, headers, body)
            self.requests.append(received)
            status = await self.behaviour(received)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


@contextlib.asynccontextmanager
async def receiver(behaviour: Behaviour = ok, tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 at a free port (with TLS if given a server context),
    for the duration of the block."""
    state = Receiver(behaviour=behaviour)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    state.url = f"{'https' if tls else 'http'}://127.0.0.1:{state.port}/hooks"
    try:
        yield state
    finally:
        server.close()
        for task in list(state._handlers):
            task.cancel()
        await asyncio.gather(*state._handlers, return_exceptions=True)
        await server.wait_closed()


async def delivery_rows(connection: asyncpg.Connection, endpoint_id: str) -> list[dict[str, Any]]:
    """An endpoint's deliveries in event order, as the database holds them."""
    rows = await connection.fetch(
        "SELECT * FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY event_seq", endpoint_id
    )
    return [dict(row) for row in rows]
