"""Referrals: the program's settings, codes, redemption under the fraud rules, qualification
on the referee's order, rewards by a job once the order's return window has passed, and
cancellation (with clawback) when the qualifying order is refunded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import msgspec

from service.db import job_failures
from service.db import orders as order_rows
from service.db import referrals as rows
from service.db import tiers as tier_rows
from service.db.events import emit
from service.db.ledger import EntryToWrite, created_lots, write_entries, write_entry
from service.db.referrals import CodeRow, ReferralRow, RewardRow
from service.db.transaction import in_transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.errors import Conflict, DomainError, InvalidInput, NotFound
from service.domain.events import EventType, ReferralEvent
from service.domain.expiry import expires_at
from service.domain.ids import new_id
from service.domain.ledger import AccountKind
from service.domain.orders import FUTURE_TOLERANCE, ReturnPolicy
from service.domain.referrals import (
    Party,
    PlannedReward,
    RedemptionFacts,
    ReferralSettings,
    RewardKind,
    Status,
    check_redemption,
    checked_settings,
    clawback_draft,
    code_from_bytes,
    normalise_code,
    plan_clawback,
    plan_rewards,
    qualifies,
    rates,
    reward_draft,
    share_url,
    shared_fingerprint,
    still_qualifies,
    tier_codes,
    vanity_code,
)
from service.usecases import tiers
from service.usecases.idempotency import fingerprint, run_once
from service.usecases.ledger_settings import ledger_settings

REWARD_JOB = "referral-rewards"
REWARD_ACTOR = f"job:{REWARD_JOB}"
CODE_ATTEMPTS = 16


class ReferralCodeView(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    customer_id: str
    share_url: str | None
    vanity: bool
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    created_at: datetime


class ReferralView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    code: str
    referrer_id: str
    referee_id: str
    status: Status
    redeemed_at: datetime
    qualified_at: datetime | None
    shop_id: str | None  # the qualifying order
    order_id: str | None
    reward_due_at: datetime | None
    rewarded_at: datetime | None
    cancelled_at: datetime | None
    note: str | None
    rewards: list[RewardRow]


class ReferralPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ReferralView]
    next_cursor: str | None


class Redemption(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    device_hash: str | None = None
    payment_hash: str | None = None


class Fingerprints(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    device_hashes: list[str]
    payment_hashes: list[str]


class RewardsPaid(msgspec.Struct, frozen=True, kw_only=True):
    points: int
    credit: int  # minor units
    tier_grants: int
    points_clawed_back: int  # taken back or owed
    points_forgiven: int
    credit_clawed_back: int
    credit_forgiven: int
    tier_grants_ended: int


class ReferralStats(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str | None  # None: the whole program
    codes_issued: int
    codes_disabled: int
    redeemed: int
    pending: int
    qualified: int  # ever qualified (rewarded and later cancelled ones included)
    rewarded: int  # ever rewarded
    cancelled: int
    rewards_paid: RewardsPaid
    qualified_rate: float | None  # qualified / redeemed
    rewarded_rate: float | None  # rewarded / redeemed


# --- Settings --------------------------------------------------------------------------


async def configure(principal: Principal, settings: ReferralSettings, key: str, clock: Clock) -> ReferralSettings:
    """Replace the program's referral settings; tier rewards must name a configured tier."""
    settings = checked_settings(settings)

    async def work(connection: asyncpg.Connection) -> ReferralSettings:
        program_id = principal.program_id
        wanted = tier_codes(settings)
        if wanted:
            ladder = await tier_rows.load_config(connection, program_id)
            for field, code in wanted:
                if ladder is None or ladder.rank(code) < 0:
                    raise InvalidInput(f"no tier {code!r} is configured", field=field)
        await rows.save_settings(connection, program_id, settings, principal.actor, clock.now())
        return settings

    return await run_once(principal.program_id, key, fingerprint("referral-settings", settings), ReferralSettings, work)


async def get_settings(program_id: str) -> ReferralSettings:
    return await in_transaction(lambda connection: rows.load_settings(connection, program_id))


# --- Codes -----------------------------------------------------------------------------


