"""Tiers: configure the ladder, move customers up on orders and down at reviews, grant
tiers for a period, and show progress and history."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from service.db import job_failures
from service.db import metrics as metric_rows
from service.db import tiers as rows
from service.db.events import emit, emit_once
from service.db.tiers import CustomerTier, TierChange, TierGrant
from service.db.transaction import in_transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.earning import NEUTRAL_BP
from service.domain.errors import InvalidInput, NotFound
from service.domain.events import EventType, TierChanged, TierDowngradeWarning
from service.domain.ids import new_id
from service.domain.tiers import (
    TierConfig,
    TierProgress,
    checked_config,
    downgrade_to,
    grace_end,
    higher,
    progress,
    qualified,
    review_at,
    window_start,
)
from service.usecases.idempotency import fingerprint, run_once
from service.usecases.ledger_settings import ledger_settings

REVIEW_ACTOR = "job:tier-review"
GRANT_ENDED = "granted tier ended"


class TierSettings(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    config: TierConfig


class GrantRequest(msgspec.Struct, frozen=True, kw_only=True):
    tier_code: str
    days: int
    reason: str


def _required(config: TierConfig | None) -> TierConfig:
    if config is None:
        raise NotFound("the program has no tiers configured")
    return config


async def _measure(
    connection: asyncpg.Connection, program_id: str, customer_id: str, config: TierConfig, zone: ZoneInfo, now: datetime
) -> int:
    return await rows.measure(connection, program_id, customer_id, config.basis, window_start(config.window, now, zone))


def _review(config: TierConfig, code: str, since: datetime, zone: ZoneInfo) -> datetime | None:
    return review_at(since, zone) if config.rank(code) > 0 else None  # the base level is never reviewed


async def _current(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    config: TierConfig,
    zone: ZoneInfo,
    now: datetime,
    *,
    lock: bool,
) -> tuple[CustomerTier, bool]:
    """The customer's tier row (locked if asked), or a new one at the level they qualify for;
    and whether the row is stored."""
    tier = await rows.load_tier(connection, program_id, customer_id, lock=lock)
    if tier is not None:
        return tier, True
    if lock:  # a customer's first tier row: lock the customer so two first orders take turns
        found = await connection.fetchval(
            "SELECT 1 FROM customers WHERE program_id = $1 AND id = $2 FOR NO KEY UPDATE", program_id, customer_id
        )
        if found is None:
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        tier = await rows.load_tier(connection, program_id, customer_id, lock=True)
        if tier is not None:
            return tier, True
    level = qualified(config, await _measure(connection, program_id, customer_id, config, zone, now))
    new = CustomerTier(
        customer_id=customer_id,
        earned_code=level.code,
        effective_code=config.levels[0].code,  # what it was before any row: the base level
        since=now,
        review_at=_review(config, level.code, now, zone),
        grace_ends_at=None,
    )
    return new, False


async def _settle(
    connection: asyncpg.Connection,
    program_id: str,
    config: TierConfig,
    tier: CustomerTier,
    now: datetime,
    kind: str,
    cause: str,
    *,
    granted: list[str] | None = None,
    dirty: bool = True,
    previous: TierConfig | None = None,
) -> None:
    """Recompute the effective tier (earned, or a grant in force if higher), record a change,
    save (unless nothing changed and the caller says the stored row is current: dirty=False).
    `granted` are the tier codes of the grants in force at `now` if the caller has them;
    `previous` is the ladder before a change that may have removed the customer's level."""
    if granted is None:
        granted = [g.tier_code for g in await rows.grants_in_force(connection, program_id, tier.customer_id, now)]
    effective = higher(config, [tier.earned_code, *granted])
    if effective != tier.effective_code:
        up = _moved_up(config, tier.effective_code, effective, previous)
        if kind in ("upgrade", "downgrade"):  # the ladder decides the word
            kind = "upgrade" if up else "downgrade"
        await rows.record_change(
            connection, program_id, tier.customer_id, tier.effective_code, effective, kind, cause, now
        )
        changed = TierChanged(
            customer_id=tier.customer_id, from_tier=tier.effective_code, to_tier=effective, reason=cause
        )
        event = EventType.TIER_UPGRADED if up else EventType.TIER_DOWNGRADED
        await emit(connection, program_id, event, changed, tier.customer_id, occurred_at=now)
        tier.effective_code = effective
        dirty = True
    if dirty:
        await rows.save_tier(connection, program_id, tier, now)


