"""Referral rows: settings, codes, referrals, their rewards, fingerprints, and the stats."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service.db.job_failures import not_waiting
from service.domain.referrals import ReferralSettings


class CodeRow(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    customer_id: str
    vanity: bool
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None
    retired_at: datetime | None


class RewardRow(msgspec.Struct, frozen=True, kw_only=True):
    """A reward paid for a referral: its ledger entry or tier grant, and any clawback."""

    id: str
    referral_id: str
    beneficiary_id: str
    role: str  # referrer, referee or milestone
    milestone: int | None
    kind: str  # points, credit or tier
    amount: int | None
    tier_code: str | None
    entry_id: int | None
    tier_grant_id: str | None
    note: str | None
    created_at: datetime
    clawed_back_at: datetime | None
    clawback_entry_id: int | None
    clawed_back: int
    owed: int
    forgiven: int


class ReferralRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    code: str
    referrer_id: str
    referee_id: str
    status: str
    redeemed_at: datetime
    redeemed_by: str
    qualified_at: datetime | None
    shop_id: str | None
    order_id: str | None
    reward_due_at: datetime | None
    rewarded_at: datetime | None
    cancelled_at: datetime | None
    note: str | None


def _convert(row: asyncpg.Record, kind: type[Any]) -> Any:
    return msgspec.convert(dict(row), kind)


# --- Settings --------------------------------------------------------------------------


async def load_settings(connection: asyncpg.Connection, program_id: str) -> ReferralSettings:
    """The program's settings, or the defaults (disabled) if none were set."""
    return settings_from_json(
        await connection.fetchval("SELECT settings FROM referral_settings WHERE program_id = $1", program_id)
    )


def settings_from_json(raw: str | None) -> ReferralSettings:
    """The settings stored in `referral_settings.settings`, or the defaults (disabled)."""
    return ReferralSettings() if raw is None else msgspec.json.decode(raw, type=ReferralSettings)


async def save_settings(
    connection: asyncpg.Connection, program_id: str, settings: ReferralSettings, actor: str, now: datetime
) -> None:
    await connection.execute(
        "INSERT INTO referral_settings (program_id, settings, updated_by, updated_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (program_id) DO UPDATE SET settings = excluded.settings, updated_by = excluded.updated_by,"
        " updated_at = excluded.updated_at",
        program_id,
        msgspec.json.encode(settings).decode(),
        actor,
        now,
    )


# --- Codes -----------------------------------------------------------------------------

_CODE_COLUMNS = "code, customer_id, vanity, created_at, disabled_at, disabled_reason, retired_at"


async def current_code(connection: asyncpg.Connection, program_id: str, customer_id: str) -> CodeRow | None:
    row = await connection.fetchrow(
        f"SELECT {_CODE_COLUMNS} FROM referral_codes WHERE program_id = $1 AND customer_id = $2 AND retired_at IS NULL",
        program_id,
        customer_id,
    )
    return None if row is None else _convert(row, CodeRow)


async def insert_code(
    connection: asyncpg.Connection,
    program_id: str,
    code: str,
    customer_id: str,
    vanity: bool,
    actor: str,
    now: datetime,
) -> bool:
    """Store a code for the customer; False if the code is taken or the customer has one already."""
    inserted = await connection.fetchval(
        "INSERT INTO referral_codes (program_id, code, customer_id, vanity, created_at, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
        program_id,
        code,
        customer_id,
        vanity,
        now,
        actor,
    )
    return bool(inserted)


async def code_exists(connection: asyncpg.Connection, program_id: str, code: str) -> bool:
    found = await connection.fetchval(
        "SELECT true FROM referral_codes WHERE program_id = $1 AND code = $2", program_id, code
    )
    return bool(found)


async def lock_code(connection: asyncpg.Connection, program_id: str, code: str) -> CodeRow | None:
    """The code's row, locked while a redemption (or an admin) decides."""
    row = await connection.fetchrow(
        f"SELECT {_CODE_COLUMNS} FROM referral_codes WHERE program_id = $1 AND code = $2 FOR UPDATE",
        program_id,
        code,
    )
    return None if row is None else _convert(row, CodeRow)


async def retire_code(connection: asyncpg.Connection, program_id: str, code: str, now: datetime) -> None:
    await connection.execute(
        "UPDATE referral_codes SET retired_at = $3 WHERE program_id = $1 AND code = $2", program_id, code, now
    )


