"""Hypothesis over ledger histories: every finance report agrees with the raw journal.

Each example builds a random history through the real use cases (grants and deductions in
points and store credit, holds captured in part or voided or left to expire, orders awarded,
refunded in part and released, reversals, points expiring at a month end in a program time
zone far from UTC, several entries at one instant) and then reads every finance report over
HTTP, with instants given at a non-UTC offset, next to a brute-force recomputation from the
`postings` and `entries` rows read as the database owner: the trial balance, balances as of
an instant, statements walked page by page with the cursor, activity, liability, the account
list, the journal export in NDJSON and CSV, and the hash chain once sealed
(with anchors at any seq).
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.domain.clock import ManualClock
from service.domain.customers import Enrolment
from service.domain.earning import Order, OrderLine, Refund
from service.domain.errors import DomainError
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.ledger import CHART, HELD_BY_CUSTOMERS, Unit
from service.domain.orders import ReturnPolicy, ReturnSettings
from service.usecases import ledger, ledger_jobs, orders
from service.usecases.customers import enrol_customer
from service.usecases.earning_rules import RulesDraft, publish_rules
from service.usecases.programs import create_shop
from tests.conftest import ProgramFixture, make_program
from tests.integration.ledger_helpers import admin, checkout

# Pacific/Auckland is UTC+13 in January: its month ends eleven hours before UTC's
ZONE = "Pacific/Auckland"
START = datetime(2026, 1, 31, 2, 0, tzinfo=UTC)  # 15:00 on the last local day of January
MICROSECOND = timedelta(microseconds=1)
AWKWARD = ['a, "quoted"\nnew line', "café ☕ 😀 \u2028 end", "tab\tand\r\nCRLF", ",", '"', "plain"]
SHOP_NAME = 'Shop "Nord", Ålesund\nfloor 2'
_serial = itertools.count()

reasons = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8),
)
units = st.sampled_from([Unit.POINTS, Unit.POINTS, Unit.CREDIT])
customers_ = st.integers(0, 2)
steps = st.one_of(
    st.tuples(st.just("grant"), customers_, units, st.integers(1, 500), reasons),
    st.tuples(st.just("deduct"), customers_, units, st.integers(1, 300), reasons),
    st.tuples(
        st.just("hold"),
        customers_,
        units,
        st.integers(1, 300),
        st.sampled_from([60, 3600, 2 * 86400]),
        st.one_of(st.none(), st.just("void"), st.integers(0, 300)),  # left open, voided or captured at once
    ),
    st.tuples(st.just("capture"), st.integers(0, 3), st.one_of(st.none(), st.integers(0, 300))),
    st.tuples(st.just("void"), st.integers(0, 3)),
    st.tuples(st.just("order"), customers_, st.integers(1, 40_000)),
    st.tuples(st.just("refund"), st.integers(0, 3), st.integers(1, 100)),  # a share of the order's net, in %
    st.tuples(st.just("refund"), st.integers(0, 3), st.integers(1, 60)),
    st.tuples(st.just("reverse"), st.integers(0, 30)),
    st.tuples(st.just("jobs")),
    st.tuples(  # adjustments at once: the grant batcher writes them in one statement
        st.just("burst"),
        st.lists(
            st.tuples(customers_, units, st.one_of(st.integers(-100, -1), st.integers(1, 300)), reasons),
            min_size=2,
            max_size=5,
        ),
    ),
    st.tuples(
        st.just("advance"),
        st.sampled_from(
            [
                timedelta(0),
                MICROSECOND,
                timedelta(seconds=1),
                timedelta(hours=5),
                timedelta(days=1),
                timedelta(days=2),
                -timedelta(minutes=10),  # another worker's clock, a little behind
            ]
        ),
    ),
)


@dataclass
class History:
    """What the steps made, for later steps to act on."""

    program: ProgramFixture
    clock: ManualClock
    customers: list[str]
    holds: list[str] = field(default_factory=list)
    orders: list[tuple[str, int]] = field(default_factory=list)  # (order id, net)
    entries: list[int] = field(default_factory=list)
    keys: itertools.count[int] = field(default_factory=itertools.count)

    def key(self) -> str:
        return f"k{next(self.keys)}"


async def attempt(make: Callable[[], Awaitable[Any]]) -> Any:
    """The call's result, or None if the ledger refused it (refusals are part of a history)."""
    try:
        return await make()
    except DomainError:
        return None


