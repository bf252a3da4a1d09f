"""Tier rows: the program's configuration, customer tiers, grants, history, and the
qualifying measure read from orders."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from service.db.job_failures import not_waiting
from service.domain.ids import new_id
from service.domain.tiers import Basis, TierConfig


class CustomerTier(msgspec.Struct, kw_only=True):
    customer_id: str
    earned_code: str
    effective_code: str
    since: datetime
    review_at: datetime | None
    grace_ends_at: datetime | None


class TierChange(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    from_code: str | None
    to_code: str
    kind: str
    cause: str
    occurred_at: datetime


class TierGrant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    customer_id: str
    tier_code: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    granted_by: str


async def load_config(connection: asyncpg.Connection, program_id: str) -> TierConfig | None:
    raw = await connection.fetchval("SELECT config FROM tier_configs WHERE program_id = $1", program_id)
    return config_from_json(raw)


# A ladder change holds this advisory lock alone while it replaces the ladder and moves the
# customers of removed levels; whatever settles a customer's tier by the ladder holds it
# shared while it reads the ladder and writes the customer (an order: in `order_inputs`,
# migration 0020), so nobody settles a customer by a ladder replaced under them.
_LADDER_LOCK = "SELECT pg_advisory_xact_lock{}(hashtextextended('tier-config:' || $1, 0))"


async def lock_ladder_to_change(connection: asyncpg.Connection, program_id: str) -> None:
    await connection.execute(_LADDER_LOCK.format(""), program_id)


async def load_config_to_settle(connection: asyncpg.Connection, program_id: str) -> TierConfig | None:
    """The ladder, read under the shared side of the ladder's lock, held to the commit."""
    await connection.execute(_LADDER_LOCK.format("_shared"), program_id)
    return await load_config(connection, program_id)


def config_from_json(raw: str | None) -> TierConfig | None:
    """The ladder stored in `tier_configs.config`, if any."""
    return None if raw is None else msgspec.json.decode(raw, type=TierConfig)


async def save_config(
    connection: asyncpg.Connection, program_id: str, config: TierConfig, actor: str, now: datetime
) -> int:
    """Store the configuration; returns its version."""
    version: int = await connection.fetchval(
        "INSERT INTO tier_configs (program_id, version, config, updated_by, updated_at) VALUES ($1, 1, $2, $3, $4)"
        " ON CONFLICT (program_id) DO UPDATE SET version = tier_configs.version + 1, config = excluded.config,"
        " updated_by = excluded.updated_by, updated_at = excluded.updated_at RETURNING version",
        program_id,
        msgspec.json.encode(config).decode(),
        actor,
        now,
    )
    return version


_TIER_COLUMNS = "customer_id, earned_code, effective_code, since, review_at, grace_ends_at"


async def load_tier(
    connection: asyncpg.Connection, program_id: str, customer_id: str, *, lock: bool = False
) -> CustomerTier | None:
    row = await connection.fetchrow(
        f"SELECT {_TIER_COLUMNS} FROM customer_tiers WHERE program_id = $1 AND customer_id = $2"
        + (" FOR UPDATE" if lock else ""),
        program_id,
        customer_id,
    )
    return None if row is None else msgspec.convert(dict(row), CustomerTier)


async def save_tier(connection: asyncpg.Connection, program_id: str, tier: CustomerTier, now: datetime) -> None:
    await connection.execute(
        f"INSERT INTO customer_tiers (program_id, {_TIER_COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (program_id, customer_id) DO UPDATE SET earned_code = excluded.earned_code,"
        " effective_code = excluded.effective_code, since = excluded.since, review_at = excluded.review_at,"
        " grace_ends_at = excluded.grace_ends_at, updated_at = excluded.updated_at",
        program_id,
        tier.customer_id,
        tier.earned_code,
        tier.effective_code,
        tier.since,
        tier.review_at,
        tier.grace_ends_at,
        now,
    )


async def record_change(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    from_code: str | None,
    to_code: str,
    kind: str,
    cause: str,
    now: datetime,
) -> None:
    await connection.execute(
        "INSERT INTO tier_changes (program_id, id, customer_id, from_code, to_code, kind, cause, occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        program_id,
        new_id("tch"),
        customer_id,
        from_code,
        to_code,
        kind,
        cause,
        now,
    )


async def changes(connection: asyncpg.Connection, program_id: str, customer_id: str) -> list[TierChange]:
    rows = await connection.fetch(
        "SELECT id, from_code, to_code, kind, cause, occurred_at FROM tier_changes"
        " WHERE program_id = $1 AND customer_id = $2 ORDER BY occurred_at DESC, id DESC",
        program_id,
        customer_id,
    )
    return [msgspec.convert(dict(row), TierChange) for row in rows]


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """What a tier is measured on: the basis, over the orders placed since `since` (None: all)."""

    basis: Basis
    since: datetime | None

    def value(self, row: str) -> str:
        """The measure of a row of `orders` named `row` in SQL, net of refunds."""
        earned, taken_back = ("points", "clawed_back") if self.basis is Basis.POINTS else ("net", "refunded_net")
        return f"{row}.{earned} - {row}.{taken_back}"


async def measure(
    connection: asyncpg.Connection, program_id: str, customer_id: str, basis: Basis, since: datetime | None
) -> int:
    """Qualifying points or net spend of the customer's orders placed since `since`, net of refunds."""
    value: int = await connection.fetchval(
        f"SELECT coalesce(sum({Window(basis=basis, since=since).value('orders')}), 0)::bigint FROM orders"
        " WHERE program_id = $1 AND customer_id = $2 AND ($3::timestamptz IS NULL OR placed_at >= $3)",
        program_id,
        customer_id,
        since,
    )
    return value


