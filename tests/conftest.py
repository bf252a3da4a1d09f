"""Shared fixtures: a freshly migrated PostgreSQL database, the app, and a program per test.

Each test gets its own program (the tenant), so tests are isolated by the same boundary
that isolates shops from each other, and ledger writes really commit (deferred triggers run).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from litestar import Litestar

from service.app import create_app
from service.config import Settings, load_settings
from service.db.embedded import start_embedded, with_database
from service.db.engine import close_pool, start_pool
from service.db.migrate import migrate
from service.db.piccolo_conf import DB
from service.domain.access import Scope
from service.domain.clock import ManualClock
from service.domain.programs import ProgramSettings
from service.usecases.group_commit import close_batchers
from service.usecases.programs import create_api_key, create_program, create_shop

TEST_DATABASE = f"loyalty_test_{os.getpid()}"  # one per session: parallel sessions never collide


async def _fresh_database(settings: Settings) -> tuple[str, str]:
    """Drop and recreate the test database; return (server dsn, test dsn)."""
    server_dsn = settings.database_url or start_embedded(settings.pgdata)
    if settings.database_url:
        server_dsn = with_database(server_dsn, "postgres")
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
    finally:
        await connection.close()
    return server_dsn, with_database(server_dsn, TEST_DATABASE)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[str]:
    """DSN of a migrated test database, with the app's pool open on it."""
    server_dsn, dsn = await _fresh_database(settings)
    DB.configure({"dsn": dsn})
    await migrate()
    await start_pool(dsn, settings)
    yield dsn
    await close_batchers()
    await close_pool()
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
async def owner_connection(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the database owner (not the app role), for inspecting tables."""
    connection = await asyncpg.connect(database)
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC))


@pytest.fixture(autouse=True)
def _reset_clock(clock: ManualClock) -> None:
    clock.set(datetime.now(UTC))


@pytest.fixture(scope="session")
def app(settings: Settings, database: str, clock: ManualClock) -> Litestar:
    return create_app(settings, database, clock=clock)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass
class ProgramFixture:
    """A program of its own for one test, with a shop and one key per scope."""

    id: str
    shop_id: str
    keys: dict[str, str]

    def auth(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


async def make_program(
    name: str = "Test program", time_zone: str = "Europe/Amsterdam", point_value_minor: int = 1
) -> ProgramFixture:
    settings = ProgramSettings(name=name, time_zone=time_zone, point_value_minor=point_value_minor)
    program = await create_program(settings)
    shop = await create_shop(program.id, "Test shop")
    keys = {
        scope.value: (await create_api_key(program.id, scope.value, scope)).key
        for scope in (Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)
    }
    return ProgramFixture(id=program.id, shop_id=shop.id, keys=keys)


@pytest.fixture
async def program(database: str) -> ProgramFixture:
    return await make_program()


@pytest.fixture
async def other_program(database: str) -> ProgramFixture:
    return await make_program("Other program")


def pytest_report_header() -> str:
    return f"database: {'DATABASE_URL' if os.environ.get('DATABASE_URL') else 'embedded PostgreSQL'}"