async def set_disabled(
    connection: asyncpg.Connection, program_id: str, code: str, reason: str | None, now: datetime
) -> CodeRow:
    row = await connection.fetchrow(
        f"UPDATE referral_codes SET disabled_at = $3, disabled_reason = $4 WHERE program_id = $1 AND code = $2"
        f" RETURNING {_CODE_COLUMNS}",
        program_id,
        code,
        None if reason is None else now,
        reason,
    )
    assert row is not None
    code_row: CodeRow = _convert(row, CodeRow)
    return code_row


# --- Customers and fingerprints --------------------------------------------------------


async def customer(
    connection: asyncpg.Connection, program_id: str, customer_id: str, *, lock: bool = False
) -> asyncpg.Record | None:
    """The customer's email and enrolment time (the row locked if asked)."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT id, email, enrolled_at FROM customers WHERE program_id = $1 AND id = $2"
        + (" FOR NO KEY UPDATE" if lock else ""),
        program_id,
        customer_id,
    )
    return row


async def fingerprints(
    connection: asyncpg.Connection, program_id: str, customer_id: str
) -> tuple[frozenset[str], frozenset[str]]:
    """The customer's device hashes and payment fingerprints."""
    rows = await connection.fetch(
        "SELECT kind, hash FROM customer_fingerprints WHERE program_id = $1 AND customer_id = $2",
        program_id,
        customer_id,
    )
    devices = frozenset(row["hash"] for row in rows if row["kind"] == "device")
    return devices, frozenset(row["hash"] for row in rows if row["kind"] == "payment")


async def add_fingerprints(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    devices: Sequence[str],
    payments: Sequence[str],
    now: datetime,
) -> None:
    kinds = ["device"] * len(devices) + ["payment"] * len(payments)
    await connection.execute(
        "INSERT INTO customer_fingerprints (program_id, customer_id, kind, hash, created_at)"
        " SELECT $1, $2, k, h, $5 FROM unnest($3::text[], $4::text[]) AS f(k, h) ON CONFLICT DO NOTHING",
        program_id,
        customer_id,
        kinds,
        [*devices, *payments],
        now,
    )


async def order_count(connection: asyncpg.Connection, program_id: str, customer_id: str) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM orders WHERE program_id = $1 AND customer_id = $2", program_id, customer_id
    )
    return count


# --- Referrals -------------------------------------------------------------------------

_REFERRAL_COLUMNS = (
    "id, code, referrer_id, referee_id, status, redeemed_at, redeemed_by, qualified_at, shop_id, order_id,"
    " reward_due_at, rewarded_at, cancelled_at, note"
)


def _referral(row: asyncpg.Record | None) -> ReferralRow | None:
    return None if row is None else _convert(row, ReferralRow)


async def referral_of_referee(connection: asyncpg.Connection, program_id: str, referee_id: str) -> ReferralRow | None:
    row = await connection.fetchrow(
        f"SELECT {_REFERRAL_COLUMNS} FROM referrals WHERE program_id = $1 AND referee_id = $2", program_id, referee_id
    )
    return _referral(row)


async def recent_count(connection: asyncpg.Connection, program_id: str, referrer_id: str, since: datetime) -> int:
    """The referrer's referrals redeemed since `since`, cancelled ones left out."""
    count: int = await connection.fetchval(
        "SELECT count(*) FROM referrals WHERE program_id = $1 AND referrer_id = $2 AND redeemed_at > $3"
        " AND status <> 'cancelled'",
        program_id,
        referrer_id,
        since,
    )
    return count


async def insert_referral(connection: asyncpg.Connection, program_id: str, values: dict[str, Any]) -> ReferralRow:
    row = await connection.fetchrow(
        f"INSERT INTO referrals (program_id, id, code, referrer_id, referee_id, status, redeemed_at, redeemed_by)"
        f" VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) RETURNING {_REFERRAL_COLUMNS}",
        program_id,
        values["id"],
        values["code"],
        values["referrer_id"],
        values["referee_id"],
        values["redeemed_at"],
        values["redeemed_by"],
    )
    referral = _referral(row)
    assert referral is not None
    return referral


async def lock_of_order(
    connection: asyncpg.Connection, program_id: str, shop_id: str, order_id: str
) -> ReferralRow | None:
    """The qualified or rewarded referral the order qualified, locked."""
    row = await connection.fetchrow(
        f"SELECT {_REFERRAL_COLUMNS} FROM referrals WHERE program_id = $1 AND shop_id = $2 AND order_id = $3"
        " AND status IN ('qualified', 'rewarded') FOR UPDATE",
        program_id,
        shop_id,
        order_id,
    )
    return _referral(row)


