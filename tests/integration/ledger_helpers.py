"""Helpers for ledger tests: enrol customers, place orders, read balances and check the books
through the real database."""

from __future__ import annotations

import itertools
from datetime import datetime

import asyncpg

from service.db.ledger import EntryToWrite, WrittenEntry, write_credits_once
from service.db.transaction import autocommit
from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.customers import Enrolment
from service.domain.earning import Order, OrderLine
from service.domain.errors import DomainError
from service.usecases import ledger_jobs, orders
from service.usecases.customers import enrol_customer
from service.usecases.finance import verify_chain
from service.usecases.ledger_settings import known_settings
from tests.conftest import ProgramFixture

_order_ids = itertools.count()


def admin(program_id: str) -> Principal:
    return Principal(program_id=program_id, scope=Scope.ADMIN, key_id="key_test")


def checkout(program_id: str) -> Principal:
    return Principal(program_id=program_id, scope=Scope.CHECKOUT, key_id="key_till")


async def enrol(program_id: str, external_id: str, clock: Clock) -> str:
    customer, _ = await enrol_customer(admin(program_id), Enrolment(external_id=external_id), clock)
    return customer.id


async def buy(program: ProgramFixture, clock: Clock, customer: str, net: int = 2500) -> orders.OrderView:
    """An order of one line worth `net` minor units, placed now at the program's shop."""
    order = Order(
        currency="EUR",
        placed_at=clock.now(),
        lines=(OrderLine(sku="beans", category="coffee", unit_price=net, quantity=1),),
    )
    placement = orders.OrderPlacement(order_id=f"o{next(_order_ids)}", customer_id=customer, order=order)
    return await orders.place_order(checkout(program.id), program.shop_id, placement, clock)


async def balances(connection: asyncpg.Connection, program_id: str, customer_id: str) -> dict[str, int]:
    rows = await connection.fetch(
        "SELECT kind, balance FROM accounts WHERE program_id = $1 AND customer_id = $2",
        program_id,
        customer_id,
    )
    return {row["kind"]: row["balance"] for row in rows}


async def ledger_invariants(connection: asyncpg.Connection, program_id: str) -> None:
    """Per-unit zero sum, balance rows equal the sum of postings, lots equal balances, every
    customer account on its normal side of zero."""
    unbalanced = await connection.fetch(
        "SELECT entry_id, unit, sum(amount) FROM postings WHERE program_id = $1"
        " GROUP BY entry_id, unit HAVING sum(amount) <> 0",
        program_id,
    )
    assert not unbalanced, unbalanced
    per_unit = await connection.fetch(
        "SELECT unit, sum(amount) AS total FROM postings WHERE program_id = $1 GROUP BY unit",
        program_id,
    )
    assert all(row["total"] == 0 for row in per_unit), per_unit
    drift = await connection.fetch(
        "SELECT a.code, a.balance, coalesce(sum(p.amount), 0) AS posted FROM accounts a"
        " LEFT JOIN postings p ON p.program_id = a.program_id AND p.account_id = a.id"
        " WHERE a.program_id = $1 AND a.customer_id IS NOT NULL GROUP BY a.code, a.balance"
        " HAVING a.balance <> coalesce(sum(p.amount), 0)",
        program_id,
    )
    assert not drift, drift
    lots_drift = await connection.fetch(
        "SELECT a.code, a.balance, coalesce(sum(l.remaining), 0) AS in_lots FROM accounts a"
        " LEFT JOIN lots l ON l.program_id = a.program_id AND l.account_id = a.id"
        " WHERE a.program_id = $1 AND a.customer_id IS NOT NULL AND a.normal_side = 'credit'"
        " GROUP BY a.code, a.balance HAVING a.balance <> coalesce(sum(l.remaining), 0)",
        program_id,
    )
    assert not lots_drift, lots_drift
    wrong_side = await connection.fetch(  # what is held for a customer >= 0; what they owe <= 0
        "SELECT code, balance FROM accounts WHERE program_id = $1"
        " AND (normal_side = 'credit' AND balance < 0 OR normal_side = 'debit' AND balance > 0)",
        program_id,
    )
    assert not wrong_side, wrong_side
    debts_with_lots = await connection.fetch(
        "SELECT l.id FROM lots l JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
        " WHERE l.program_id = $1 AND a.normal_side = 'debit'",
        program_id,
    )
    assert not debts_with_lots, debts_with_lots


async def entry_count(connection: asyncpg.Connection, program_id: str) -> int:
    count: int = await connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program_id)
    return count


async def sound(connection: asyncpg.Connection, program_id: str) -> None:
    """The ledger invariants hold and the whole journal seals into a valid chain."""
    await ledger_invariants(connection, program_id)
    await ledger_jobs.seal_chain(program_id)
    report = await verify_chain(program_id)
    assert report.valid and report.unsealed == 0, report
    assert report.sealed == await entry_count(connection, program_id)


async def claim_in_one_call(
    program_id: str, now: datetime, requests: list[tuple[str, bytes, EntryToWrite]]
) -> list[WrittenEntry | DomainError]:
    """`write_credits_once` of the requests in one autocommitted statement, at the known settings."""
    settings = await known_settings(program_id)
    async with autocommit() as connection:
        return await write_credits_once(
            connection, program_id, requests, now=now, time_zone=settings.time_zone, expiry=settings.expiry
        )