async def _settle_ended_grants(
    connection: asyncpg.Connection,
    program_id: str,
    config: TierConfig,
    tier: CustomerTier,
    now: datetime,
    granted: list[str] | None = None,
) -> list[str]:
    """Before a change to a customer's tier: if the stored tier rests on a grant that has
    ended and the job has not settled yet, record its end (`grant_ended`) first, so the change
    made now (an order, a grant, a review) is not recorded and told as its cause. Returns the
    tier codes of the grants in force."""
    if granted is None:
        granted = [g.tier_code for g in await rows.grants_in_force(connection, program_id, tier.customer_id, now)]
    if config.rank(tier.effective_code) > config.rank(higher(config, [tier.earned_code, *granted])):
        await _settle(connection, program_id, config, tier, now, "grant_ended", GRANT_ENDED, granted=granted)
    return granted


class OrderTier(msgspec.Struct, kw_only=True):
    """A customer's tier as their order finds it, read once for the whole order: the ladder,
    their tier row (locked: their orders take turns) or a new one, the tier codes of the
    grants in force."""

    config: TierConfig
    tier: CustomerTier
    stored: bool
    granted: list[str]

    @property
    def multiplier_bp(self) -> int:
        """The earn multiplier at the order: of the tier earned before it (the base level
        without a stored row), or of a grant in force if higher."""
        earned = self.tier.earned_code if self.stored else self.config.levels[0].code
        codes = [earned, *self.granted]
        return self.config.level(higher(self.config, codes)).earn_multiplier_bp


def tier_for_order(customer_id: str, inputs: asyncpg.Record, now: datetime) -> OrderTier | None:
    """The customer's tier for an order at `now`, from what `order_inputs` read (the ladder,
    the customer's row, locked, and the grants in force); None if the program has no tiers.
    Without a row the customer starts at the base level: the order's measure
    (`after_order`) then moves them to the level they qualify for, as measuring first would."""
    config = rows.config_from_json(inputs["tier_config"])
    if config is None:
        return None
    granted = list(inputs["tier_grant_codes"])
    if inputs["tier_earned_code"] is not None:
        stored = CustomerTier(
            customer_id=customer_id,
            earned_code=inputs["tier_earned_code"],
            effective_code=inputs["tier_effective_code"],
            since=inputs["tier_since"],
            review_at=inputs["tier_review_at"],
            grace_ends_at=inputs["tier_grace_ends_at"],
        )
        return OrderTier(config=config, tier=stored, stored=True, granted=granted)
    base = config.levels[0].code
    first = CustomerTier(
        customer_id=customer_id, earned_code=base, effective_code=base, since=now, review_at=None, grace_ends_at=None
    )
    return OrderTier(config=config, tier=first, stored=False, granted=granted)


def order_window(state: OrderTier | None, zone: ZoneInfo, now: datetime) -> rows.Window | None:
    """What the order's statement measures for the tier (see `after_order`); None without tiers."""
    if state is None:
        return None
    return rows.Window(basis=state.config.basis, since=window_start(state.config.window, now, zone))


def multiplier_bp(state: OrderTier | None) -> int:
    """The earn multiplier of an order's tier state (1x without tiers)."""
    return NEUTRAL_BP if state is None else state.multiplier_bp


async def after_order(
    connection: asyncpg.Connection,
    program_id: str,
    state: OrderTier | None,
    measured: int | None,
    zone: ZoneInfo,
    now: datetime,
    cause: str,
) -> None:
    """Upgrade at once if the order crossed a threshold, inside the order's transaction; an
    order that makes a customer in their grace period qualify again ends the grace period.
    `measured` is the customer's measure over `order_window`, this order included. The row
    is written only when something changed."""
    if state is None:
        return
    assert measured is not None  # the order's statement measures whenever there are tiers
    config, tier = state.config, state.tier
    await _settle_ended_grants(connection, program_id, config, tier, now, state.granted)
    level = qualified(config, measured)
    dirty = not state.stored
    if config.rank(level.code) > config.rank(tier.earned_code):
        tier.earned_code, tier.since, tier.grace_ends_at = level.code, now, None
        tier.review_at = _review(config, level.code, now, zone)
        dirty = True
    elif tier.grace_ends_at is not None and config.rank(level.code) >= config.rank(tier.earned_code):
        tier.grace_ends_at = None
        tier.review_at = _next_review(tier.review_at, zone, now)
        await rows.record_change(
            connection,
            program_id,
            tier.customer_id,
            tier.effective_code,
            tier.effective_code,
            "review_passed",
            cause,
            now,
        )
        dirty = True
    await _settle(connection, program_id, config, tier, now, "upgrade", cause, granted=state.granted, dirty=dirty)