async def run_step(history: History, step: tuple[Any, ...]) -> None:
    program, clock = history.program, history.clock
    who, till = admin(program.id), checkout(program.id)
    kind = step[0]
    if kind in ("grant", "deduct"):
        _, customer, unit, amount, reason = step
        sign = 1 if kind == "grant" else -1
        request = ledger.Adjustment(
            customer_id=history.customers[customer], amount=sign * amount, unit=unit, reason=reason
        )
        written = await attempt(lambda: ledger.adjust(who, request, history.key(), clock))
        if written is not None:
            history.entries.append(written.id)
    elif kind == "hold":
        _, customer, unit, amount, seconds, then = step
        hold = ledger.HoldRequest(
            customer_id=history.customers[customer], amount=amount, unit=unit, expires_in_seconds=seconds
        )
        made = await attempt(lambda: ledger.hold_points(who, hold, history.key(), clock))
        if made is not None:
            history.holds.append(made.id)
            if then == "void":
                await attempt(lambda: ledger.void_hold(who, made.id, history.key(), clock))
            elif then is not None:
                await attempt(lambda: ledger.capture_hold(who, made.id, then, history.key(), clock))
    elif kind == "capture" and history.holds:
        hold_id = history.holds[-1 - step[1] % len(history.holds)]
        await attempt(lambda: ledger.capture_hold(who, hold_id, step[2], history.key(), clock))
    elif kind == "void" and history.holds:
        hold_id = history.holds[-1 - step[1] % len(history.holds)]
        await attempt(lambda: ledger.void_hold(who, hold_id, history.key(), clock))
    elif kind == "order":
        _, customer, net = step
        order = Order(
            currency="EUR",
            placed_at=clock.now(),
            lines=(OrderLine(sku="beans", category="coffee", unit_price=net, quantity=1),),
        )
        order_id = f"O-{len(history.orders)}"
        placement = orders.OrderPlacement(order_id=order_id, customer_id=history.customers[customer], order=order)
        placed = await attempt(lambda: orders.place_order(till, program.shop_id, placement, clock))
        if placed is not None:
            history.orders.append((order_id, net))
            if placed.award_entry_id is not None:
                history.entries.append(placed.award_entry_id)
    elif kind == "refund" and history.orders:
        order_id, net = history.orders[-1 - step[1] % len(history.orders)]
        refund = Refund(amount=max(1, net * step[2] // 100))
        await attempt(lambda: orders.refund_order(till, program.shop_id, order_id, history.key(), refund, clock))
    elif kind == "reverse" and history.entries:
        entry_id = history.entries[-1 - step[1] % len(history.entries)]
        await attempt(lambda: ledger.reverse(who, entry_id, 'undo, "mistake"', history.key(), clock))
    elif kind == "burst":
        requests = [
            ledger.Adjustment(customer_id=history.customers[customer], amount=amount, unit=unit, reason=reason)
            for customer, unit, amount, reason in step[1]
        ]
        keys = [history.key() for _ in requests]
        made = await asyncio.gather(
            *(
                attempt(partial(ledger.adjust, who, request, key, clock))
                for request, key in zip(requests, keys, strict=True)
            )
        )
        history.entries.extend(written.id for written in made if written is not None)
    elif kind == "jobs":
        await orders.release_due_orders(program.id, clock)
        await ledger_jobs.expire_holds(program.id, clock)
        await ledger_jobs.expire_points(program.id, clock)
    elif kind == "advance":
        clock.advance(step[1])


async def new_program(clock: ManualClock, point_value: int) -> tuple[ProgramFixture, list[str]]:
    """A program in ZONE whose points expire at the end of the month they are earned in,
    with earning rules, a one-day return window under `allow_negative`, a second shop with
    an awkward name and three customers: one per shop and one without a shop."""
    clock.set(START - timedelta(days=1))
    program = await make_program(f"Finance property {next(_serial)}", ZONE, point_value)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.END_OF_MONTH, 0))
    draft = msgspec.convert({"currency": "EUR", "points_per_unit": 1, "unit_minor": 100}, RulesDraft)
    await publish_rules(admin(program.id), draft, "rules", clock)
    await orders.set_return_settings(program.id, ReturnSettings(window_days=1, policy=ReturnPolicy.ALLOW_NEGATIVE))
    other = await create_shop(program.id, SHOP_NAME)
    customers = []
    for number, shop in enumerate([program.shop_id, other.id, None]):
        enrolment = Enrolment(external_id=f"c{number}", shop_id=shop)
        customer, _ = await enrol_customer(admin(program.id), enrolment, clock)
        customers.append(customer.id)
    return program, customers


