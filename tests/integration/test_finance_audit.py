"""The finance audit view against the real database: statements, balances as of an instant,
the trial balance, liability and activity, checked against the raw postings at the edges
the documentation names (`from` inclusive, `to` exclusive, `as_of` inclusive)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund
from service.domain.orders import ReturnPolicy, ReturnSettings
from service.usecases import finance, ledger, orders
from service.usecases.earning_rules import RulesDraft, publish_rules
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, checkout, enrol

START = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


async def account_id(connection: asyncpg.Connection, program_id: str, code: str) -> int:
    found: int = await connection.fetchval(
        "SELECT id FROM accounts WHERE program_id = $1 AND code = $2", program_id, code
    )
    return found


async def test_a_statement_starts_at_from_not_a_microsecond_before(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A posting one microsecond before `from` is not a line of the statement: it is in the
    opening balance (from is inclusive, and nothing before it is in the period)."""
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    clock.set(START)
    before = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="a"), "g1", clock)
    clock.set(START + timedelta(hours=1))
    inside = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=40, reason="b"), "g2", clock)
    available = await account_id(owner_connection, program.id, f"customer:{ann}:available")
    start = before.posted_at + MICROSECOND
    page = await finance.statement(program.id, available, start, START + timedelta(days=1), 10, None)
    assert [line.entry_id for line in page.lines] == [inside.id]
    assert page.opening_balance == 100
    assert [line.balance_after for line in page.lines] == [140]
    # the posting at exactly `from` is the period's first line
    page = await finance.statement(program.id, available, before.posted_at, START + timedelta(days=1), 10, None)
    assert [line.entry_id for line in page.lines] == [before.id, inside.id]
    assert page.opening_balance == 0


async def test_statement_pages_skip_and_repeat_nothing_when_postings_share_an_instant(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    clock.set(START)
    written = [
        await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=n + 1, reason="a"), f"g{n}", clock)
        for n in range(7)
    ]
    assert len({entry.posted_at for entry in written}) == 1
    issued = await account_id(owner_connection, program.id, "system:issued")
    seen: list[int] = []
    cursor = None
    running: list[int] = []
    while True:
        page = await finance.statement(program.id, issued, START, START + MICROSECOND, 2, cursor)
        seen.extend(line.entry_id for line in page.lines)
        running.extend(line.balance_after for line in page.lines)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [entry.id for entry in written]
    assert running == [-sum(range(1, n + 2)) for n in range(7)]


async def test_balance_and_trial_balance_as_of_a_posting_instant_include_it(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """as_of is inclusive: the postings at that very instant count; every unit balances."""
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    clock.set(START)
    first = await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="a"), "g1", clock)
    clock.set(START + timedelta(minutes=1))
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=-30, reason="b"), "d1", clock)
    available = await account_id(owner_connection, program.id, f"customer:{ann}:available")
    issued = await account_id(owner_connection, program.id, "system:issued")
    at = first.posted_at
    assert (await finance.account_balance(program.id, available, at)).balance == 100
    assert (await finance.account_balance(program.id, available, at - MICROSECOND)).balance == 0
    assert (await finance.account_balance(program.id, issued, at)).balance == -100
    trial = await finance.trial_balance(program.id, at)
    assert all(total.balanced for total in trial.totals)
    rows = {(row.kind, row.unit): row for row in trial.rows}
    assert rows[("available", "POINTS")].balance == 100
    assert rows[("issued", "POINTS")].balance == -100
    later = await finance.trial_balance(program.id, START + timedelta(days=1))
    assert {(r.kind, r.unit): r.balance for r in later.rows}[("available", "POINTS")] == 70
    assert all(total.balanced for total in later.totals)