def _code_view(code: CodeRow, settings: ReferralSettings) -> ReferralCodeView:
    return ReferralCodeView(
        code=code.code,
        customer_id=code.customer_id,
        share_url=share_url(settings.share_url_template, code.code),
        vanity=code.vanity,
        disabled=code.disabled_at is not None,
        disabled_reason=code.disabled_reason,
        disabled_at=code.disabled_at,
        created_at=code.created_at,
    )


async def _require_customer(connection: asyncpg.Connection, program_id: str, customer_id: str) -> asyncpg.Record:
    row = await rows.customer(connection, program_id, customer_id)
    if row is None:
        raise NotFound(f"customer {customer_id} not found", field="customer_id")
    return row


async def referral_code(program_id: str, customer_id: str, actor: str, clock: Clock) -> ReferralCodeView:
    """The customer's code and share link, made on the first request (unique per program:
    a collision draws again)."""

    async def work(connection: asyncpg.Connection) -> ReferralCodeView:
        await _require_customer(connection, program_id, customer_id)
        settings = await rows.load_settings(connection, program_id)
        for _ in range(CODE_ATTEMPTS):
            existing = await rows.current_code(connection, program_id, customer_id)
            if existing is not None:
                return _code_view(existing, settings)
            code = code_from_bytes(os.urandom(24))
            if code is not None:
                await rows.insert_code(connection, program_id, code, customer_id, False, actor, clock.now())
        raise AssertionError("no free referral code after many draws")

    return await in_transaction(work)


async def set_vanity_code(
    principal: Principal, customer_id: str, text: str, key: str, clock: Clock
) -> ReferralCodeView:
    """Give the customer a code an admin chose; their previous code is retired (no longer
    redeemable, never handed to anyone else). A code already taken is a 409."""
    code = vanity_code(text)

    async def work(connection: asyncpg.Connection) -> ReferralCodeView:
        program_id, now = principal.program_id, clock.now()
        await _require_customer(connection, program_id, customer_id)
        settings = await rows.load_settings(connection, program_id)
        current = await rows.current_code(connection, program_id, customer_id)
        if current is not None and current.code == code:
            return _code_view(current, settings)
        if await rows.code_exists(connection, program_id, code):
            raise Conflict(f"code {code} is taken", field="code")
        if current is not None:
            await rows.lock_code(connection, program_id, current.code)  # redemptions of it finish first
            await rows.retire_code(connection, program_id, current.code, now)
        if not await rows.insert_code(connection, program_id, code, customer_id, True, principal.actor, now):
            raise Conflict(f"code {code} is taken", field="code")
        made = await rows.current_code(connection, program_id, customer_id)
        assert made is not None
        return _code_view(made, settings)

    request = fingerprint("referral-vanity-code", [customer_id, code])
    return await run_once(principal.program_id, key, request, ReferralCodeView, work)


async def set_code_disabled(
    principal: Principal, text: str, reason: str | None, key: str, clock: Clock
) -> ReferralCodeView:
    """Disable a code with a reason (reason None enables it again)."""
    code = normalise_code(text)

    async def work(connection: asyncpg.Connection) -> ReferralCodeView:
        program_id = principal.program_id
        found = await rows.lock_code(connection, program_id, code)
        if found is None:
            raise NotFound(f"no referral code {code}", field="code")
        changed = await rows.set_disabled(connection, program_id, code, reason, clock.now())
        return _code_view(changed, await rows.load_settings(connection, program_id))

    request = fingerprint("referral-code-disabled", [code, reason])
    return await run_once(principal.program_id, key, request, ReferralCodeView, work)


async def get_code(program_id: str, text: str) -> ReferralCodeView:
    """A code as an admin sees it (retired codes included)."""
    code = normalise_code(text)

    async def work(connection: asyncpg.Connection) -> ReferralCodeView:
        row = await connection.fetchrow(
            "SELECT code, customer_id, vanity, created_at, disabled_at, disabled_reason, retired_at"
            " FROM referral_codes WHERE program_id = $1 AND code = $2",
            program_id,
            code,
        )
        if row is None:
            raise NotFound(f"no referral code {code}", field="code")
        return _code_view(msgspec.convert(dict(row), CodeRow), await rows.load_settings(connection, program_id))

    return await in_transaction(work)


