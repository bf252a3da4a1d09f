"""The demo program a fresh `serve` seeds, so the API can be tried at once."""

from __future__ import annotations

from datetime import date

import asyncpg
import msgspec

from service.db.tables import Program
from service.domain.access import Principal, Scope
from service.domain.clock import SystemClock
from service.domain.earning import Campaign
from service.domain.programs import CreatedApiKey, ProgramSettings, Shop
from service.domain.programs import Program as ProgramRecord
from service.usecases.earning_rules import RulesDraft, publish_rules
from service.usecases.programs import create_api_key, create_program, create_shop

DEMO_PROGRAM_ID = "prg_demo"
DEMO_RULES = RulesDraft(  # 1 point per euro, double on coffee beans, a welcome bonus through 2027
    currency="EUR",
    points_per_unit=1,
    unit_minor=100,
    category_multipliers={"beans": 20_000},
    campaigns=(
        Campaign(
            name="welcome",
            starts_on=date(2026, 1, 1),
            ends_on=date(2027, 12, 31),
            bonus_points=50,
            customer_cap=50,
        ),
    ),
)


class DemoProgram(msgspec.Struct, frozen=True):
    program_id: str
    shop: Shop
    keys: list[CreatedApiKey]


async def seed_demo() -> DemoProgram | None:
    """Create the demo program with a shop, earning rules and one key per scope; None if it
    exists already."""
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
    await publish_rules(Principal(program.id, Scope.ADMIN, key_id="seed-demo"), DEMO_RULES, "demo-rules", SystemClock())
    return DemoProgram(program_id=program.id, shop=shop, keys=keys)


async def _create_demo_program() -> ProgramRecord:
    return await create_program(
        ProgramSettings(name="Demo coffee roasters", time_zone="Europe/Amsterdam", currency="EUR"),
        program_id=DEMO_PROGRAM_ID,
    )