async def qualify(
    connection: asyncpg.Connection,
    program_id: str,
    referral_id: str,
    shop_id: str,
    order_id: str,
    due_at: datetime,
    now: datetime,
    placed_since: datetime,
) -> ReferralRow | None:
    """Qualify the pending referral by the order; None if it was redeemed after `placed_since`
    (the order was placed before the referral existed)."""
    row = await connection.fetchrow(
        f"UPDATE referrals SET status = 'qualified', qualified_at = $5, shop_id = $3, order_id = $4,"
        f" reward_due_at = $6 WHERE program_id = $1 AND id = $2 AND redeemed_at <= $7 RETURNING {_REFERRAL_COLUMNS}",
        program_id,
        referral_id,
        shop_id,
        order_id,
        now,
        due_at,
        placed_since,
    )
    return _referral(row)


async def mark_rewarded(connection: asyncpg.Connection, program_id: str, referral_id: str, now: datetime) -> None:
    await connection.execute(
        "UPDATE referrals SET status = 'rewarded', rewarded_at = $3 WHERE program_id = $1 AND id = $2",
        program_id,
        referral_id,
        now,
    )


async def mark_cancelled(
    connection: asyncpg.Connection, program_id: str, referral_id: str, note: str, now: datetime
) -> None:
    await connection.execute(
        "UPDATE referrals SET status = 'cancelled', cancelled_at = $3, note = $4 WHERE program_id = $1 AND id = $2",
        program_id,
        referral_id,
        now,
        note,
    )


async def claim_due(
    connection: asyncpg.Connection, program_id: str, now: datetime, job: str, skip: Sequence[str]
) -> ReferralRow | None:
    """Claim one qualified referral whose order was released or whose reward time passed; the
    referral and its order are locked together, skipping those another transaction holds
    (a refund of the order, another worker), those waiting for a retry of `job` after a
    failure, and those in `skip`."""
    row = await connection.fetchrow(
        f"SELECT {', '.join('r.' + c.strip() for c in _REFERRAL_COLUMNS.split(','))} FROM referrals r"
        " JOIN orders o ON o.program_id = r.program_id AND o.shop_id = r.shop_id AND o.id = r.order_id"
        " WHERE r.program_id = $1 AND r.status = 'qualified' AND (r.reward_due_at <= $2 OR o.released_at IS NOT NULL)"
        f" AND {not_waiting('$3', '$2', 'r.id')} AND r.id <> ALL($4::text[])"
        " ORDER BY r.reward_due_at LIMIT 1 FOR UPDATE OF r, o SKIP LOCKED",
        program_id,
        now,
        job,
        list(skip),
    )
    return _referral(row)


