"""Processes starting at once on a server without the database (two `serve`s on a fresh data
directory, `serve` and `migrate`) each create it if missing: one creates it, the others use it."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from service.config import Settings
from service.db.embedded import start_embedded, with_database
from service.db.engine import ensure_database


async def test_concurrent_starts_on_a_server_without_the_database_all_get_it(settings: Settings) -> None:
    if settings.database_url:
        server_dsn = with_database(settings.database_url, "postgres")
    else:
        server_dsn = start_embedded(settings.pgdata)
    name = f"loyalty_race_{os.getpid()}"
    try:
        for _ in range(3):  # the race is narrow: a few rounds
            dsns = await asyncio.gather(*(ensure_database(server_dsn, name) for _ in range(4)))
            assert set(dsns) == {with_database(server_dsn, name)}
            connection = await asyncpg.connect(server_dsn)
            try:
                await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await connection.close()
    finally:
        connection = await asyncpg.connect(server_dsn)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