# --- the raw journal, and what each report must say from it ---------------------------


@dataclass(frozen=True)
class Row:
    entry_id: int
    line: int
    posted_at: datetime
    entry_posted_at: datetime
    kind: str
    actor: str
    reverses_entry_id: int | None
    metadata: dict[str, Any]
    account_id: int
    code: str
    account_kind: str
    unit: str
    shop_id: str | None
    customer_id: str | None
    amount: int
    balance_after: int | None

    @property
    def order(self) -> tuple[datetime, int, int]:
        return (self.posted_at, self.entry_id, self.line)


async def raw_journal(owner: asyncpg.Connection, program_id: str) -> tuple[list[Row], list[asyncpg.Record]]:
    rows = await owner.fetch(
        "SELECT p.entry_id, p.line, p.posted_at, e.posted_at AS entry_posted_at, e.kind, e.actor,"
        " e.reverses_entry_id, e.metadata, p.account_id, a.code, a.kind AS account_kind, a.unit, c.shop_id,"
        " a.customer_id, p.amount, p.balance_after FROM postings p"
        " JOIN entries e ON e.program_id = p.program_id AND e.id = p.entry_id"
        " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
        " LEFT JOIN customers c ON c.program_id = a.program_id AND c.id = a.customer_id"
        " WHERE p.program_id = $1",
        program_id,
    )
    accounts = await owner.fetch(
        "SELECT a.id, a.code, a.kind, a.unit, a.customer_id, a.created_at, c.shop_id FROM accounts a"
        " LEFT JOIN customers c ON c.program_id = a.program_id AND c.id = a.customer_id"
        " WHERE a.program_id = $1 ORDER BY a.id",
        program_id,
    )
    journal = [Row(**{**dict(row), "metadata": json.loads(row["metadata"])}) for row in rows]
    return sorted(journal, key=lambda row: row.order), accounts


def at(instant: datetime) -> str:
    """An instant as a query parameter, at the program's offset rather than UTC."""
    return instant.astimezone(ZoneInfo(ZONE)).isoformat()


def utc(moment: datetime) -> str:
    """An instant as answers give it: RFC 3339 in UTC, `...Z` (docs/api.md, Conventions)."""
    assert moment.utcoffset() == timedelta(0)
    return moment.isoformat().replace("+00:00", "Z")


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Reader:
    """The finance API as the finance key sees it."""

    def __init__(self, client: httpx.AsyncClient, program: ProgramFixture) -> None:
        self.client, self.headers, self.program_id = client, program.auth("finance"), program.id

    async def get(self, path: str, **params: Any) -> httpx.Response:
        response = await self.client.get(f"/v1/finance{path}", params=params, headers=self.headers)
        assert response.status_code == 200, (path, params, response.text)
        return response

    async def json(self, path: str, **params: Any) -> Any:
        return (await self.get(path, **params)).json()