def _next_review(current: datetime | None, zone: ZoneInfo, now: datetime) -> datetime | None:
    """The first anniversary of the review date that is after `now`."""
    if current is None:
        return None
    following = review_at(current, zone)
    while following <= now:
        following = review_at(following, zone)
    return following


async def configure(principal: Principal, config: TierConfig, key: str, clock: Clock) -> TierSettings:
    """Replace the ladder. Customers keep their tier if its code still exists (thresholds
    apply from their next order or review); those in a removed level move at once to the
    level they qualify for."""
    config = checked_config(config)

    async def work(connection: asyncpg.Connection) -> TierSettings:
        now = clock.now()
        program_id = principal.program_id
        await rows.lock_ladder_to_change(connection, program_id)
        previous = await rows.load_config(connection, program_id)
        version = await rows.save_config(connection, program_id, config, principal.actor, now)
        zone = (await ledger_settings(connection, program_id)).zone
        codes = [level.code for level in config.levels]
        cause = f"configuration version {version}"
        for customer_id in await rows.customers_outside(connection, program_id, codes):
            tier, _ = await _current(connection, program_id, customer_id, config, zone, now, lock=True)
            if config.rank(tier.earned_code) < 0:
                level = qualified(config, await _measure(connection, program_id, customer_id, config, zone, now))
                tier.earned_code, tier.since, tier.grace_ends_at = level.code, now, None
                tier.review_at = _review(config, level.code, now, zone)
            # a customer moved out of a removed level is a change like any other, recorded
            # and told, its direction judged by the ladder the level was in
            await _settle(connection, program_id, config, tier, now, "configuration", cause, previous=previous)
        return TierSettings(version=version, config=config)

    return await run_once(principal.program_id, key, fingerprint("tiers", config), TierSettings, work)


def _moved_up(config: TierConfig, from_code: str, to_code: str, previous: TierConfig | None) -> bool:
    """Whether a move between levels is up: by the ladder's order; from a level the ladder
    no longer has, by the previous ladder's order if it has both, else by their thresholds."""
    if config.rank(from_code) >= 0:
        return config.rank(to_code) > config.rank(from_code)
    if previous is None or previous.rank(from_code) < 0:
        return False
    if previous.rank(to_code) >= 0:
        return previous.rank(to_code) > previous.rank(from_code)
    return config.level(to_code).threshold > previous.level(from_code).threshold


async def get_settings(program_id: str) -> TierSettings:
    async def work(connection: asyncpg.Connection) -> TierSettings:
        row = await connection.fetchrow("SELECT version, config FROM tier_configs WHERE program_id = $1", program_id)
        if row is None:
            raise NotFound("the program has no tiers configured")
        return TierSettings(version=row["version"], config=msgspec.json.decode(row["config"], type=TierConfig))

    return await in_transaction(work)


async def grant_in(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    request: GrantRequest,
    granted_by: str,
    now: datetime,
    field: str = "tier_code",
) -> TierGrant:
    """Grant a tier inside the caller's transaction (an admin's grant, a referral reward)."""
    config = _required(await rows.load_config_to_settle(connection, program_id))
    if config.rank(request.tier_code) < 0:
        raise InvalidInput(f"no tier {request.tier_code!r} is configured", field=field)
    zone = (await ledger_settings(connection, program_id)).zone
    tier, stored = await _current(connection, program_id, customer_id, config, zone, now, lock=True)
    if stored:
        await _settle_ended_grants(connection, program_id, config, tier, now)
    grant = TierGrant(
        id=new_id("tgr"),
        customer_id=customer_id,
        tier_code=request.tier_code,
        starts_at=now,
        ends_at=now + timedelta(days=request.days),
        reason=request.reason,
        granted_by=granted_by,
    )
    await rows.insert_grant(connection, program_id, grant)
    await _settle(connection, program_id, config, tier, now, "grant", f"grant {grant.id}: {request.reason}")
    return grant


