"""Publish versioned earning rules and quote what an order earns under the rules in force."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from service.db.transaction import in_transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.earning import NEUTRAL_BP, Award, Campaign, EarningRules, Order, calculate_award, checked_rules
from service.domain.errors import InvalidInput, NotFound
from service.usecases.idempotency import fingerprint, run_once


class RulesDraft(msgspec.Struct, frozen=True, kw_only=True):
    """A rule set to publish: everything but its version, which publishing assigns."""

    currency: str
    points_per_unit: int
    unit_minor: int
    category_multipliers: dict[str, int] = {}
    campaigns: tuple[Campaign, ...] = ()
    minimum_order_minor: int = 0
    order_cap: int | None = None
    effective_from: datetime | None = None  # None: from the moment it is published


class PublishedRules(msgspec.Struct, frozen=True, kw_only=True):
    rules: EarningRules
    published_by: str
    published_at: datetime


def _published(row: asyncpg.Record) -> PublishedRules:
    return PublishedRules(
        rules=msgspec.json.decode(row["rules"], type=EarningRules),
        published_by=row["published_by"],
        published_at=row["published_at"],
    )


async def publish_rules(principal: Principal, draft: RulesDraft, key: str, clock: Clock) -> PublishedRules:
    """Publish the next version. It may start now or later, never in the past, never before
    the latest version and never at or before an order already placed (ahead of the clock),
    so no placed order's rules ever change."""

    async def work(connection: asyncpg.Connection) -> PublishedRules:
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('earning-rules:' || $1, 0))", principal.program_id
        )
        now = clock.now()
        latest = await connection.fetchrow(
            "SELECT version, effective_from FROM earning_rule_sets WHERE program_id = $1 ORDER BY version DESC LIMIT 1",
            principal.program_id,
        )
        effective_from = (draft.effective_from or now).astimezone(UTC)  # answered in UTC, as every timestamp
        if effective_from < now:
            raise InvalidInput("effective_from is in the past: placed orders keep their rules", field="effective_from")
        if latest is not None and effective_from < latest["effective_from"]:
            raise InvalidInput(
                f"effective_from is before version {latest['version']}'s ({latest['effective_from'].isoformat()})",
                field="effective_from",
            )
        # an order placed ahead of the clock (a till may run FUTURE_TOLERANCE ahead) earned
        # under the version in force when it arrived: a version starting at or before its
        # placed_at would change its rules (such orders take this lock, shared, while placed)
        ahead = await connection.fetchrow(
            "SELECT shop_id, id, placed_at FROM orders WHERE program_id = $1 AND placed_at > created_at"
            " AND placed_at >= $2 ORDER BY placed_at DESC LIMIT 1",
            principal.program_id,
            effective_from,
        )
        if ahead is not None:
            raise InvalidInput(
                f"effective_from is not after order {ahead['id']} of shop {ahead['shop_id']}, placed at"
                f" {ahead['placed_at'].astimezone(UTC).isoformat()} under the rules in force then",
                field="effective_from",
            )
        fields = msgspec.structs.asdict(draft) | {"effective_from": effective_from}
        rules = checked_rules(EarningRules(version=(latest["version"] if latest else 0) + 1, **fields))
        row = await connection.fetchrow(
            "INSERT INTO earning_rule_sets (program_id, version, effective_from, rules, published_by, published_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING rules, published_by, published_at",
            principal.program_id,
            rules.version,
            rules.effective_from,
            msgspec.json.encode(rules).decode(),
            principal.actor,
            now,
        )
        assert row is not None
        return _published(row)

    return await run_once(principal.program_id, key, fingerprint("publish-rules", draft), PublishedRules, work)


async def rule_versions(program_id: str) -> list[PublishedRules]:
    """Every published version, newest first."""

    async def work(connection: asyncpg.Connection) -> list[PublishedRules]:
        rows = await connection.fetch(
            "SELECT rules, published_by, published_at FROM earning_rule_sets WHERE program_id = $1"
            " ORDER BY version DESC",
            program_id,
        )
        return [_published(row) for row in rows]

    return await in_transaction(work)


async def rules_in_force(
    connection: asyncpg.Connection, program_id: str, at: datetime, field: str = "placed_at"
) -> EarningRules:
    """The version in force at an instant: the latest one effective by then."""
    row = await connection.fetchrow(
        "SELECT rules, published_by, published_at FROM earning_rule_sets WHERE program_id = $1 AND effective_from <= $2"
        " ORDER BY effective_from DESC, version DESC LIMIT 1",
        program_id,
        at,
    )
    return rules_found(None if row is None else row["rules"], at, field)


def rules_found(raw: str | None, at: datetime, field: str = "placed_at") -> EarningRules:
    """The rules in force at `at` as stored (`earning_rule_sets.rules`); NotFound (naming
    `field`, where the request has the instant) if none were."""
    if raw is None:
        raise NotFound(f"no earning rules were in force at {at.isoformat()}", field=field)
    return msgspec.json.decode(raw, type=EarningRules)


async def quote(program_id: str, order: Order, tier_multiplier_bp: int = NEUTRAL_BP) -> Award:
    """What an order earns under the rules in force when it was placed, rule by rule. A quote
    assumes no campaign bonus was given to the customer before (per-customer caps)."""

    async def work(connection: asyncpg.Connection) -> Award:
        rules = await rules_in_force(connection, program_id, order.placed_at, "order.placed_at")
        zone = await connection.fetchval("SELECT time_zone FROM programs WHERE id = $1", program_id)
        try:
            return calculate_award(order, rules, zone=ZoneInfo(zone), tier_multiplier_bp=tier_multiplier_bp)
        except InvalidInput as refusal:  # the order's fields are under `order` in the quote's body
            if refusal.field is not None and refusal.field != "tier_multiplier_bp":
                refusal.field = f"order.{refusal.field}"
            raise

    return await in_transaction(work)
