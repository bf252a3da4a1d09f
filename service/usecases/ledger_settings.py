"""A program's ledger settings: its time zone and how earned points expire."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from service.db.transaction import in_transaction
from service.domain.errors import NotFound
from service.domain.expiry import ExpiryPolicy, ExpiryRule


class ProgramLedgerSettings(msgspec.Struct, frozen=True):
    time_zone: str
    expiry: ExpiryRule

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


def settings_from_row(row: asyncpg.Record) -> ProgramLedgerSettings:
    """The settings in a row of `programs`."""
    return ProgramLedgerSettings(row["time_zone"], ExpiryRule(ExpiryPolicy(row["expiry_policy"]), row["expiry_period"]))


async def ledger_settings(connection: asyncpg.Connection, program_id: str) -> ProgramLedgerSettings:
    """Read inside the caller's transaction, so a batch sees one consistent policy."""
    row = await connection.fetchrow(
        "SELECT time_zone, expiry_policy, expiry_period FROM programs WHERE id = $1", program_id
    )
    if row is None:
        raise NotFound(f"program {program_id} not found")
    return settings_from_row(row)


async def local_today(connection: asyncpg.Connection, program_id: str, now: datetime) -> date:
    """The program's local date at `now`."""
    return now.astimezone((await ledger_settings(connection, program_id)).zone).date()


_known: dict[str, ProgramLedgerSettings] = {}


async def known_settings(program_id: str) -> ProgramLedgerSettings:
    """The settings this process last read for the program (read now if never). A writer
    that relies on them has the database confirm them in its own statement
    (`write_credits_once`) and calls `forget_settings` when they turn out stale."""
    settings = _known.get(program_id)
    if settings is None:

        async def read(connection: asyncpg.Connection) -> ProgramLedgerSettings:
            return await ledger_settings(connection, program_id)

        settings = _known[program_id] = await in_transaction(read)
    return settings


def forget_settings(program_id: str) -> None:
    _known.pop(program_id, None)