async def end_grant_in(
    connection: asyncpg.Connection, program_id: str, customer_id: str, grant_id: str, now: datetime, cause: str
) -> None:
    """End a grant now, inside the caller's transaction (a referral reward clawed back)."""
    await _close_grants(connection, program_id, customer_id, now, cause, ending=grant_id)


async def _close_grants(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    now: datetime,
    cause: str,
    *,
    ending: str | None = None,
) -> None:
    """Close the customer's grants that have ended by `now` (first ending the grant `ending`
    now, if given) and recompute their tier."""
    config = await rows.load_config_to_settle(connection, program_id)
    tier = await rows.load_tier(connection, program_id, customer_id, lock=True)
    if ending is not None:
        await rows.end_grant(connection, program_id, ending, now)
    await rows.close_grants(connection, program_id, customer_id, now)
    if config is not None and tier is not None:
        await _settle(connection, program_id, config, tier, now, "grant_ended", cause)


async def grant_tier(
    principal: Principal, customer_id: str, request: GrantRequest, key: str, clock: Clock
) -> TierGrant:
    """Give a customer a tier for `days` days, as a floor above what they earn."""

    async def work(connection: asyncpg.Connection) -> TierGrant:
        return await grant_in(connection, principal.program_id, customer_id, request, principal.actor, clock.now())

    if not 1 <= request.days <= 3650:
        raise InvalidInput("days must be between 1 and 3650", field="days")
    return await run_once(principal.program_id, key, fingerprint("tier-grant", [customer_id, request]), TierGrant, work)


async def tier_progress(program_id: str, customer_id: str, clock: Clock) -> TierProgress:
    """The customer's tier, the next one, what is still needed, and how long it is kept."""

    async def work(connection: asyncpg.Connection) -> TierProgress:
        now = clock.now()
        config = _required(await rows.load_config(connection, program_id))
        zone = (await ledger_settings(connection, program_id)).zone
        if not await metric_rows.customer_exists(connection, program_id, customer_id):
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        tier, _ = await _current(connection, program_id, customer_id, config, zone, now, lock=False)
        grants = await rows.grants_in_force(connection, program_id, customer_id, now)
        effective = higher(config, [tier.earned_code, *(grant.tier_code for grant in grants)])
        floors = [g.ends_at for g in grants if config.rank(g.tier_code) > config.rank(tier.earned_code)]
        granted_until = max(floors) if floors else None
        kept_until = tier.grace_ends_at
        if kept_until is None and tier.review_at is not None:
            kept_until = grace_end(tier.review_at, config.grace_days, zone)
        if granted_until is not None and (kept_until is None or granted_until > kept_until):
            kept_until = granted_until
        measure = await _measure(connection, program_id, customer_id, config, zone, now)
        return progress(config, effective, tier.earned_code, measure, kept_until, granted_until)

    return await in_transaction(work)


async def tier_history(program_id: str, customer_id: str) -> list[TierChange]:
    """Every change of the customer's tier, newest first, with its cause; NotFound for a
    customer who is not the program's (as for their tier), not an empty history."""

    async def work(connection: asyncpg.Connection) -> list[TierChange]:
        if not await metric_rows.customer_exists(connection, program_id, customer_id):
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        return await rows.changes(connection, program_id, customer_id)

    return await in_transaction(work)


REVIEW_JOB = "review-tiers"
END_GRANTS_JOB = "end-tier-grants"