# --- Fingerprints ----------------------------------------------------------------------


async def record_fingerprints(
    program_id: str, customer_id: str, devices: Sequence[str], payments: Sequence[str], clock: Clock
) -> Fingerprints:
    """Remember a customer's device and payment hashes (sent by the shop) for the fraud rules."""

    async def work(connection: asyncpg.Connection) -> Fingerprints:
        await _require_customer(connection, program_id, customer_id)
        await rows.add_fingerprints(connection, program_id, customer_id, devices, payments, clock.now())
        known_devices, known_payments = await rows.fingerprints(connection, program_id, customer_id)
        return Fingerprints(
            customer_id=customer_id, device_hashes=sorted(known_devices), payment_hashes=sorted(known_payments)
        )

    return await in_transaction(work)


# --- Redemption ------------------------------------------------------------------------


async def _views(connection: asyncpg.Connection, program_id: str, referrals: list[ReferralRow]) -> list[ReferralView]:
    rewards = await rows.rewards_of(connection, program_id, [r.id for r in referrals])
    return [
        ReferralView(
            id=r.id,
            code=r.code,
            referrer_id=r.referrer_id,
            referee_id=r.referee_id,
            status=Status(r.status),
            redeemed_at=r.redeemed_at,
            qualified_at=r.qualified_at,
            shop_id=r.shop_id,
            order_id=r.order_id,
            reward_due_at=r.reward_due_at,
            rewarded_at=r.rewarded_at,
            cancelled_at=r.cancelled_at,
            note=r.note,
            rewards=[reward for reward in rewards if reward.referral_id == r.id],
        )
        for r in referrals
    ]


async def _emit(
    connection: asyncpg.Connection, program_id: str, kind: EventType, referral: ReferralRow, now: datetime
) -> None:
    payload = ReferralEvent(customer_id=referral.referrer_id, referral_id=referral.id, referee_id=referral.referee_id)
    await emit(connection, program_id, kind, payload, referral.referrer_id, occurred_at=now)


async def redeem(
    principal: Principal, referee_id: str, redemption: Redemption, clock: Clock
) -> tuple[ReferralView, bool]:
    """The referee redeems a code: a `pending` referral, or the refusal of the first fraud
    rule it breaks (changing nothing). The same code again returns the same referral (and
    False: nothing new was made)."""
    code = normalise_code(redemption.code)
    sent_devices = [redemption.device_hash] if redemption.device_hash else []
    sent_payments = [redemption.payment_hash] if redemption.payment_hash else []

    async def work(connection: asyncpg.Connection) -> tuple[ReferralView, bool]:
        program_id, now = principal.program_id, clock.now()
        # the code's row is locked while deciding: redemptions of one code take turns, so a
        # cap counts every earlier one
        found = await rows.lock_code(connection, program_id, code)
        if found is None:
            raise NotFound(f"no referral code {code}", field="code")
        # the referee's pending account is what their orders lock first (order_inputs): the
        # redemption takes turns with their orders, so it counts an order committed meanwhile,
        # and an order placed meanwhile sees the referral it makes (and qualifies it)
        await order_rows.lock_customer_balances(connection, program_id, referee_id, [AccountKind.PENDING])
        referee = await rows.customer(connection, program_id, referee_id, lock=True)
        if referee is None:
            raise NotFound(f"customer {referee_id} not found", field="customer_id")
        existing = await rows.referral_of_referee(connection, program_id, referee_id)
        if existing is not None and existing.code == code:
            # the same redemption again, also after a vanity code retired the code since
            return (await _views(connection, program_id, [existing]))[0], False
        if found.retired_at is not None:
            raise NotFound(f"no referral code {code}", field="code")
        settings = await rows.load_settings(connection, program_id)
        referrer = await _require_customer(connection, program_id, found.customer_id)
        referrer_devices, referrer_payments = await rows.fingerprints(connection, program_id, found.customer_id)
        referee_devices, referee_payments = await rows.fingerprints(connection, program_id, referee_id)
        since = now - timedelta(days=settings.cap.period_days) if settings.cap else now
        facts = RedemptionFacts(
            code=code,
            code_disabled_reason=found.disabled_reason,
            referrer=Party(
                customer_id=referrer["id"],
                email=referrer["email"],
                devices=referrer_devices,
                payments=referrer_payments,
            ),
            referee=Party(
                customer_id=referee_id,
                email=referee["email"],
                devices=referee_devices | set(sent_devices),
                payments=referee_payments | set(sent_payments),
            ),
            referee_enrolled_at=referee["enrolled_at"],
            referee_orders=await rows.order_count(connection, program_id, referee_id),
            referee_referred_with=None if existing is None else existing.code,
            referrer_recent=await rows.recent_count(connection, program_id, found.customer_id, since)
            if settings.cap
            else 0,
            now=now,
        )
        check_redemption(facts, settings)
        referral = await rows.insert_referral(
            connection,
            program_id,
            {
                "id": new_id("ref", int(now.timestamp() * 1000)),
                "code": code,
                "referrer_id": found.customer_id,
                "referee_id": referee_id,
                "redeemed_at": now,
                "redeemed_by": principal.actor,
            },
        )
        if sent_devices or sent_payments:
            await rows.add_fingerprints(connection, program_id, referee_id, sent_devices, sent_payments, now)
        await _emit(connection, program_id, EventType.REFERRAL_REDEEMED, referral, now)
        return (await _views(connection, program_id, [referral]))[0], True

    return await in_transaction(work)