async def check_trial_balance(
    read: Reader, journal: list[Row], accounts: list[asyncpg.Record], as_of: datetime
) -> None:
    found = await read.json("/trial-balance", as_of=at(as_of))
    assert instant(found["as_of"]) == as_of
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for account in accounts:
        row = expected.setdefault(
            (account["kind"], account["unit"]),
            {"normal_side": CHART[account["kind"]].normal_side.value, "accounts": 0, "debit": 0, "credit": 0},
        )
        # open by as_of: opened by then (the database's clock), or posted to by then (the writer's)
        posted = any(p.account_id == account["id"] and p.posted_at <= as_of for p in journal)
        row["accounts"] += account["created_at"] <= as_of or posted
    for posting in journal:
        if posting.posted_at <= as_of:
            row = expected[(posting.account_kind, posting.unit)]
            row["debit" if posting.amount < 0 else "credit"] += abs(posting.amount)
    for row in expected.values():
        row["balance"] = row["credit"] - row["debit"]
    assert {
        (r["kind"], r["unit"]): {k: v for k, v in r.items() if k not in ("kind", "unit")} for r in found["rows"]
    } == (expected), as_of
    per_unit: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (_, unit), row in expected.items():
        per_unit[unit][0] += row["debit"]
        per_unit[unit][1] += row["credit"]
    assert {t["unit"]: (t["debit"], t["credit"], t["balanced"]) for t in found["totals"]} == {
        unit: (debit, credit, True) for unit, (debit, credit) in per_unit.items()
    }
    for unit, (debit, credit) in per_unit.items():
        assert debit == credit, (unit, as_of)


async def check_balances(read: Reader, journal: list[Row], accounts: list[asyncpg.Record], as_of: datetime) -> None:
    for account in accounts:
        found = await read.json(f"/accounts/{account['id']}/balance", as_of=at(as_of))
        expected = sum(p.amount for p in journal if p.account_id == account["id"] and p.posted_at <= as_of)
        assert found["balance"] == expected, (account["code"], as_of, found)
        assert instant(found["as_of"]) == as_of


