"""The demo program a fresh `serve` seeds, so the API can be tried at once."""

from __future__ import annotations

import asyncpg
import msgspec

from service.db.tables import Program
from service.domain.access import Scope
from service.domain.programs import CreatedApiKey, ProgramSettings, Shop
from service.domain.programs import Program as ProgramRecord
from service.usecases.programs import create_api_key, create_program, create_shop

DEMO_PROGRAM_ID = "prg_demo"


class DemoProgram(msgspec.Struct, frozen=True):
    program_id: str
    shop: Shop
    keys: list[CreatedApiKey]


async def seed_demo() -> DemoProgram | None:
    """Create the demo program with a shop and one key per scope; None if it exists already."""
    if await Program.exists().where(Program.id == DEMO_PROGRAM_ID).run():
        return None
    try:
        program = await _create_demo_program()
    except asyncpg.UniqueViolationError:  # another process seeded it at the same moment
        return None
    shop = await create_shop(program.id, "Demo webshop")
    keys = [
        await create_api_key(program.id, f"demo {scope.value}", scope)
        for scope in (Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)
    ]
    return DemoProgram(program_id=program.id, shop=shop, keys=keys)


async def _create_demo_program() -> ProgramRecord:
    return await create_program(
        ProgramSettings(name="Demo coffee roasters", time_zone="Europe/Amsterdam", currency="EUR"),
        program_id=DEMO_PROGRAM_ID,
    )