async def list_referrals(program_id: str, customer_id: str, limit: int, cursor: str | None) -> ReferralPage:
    """Referrals where the customer is the referrer or the referee, newest first, paged."""

    async def work(connection: asyncpg.Connection) -> ReferralPage:
        await _require_customer(connection, program_id, customer_id)
        found = await rows.referrals_of(connection, program_id, customer_id, limit + 1, cursor)
        page = found[:limit]
        next_cursor = page[-1].id if len(found) > limit else None
        return ReferralPage(items=await _views(connection, program_id, page), next_cursor=next_cursor)

    return await in_transaction(work)


# --- Hooks in the order's transactions -------------------------------------------------


async def qualify_on_order(
    connection: asyncpg.Connection, program_id: str, order: asyncpg.Record, inputs: asyncpg.Record
) -> None:
    """Inside place_order: a pending referral of the customer (locked by `order_inputs`, which
    also read the settings) becomes `qualified` by an order at or above the minimum placed
    while it was pending (an order sent late, placed before the redemption, does not count;
    a till's clock may be behind by the skew it is allowed ahead); its rewards are due when
    the order's return window ends."""
    referral_id = inputs["referral_id"]
    if referral_id is None:
        return
    settings = rows.settings_from_json(inputs["referral_settings"])
    if not qualifies(order["net"], settings):
        return
    now = order["created_at"]
    placed_since = order["placed_at"] + FUTURE_TOLERANCE
    qualified = await rows.qualify(
        connection, program_id, referral_id, order["shop_id"], order["id"], order["release_at"], now, placed_since
    )
    if qualified is not None:
        await _emit(connection, program_id, EventType.REFERRAL_QUALIFIED, qualified, now)


async def cancel_on_refund(
    connection: asyncpg.Connection,
    program_id: str,
    order: asyncpg.Record,
    refunded_net: int,
    policy: ReturnPolicy,
    actor: str,
    now: datetime,
) -> None:
    """Inside refund_order: if the qualifying order no longer qualifies (its remaining net is
    below the minimum, or nothing remains), the referral is cancelled; rewards already paid
    are clawed back by the program's return `policy`."""
    referral = await rows.lock_of_order(connection, program_id, order["shop_id"], order["id"])
    if referral is None:
        return
    settings = await rows.load_settings(connection, program_id)
    if still_qualifies(order["net"], refunded_net, settings):
        return
    note = f"order {order['id']} was refunded before the reward"
    if referral.status == Status.REWARDED:
        await _claw_back(connection, program_id, referral, policy, actor, now)
        note = f"order {order['id']} was refunded after the reward; rewards clawed back"
    await rows.mark_cancelled(connection, program_id, referral.id, note, now)
    await _emit(connection, program_id, EventType.REFERRAL_CANCELLED, referral, now)