async def check_statement(
    read: Reader, journal: list[Row], account_id: int, start: datetime, end: datetime, limit: int
) -> None:
    postings = [p for p in journal if p.account_id == account_id]
    inside = [p for p in postings if start <= p.posted_at < end]
    running = sum(p.amount for p in postings if p.posted_at < start)
    seen: list[tuple[int, int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"from": at(start), "to": at(end), "limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = await read.json(f"/accounts/{account_id}/statement", **params)
        assert page["opening_balance"] == running, (account_id, start, end, len(seen))
        assert page["account"]["balance"] == sum(p.amount for p in postings if p.posted_at < end)
        assert len(page["lines"]) <= limit
        for line in page["lines"]:
            posting = inside[len(seen)] if len(seen) < len(inside) else None
            assert posting is not None, ("a line beyond the period's postings", line)
            running += posting.amount
            assert (line["entry_id"], line["line"], instant(line["posted_at"])) == (
                posting.entry_id,
                posting.line,
                posting.posted_at,
            )
            assert (line["amount"], line["kind"], line["metadata"]) == (posting.amount, posting.kind, posting.metadata)
            assert line["balance_after"] == running
            if posting.balance_after is not None:
                assert posting.balance_after == running, posting
            seen.append((posting.entry_id, posting.line))
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert page["lines"], "an empty page with a next cursor"
    assert seen == [(p.entry_id, p.line) for p in inside], (account_id, start, end, limit)


async def check_activity(read: Reader, journal: list[Row], start: datetime, end: datetime) -> None:
    found = await read.json("/activity", **{"from": at(start), "to": at(end)})
    net: dict[str, int] = defaultdict(int)
    for posting in journal:
        if posting.customer_id is None and start <= posting.posted_at < end:
            net[posting.account_kind] += posting.amount
    assert (instant(found["start"]), instant(found["end"])) == (start, end)
    assert {k: v for k, v in found.items() if k not in ("start", "end")} == {
        "issued": -net["issued"],  # debit-normal: what was issued is what left it
        "redeemed": net["redeemed"],
        "expired": net["expired"],
        "referral_rewards": -net["referral_rewards"],
        "adjustments": net["adjustments"],  # deductions credit it
        "credit_issued": -net["credit_issued"],
        "credit_redeemed": net["credit_redeemed"],
    }, (start, end)


async def check_liability(read: Reader, journal: list[Row], as_of: datetime, point_value: int) -> None:
    found = await read.json("/liability", as_of=at(as_of))
    held = {kind.value for kind in HELD_BY_CUSTOMERS}
    points: dict[str | None, int] = defaultdict(int)
    credit = 0
    for posting in journal:
        if posting.customer_id is not None and posting.account_kind in held and posting.posted_at <= as_of:
            if posting.unit == "POINTS":
                points[posting.shop_id] += posting.amount
            else:
                credit += posting.amount
    by_shop = {shop["shop_id"]: (shop["points"], shop["value_minor"]) for shop in found["by_shop"]}
    assert {shop: figures for shop, figures in by_shop.items() if figures != (0, 0)} == {
        shop: (n, n * point_value) for shop, n in points.items() if n
    }, as_of
    total = sum(points.values())
    assert (found["points_outstanding"], found["value_minor"]) == (total, total * point_value)
    assert found["credit_outstanding_minor"] == credit
    assert (found["currency"], found["point_value_minor"]) == ("EUR", point_value)


async def check_accounts(read: Reader, journal: list[Row], accounts: list[asyncpg.Record], limit: int) -> None:
    listed: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        params: dict[str, Any] = {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}
        page = await read.json("/accounts", **params)
        listed.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(a["account_id"], a["code"], a["kind"], a["unit"], a["customer_id"]) for a in listed] == [
        (a["id"], a["code"], a["kind"], a["unit"], a["customer_id"]) for a in accounts
    ]
    assert [a["balance"] for a in listed] == [
        sum(p.amount for p in journal if p.account_id == a["id"]) for a in accounts
    ]


def journal_record(row: Row) -> tuple[Any, ...]:
    return (
        row.entry_id,
        row.posted_at,
        row.kind,
        row.actor,
        row.reverses_entry_id,
        row.line,
        row.code,
        row.unit,
        row.amount,
        row.balance_after,
        row.metadata,
    )


async def check_journal(read: Reader, journal: list[Row], start: datetime, end: datetime) -> None:
    expected = [
        journal_record(row)
        for row in sorted(journal, key=lambda row: (row.entry_posted_at, row.entry_id, row.line))
        if start <= row.entry_posted_at < end
    ]
    period = {"from": at(start), "to": at(end)}
    ndjson = await read.get("/journal", **period)
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    text = ndjson.content.decode("utf-8")
    assert text == "" or text.endswith("\n")
    records = [json.loads(line) for line in text.split("\n") if line]
    assert [tuple(r.values()) for r in records] == [
        tuple(utc(value) if isinstance(value, datetime) else value for value in row) for row in expected
    ], (start, end)

    exported = await read.get("/journal", **period, format="csv")
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(exported.content.decode("utf-8"), newline="")))
    assert table[0] == [
        "entry_id",
        "posted_at",
        "kind",
        "actor",
        "reverses_entry_id",
        "line",
        "account",
        "unit",
        "amount",
        "balance_after",
        "metadata",
    ]

    def parsed(cells: list[str]) -> tuple[Any, ...]:
        entry, posted, kind, actor, reverses, line, account, unit, amount, after, metadata = cells
        return (
            int(entry),
            posted,
            kind,
            actor,
            int(reverses) if reverses else None,
            int(line),
            account,
            unit,
            int(amount),
            int(after) if after else None,
            json.loads(metadata),
        )

    assert [parsed(cells) for cells in table[1:]] == [(row[0], utc(row[1]), *row[2:]) for row in expected], (start, end)