_GRANT_COLUMNS = "id, customer_id, tier_code, starts_at, ends_at, reason, granted_by"


async def insert_grant(connection: asyncpg.Connection, program_id: str, grant: TierGrant) -> None:
    await connection.execute(
        f"INSERT INTO tier_grants (program_id, {_GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        program_id,
        grant.id,
        grant.customer_id,
        grant.tier_code,
        grant.starts_at,
        grant.ends_at,
        grant.reason,
        grant.granted_by,
    )


async def end_grant(connection: asyncpg.Connection, program_id: str, grant_id: str, now: datetime) -> None:
    """Move a grant's end to now (to just after its start, if it started now)."""
    await connection.execute(
        "UPDATE tier_grants SET ends_at = greatest($3, starts_at + interval '1 microsecond')"
        " WHERE program_id = $1 AND id = $2 AND ends_at > $3",
        program_id,
        grant_id,
        now,
    )


async def grants_in_force(
    connection: asyncpg.Connection, program_id: str, customer_id: str, now: datetime
) -> list[TierGrant]:
    rows = await connection.fetch(
        f"SELECT {_GRANT_COLUMNS} FROM tier_grants WHERE program_id = $1 AND customer_id = $2"
        " AND starts_at <= $3 AND ends_at > $3 ORDER BY ends_at DESC",
        program_id,
        customer_id,
        now,
    )
    return [msgspec.convert(dict(row), TierGrant) for row in rows]


async def ended_grants(
    connection: asyncpg.Connection, program_id: str, now: datetime, limit: int, job: str
) -> list[str]:
    """Customers with a grant that ended and whose tier has not been recomputed since (but
    for those waiting for a retry of `job` after a failure)."""
    rows = await connection.fetch(
        "SELECT DISTINCT customer_id FROM tier_grants WHERE program_id = $1 AND closed_at IS NULL AND ends_at <= $2"
        f" AND {not_waiting('$4', '$2', 'tier_grants.customer_id')} LIMIT $3",
        program_id,
        now,
        limit,
        job,
    )
    return [row["customer_id"] for row in rows]


async def close_grants(connection: asyncpg.Connection, program_id: str, customer_id: str, now: datetime) -> None:
    await connection.execute(
        "UPDATE tier_grants SET closed_at = $3 WHERE program_id = $1 AND customer_id = $2"
        " AND closed_at IS NULL AND ends_at <= $3",
        program_id,
        customer_id,
        now,
    )


async def due_reviews(
    connection: asyncpg.Connection, program_id: str, now: datetime, limit: int, job: str
) -> list[str]:
    """Customers whose tier review is due, the longest due first (but for those waiting for a
    retry of `job` after a failure)."""
    rows = await connection.fetch(
        "SELECT customer_id FROM customer_tiers WHERE program_id = $1 AND review_at IS NOT NULL"
        " AND coalesce(grace_ends_at, review_at) <= $2"
        f" AND {not_waiting('$4', '$2', 'customer_tiers.customer_id')}"
        " ORDER BY coalesce(grace_ends_at, review_at) LIMIT $3",
        program_id,
        now,
        limit,
        job,
    )
    return [row["customer_id"] for row in rows]


async def customers_outside(connection: asyncpg.Connection, program_id: str, codes: list[str]) -> list[str]:
    """Customers whose earned or effective tier is not one of `codes`."""
    rows = await connection.fetch(
        "SELECT customer_id FROM customer_tiers WHERE program_id = $1"
        " AND NOT (earned_code = ANY($2::text[]) AND effective_code = ANY($2::text[]))",
        program_id,
        codes,
    )
    return [row["customer_id"] for row in rows]


async def warnings_due(
    connection: asyncpg.Connection, program_id: str, now: datetime, warning_days: int, limit: int
) -> list[tuple[str, str, datetime]]:
    """(customer, tier, downgrade instant) of customers whose grace period ends within
    `warning_days` and who were not warned of it yet (`downgrade_warned_for`), by the end."""
    rows = await connection.fetch(
        "SELECT customer_id, tier_code, grace_ends_at FROM tier_warnings_due($1, $2, $3, $4)",
        program_id,
        now,
        warning_days,
        limit,
    )
    return [(row["customer_id"], row["tier_code"], row["grace_ends_at"]) for row in rows]


async def mark_warned(connection: asyncpg.Connection, program_id: str, warned: list[tuple[str, str, datetime]]) -> None:
    """Record the warnings as out (their rows leave the index of warnings owed), unless the
    grace period changed meanwhile; rows locked in customer order, as two workers would."""
    await connection.execute(
        "UPDATE customer_tiers t SET downgrade_warned_for = x.grace_ends_at"
        " FROM unnest($2::text[], $3::timestamptz[]) AS x(customer_id, grace_ends_at),"
        " (SELECT customer_id FROM customer_tiers WHERE program_id = $1 AND customer_id = ANY($2::text[])"
        "  ORDER BY customer_id FOR NO KEY UPDATE) AS locked"
        " WHERE t.program_id = $1 AND t.customer_id = locked.customer_id AND t.customer_id = x.customer_id"
        " AND t.grace_ends_at = x.grace_ends_at",
        program_id,
        [customer_id for customer_id, _, _ in warned],
        [grace_ends_at for _, _, grace_ends_at in warned],
    )
