"""Ledger operations: grants and deductions, holds, reversals, expiry."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import msgspec

from service.db.ledger import WrittenEntry, consumed_slices, created_lots, write_entry
from service.db.transaction import in_transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.errors import AlreadyReversed, Conflict, HoldNotOpen, InsufficientPoints, InvalidInput, NotFound
from service.domain.expiry import ExpiryRule, expires_at
from service.domain.ids import new_id
from service.domain.ledger import (
    HOLD_ACCOUNTS,
    AccountKind,
    AccountRef,
    EntryDraft,
    PostingDraft,
    Unit,
    customer_account,
    reversal_of,
    system_account,
    transfer,
)
from service.usecases.group_commit import post_once
from service.usecases.idempotency import fingerprint, run_once
from service.usecases.ledger_settings import ProgramLedgerSettings, forget_settings
from service.usecases.lifecycle import emit_points_redeemed


async def set_expiry_rule(program_id: str, rule: ExpiryRule) -> ExpiryRule:
    """Change how newly earned points expire (lots already earned keep their date)."""

    async def work(connection: asyncpg.Connection) -> ExpiryRule:
        await connection.execute(
            "UPDATE programs SET expiry_policy = $2, expiry_period = $3 WHERE id = $1",
            program_id,
            rule.policy.value,
            rule.period,
        )
        return rule

    try:
        return await in_transaction(work)
    finally:
        forget_settings(program_id)


# --- Adjustments ---------------------------------------------------------------------


class Adjustment(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    amount: int  # positive grants, negative deducts
    unit: Unit = Unit.POINTS
    reason: str


def adjustment_draft(adjustment: Adjustment, settings: ProgramLedgerSettings, now: datetime) -> EntryDraft:
    """A grant moves value from `issued` to the customer (a lot expiring by the program's
    policy); a deduction moves it from the customer to `adjustments`."""
    spendable = HOLD_ACCOUNTS[adjustment.unit][0]
    customer = customer_account(adjustment.customer_id, spendable)
    metadata = {"reason": adjustment.reason}
    points = adjustment.unit is Unit.POINTS
    if adjustment.amount > 0:
        return transfer(
            system_account(AccountKind.ISSUED if points else AccountKind.CREDIT_ISSUED),
            customer,
            adjustment.amount,
            kind="adjustment.grant",
            metadata=metadata,
            lot_expires_at=expires_at(settings.expiry, now, settings.zone) if points else None,
        )
    sink = AccountKind.ADJUSTMENTS if points else AccountKind.CREDIT_ISSUED
    return transfer(
        customer,
        system_account(sink),
        -adjustment.amount,
        kind="adjustment.deduct",
        metadata=metadata,
    )


async def adjust(principal: Principal, adjustment: Adjustment, key: str, clock: Clock) -> WrittenEntry:
    """Grant (positive amount) or deduct (negative) points or credit, with a reason; once per key."""
    if adjustment.amount == 0:
        raise InvalidInput("amount must not be zero", field="amount")
    return await post_once(
        principal.program_id,
        key,
        fingerprint("adjust", adjustment),
        lambda settings, now: adjustment_draft(adjustment, settings, now),
        principal.actor,
        clock.now(),
    )


# --- Reversals -----------------------------------------------------------------------

NOT_REVERSIBLE = ("hold.", "order.", "referral.", "reversal")  # holds resolve; orders (and referrals) are refunded


async def reverse(principal: Principal, entry_id: int, reason: str, key: str, clock: Clock) -> WrittenEntry:
    """Undo an entry with a linked reversing entry; an entry is reversed at most once."""

    async def work(connection: asyncpg.Connection) -> WrittenEntry:
        original = await connection.fetchrow(
            "SELECT kind FROM entries WHERE program_id = $1 AND id = $2",
            principal.program_id,
            entry_id,
        )
        if original is None:
            raise NotFound(f"entry {entry_id} not found", field="entry_id")
        if original["kind"].startswith(NOT_REVERSIBLE):
            raise Conflict(f"a {original['kind']} entry cannot be reversed", field="entry_id")
        # Reversals of one entry take turns, so a late one sees the first and is refused as
        # already reversed (not as short of points, which is what the balance would say).
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('reverse:' || $1 || ':' || $2, 0))",
            principal.program_id,
            str(entry_id),
        )
        already = await connection.fetchval(
            "SELECT id FROM entries WHERE program_id = $1 AND reverses_entry_id = $2",
            principal.program_id,
            entry_id,
        )
        if already is not None:
            raise AlreadyReversed(f"entry {entry_id} was reversed by entry {already}", field="entry_id")
        rows = await connection.fetch(
            "SELECT a.kind, a.customer_id, p.amount FROM postings p"
            " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
            " WHERE p.program_id = $1 AND p.entry_id = $2 ORDER BY p.line",
            principal.program_id,
            entry_id,
        )
        postings = [PostingDraft(AccountRef(AccountKind(r["kind"]), r["customer_id"]), r["amount"]) for r in rows]
        draft = reversal_of(original["kind"], postings, entry_id, reason)
        restored = await consumed_slices(connection, principal.program_id, entry_id)
        customers = sorted({p.account.customer_id for p in postings if p.account.customer_id is not None})
        reclaimed = [
            lot
            for customer in customers
            for lot in await created_lots(connection, principal.program_id, customer, [entry_id])
        ]
        try:
            return await write_entry(
                connection,
                principal.program_id,
                draft,
                actor=principal.actor,
                now=clock.now(),
                restored=restored,
                reclaimed=reclaimed,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyReversed(f"entry {entry_id} was already reversed", field="entry_id") from None
        except InsufficientPoints as short:  # the request has no amount: the entry is what cannot be undone
            short.field = "entry_id"
            raise

    return await run_once(
        principal.program_id,
        key,
        fingerprint("reverse", {"entry_id": entry_id, "reason": reason}),
        WrittenEntry,
        work,
    )


# --- Holds ---------------------------------------------------------------------------


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    customer_id: str
    unit: Unit
    amount: int
    captured: int
    status: str
    expires_at: datetime
    authorize_entry_id: int
    resolve_entry_id: int | None
    created_at: datetime
    resolved_at: datetime | None


class HoldRequest(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    amount: int
    unit: Unit = Unit.POINTS
    expires_in_seconds: int = 900
    reference: str | None = None


_HOLD_COLUMNS = (
    "id, customer_id, unit, amount, captured, status, expires_at, authorize_entry_id,"
    " resolve_entry_id, created_at, resolved_at"
)


def _hold(row: asyncpg.Record | None) -> Hold:
    assert row is not None, "the statement returns the hold row"
    return msgspec.convert(dict(row), Hold)


async def authorize_hold(
    connection: asyncpg.Connection, principal: Principal, request: HoldRequest, now: datetime
) -> Hold:
    """Reserve points: available -> held, until captured, voided or expired."""
    spendable, held, _ = HOLD_ACCOUNTS[request.unit]
    hold_id = new_id("hld")
    entry = await write_entry(
        connection,
        principal.program_id,
        transfer(
            customer_account(request.customer_id, spendable),
            customer_account(request.customer_id, held),
            request.amount,
            kind="hold.authorize",
            metadata={"hold_id": hold_id, "reference": request.reference},
        ),
        actor=principal.actor,
        now=now,
    )
    row = await connection.fetchrow(
        f"INSERT INTO holds (program_id, id, customer_id, unit, amount, status, expires_at,"
        f" authorize_entry_id, metadata, created_at) VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $9)"
        f" RETURNING {_HOLD_COLUMNS}",
        principal.program_id,
        hold_id,
        request.customer_id,
        request.unit.value,
        request.amount,
        now + timedelta(seconds=request.expires_in_seconds),
        entry.id,
        msgspec.json.encode({"reference": request.reference}).decode(),
        entry.posted_at,
    )
    return _hold(row)


async def resolve_hold(
    connection: asyncpg.Connection,
    program_id: str,
    hold_id: str,
    capture: int,
    status: str,
    actor: str,
    now: datetime,
) -> Hold:
    """Capture `capture` of an open hold (the rest returns to available), or void/expire it with 0."""
    row = await connection.fetchrow(
        f"SELECT {_HOLD_COLUMNS}, metadata ->> 'reference' AS reference FROM holds"
        " WHERE program_id = $1 AND id = $2 FOR UPDATE",
        program_id,
        hold_id,
    )
    if row is None:
        raise NotFound(f"hold {hold_id} not found", field="hold_id")
    hold = _hold(row)
    if hold.status != "open":
        raise HoldNotOpen(f"hold {hold_id} is already {hold.status}", field="hold_id", hold_status=hold.status)
    if status == "captured" and now >= hold.expires_at:  # the expiry job voids it on its next run
        raise HoldNotOpen(
            f"hold {hold_id} expired at {hold.expires_at.isoformat()}", field="hold_id", hold_status="expired"
        )
    if not 0 <= capture <= hold.amount:
        raise InvalidInput(f"capture must be between 0 and {hold.amount}", field="amount")
    spendable, held, captured_to = HOLD_ACCOUNTS[hold.unit]
    postings = [PostingDraft(customer_account(hold.customer_id, held), -hold.amount)]
    if capture:
        postings.append(PostingDraft(system_account(captured_to), capture))
    if hold.amount - capture:
        postings.append(PostingDraft(customer_account(hold.customer_id, spendable), hold.amount - capture))
    kind = {"captured": "hold.capture", "voided": "hold.void", "expired": "hold.expire"}[status]
    # the hold takes out of `held` the lots its authorization put there, not the
    # soonest-expiring ones of every open hold of the customer, so what it returns keeps
    # the dates of the points it reserved
    reserved = await created_lots(connection, program_id, hold.customer_id, [hold.authorize_entry_id])
    entry = await write_entry(
        connection,
        program_id,
        EntryDraft(kind=kind, postings=tuple(postings), metadata={"hold_id": hold_id, "captured": capture}),
        actor=actor,
        now=now,
        reclaimed=reserved,
    )
    updated = await connection.fetchrow(
        f"UPDATE holds SET status = $3, captured = $4, resolve_entry_id = $5, resolved_at = $6"
        f" WHERE program_id = $1 AND id = $2 RETURNING {_HOLD_COLUMNS}",
        program_id,
        hold_id,
        status,
        capture,
        entry.id,
        entry.posted_at,
    )
    if status == "captured" and capture and hold.unit is Unit.POINTS:
        await emit_points_redeemed(
            connection, program_id, hold_id, hold.customer_id, capture, entry.id, row["reference"], entry.posted_at
        )
    return _hold(updated)


async def hold_points(principal: Principal, request: HoldRequest, key: str, clock: Clock) -> Hold:
    """Idempotent authorize."""
    if request.amount <= 0:
        raise InvalidInput("amount must be positive", field="amount")

    async def work(connection: asyncpg.Connection) -> Hold:
        return await authorize_hold(connection, principal, request, clock.now())

    return await run_once(principal.program_id, key, fingerprint("hold", request), Hold, work)


async def capture_hold(principal: Principal, hold_id: str, amount: int | None, key: str, clock: Clock) -> Hold:
    """Idempotent capture, in full (amount None) or in part."""

    async def work(connection: asyncpg.Connection) -> Hold:
        capture = amount
        if capture is None:
            capture = await connection.fetchval(
                "SELECT amount FROM holds WHERE program_id = $1 AND id = $2",
                principal.program_id,
                hold_id,
            )
            if capture is None:
                raise NotFound(f"hold {hold_id} not found", field="hold_id")
        return await resolve_hold(
            connection,
            principal.program_id,
            hold_id,
            capture,
            "captured",
            principal.actor,
            clock.now(),
        )

    request = {"hold_id": hold_id, "amount": amount}
    return await run_once(principal.program_id, key, fingerprint("capture", request), Hold, work)


async def void_hold(principal: Principal, hold_id: str, key: str, clock: Clock) -> Hold:
    """Idempotent void: everything held returns to available."""

    async def work(connection: asyncpg.Connection) -> Hold:
        return await resolve_hold(connection, principal.program_id, hold_id, 0, "voided", principal.actor, clock.now())

    return await run_once(principal.program_id, key, fingerprint("void", {"hold_id": hold_id}), Hold, work)


async def get_hold(program_id: str, hold_id: str) -> Hold:
    async def work(connection: asyncpg.Connection) -> Hold:
        row = await connection.fetchrow(
            f"SELECT {_HOLD_COLUMNS} FROM holds WHERE program_id = $1 AND id = $2",
            program_id,
            hold_id,
        )
        if row is None:
            raise NotFound(f"hold {hold_id} not found", field="hold_id")
        return _hold(row)

    return await in_transaction(work)