async def _claw_back(
    connection: asyncpg.Connection,
    program_id: str,
    referral: ReferralRow,
    policy: ReturnPolicy,
    actor: str,
    now: datetime,
) -> None:
    await rows.lock_referrer(connection, program_id, referral.referrer_id)  # milestones are counted under it
    for reward in await rows.rewards_of(connection, program_id, [referral.id]):
        if reward.clawed_back_at is not None:
            continue
        kind = RewardKind(reward.kind)
        if kind is RewardKind.TIER:
            if reward.tier_grant_id is not None:
                cause = f"referral {referral.id} cancelled"
                await tiers.end_grant_in(
                    connection, program_id, reward.beneficiary_id, reward.tier_grant_id, now, cause
                )
            await rows.mark_clawed_back(connection, program_id, reward.id, None, 0, 0, 0, now)
            continue
        assert reward.amount is not None
        spendable = AccountKind.AVAILABLE if kind is RewardKind.POINTS else AccountKind.CREDIT_AVAILABLE
        balances = await order_rows.lock_customer_balances(
            connection, program_id, reward.beneficiary_id, [spendable, AccountKind.OWED]
        )
        plan = plan_clawback(kind, reward.amount, balances[spendable], policy)
        metadata = {"referral_id": referral.id, "beneficiary": reward.beneficiary_id, "reward_id": reward.id}
        draft = clawback_draft(kind, reward.beneficiary_id, plan, metadata)
        entry_id = None
        if draft is not None:
            reclaimed = await created_lots(connection, program_id, reward.beneficiary_id, [reward.entry_id])
            written = await write_entry(connection, program_id, draft, actor=actor, now=now, reclaimed=reclaimed)
            entry_id = written.id
        await rows.mark_clawed_back(
            connection, program_id, reward.id, entry_id, plan.from_available, plan.owed, plan.forgiven, now
        )


# --- The reward job --------------------------------------------------------------------


async def _pay(connection: asyncpg.Connection, program_id: str, referral: ReferralRow, now: datetime) -> None:
    """Pay a claimed referral's rewards (entries and tier grants linked to it) and mark it
    rewarded; cancel it instead if the referee now shares a fingerprint with the referrer."""
    settings = await rows.load_settings(connection, program_id)
    if await _cancelled_as_shared(connection, program_id, referral, settings, now):
        return
    await rows.lock_referrer(connection, program_id, referral.referrer_id)
    before = await rows.rewarded_count(connection, program_id, referral.referrer_id)
    held = await rows.held_milestones(connection, program_id, referral.referrer_id)
    planned = plan_rewards(settings, referral.referrer_id, referral.referee_id, before, held)
    ledger = await ledger_settings(connection, program_id)
    lot_expiry = expires_at(ledger.expiry, now, ledger.zone)
    postings = [p for p in planned if p.reward.kind is not RewardKind.TIER]
    items = [EntryToWrite(reward_draft(p, referral.id, lot_expiry), REWARD_ACTOR) for p in postings]
    written = await write_entries(connection, program_id, items, now=now) if items else []
    for outcome in written:
        if isinstance(outcome, DomainError):
            raise outcome
    entry_ids = {id(p): w.id for p, w in zip(postings, written, strict=True) if not isinstance(w, DomainError)}
    paid = bool(entry_ids)
    for p in planned:
        grant_id, note = None, None
        if p.reward.kind is RewardKind.TIER:
            grant_id, note = await _grant(connection, program_id, referral, p, now)
            paid = paid or grant_id is not None
        await rows.insert_reward(
            connection,
            program_id,
            {
                "id": new_id("rrw", int(now.timestamp() * 1000)),
                "referral_id": referral.id,
                "beneficiary_id": p.beneficiary_id,
                "role": p.role.value,
                "milestone": p.milestone,
                "kind": p.reward.kind.value,
                "amount": p.reward.amount,
                "tier_code": p.reward.tier_code,
                "entry_id": entry_ids.get(id(p)),
                "tier_grant_id": grant_id,
                "note": note,
                "created_at": now,
            },
        )
    await rows.mark_rewarded(connection, program_id, referral.id, now)
    if paid:  # settled with nothing paid (none configured, or only a tier no longer there): no event
        await _emit(connection, program_id, EventType.REFERRAL_REWARDED, referral, now)