async def test_liability_counts_the_points_customers_hold_not_their_debts(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Liability is available + pending + held (docs/api.md); a customer's debt (`owed`,
    after a refund of points already spent) does not lower what others hold."""
    clock.set(START - timedelta(days=30))
    draft = msgspec.convert({"currency": "EUR", "points_per_unit": 1, "unit_minor": 100}, RulesDraft)
    await publish_rules(admin(program.id), draft, "rules", clock)
    await orders.set_return_settings(program.id, ReturnSettings(window_days=14, policy=ReturnPolicy.ALLOW_NEGATIVE))
    clock.set(START)
    till = checkout(program.id)
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    order = Order(
        currency="EUR", placed_at=START, lines=(OrderLine(sku="s", category="c", unit_price=2500, quantity=1),)
    )
    await orders.place_order(
        till, program.shop_id, orders.OrderPlacement(order_id="O-1", customer_id=ann, order=order), clock
    )
    clock.advance(timedelta(days=15))
    assert await orders.release_due_orders(program.id, clock) == 1
    hold = await ledger.hold_points(till, ledger.HoldRequest(customer_id=ann, amount=25), "h1", clock)
    await ledger.capture_hold(till, hold.id, None, "c1", clock)
    await orders.refund_order(till, program.shop_id, "O-1", "R-1", Refund(amount=2500), clock)
    await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=bob, amount=100, reason="a"), "g1", clock)
    assert (await balances(owner_connection, program.id, ann))["owed"] == -25
    clock.advance(timedelta(minutes=1))
    found = await finance.liability(program.id, clock.now())
    assert found.points_outstanding == 100
    assert [(shop.points, shop.value_minor) for shop in found.by_shop] == [(100, 100)]


async def test_the_trial_balance_counts_the_accounts_open_at_its_instant(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await enrol(program.id, "ann", clock)
    bob = await enrol(program.id, "bob", clock)
    opened = await owner_connection.fetchval(
        "SELECT created_at FROM accounts WHERE program_id = $1 AND code = $2", program.id, f"customer:{bob}:available"
    )

    def available_accounts(trial: finance.TrialBalance) -> int:
        return {(row.kind, row.unit): row.accounts for row in trial.rows}[("available", "POINTS")]

    assert available_accounts(await finance.trial_balance(program.id, opened)) == 2
    assert available_accounts(await finance.trial_balance(program.id, opened - MICROSECOND)) == 1


async def test_an_entrys_lots_are_found_by_an_index_of_their_entry(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """`GET /v1/finance/entries/{id}` lists the lots the entry created: looked up by the
    entry, not by reading every lot of the program (`lots_pkey` leads with the program
    only, so a filter on the entry read them all, spent ones included)."""
    ann = await enrol(program.id, "ann", clock)
    grants = [
        await ledger.adjust(admin(program.id), ledger.Adjustment(customer_id=ann, amount=5, reason="a"), f"g{n}", clock)
        for n in range(40)
    ]
    detail = await finance.entry_detail(program.id, grants[7].id)
    assert [(lot.amount, lot.earned_by_entry_id) for lot in detail.lots_created] == [(5, grants[7].id)]
    await owner_connection.execute("ANALYZE lots")
    async with owner_connection.transaction():
        await owner_connection.execute("SET LOCAL enable_seqscan = off")
        plan = await owner_connection.fetchval(
            f"EXPLAIN (FORMAT JSON) {finance.LOTS_CREATED}", program.id, grants[7].id
        )
    lookups = [
        node for node in _plan_nodes(json.loads(plan)[0]["Plan"]) if node.get("Index Name", "").startswith("lots")
    ]
    assert lookups and all("entry_id" in node.get("Index Cond", "") for node in lookups), plan


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(found for child in node.get("Plans", []) for found in _plan_nodes(child))]


async def test_a_cursor_from_before_the_period_does_not_bring_lines_from_before_from(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A statement lists the account's postings in [from, to), whatever cursor is sent with
    it: a cursor of an earlier, longer period (a page of it kept and sent back with a later
    `from`) goes on from `from`, not from where that cursor stood."""
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    written = []
    for n in range(4):
        clock.set(START + timedelta(hours=n))
        written.append(
            await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=n + 1, reason="a"), f"g{n}", clock)
        )
    available = await account_id(owner_connection, program.id, f"customer:{ann}:available")
    end = START + timedelta(days=1)
    first = await finance.statement(program.id, available, START, end, 1, None)
    assert [line.entry_id for line in first.lines] == [written[0].id] and first.next_cursor
    later = written[2].posted_at
    page = await finance.statement(program.id, available, later, end, 10, first.next_cursor)
    assert [line.entry_id for line in page.lines] == [written[2].id, written[3].id]
    assert page.opening_balance == 1 + 2
    assert [line.balance_after for line in page.lines] == [6, 10]