async def check_entry(read: Reader, owner: asyncpg.Connection, journal: list[Row], entry_id: int) -> None:
    found = await read.json(f"/entries/{entry_id}")
    postings = [row for row in journal if row.entry_id == entry_id]
    first = postings[0]
    assert (found["id"], found["kind"], instant(found["posted_at"]), found["actor"]) == (
        entry_id,
        first.kind,
        first.posted_at,
        first.actor,
    )
    assert (found["reverses_entry_id"], found["metadata"]) == (first.reverses_entry_id, first.metadata)
    reversed_by = {row.entry_id for row in journal if row.reverses_entry_id == entry_id}
    assert found["reversed_by_entry_id"] == (reversed_by.pop() if reversed_by else None)
    assert [tuple(p.values()) for p in found["postings"]] == [
        (row.line, row.account_id, row.code, row.unit, row.amount, row.balance_after)
        for row in sorted(postings, key=lambda row: row.line)
    ]
    seq = await owner.fetchval(
        "SELECT seq FROM entry_seals WHERE program_id = $1 AND entry_id = $2", read.program_id, entry_id
    )
    assert found["seal_seq"] == seq
    created = await owner.fetch(
        "SELECT id, amount, entry_id, earned_at, expires_at FROM lots WHERE program_id = $1 AND entry_id = $2"
        " ORDER BY id",
        read.program_id,
        entry_id,
    )
    consumed = await owner.fetch(
        "SELECT l.id, al.amount, l.entry_id, l.earned_at, l.expires_at FROM lot_allocations al"
        " JOIN lots l ON l.program_id = al.program_id AND l.id = al.lot_id"
        " WHERE al.program_id = $1 AND al.entry_id = $2",
        read.program_id,
        entry_id,
    )

    def movements(items: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {
            (
                m["lot_id"],
                m["amount"],
                m["earned_by_entry_id"],
                instant(m["earned_at"]),
                m["expires_at"] and instant(m["expires_at"]),
            )
            for m in items
        }

    assert movements(found["lots_created"]) == {tuple(row.values()) for row in created}
    assert movements(found["lots_consumed"]) == {tuple(row.values()) for row in consumed}


async def check_lot_dates(owner: asyncpg.Connection, program_id: str, now: datetime) -> None:
    """Points made afresh (a grant, an order's award) expire at the local midnight that ends
    the month they became spendable in (a grant's when made, an order's when released), in
    the program's zone; none past that is left in `available` once the job has run."""
    zone = ZoneInfo(ZONE)
    fresh = await owner.fetch(
        "SELECT coalesce(o.release_at, l.earned_at) AS spendable_from, l.expires_at FROM lots l"
        " JOIN entries e ON e.program_id = l.program_id AND e.id = l.entry_id"
        " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
        " LEFT JOIN orders o ON o.program_id = l.program_id AND o.award_entry_id = l.entry_id"
        " WHERE l.program_id = $1 AND e.kind IN ('adjustment.grant', 'order.award') AND a.unit = 'POINTS'",
        program_id,
    )
    for row in fresh:
        local = row["spendable_from"].astimezone(zone)
        month_end = datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=zone)
        assert row["expires_at"] == month_end, (row, month_end)
    left: int = await owner.fetchval(
        "SELECT coalesce(sum(l.remaining), 0) FROM lots l JOIN accounts a ON a.program_id = l.program_id"
        " AND a.id = l.account_id WHERE l.program_id = $1 AND a.kind = 'available' AND l.expires_at <= $2",
        program_id,
        now,
    )
    assert left == 0