async def review_due(program_id: str, clock: Clock, limit: int = 1000) -> int:
    """Review the tiers that are due; returns how many customers were reviewed."""
    now = clock.now()

    async def review(connection: asyncpg.Connection, customer_id: str) -> None:
        config = await rows.load_config_to_settle(connection, program_id)
        tier = await rows.load_tier(connection, program_id, customer_id, lock=True)
        # the instant of this customer's review, read once their row is locked, not the run's
        # first: a grant made while the run went through earlier customers started after the
        # run began, and settling at that instant would not count it as in force
        now = clock.now()
        due = tier and tier.review_at and (tier.grace_ends_at or tier.review_at) <= now
        if config is None or tier is None or not due:
            return  # reviewed by another worker meanwhile
        zone = (await ledger_settings(connection, program_id)).zone
        await _settle_ended_grants(connection, program_id, config, tier, now)
        level = qualified(config, await _measure(connection, program_id, customer_id, config, zone, now))
        if config.rank(level.code) >= config.rank(tier.earned_code):
            if tier.grace_ends_at is not None:
                await rows.record_change(
                    connection,
                    program_id,
                    customer_id,
                    tier.effective_code,
                    tier.effective_code,
                    "review_passed",
                    REVIEW_ACTOR,
                    now,
                )
            tier.grace_ends_at = None
            tier.review_at = _next_review(tier.review_at, zone, now)
        elif tier.grace_ends_at is None and config.grace_days:
            tier.grace_ends_at = grace_end(tier.review_at or now, config.grace_days, zone)
            await rows.record_change(
                connection,
                program_id,
                customer_id,
                tier.effective_code,
                tier.effective_code,
                "grace_started",
                f"{REVIEW_ACTOR}: qualifies for {level.code}; kept until {tier.grace_ends_at.isoformat()}",
                now,
            )
        else:
            tier.earned_code = downgrade_to(config, tier.earned_code, level.code)
            tier.since, tier.grace_ends_at = now, None
            tier.review_at = _review(config, tier.earned_code, now, zone)
        await _settle(connection, program_id, config, tier, now, "downgrade", REVIEW_ACTOR)

    # each customer in a transaction of its own: one whose review fails is logged and recorded
    # (job_failures), left out until its retry, and the others are reviewed
    async def due(connection: asyncpg.Connection) -> list[str]:
        return await rows.due_reviews(connection, program_id, now, limit, REVIEW_JOB)

    pending = (
        "EXISTS (SELECT FROM customer_tiers t WHERE t.program_id = $1 AND t.customer_id = f.item"
        " AND t.review_at IS NOT NULL AND coalesce(t.grace_ends_at, t.review_at) <= $3)"
    )
    reviewed = len(
        await job_failures.run_items(
            program_id,
            REVIEW_JOB,
            now,
            due,
            pending,
            lambda customer: functools.partial(review, customer_id=customer),
            now,
        )
    )
    while await in_transaction(lambda connection: _warn_of_downgrades(connection, program_id, now)) == WARNINGS:
        pass
    return reviewed


WARNINGS = 1000  # warnings per transaction


async def _warn_of_downgrades(connection: asyncpg.Connection, program_id: str, now: datetime) -> int:
    """Announce each coming downgrade once, `warning_days` before its grace period ends (up to
    `WARNINGS` of them); returns how many it read. Reads the grace periods ending within the
    window that were not warned of yet (migration 0028), not every tier of the program."""
    config = await rows.load_config(connection, program_id)
    if config is None:
        return 0
    due = await rows.warnings_due(connection, program_id, now, config.warning_days, WARNINGS)
    for customer_id, tier_code, downgrade_at in due:
        warning = TierDowngradeWarning(customer_id=customer_id, tier=tier_code, downgrade_at=downgrade_at)
        key = f"tier-downgrade-warning:{customer_id}:{downgrade_at.isoformat()}"
        await emit_once(
            connection, program_id, key, EventType.TIER_DOWNGRADE_WARNING, warning, customer_id, occurred_at=now
        )
    if due:
        # told now or before (the key was there): out of the index
        await rows.mark_warned(connection, program_id, due)
    return len(due)


async def end_grants(program_id: str, clock: Clock, limit: int = 1000) -> int:
    """Recompute the tier of customers whose granted tier ended; returns how many."""
    now = clock.now()

    async def due(connection: asyncpg.Connection) -> list[str]:
        return await rows.ended_grants(connection, program_id, now, limit, END_GRANTS_JOB)

    def close(customer_id: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        # each customer at the instant they are settled, not the run's first: a grant made
        # meanwhile starts after the run began and is in force (see review_due)
        return functools.partial(
            _close_grants, program_id=program_id, customer_id=customer_id, now=clock.now(), cause=GRANT_ENDED
        )

    pending = (
        "EXISTS (SELECT FROM tier_grants g WHERE g.program_id = $1 AND g.customer_id = f.item"
        " AND g.closed_at IS NULL AND g.ends_at <= $3)"
    )
    return len(await job_failures.run_items(program_id, END_GRANTS_JOB, now, due, pending, close, now))