async def _cancelled_as_shared(
    connection: asyncpg.Connection, program_id: str, referral: ReferralRow, settings: ReferralSettings, now: datetime
) -> bool:
    """Cancel the referral (nothing was paid) if a fingerprint recorded since the redemption,
    such as the card the referee paid with, is the referrer's; whether it was."""
    referrer_devices, referrer_payments = await rows.fingerprints(connection, program_id, referral.referrer_id)
    referee_devices, referee_payments = await rows.fingerprints(connection, program_id, referral.referee_id)
    shared = shared_fingerprint(
        Party(customer_id=referral.referrer_id, email=None, devices=referrer_devices, payments=referrer_payments),
        Party(customer_id=referral.referee_id, email=None, devices=referee_devices, payments=referee_payments),
        settings.fraud_rules,
    )
    if shared is None:
        return False
    note = f"refused before the reward by rule {shared.extra['rule']}: {shared.detail}"
    await rows.mark_cancelled(connection, program_id, referral.id, note, now)
    await _emit(connection, program_id, EventType.REFERRAL_CANCELLED, referral, now)
    return True


async def _grant(
    connection: asyncpg.Connection, program_id: str, referral: ReferralRow, planned: PlannedReward, now: datetime
) -> tuple[str | None, str | None]:
    """A tier reward as a grant; a tier no longer configured is recorded, not granted."""
    reward = planned.reward
    assert reward.tier_code is not None and reward.tier_days is not None
    reason = f"referral {referral.id}" + (f": milestone {planned.milestone}" if planned.milestone else "")
    request = tiers.GrantRequest(tier_code=reward.tier_code, days=reward.tier_days, reason=reason)
    try:
        async with connection.transaction():  # a savepoint: a refused grant leaves nothing behind
            grant = await tiers.grant_in(connection, program_id, planned.beneficiary_id, request, REWARD_ACTOR, now)
    except DomainError as refusal:
        return None, f"not granted: {refusal.detail}"
    return grant.id, None


async def reward_due(program_id: str, clock: Clock, limit: int = 1000) -> int:
    """Reward the qualified referrals whose order was released or whose reward time passed,
    one transaction each; several workers may run at once (SKIP LOCKED). Returns how many.

    A referral whose rewards cannot be paid is logged and recorded (`job_failures`), left out
    until its retry, and the referrals behind it are rewarded."""
    now = clock.now()
    return await job_failures.drain(
        program_id,
        REWARD_JOB,
        lambda connection, skip: rows.claim_due(connection, program_id, now, REWARD_JOB, skip),
        lambda referral: referral.id,
        # paid at the instant of its own transaction, not the run's first: a tier reward's
        # settling must count the grants made meanwhile (see tiers.review_due)
        lambda connection, referral: _pay(connection, program_id, referral, clock.now()),
        now,
        limit,
    )


# --- Stats -----------------------------------------------------------------------------


async def referral_stats(program_id: str, customer_id: str | None = None) -> ReferralStats:
    """Codes, referrals by state, rewards paid and conversion, for the program or one referrer."""

    async def work(connection: asyncpg.Connection) -> ReferralStats:
        if customer_id is not None:
            await _require_customer(connection, program_id, customer_id)
        row = await rows.stats(connection, program_id, customer_id)
        qualified_rate, rewarded_rate = rates(row["redeemed"], row["qualified"], row["rewarded"])
        return ReferralStats(
            customer_id=customer_id,
            codes_issued=row["codes"],
            codes_disabled=row["disabled"],
            redeemed=row["redeemed"],
            pending=row["pending"],
            qualified=row["qualified"],
            rewarded=row["rewarded"],
            cancelled=row["cancelled"],
            rewards_paid=RewardsPaid(
                points=row["points"],
                credit=row["credit"],
                tier_grants=row["tier_grants"],
                points_clawed_back=row["points_clawed_back"],
                points_forgiven=row["points_forgiven"],
                credit_clawed_back=row["credit_clawed_back"],
                credit_forgiven=row["credit_forgiven"],
                tier_grants_ended=row["tier_grants_ended"],
            ),
            qualified_rate=qualified_rate,
            rewarded_rate=rewarded_rate,
        )

    return await in_transaction(work)
