"""Finance's read-only view of the ledger: balances, statements, trial balance,
liability, activity, journal export and chain verification."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service.db.chain import iter_chain_breaks
from service.db.ledger import WrittenPosting
from service.db.piccolo_conf import DB
from service.db.transaction import autocommit, snapshot
from service.domain.chain import ChainBreak, ChainLink, anchor_break
from service.domain.errors import InvalidInput, NotFound
from service.domain.ids import MAX_ROW_ID, b64url, unb64url
from service.domain.ledger import HELD_BY_CUSTOMERS

FIRST_INSTANT, LAST_INSTANT = datetime(1900, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)
MAX_LINE = 2**15 - 1  # a posting's line is a smallint


def _check_instant(instant: datetime, field: str) -> datetime:
    """The instant in UTC, as answers give every timestamp; refuse one without a UTC offset,
    or outside [FIRST_INSTANT, LAST_INSTANT)."""
    if instant.utcoffset() is None:
        raise InvalidInput(f"`{field}` needs a UTC offset (RFC 3339)", field=field)
    if not FIRST_INSTANT <= instant < LAST_INSTANT:
        raise InvalidInput(f"`{field}` must be in the years 1900 to 2999", field=field)
    return instant.astimezone(UTC)


def _check_period(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = _check_instant(start, "from"), _check_instant(end, "to")
    if end <= start:
        raise InvalidInput("`to` must be after `from`", field="to")
    return start, end


# --- Chain ---------------------------------------------------------------------------


class AnchorCheck(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    chain_hash: str
    holds: bool


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    valid: bool
    sealed: int
    last_seq: int
    unsealed: int
    first_break: ChainBreak | None = None
    head: ChainLink | None = None
    anchor: AnchorCheck | None = None


def chain_anchor(seq: int | None, chain_hash: str | None) -> tuple[int, str] | None:
    """The anchor of a verification: both of its parts or neither."""
    if (seq is None) != (chain_hash is None):
        missing = "anchor_hash" if chain_hash is None else "anchor_seq"
        raise InvalidInput(f"`{missing}` is needed with the other part of the anchor", field=missing)
    return None if seq is None or chain_hash is None else (seq, chain_hash)


async def verify_chain(program_id: str, anchor: tuple[int, str] | None = None) -> ChainReport:
    """Recompute the program's hash chain and name the first broken entry, if any. With an
    anchor (a seq and the chain hash recorded there earlier, e.g. a `head` of a past report)
    the chain must still hold that hash at that seq: one cut short or rewritten up to it
    fails, which the chain alone cannot show."""
    async with snapshot() as connection:
        first_break: ChainBreak | None = None
        sealed = last_seq = 0
        head = at_anchor = None
        walked = False
        async for item in iter_chain_breaks(connection, program_id, watch=anchor[0] if anchor else None):
            if isinstance(item, ChainBreak):
                first_break = first_break or item
            elif isinstance(item, ChainLink):
                at_anchor = item
            else:
                (sealed, head), walked = item, True
                last_seq = head.seq if head else 0
        unsealed = await connection.fetchval(
            "SELECT count(*) FROM entries e WHERE e.program_id = $1 AND NOT EXISTS"
            " (SELECT 1 FROM entry_seals s WHERE s.program_id = e.program_id AND s.entry_id = e.id)",
            program_id,
        )
    check = None
    if anchor is not None:
        # unknown (None) if a break stopped the walk before the anchored seq
        missed = anchor_break(anchor[0], anchor[1], at_anchor, last_seq) if walked or at_anchor else None
        breaks = [found for found in (first_break, missed) if found is not None]
        first_break = min(breaks, key=lambda found: found.seq) if breaks else None
        check = AnchorCheck(seq=anchor[0], chain_hash=anchor[1].lower(), holds=at_anchor is not None and not missed)
    return ChainReport(
        valid=first_break is None,
        sealed=sealed,
        last_seq=last_seq,
        unsealed=unsealed,
        first_break=first_break,
        head=head if first_break is None else None,
        anchor=check,
    )


# --- Accounts and balances -----------------------------------------------------------


class AccountBalance(msgspec.Struct, frozen=True, kw_only=True):
    account_id: int
    code: str
    kind: str
    unit: str
    customer_id: str | None
    balance: int
    as_of: datetime | None


_BALANCE_AS_OF = (
    "SELECT a.id, a.code, a.kind, a.unit, a.customer_id,"
    " CASE WHEN $3::timestamptz IS NULL AND a.customer_id IS NOT NULL THEN a.balance"
    " WHEN a.customer_id IS NOT NULL THEN coalesce((SELECT p.balance_after FROM postings p"
    "   WHERE p.program_id = a.program_id AND p.account_id = a.id AND p.posted_at <= $3"
    "   ORDER BY p.posted_at DESC, p.entry_id DESC, p.line DESC LIMIT 1), 0)"
    " ELSE coalesce((SELECT sum(p.amount) FROM postings p WHERE p.program_id = a.program_id"
    "   AND p.account_id = a.id AND ($3::timestamptz IS NULL OR p.posted_at <= $3)), 0)::bigint END AS balance"
    " FROM accounts a WHERE a.program_id = $1 AND a.id = $2"
)


async def account_balance(program_id: str, account_id: int, as_of: datetime | None) -> AccountBalance:
    """An account's balance now or at any instant (a lookup of the posting's balance after)."""
    if as_of is not None:
        as_of = _check_instant(as_of, "as_of")
    async with snapshot() as connection:
        return await _balance_as_of(connection, program_id, account_id, as_of)


async def _balance_as_of(
    connection: asyncpg.Connection, program_id: str, account_id: int, as_of: datetime | None
) -> AccountBalance:
    row = await connection.fetchrow(_BALANCE_AS_OF, program_id, account_id, as_of)
    if row is None:
        raise NotFound(f"account {account_id} not found", field="account_id")
    return AccountBalance(
        account_id=row["id"],
        code=row["code"],
        kind=row["kind"],
        unit=row["unit"],
        customer_id=row["customer_id"],
        balance=row["balance"],
        as_of=as_of,
    )


async def list_accounts(
    program_id: str, customer_id: str | None, limit: int, after: int | None
) -> tuple[list[AccountBalance], int | None]:
    """Accounts (system accounts first), with current balances, a page at a time."""
    async with snapshot() as connection:
        rows = await connection.fetch(
            "SELECT a.id FROM accounts a WHERE a.program_id = $1"
            " AND ($2::text IS NULL OR a.customer_id = $2) AND ($3::bigint IS NULL OR a.id > $3)"
            " ORDER BY a.id LIMIT $4",
            program_id,
            customer_id,
            after,
            limit + 1,
        )
        items = [await _balance_as_of(connection, program_id, row["id"], None) for row in rows[:limit]]
    return items, (items[-1].account_id if len(rows) > limit else None)


class ExpiringPoints(msgspec.Struct, frozen=True):
    date: date
    points: int


class CustomerBalance(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    available: int
    pending: int
    held: int
    credit_available: int
    credit_held: int
    owed: int  # points owed after refunds of points already spent (zero or below)
    expiring: list[ExpiringPoints]


async def customer_balance(program_id: str, customer_id: str, now: datetime, days: int = 30) -> CustomerBalance:
    """A customer's balances, and the points whose last valid day is one of the next `days`
    local days (today the first)."""
    async with autocommit() as connection:  # one statement: one snapshot, one round trip
        rows = await connection.fetch(
            "SELECT a.kind, a.balance, NULL::date AS last_day FROM accounts a"
            " WHERE a.program_id = $1 AND a.customer_id = $2"
            " UNION ALL"
            " SELECT NULL, sum(l.remaining)::bigint,"
            " ((l.expires_at - interval '1 microsecond') AT TIME ZONE p.time_zone)::date FROM lots l"
            " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
            " JOIN programs p ON p.id = l.program_id"
            " WHERE l.program_id = $1 AND a.customer_id = $2 AND a.kind = 'available' AND l.remaining > 0"
            # the window is `days` local days, today the first, by the last valid day the list
            # names (a day a clock change makes 23 or 25 hours long is still one day). The local
            # midnight `days` days ahead bounds the lots read, but only roughly: `::timestamp AT
            # TIME ZONE` reads a repeated midnight as its second instant, an hour after the day
            # starts (service.domain.expiry.local_midnight's first), a skipped one as the first
            " AND l.expires_at > $3"
            " AND l.expires_at <= ((($3 AT TIME ZONE p.time_zone)::date + $4::integer)::timestamp"
            " AT TIME ZONE p.time_zone)"
            " AND ((l.expires_at - interval '1 microsecond') AT TIME ZONE p.time_zone)::date"
            " < ($3 AT TIME ZONE p.time_zone)::date + $4::integer GROUP BY 3"
            " ORDER BY 3 NULLS FIRST",
            program_id,
            customer_id,
            now,
            days,
        )
    expiring = [row for row in rows if row["kind"] is None]
    rows = [row for row in rows if row["kind"] is not None]
    if not rows:
        raise NotFound(f"customer {customer_id} not found", field="customer_id")
    balances = {row["kind"]: row["balance"] for row in rows}
    return CustomerBalance(
        customer_id=customer_id,
        available=balances["available"],
        pending=balances["pending"],
        held=balances["held"],
        credit_available=balances["credit_available"],
        credit_held=balances["credit_held"],
        owed=balances["owed"],
        expiring=[ExpiringPoints(row["last_day"], row["balance"]) for row in expiring],
    )


# --- Statements ----------------------------------------------------------------------


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    entry_id: int
    line: int
    kind: str
    posted_at: datetime
    amount: int
    balance_after: int
    metadata: dict[str, Any]


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    account: AccountBalance
    opening_balance: int
    lines: list[StatementLine]
    next_cursor: str | None


def _cursor(line: StatementLine) -> str:
    """An opaque cursor in URL-safe characters, so it can be sent back as it came."""
    return b64url(f"{line.posted_at.isoformat()}|{line.entry_id}|{line.line}".encode())


def _parse_cursor(cursor: str) -> tuple[datetime, int, int]:
    """The (posted_at, entry id, line) a statement cursor stands for; InvalidInput naming
    `cursor` otherwise, also for values the database cannot take (an instant without an
    offset or out of range, an entry id past bigint, a line past smallint)."""
    try:
        # cursors given before they were encoded (`posted_at|entry|line`) are still read
        raw = cursor if "|" in cursor else unb64url(cursor).decode()
        posted, entry, line = raw.split("|")
        after = datetime.fromisoformat(posted), int(entry), int(line)
    except ValueError:
        raise InvalidInput("malformed cursor", field="cursor") from None
    posted_at, entry_id, line_number = after
    in_range = 0 <= entry_id <= MAX_ROW_ID and 0 <= line_number <= MAX_LINE
    if posted_at.utcoffset() is None or not FIRST_INSTANT <= posted_at < LAST_INSTANT or not in_range:
        raise InvalidInput("malformed cursor", field="cursor")
    return after


async def statement(
    program_id: str, account_id: int, start: datetime, end: datetime, limit: int, cursor: str | None
) -> Statement:
    """Postings of one account in [start, end) with the running balance, a page at a time."""
    start, end = _check_period(start, end)
    # before every posting at `start` (entry ids are positive), after every posting before it;
    # a cursor from before `start` (of a longer period) goes on from `start`
    after = max(_parse_cursor(cursor), (start, 0, 0)) if cursor else (start, 0, 0)
    async with snapshot() as connection:
        account = await _balance_as_of(connection, program_id, account_id, end - timedelta(microseconds=1))
        opening = await connection.fetchval(
            "SELECT coalesce(sum(amount), 0)::bigint FROM postings WHERE program_id = $1 AND account_id = $2"
            " AND (posted_at, entry_id, line) <= ($3, $4, $5)",
            program_id,
            account_id,
            *after,
        )
        rows = await connection.fetch(
            "SELECT p.entry_id, p.line, e.kind, p.posted_at, p.amount, e.metadata FROM postings p"
            " JOIN entries e ON e.program_id = p.program_id AND e.id = p.entry_id"
            " WHERE p.program_id = $1 AND p.account_id = $2 AND (p.posted_at, p.entry_id, p.line) > ($3, $4, $5)"
            " AND p.posted_at < $6 ORDER BY p.posted_at, p.entry_id, p.line LIMIT $7",
            program_id,
            account_id,
            *after,
            end,
            limit + 1,
        )
    running = opening
    lines: list[StatementLine] = []
    for row in rows[:limit]:
        running += row["amount"]
        lines.append(
            StatementLine(
                entry_id=row["entry_id"],
                line=row["line"],
                kind=row["kind"],
                posted_at=row["posted_at"],
                amount=row["amount"],
                balance_after=running,
                metadata=json.loads(row["metadata"]),
            )
        )
    return Statement(
        account=account,
        opening_balance=opening,
        lines=lines,
        next_cursor=_cursor(lines[-1]) if len(rows) > limit else None,
    )


# --- Trial balance, liability, activity ----------------------------------------------


class TrialBalanceRow(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    unit: str
    normal_side: str
    accounts: int
    debit: int
    credit: int
    balance: int  # credit - debit


class UnitTotals(msgspec.Struct, frozen=True, kw_only=True):
    unit: str
    debit: int
    credit: int
    balanced: bool


class TrialBalance(msgspec.Struct, frozen=True, kw_only=True):
    as_of: datetime
    rows: list[TrialBalanceRow]
    totals: list[UnitTotals]


async def trial_balance(program_id: str, as_of: datetime) -> TrialBalance:
    """Debit and credit totals per account kind as of an instant; per unit they must agree."""
    as_of = _check_instant(as_of, "as_of")
    async with snapshot() as connection:
        rows = await connection.fetch(
            # an account counts from when it was opened (or its first posting, if earlier
            # by the writer's clock)
            "SELECT a.kind, a.unit, a.normal_side,"
            " count(DISTINCT a.id) FILTER (WHERE a.created_at <= $2 OR p.account_id IS NOT NULL) AS accounts,"
            " coalesce(sum(-p.amount) FILTER (WHERE p.amount < 0), 0)::bigint AS debit,"
            " coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0)::bigint AS credit"
            " FROM accounts a LEFT JOIN postings p ON p.program_id = a.program_id AND p.account_id = a.id"
            " AND p.posted_at <= $2 WHERE a.program_id = $1 GROUP BY a.kind, a.unit, a.normal_side"
            " ORDER BY a.unit, a.kind",
            program_id,
            as_of,
        )
    result = [
        TrialBalanceRow(
            kind=r["kind"],
            unit=r["unit"],
            normal_side=r["normal_side"],
            accounts=r["accounts"],
            debit=r["debit"],
            credit=r["credit"],
            balance=r["credit"] - r["debit"],
        )
        for r in rows
    ]
    totals = []
    for unit in sorted({row.unit for row in result}):
        debit = sum(row.debit for row in result if row.unit == unit)
        credit = sum(row.credit for row in result if row.unit == unit)
        totals.append(UnitTotals(unit=unit, debit=debit, credit=credit, balanced=debit == credit))
    return TrialBalance(as_of=as_of, rows=result, totals=totals)


class ShopLiability(msgspec.Struct, frozen=True, kw_only=True):
    shop_id: str | None
    points: int
    value_minor: int


class Liability(msgspec.Struct, frozen=True, kw_only=True):
    as_of: datetime
    currency: str
    point_value_minor: int
    points_outstanding: int
    value_minor: int
    credit_outstanding_minor: int
    by_shop: list[ShopLiability]


async def liability(program_id: str, as_of: datetime) -> Liability:
    """Points customers hold (available, pending, held) at an instant, valued at the point value;
    per shop by the customer's enrolling shop."""
    as_of = _check_instant(as_of, "as_of")
    async with snapshot() as connection:
        program = await connection.fetchrow(
            "SELECT currency, point_value_minor FROM programs WHERE id = $1", program_id
        )
        rows = await connection.fetch(
            "SELECT c.shop_id, a.unit, coalesce(sum(last.balance_after), 0)::bigint AS outstanding"
            " FROM accounts a JOIN customers c ON c.program_id = a.program_id AND c.id = a.customer_id"
            " CROSS JOIN LATERAL (SELECT p.balance_after FROM postings p WHERE p.program_id = a.program_id"
            "   AND p.account_id = a.id AND p.posted_at <= $2 ORDER BY p.posted_at DESC, p.entry_id DESC,"
            "   p.line DESC LIMIT 1) AS last"
            " WHERE a.program_id = $1 AND a.kind = ANY($3::text[])"
            " GROUP BY c.shop_id, a.unit ORDER BY c.shop_id NULLS FIRST",
            program_id,
            as_of,
            [kind.value for kind in HELD_BY_CUSTOMERS],
        )
    assert program is not None
    value = program["point_value_minor"]
    by_shop = [
        ShopLiability(shop_id=r["shop_id"], points=r["outstanding"], value_minor=r["outstanding"] * value)
        for r in rows
        if r["unit"] == "POINTS"
    ]
    points = sum(shop.points for shop in by_shop)
    credit = sum(r["outstanding"] for r in rows if r["unit"] == "CREDIT")
    return Liability(
        as_of=as_of,
        currency=program["currency"],
        point_value_minor=value,
        points_outstanding=points,
        value_minor=points * value,
        credit_outstanding_minor=credit,
        by_shop=by_shop,
    )