# --- the property ---------------------------------------------------------------------


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    history_steps=st.lists(steps, min_size=5, max_size=40),
    point_value=st.integers(1, 7),
)
async def test_every_finance_report_agrees_with_the_raw_journal(
    data: st.DataObject,
    history_steps: list[tuple[Any, ...]],
    point_value: int,
    client: httpx.AsyncClient,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    program, customers = await new_program(clock, point_value)
    clock.set(START)
    history = History(program, clock, customers)
    for customer in customers:  # something to spend from the first step on
        for unit in (Unit.POINTS, Unit.CREDIT):
            request = ledger.Adjustment(customer_id=customer, amount=200, unit=unit, reason='opening, "gift"')
            history.entries.append((await ledger.adjust(admin(program.id), request, history.key(), clock)).id)
    for step in history_steps:
        await run_step(history, step)
    clock.advance(timedelta(days=3))  # past the month end, every order's window and every hold
    await run_step(history, ("jobs",))

    journal, accounts = await raw_journal(owner_connection, program.id)
    for row in journal:  # a posting's time is its entry's
        assert row.posted_at == row.entry_posted_at, row
    read = Reader(client, program)
    for kind in sorted({row.kind for row in journal}):  # --hypothesis-show-statistics: what the histories held
        event(kind)
    times = sorted({row.posted_at for row in journal})
    instants = sorted(
        {START - timedelta(days=1), clock.now() + timedelta(days=1)}
        | {moment + delta for moment in times for delta in (-MICROSECOND, timedelta(0), MICROSECOND)}
    )
    some_instants = st.sampled_from(instants)

    for as_of in {data.draw(some_instants, label="as_of") for _ in range(3)} | {instants[-1]}:
        await check_trial_balance(read, journal, accounts, as_of)
        await check_liability(read, journal, as_of, point_value)
        await check_balances(read, journal, accounts, as_of)

    for _ in range(3):
        start, end = sorted(data.draw(st.lists(some_instants, min_size=2, max_size=2, unique=True), label="period"))
        await check_activity(read, journal, start, end)
        await check_journal(read, journal, start, end)
    await check_journal(read, journal, instants[0], instants[-1])
    await check_activity(read, journal, instants[0], instants[-1])

    touched = sorted({row.account_id for row in journal})
    for account_id in data.draw(st.lists(st.sampled_from(touched), min_size=1, max_size=4, unique=True)):
        start, end = sorted(data.draw(st.lists(some_instants, min_size=2, max_size=2, unique=True), label="period"))
        limit = data.draw(st.integers(1, 3), label="limit")
        await check_statement(read, journal, account_id, start, end, limit)
        await check_statement(read, journal, account_id, instants[0], instants[-1], limit)
    await check_accounts(read, journal, accounts, data.draw(st.integers(1, 7), label="accounts limit"))

    await ledger_jobs.seal_chain(program.id)
    chain = await read.json("/chain")
    entries = len({row.entry_id for row in journal})
    assert (chain["valid"], chain["sealed"], chain["last_seq"], chain["unsealed"], chain["first_break"]) == (
        True,
        entries,
        entries,
        0,
        None,
    ), chain
    # an anchor recorded at any seq (its chain hash as stored then) holds; any other hash there does not
    seq = data.draw(st.integers(1, entries), label="anchor seq")
    stored = await owner_connection.fetchval(
        "SELECT encode(chain_hash, 'hex') FROM entry_seals WHERE program_id = $1 AND seq = $2", program.id, seq
    )
    anchored = await read.json("/chain", anchor_seq=seq, anchor_hash=stored.upper())
    assert (anchored["valid"], anchored["anchor"], anchored["head"]) == (
        True,
        {"seq": seq, "chain_hash": stored, "holds": True},
        chain["head"],
    ), anchored
    wrong = ("0" if stored[0] != "0" else "1") + stored[1:]
    refused = await read.json("/chain", anchor_seq=seq, anchor_hash=wrong)
    assert (refused["valid"], refused["anchor"]["holds"], refused["first_break"]["seq"]) == (False, False, seq)
    beyond = await read.json("/chain", anchor_seq=entries + 1, anchor_hash=stored)
    assert (beyond["valid"], beyond["anchor"]["holds"]) == (False, False)
    entry_ids = sorted({row.entry_id for row in journal})
    for entry_id in data.draw(st.lists(st.sampled_from(entry_ids), min_size=1, max_size=5, unique=True)):
        await check_entry(read, owner_connection, journal, entry_id)
    await check_lot_dates(owner_connection, program.id, clock.now())