async def lock_referrer(connection: asyncpg.Connection, program_id: str, referrer_id: str) -> None:
    """Serialise what counts a referrer's rewarded referrals (milestones) in this transaction."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('referrer:' || $1 || ':' || $2, 0))", program_id, referrer_id
    )


async def rewarded_count(connection: asyncpg.Connection, program_id: str, referrer_id: str) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM referrals WHERE program_id = $1 AND referrer_id = $2 AND status = 'rewarded'",
        program_id,
        referrer_id,
    )
    return count


async def held_milestones(connection: asyncpg.Connection, program_id: str, referrer_id: str) -> set[int]:
    """The milestones the referrer was rewarded for and kept (not clawed back)."""
    rows = await connection.fetch(
        "SELECT DISTINCT milestone FROM referral_rewards WHERE program_id = $1 AND beneficiary_id = $2"
        " AND role = 'milestone' AND clawed_back_at IS NULL",
        program_id,
        referrer_id,
    )
    return {row["milestone"] for row in rows}


async def referrals_of(
    connection: asyncpg.Connection, program_id: str, customer_id: str, limit: int, before: str | None
) -> list[ReferralRow]:
    """Referrals where the customer is the referrer or the referee, newest first."""
    rows = await connection.fetch(
        f"SELECT {_REFERRAL_COLUMNS} FROM referrals WHERE program_id = $1 AND (referrer_id = $2 OR referee_id = $2)"
        " AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $3",
        program_id,
        customer_id,
        limit,
        before,
    )
    return [_convert(row, ReferralRow) for row in rows]


# --- Rewards ---------------------------------------------------------------------------

_REWARD_COLUMNS = (
    "id, referral_id, beneficiary_id, role, milestone, kind, amount, tier_code, entry_id, tier_grant_id, note,"
    " created_at, clawed_back_at, clawback_entry_id, clawed_back, owed, forgiven"
)


async def insert_reward(connection: asyncpg.Connection, program_id: str, values: dict[str, Any]) -> None:
    await connection.execute(
        "INSERT INTO referral_rewards (program_id, id, referral_id, beneficiary_id, role, milestone, kind, amount,"
        " tier_code, entry_id, tier_grant_id, note, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
        " $11, $12, $13)",
        program_id,
        values["id"],
        values["referral_id"],
        values["beneficiary_id"],
        values["role"],
        values["milestone"],
        values["kind"],
        values["amount"],
        values["tier_code"],
        values["entry_id"],
        values["tier_grant_id"],
        values["note"],
        values["created_at"],
    )


async def rewards_of(connection: asyncpg.Connection, program_id: str, referral_ids: Sequence[str]) -> list[RewardRow]:
    rows = await connection.fetch(
        f"SELECT {_REWARD_COLUMNS} FROM referral_rewards WHERE program_id = $1 AND referral_id = ANY($2::text[])"
        " ORDER BY created_at, id",
        program_id,
        list(referral_ids),
    )
    return [_convert(row, RewardRow) for row in rows]


async def mark_clawed_back(
    connection: asyncpg.Connection,
    program_id: str,
    reward_id: str,
    entry_id: int | None,
    taken: int,
    owed: int,
    forgiven: int,
    now: datetime,
) -> None:
    await connection.execute(
        "UPDATE referral_rewards SET clawed_back_at = $3, clawback_entry_id = $4, clawed_back = $5, owed = $6,"
        " forgiven = $7 WHERE program_id = $1 AND id = $2",
        program_id,
        reward_id,
        now,
        entry_id,
        taken,
        owed,
        forgiven,
    )


# --- Stats -----------------------------------------------------------------------------

_STATS = """
WITH r AS (
    SELECT count(*) AS redeemed,
           count(*) FILTER (WHERE qualified_at IS NOT NULL) AS qualified,
           count(*) FILTER (WHERE rewarded_at IS NOT NULL) AS rewarded,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE status = 'pending') AS pending
      FROM referrals WHERE program_id = $1 AND ($2::text IS NULL OR referrer_id = $2)
), w AS (
    SELECT coalesce(sum(amount) FILTER (WHERE kind = 'points'), 0)::bigint AS points,
           coalesce(sum(amount) FILTER (WHERE kind = 'credit'), 0)::bigint AS credit,
           count(*) FILTER (WHERE kind = 'tier' AND tier_grant_id IS NOT NULL) AS tier_grants,
           coalesce(sum(clawed_back + owed) FILTER (WHERE kind = 'points'), 0)::bigint AS points_clawed_back,
           coalesce(sum(clawed_back) FILTER (WHERE kind = 'credit'), 0)::bigint AS credit_clawed_back,
           coalesce(sum(forgiven) FILTER (WHERE kind = 'points'), 0)::bigint AS points_forgiven,
           coalesce(sum(forgiven) FILTER (WHERE kind = 'credit'), 0)::bigint AS credit_forgiven,
           count(*) FILTER (WHERE kind = 'tier' AND tier_grant_id IS NOT NULL AND clawed_back_at IS NOT NULL)
               AS tier_grants_ended
      FROM referral_rewards
     WHERE program_id = $1 AND ($2::text IS NULL OR (beneficiary_id = $2 AND role <> 'referee'))
), c AS (
    SELECT count(*) AS codes, count(*) FILTER (WHERE disabled_at IS NOT NULL) AS disabled
      FROM referral_codes WHERE program_id = $1 AND retired_at IS NULL AND ($2::text IS NULL OR customer_id = $2)
)
SELECT * FROM r, w, c
"""


async def stats(connection: asyncpg.Connection, program_id: str, referrer_id: str | None) -> asyncpg.Record:
    """Counts and rewards paid, for the program or (with referrer_id) one referrer: their
    referrals as referrer, and the rewards paid to them as referrer (milestones included)."""
    row: asyncpg.Record | None = await connection.fetchrow(_STATS, program_id, referrer_id)
    assert row is not None
    return row