class Activity(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime
    issued: int
    redeemed: int
    expired: int
    referral_rewards: int
    adjustments: int
    credit_issued: int
    credit_redeemed: int


async def activity(program_id: str, start: datetime, end: datetime) -> Activity:
    """Net movement of each system account in [start, end): points issued, redeemed, expired (breakage)."""
    start, end = _check_period(start, end)
    async with snapshot() as connection:
        rows = await connection.fetch(
            "SELECT a.kind, coalesce(sum(p.amount), 0)::bigint AS net FROM accounts a"
            " LEFT JOIN postings p ON p.program_id = a.program_id AND p.account_id = a.id"
            " AND p.posted_at >= $2 AND p.posted_at < $3"
            " WHERE a.program_id = $1 AND a.customer_id IS NULL GROUP BY a.kind",
            program_id,
            start,
            end,
        )
    net = {row["kind"]: row["net"] for row in rows}
    return Activity(
        start=start,
        end=end,
        issued=-net.get("issued", 0),
        redeemed=net.get("redeemed", 0),
        expired=net.get("expired", 0),
        referral_rewards=-net.get("referral_rewards", 0),
        adjustments=net.get("adjustments", 0),
        credit_issued=-net.get("credit_issued", 0),
        credit_redeemed=net.get("credit_redeemed", 0),
    )


# --- Journal export ------------------------------------------------------------------

JOURNAL_COLUMNS = (
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
)


async def journal_rows(program_id: str, start: datetime, end: datetime) -> AsyncGenerator[tuple[Any, ...], None]:
    """Every posting in [start, end) in journal order, streamed through a server-side cursor."""
    start, end = _check_period(start, end)
    if DB.pool is None:
        raise RuntimeError("connection pool not started")
    acquire = DB.pool.acquire(timeout=DB.acquire_timeout)
    async with (
        acquire as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        cursor = connection.cursor(
            "SELECT e.id, e.posted_at, e.kind, e.actor, e.reverses_entry_id, p.line, a.code, p.unit,"
            " p.amount, p.balance_after, e.metadata FROM entries e"
            " JOIN postings p ON p.program_id = e.program_id AND p.entry_id = e.id"
            " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
            " WHERE e.program_id = $1 AND e.posted_at >= $2 AND e.posted_at < $3"
            " ORDER BY e.posted_at, e.id, p.line",
            program_id,
            start,
            end,
            prefetch=2000,
        )
        async for row in cursor:
            yield tuple(row)


# --- One entry, traced -------------------------------------------------------------

# by the index `lots_entry` (migration 0029): no other index of lots leads with the entry
LOTS_CREATED = (
    "SELECT id, amount, entry_id, earned_at, expires_at FROM lots WHERE program_id = $1 AND entry_id = $2 ORDER BY id"
)


class LotMovement(msgspec.Struct, frozen=True, kw_only=True):
    """Part of a lot this entry consumed, and the entry that earned that lot."""

    lot_id: int
    amount: int
    earned_by_entry_id: int
    earned_at: datetime
    expires_at: datetime | None


class EntryDetail(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    posted_at: datetime
    actor: str
    reverses_entry_id: int | None
    reversed_by_entry_id: int | None
    metadata: dict[str, Any]
    postings: list[WrittenPosting]
    lots_consumed: list[LotMovement]
    lots_created: list[LotMovement]
    seal_seq: int | None


async def entry_detail(program_id: str, entry_id: int) -> EntryDetail:
    """An entry with its postings, the lots it spent (traced to where they were earned) and created."""
    async with snapshot() as connection:
        entry = await connection.fetchrow(
            "SELECT e.id, e.kind, e.posted_at, e.actor, e.reverses_entry_id, e.metadata,"
            " (SELECT r.id FROM entries r WHERE r.program_id = e.program_id AND r.reverses_entry_id = e.id)"
            " AS reversed_by, (SELECT s.seq FROM entry_seals s WHERE s.program_id = e.program_id"
            " AND s.entry_id = e.id) AS seal_seq FROM entries e WHERE e.program_id = $1 AND e.id = $2",
            program_id,
            entry_id,
        )
        if entry is None:
            raise NotFound(f"entry {entry_id} not found", field="entry_id")
        postings = await connection.fetch(
            "SELECT p.line, p.account_id, a.code, p.unit, p.amount, p.balance_after FROM postings p"
            " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
            " WHERE p.program_id = $1 AND p.entry_id = $2 ORDER BY p.line",
            program_id,
            entry_id,
        )
        consumed = await connection.fetch(
            "SELECT l.id, al.amount, l.entry_id, l.earned_at, l.expires_at FROM lot_allocations al"
            " JOIN lots l ON l.program_id = al.program_id AND l.id = al.lot_id"
            " WHERE al.program_id = $1 AND al.entry_id = $2 ORDER BY l.expires_at NULLS LAST, l.id",
            program_id,
            entry_id,
        )
        created = await connection.fetch(LOTS_CREATED, program_id, entry_id)

    def movements(rows: list[asyncpg.Record]) -> list[LotMovement]:
        return [
            LotMovement(lot_id=r[0], amount=r[1], earned_by_entry_id=r[2], earned_at=r[3], expires_at=r[4])
            for r in rows
        ]

    return EntryDetail(
        id=entry["id"],
        kind=entry["kind"],
        posted_at=entry["posted_at"],
        actor=entry["actor"],
        reverses_entry_id=entry["reverses_entry_id"],
        reversed_by_entry_id=entry["reversed_by"],
        metadata=json.loads(entry["metadata"]),
        postings=[
            WrittenPosting(p["line"], p["account_id"], p["code"], p["unit"], p["amount"], p["balance_after"])
            for p in postings
        ],
        lots_consumed=movements(consumed),
        lots_created=movements(created),
        seal_seq=entry["seal_seq"],
    )
